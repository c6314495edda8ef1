"""What the scheduler knows of nodes and the pods on them (upstream's scheduler cache).

A PodInfo and a NodeInfo are computed once per object version, so filters and scores
read ready integers and sets instead of walking pod specs for every node. Pods the
scheduler has chosen a node for are *assumed* on that node at once, before the binding
is written, so the next pods see the node as it will be; the watch later confirms the
binding (or the assumption is forgotten when the bind fails).

Everything runs on the event loop's thread and a scheduling cycle never awaits, so the
cache is its own consistent snapshot during a cycle: no copies are made.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterator, Mapping

from kubesmith.api.validation import selector_matches
from kubesmith.scheduler.resources import (
    Resources,
    node_allocatable,
    pod_non_zero_requests,
    pod_requests,
)

Obj = dict[str, Any]

HOSTNAME_LABEL = "kubernetes.io/hostname"
ZONE_LABEL = "topology.kubernetes.io/zone"
DEFAULT_SCHEDULER = "default-scheduler"


def pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def is_terminal(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


NamespaceLabels = Callable[[str], Mapping[str, str]]


class AffinityTerm:
    """A PodAffinityTerm made ready to match: which namespaces, which labels, over which
    topology key; `weight` for preferred terms."""

    __slots__ = ("namespaces", "all_namespaces", "namespace_selector", "selector",
                 "topology_key", "weight")

    def __init__(self, term: Mapping[str, Any], namespace: str, weight: int = 0):
        namespaces = term.get("namespaces") or []
        ns_selector = term.get("namespaceSelector")
        # An empty namespaceSelector selects every namespace; with neither field set the
        # term is about the pod's own namespace.
        self.all_namespaces = isinstance(ns_selector, dict) and not ns_selector.get(
            "matchLabels") and not ns_selector.get("matchExpressions")
        self.namespace_selector = ns_selector if isinstance(ns_selector, dict) \
            and not self.all_namespaces else None
        self.namespaces = frozenset(namespaces) if (namespaces or ns_selector is not None) \
            else frozenset((namespace,))
        self.selector = term.get("labelSelector")
        self.topology_key = term.get("topologyKey") or ""
        self.weight = weight

    def matches(self, pod: "PodInfo", namespace_labels: NamespaceLabels | None = None) -> bool:
        """Whether `pod` is one the term is about; `namespace_labels(name)` gives a
        namespace's labels for a namespaceSelector."""
        if not (self.all_namespaces or pod.namespace in self.namespaces or (
                self.namespace_selector is not None and namespace_labels is not None
                and selector_matches(self.namespace_selector,
                                     namespace_labels(pod.namespace)))):
            return False
        return selector_matches(self.selector, pod.labels)


def _terms(section: Mapping[str, Any] | None, namespace: str) -> tuple[list[AffinityTerm],
                                                                      list[AffinityTerm]]:
    """(required, preferred) terms of a podAffinity or podAntiAffinity section."""
    if not section:
        return [], []
    required = [AffinityTerm(t, namespace)
                for t in section.get("requiredDuringSchedulingIgnoredDuringExecution") or ()]
    preferred = [AffinityTerm(t.get("podAffinityTerm") or {}, namespace, int(t.get("weight") or 0))
                 for t in section.get("preferredDuringSchedulingIgnoredDuringExecution") or ()]
    return required, preferred


class PodInfo:
    """One version of a pod, with what scheduling asks of it precomputed."""

    __slots__ = ("pod", "key", "uid", "namespace", "name", "labels", "node_name", "priority",
                 "created", "requests", "non_zero_cpu", "non_zero_memory", "host_ports",
                 "tolerations", "node_selector", "required_node_terms",
                 "preferred_node_terms", "affinity", "anti_affinity", "preferred_affinity",
                 "preferred_anti_affinity", "spread_constraints", "owner_uid", "terminating")

    def __init__(self, pod: Obj):
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        self.pod = pod
        self.namespace = meta.get("namespace") or ""
        self.name = meta.get("name") or ""
        self.key = f"{self.namespace}/{self.name}"
        self.uid = meta.get("uid") or ""
        self.labels: Mapping[str, str] = meta.get("labels") or {}
        self.node_name: str = spec.get("nodeName") or ""
        self.priority = int(spec.get("priority") or 0)
        self.created: str = meta.get("creationTimestamp") or ""
        self.terminating = bool(meta.get("deletionTimestamp"))
        self.requests = pod_requests(spec)
        self.non_zero_cpu, self.non_zero_memory = pod_non_zero_requests(spec)
        self.host_ports: list[tuple[str, str, int]] = [
            (port.get("hostIP") or "0.0.0.0", port.get("protocol") or "TCP",
             int(port["hostPort"]))
            for container in spec.get("containers") or ()
            for port in container.get("ports") or () if port.get("hostPort")]
        self.tolerations: list[Obj] = spec.get("tolerations") or []
        self.node_selector: Mapping[str, str] = spec.get("nodeSelector") or {}
        affinity = spec.get("affinity") or {}
        node_affinity = affinity.get("nodeAffinity") or {}
        required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
        self.required_node_terms: list[Obj] | None = (
            (required.get("nodeSelectorTerms") or []) if required is not None else None)
        self.preferred_node_terms: list[Obj] = \
            node_affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or []
        self.affinity, self.preferred_affinity = _terms(affinity.get("podAffinity"),
                                                        self.namespace)
        self.anti_affinity, self.preferred_anti_affinity = _terms(
            affinity.get("podAntiAffinity"), self.namespace)
        self.spread_constraints: list[Obj] = spec.get("topologySpreadConstraints") or []
        self.owner_uid = next((ref.get("uid") or "" for ref in meta.get("ownerReferences") or ()
                               if ref.get("controller")), "")

    def __repr__(self) -> str:
        return f"<PodInfo {self.key} on {self.node_name or '-'}>"

    @property
    def has_affinity(self) -> bool:
        return bool(self.affinity or self.anti_affinity or self.preferred_affinity
                    or self.preferred_anti_affinity)


class NodeInfo:
    """A node and the totals of the pods bound or assumed on it."""

    __slots__ = ("name", "node", "labels", "taints", "unschedulable", "allocatable",
                 "allowed_pods", "requested", "non_zero_cpu", "non_zero_memory", "pods",
                 "with_affinity", "with_required_anti_affinity", "used_ports",
                 "owner_counts", "generation")

    def __init__(self, name: str):
        self.name = name
        self.node: Obj | None = None
        self.labels: Mapping[str, str] = {}
        self.taints: list[Obj] = []
        self.unschedulable = False
        self.allocatable = Resources()
        self.allowed_pods = 0
        self.requested = Resources()
        self.non_zero_cpu = 0
        self.non_zero_memory = 0
        self.pods: dict[str, PodInfo] = {}
        self.with_affinity: dict[str, PodInfo] = {}
        self.with_required_anti_affinity: dict[str, PodInfo] = {}
        # (protocol, port) -> host IPs in use (counted: two pods may share 0.0.0.0 only
        # after one of them is gone)
        self.used_ports: dict[tuple[str, int], Counter] = {}
        self.owner_counts: Counter = Counter()
        self.generation = 0

    def __repr__(self) -> str:
        return f"<NodeInfo {self.name} pods={len(self.pods)} requested={self.requested}>"

    def set_node(self, node: Obj) -> None:
        self.node = node
        self.labels = (node.get("metadata") or {}).get("labels") or {}
        spec = node.get("spec") or {}
        self.taints = spec.get("taints") or []
        self.unschedulable = bool(spec.get("unschedulable"))
        self.allocatable, self.allowed_pods = node_allocatable(node)
        self.generation += 1

    def add_pod(self, pod: PodInfo) -> None:
        self.pods[pod.key] = pod
        if pod.has_affinity:
            self.with_affinity[pod.key] = pod
        if pod.anti_affinity:
            self.with_required_anti_affinity[pod.key] = pod
        self._account(pod, 1)

    def remove_pod(self, key: str) -> PodInfo | None:
        pod = self.pods.pop(key, None)
        if pod is not None:
            self.with_affinity.pop(key, None)
            self.with_required_anti_affinity.pop(key, None)
            self._account(pod, -1)
        return pod

    def _account(self, pod: PodInfo, sign: int) -> None:
        self.requested.add(pod.requests, sign)
        self.non_zero_cpu += sign * pod.non_zero_cpu
        self.non_zero_memory += sign * pod.non_zero_memory
        for ip, protocol, port in pod.host_ports:
            ips = self.used_ports.setdefault((protocol, port), Counter())
            ips[ip] += sign
            if ips[ip] <= 0:
                del ips[ip]
                if not ips:
                    del self.used_ports[(protocol, port)]
        if pod.owner_uid:
            self.owner_counts[pod.owner_uid] += sign
            if self.owner_counts[pod.owner_uid] <= 0:
                del self.owner_counts[pod.owner_uid]
        self.generation += 1

    def port_conflict(self, wanted: list[tuple[str, str, int]]) -> bool:
        for ip, protocol, port in wanted:
            ips = self.used_ports.get((protocol, port))
            if ips and (ip == "0.0.0.0" or ip in ips or "0.0.0.0" in ips):
                return True
        return False


class SchedulerCache:
    """NodeInfos by node name, and which node each known pod is on (bound or assumed)."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self._node_list: list[NodeInfo] | None = []    # nodes with a Node object, by name
        self._pods: dict[str, PodInfo] = {}        # key -> the PodInfo accounted
        self.assumed: set[str] = set()

    # --- nodes ------------------------------------------------------------------------

    def node_infos(self) -> list[NodeInfo]:
        """Nodes that exist (not placeholders holding pods of a node not yet seen)."""
        if self._node_list is None:
            # Zones take turns, as in upstream's node tree, so that the share of nodes
            # a cycle examines in a large cluster is spread over every zone.
            zones: dict[str, list[NodeInfo]] = {}
            for name in sorted(self.nodes):
                info = self.nodes[name]
                if info.node is not None:
                    zones.setdefault(info.labels.get(ZONE_LABEL, ""), []).append(info)
            columns = [zones[zone] for zone in sorted(zones)]
            self._node_list = [column[row] for row in range(max(map(len, columns), default=0))
                               for column in columns if row < len(column)]
        return self._node_list

    def __len__(self) -> int:
        return len(self.node_infos())

    def add_node(self, node: Obj) -> NodeInfo:
        name = (node.get("metadata") or {}).get("name", "")
        info = self.nodes.get(name)
        if info is None:
            info = self.nodes[name] = NodeInfo(name)
        if info.node is None or info.labels.get(ZONE_LABEL) != (
                (node.get("metadata") or {}).get("labels") or {}).get(ZONE_LABEL):
            self._node_list = None
        info.set_node(node)
        return info

    update_node = add_node

    def remove_node(self, name: str) -> None:
        info = self.nodes.get(name)
        if info is None:
            return
        self._node_list = None
        if info.pods:
            info.node = None    # its pods' deletions are still to come
            info.labels, info.taints = {}, []
        else:
            del self.nodes[name]

    # --- pods -------------------------------------------------------------------------

    def pod(self, key: str) -> PodInfo | None:
        return self._pods.get(key)

    def is_assumed(self, key: str) -> bool:
        return key in self.assumed

    def assume_pod(self, pod: PodInfo, node_name: str) -> None:
        """Account `pod` on `node_name` before its binding is written."""
        pod.node_name = node_name
        self._put(pod)
        self.assumed.add(pod.key)

    def forget_pod(self, key: str) -> None:
        """The binding failed: the assumed pod is not on the node after all."""
        if key in self.assumed:
            self.assumed.discard(key)
            self._drop(key)

    def add_pod(self, pod: Obj) -> None:
        """A pod bound to a node (seen through the watch); confirms an assumption."""
        info = PodInfo(pod)
        self.assumed.discard(info.key)
        if is_terminal(pod):
            self._drop(info.key)    # finished pods hold nothing on the node
        else:
            self._put(info)

    update_pod = add_pod

    def remove_pod(self, key: str) -> None:
        self.assumed.discard(key)
        self._drop(key)

    def _put(self, pod: PodInfo) -> None:
        self._drop(pod.key)
        info = self.nodes.get(pod.node_name)
        if info is None:
            info = self.nodes[pod.node_name] = NodeInfo(pod.node_name)
        info.add_pod(pod)
        self._pods[pod.key] = pod

    def _drop(self, key: str) -> None:
        old = self._pods.pop(key, None)
        if old is None:
            return
        info = self.nodes.get(old.node_name)
        if info is not None:
            info.remove_pod(key)
            if info.node is None and not info.pods:
                del self.nodes[old.node_name]

    def pods(self) -> Iterator[PodInfo]:
        return iter(self._pods.values())
