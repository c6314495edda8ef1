"""Node health and what follows from it: upstream's node lifecycle controller and its
taint eviction controller.

nodelifecycle, every --node-monitor-period:
  * a node is heard from when its Ready condition's lastHeartbeatTime or its Lease's
    (kube-node-lease/<node>) renewTime changes, as this controller observes it (local
    time, so clocks need not agree). Silent for --node-monitor-grace-period
    (--node-startup-grace-period for a node that never posted a Ready condition), its
    Ready, MemoryPressure, DiskPressure and PIDPressure conditions become Unknown (reason
    NodeStatusUnknown, "Kubelet stopped posting node status.");
  * taints follow the conditions: node.kubernetes.io/not-ready (Ready False) and
    node.kubernetes.io/unreachable (Ready Unknown) with effects NoExecute and
    NoSchedule, memory-pressure / disk-pressure / pid-pressure / network-unavailable
    NoSchedule taints, unschedulable for a cordoned node; removed when the condition
    clears;
  * the pods of a node that is not Ready get their Ready condition set False;
  * NoExecute taints are rationed per zone (topology.kubernetes.io/zone) as upstream:
    --node-eviction-rate nodes a second (burst 1) in a zone that is Normal or fully
    disrupted, --secondary-node-eviction-rate in a partially disrupted one (at least 3
    and --unhealthy-zone-threshold of its nodes not Ready) larger than
    --large-cluster-size-threshold, none in a smaller one; when every zone is fully
    disrupted (the control plane is more likely cut off than all nodes dead), no node
    keeps or gets a not-ready/unreachable NoExecute taint. NoSchedule taints and the
    removal of taints are never rationed.

taint-eviction-controller: a pod on a node with NoExecute taints it does not tolerate is
deleted at once (condition DisruptionTarget, reason DeletionByTaintManager); tolerated
with tolerationSeconds, it is deleted that many seconds after the controller first saw
it so (the smallest tolerationSeconds of the matching tolerations). Every pod gets 300 s
tolerations of not-ready and unreachable from the DefaultTolerationSeconds admission
plugin, as upstream.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from kubesmith.api.times import rfc3339
from kubesmith.client.informers import DeletedFinalStateUnknown, namespace_key, split_key
from kubesmith.client.rest import ApiError, is_conflict, is_not_found
from kubesmith.client.workqueue import WorkQueue, run_workers
from kubesmith.controllers import register
from kubesmith.controllers.context import ControllerContext

log = logging.getLogger(__name__)

Obj = dict[str, Any]
NODE_LEASE_NAMESPACE = "kube-node-lease"
NOT_READY = "node.kubernetes.io/not-ready"
UNREACHABLE = "node.kubernetes.io/unreachable"
UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
# Condition (type, status) -> the taint key it brings (upstream's
# nodeConditionToTaintKeyStatusMap); Ready ones also come as NoExecute taints.
CONDITION_TAINTS = {
    ("Ready", "False"): NOT_READY,
    ("Ready", "Unknown"): UNREACHABLE,
    ("MemoryPressure", "True"): "node.kubernetes.io/memory-pressure",
    ("DiskPressure", "True"): "node.kubernetes.io/disk-pressure",
    ("NetworkUnavailable", "True"): "node.kubernetes.io/network-unavailable",
    ("PIDPressure", "True"): "node.kubernetes.io/pid-pressure",
}
MANAGED_TAINT_KEYS = set(CONDITION_TAINTS.values()) | {UNSCHEDULABLE}
MONITORED_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
POD_NODE_INDEX = "kubesmith.io/pod-node-name"
TAINT_EVICTION_WORKERS = 8      # upstream's UpdateWorkerSize
ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"
NORMAL, PARTIAL_DISRUPTION, FULL_DISRUPTION = "Normal", "PartialDisruption", "FullDisruption"


def pod_node_name(pod: Obj) -> list[str]:
    name = (pod.get("spec") or {}).get("nodeName")
    return [name] if name else []


def pods_by_node(ctx: ControllerContext):
    """The shared pod informer, indexed by spec.nodeName."""
    pods = ctx.informers.informer("v1 pods")
    try:
        pods.add_indexers({POD_NODE_INDEX: pod_node_name})
    except ValueError:
        pass    # the other controller of this module added it already
    return pods


def condition(node: Obj, kind: str) -> Obj | None:
    for entry in (node.get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind:
            return entry
    return None


def _unwrap(obj: Obj | DeletedFinalStateUnknown) -> Obj:
    return obj.obj if isinstance(obj, DeletedFinalStateUnknown) else obj


def desired_taints(node: Obj) -> set[tuple[str, str]]:
    """(key, effect) of the taints the node's conditions call for."""
    wanted = set()
    for entry in (node.get("status") or {}).get("conditions") or []:
        key = CONDITION_TAINTS.get((entry.get("type"), entry.get("status")))
        if key is not None:
            wanted.add((key, "NoSchedule"))
            if key in (NOT_READY, UNREACHABLE):
                wanted.add((key, "NoExecute"))
    if (node.get("spec") or {}).get("unschedulable"):
        wanted.add((UNSCHEDULABLE, "NoSchedule"))
    return wanted


def _has_no_execute(node: Obj) -> bool:
    return any(t.get("key") in (NOT_READY, UNREACHABLE) and t.get("effect") == "NoExecute"
               for t in (node.get("spec") or {}).get("taints") or [])


def needs_new_no_execute(node: Obj) -> bool:
    """The node calls for a not-ready/unreachable NoExecute taint and has none (adding
    one is rationed; swapping one for the other is not)."""
    return any(effect == "NoExecute" for _, effect in desired_taints(node)) and \
        not _has_no_execute(node)


def reconcile_taints(node: Obj, *, new_no_execute: bool = True,
                     no_execute: bool = True) -> list[Obj] | None:
    """The node's taints with the managed ones made to match its conditions; None when
    nothing changes. new_no_execute=False: no NoExecute taint where there is none yet;
    no_execute=False: none at all (every zone fully disrupted)."""
    taints = list((node.get("spec") or {}).get("taints") or [])
    wanted = desired_taints(node)
    if not no_execute or (not new_no_execute and not _has_no_execute(node)):
        wanted = {(key, effect) for key, effect in wanted if effect != "NoExecute"}
    have = {(t.get("key"), t.get("effect")) for t in taints if t.get("key") in
            MANAGED_TAINT_KEYS}
    if have == wanted:
        return None
    kept = [t for t in taints if t.get("key") not in MANAGED_TAINT_KEYS
            or (t.get("key"), t.get("effect")) in wanted]
    for key, effect in sorted(wanted - have):
        taint = {"key": key, "effect": effect}
        if effect == "NoExecute":
            taint["timeAdded"] = rfc3339()
        kept.append(taint)
    return kept


def zone_of(node: Obj) -> str:
    """Upstream's zone key: region and zone labels."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    return f"{labels.get(REGION_LABEL, '')}:\x00:{labels.get(ZONE_LABEL, '')}"


def zone_state(ready: list[bool], unhealthy_threshold: float) -> str:
    """Upstream's ComputeZoneState from the nodes' Ready == True."""
    ready_count = sum(ready)
    not_ready = len(ready) - ready_count
    if ready_count == 0 and not_ready > 0:
        return FULL_DISRUPTION
    if not_ready > 2 and not_ready / len(ready) >= unhealthy_threshold:
        return PARTIAL_DISRUPTION
    return NORMAL


class TaintLimiter:
    """A token bucket that refuses instead of waiting; qps 0 refuses everything."""

    def __init__(self, qps: float, burst: int = 1):
        self.qps, self.burst = qps, burst
        self.tokens = float(burst)
        self.last = time.monotonic()

    def set_rate(self, qps: float) -> None:
        if qps != self.qps:
            self.refill()
            self.qps = qps

    def refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.qps)
        self.last = now

    def try_accept(self) -> bool:
        if self.qps <= 0:
            return False        # upstream swaps in a limiter that never accepts
        self.refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class NodeHealth:
    probe: float            # monotonic time the node was last heard from
    heartbeat: str | None   # Ready condition's lastHeartbeatTime then
    renew: str | None       # the Lease's renewTime then


@register("nodelifecycle")
class NodeLifecycleController:
    def __init__(self, ctx: ControllerContext):
        self.client = ctx.client
        options = ctx.options
        self.grace = float(getattr(options, "node_monitor_grace_period", 40.0))
        self.startup_grace = float(getattr(options, "node_startup_grace_period", 60.0))
        self.period = float(getattr(options, "node_monitor_period", 5.0))
        self.nodes = ctx.informers.informer("v1 nodes")
        self.leases = ctx.informers.informer("leases.coordination.k8s.io",
                                             namespace=NODE_LEASE_NAMESPACE)
        self.pods = pods_by_node(ctx)
        self.recorder = ctx.recorder("node-controller")
        self.health: dict[str, NodeHealth] = {}
        self.eviction_rate = float(getattr(options, "node_eviction_rate", 0.1))
        self.secondary_rate = float(getattr(options, "secondary_node_eviction_rate", 0.01))
        self.large_cluster = int(getattr(options, "large_cluster_size_threshold", 50))
        self.unhealthy_threshold = float(getattr(options, "unhealthy_zone_threshold", 0.55))
        self.limiters: dict[str, TaintLimiter] = {}
        self.zone_states: dict[str, str] = {}

    async def run(self, workers: int) -> None:
        while True:
            started = time.monotonic()
            await self.monitor()
            await asyncio.sleep(max(self.period - (time.monotonic() - started), 0.05))

    async def monitor(self) -> None:
        current: list[Obj] = []
        for node in self.nodes.lister.list():
            try:
                current.append(await self.check_health(node))
            except (ApiError, ConnectionError) as exc:
                log.warning("node %s: %s", node["metadata"]["name"], exc)
                current.append(node)
        names = {node["metadata"]["name"] for node in current}
        for gone in set(self.health) - names:
            del self.health[gone]
            self.recorder.emit({"kind": "Node", "apiVersion": "v1",
                                "metadata": {"name": gone}}, "Normal", "RemovingNode",
                               f"Node {gone} event: Removing Node {gone} from Controller")
        no_execute = self.update_zones(current)
        for node in current:
            name = node["metadata"]["name"]
            try:
                await self.taint(node, no_execute)
                ready = condition(node, "Ready")
                if ready is None or ready.get("status") != "True":
                    await self.mark_pods_not_ready(name)
            except (ApiError, ConnectionError) as exc:
                log.warning("node %s: %s", name, exc)

    def observe(self, name: str, node: Obj) -> NodeHealth:
        ready = condition(node, "Ready") or {}
        lease = self.leases.lister.get(name, NODE_LEASE_NAMESPACE) or {}
        heartbeat = ready.get("lastHeartbeatTime")
        renew = (lease.get("spec") or {}).get("renewTime")
        now = time.monotonic()
        health = self.health.get(name)
        if health is None:
            health = self.health[name] = NodeHealth(now, heartbeat, renew)
            self.recorder.emit(node, "Normal", "RegisteredNode",
                               f"Node {name} event: Registered Node {name} in Controller")
        elif heartbeat != health.heartbeat or renew != health.renew:
            health.probe, health.heartbeat, health.renew = now, heartbeat, renew
        return health

    async def check_health(self, node: Obj) -> Obj:
        """The node, with its conditions made Unknown when it has been silent too long."""
        name = node["metadata"]["name"]
        health = self.observe(name, node)
        grace = self.grace if condition(node, "Ready") is not None else self.startup_grace
        if time.monotonic() - health.probe > grace:
            return await self.mark_unknown(name, condition(node, "Ready") is None) or node
        return node

    def update_zones(self, nodes: list[Obj]) -> bool:
        """Zone states and their taint rates; False in master disruption mode (every
        zone fully disrupted): no not-ready/unreachable NoExecute taints at all."""
        zones: dict[str, list[bool]] = {}
        for node in nodes:
            ready = (condition(node, "Ready") or {}).get("status") == "True"
            zones.setdefault(zone_of(node), []).append(ready)
        states = {zone: zone_state(ready, self.unhealthy_threshold)
                  for zone, ready in zones.items()}
        for zone, state in states.items():
            if self.zone_states.get(zone) != state:
                log.info("zone %r is now %s", zone.replace(":\x00:", "/"), state)
            if state == PARTIAL_DISRUPTION:
                rate = self.secondary_rate if len(zones[zone]) > self.large_cluster else 0.0
            else:
                rate = self.eviction_rate
            self.limiters.setdefault(zone, TaintLimiter(rate)).set_rate(rate)
        self.zone_states = states
        all_disrupted = bool(states) and all(s == FULL_DISRUPTION for s in states.values())
        if all_disrupted:
            log.warning("every zone is fully disrupted: no NoExecute taints (master "
                        "disruption mode)")
        return not all_disrupted

    async def taint(self, node: Obj, no_execute: bool) -> None:
        allow_new = True
        if no_execute and needs_new_no_execute(node):
            limiter = self.limiters.get(zone_of(node))
            allow_new = limiter is None or limiter.try_accept()
        if reconcile_taints(node, new_no_execute=allow_new, no_execute=no_execute) is None:
            return
        await self.set_taints(node["metadata"]["name"], allow_new, no_execute)

    async def mark_unknown(self, name: str, never_posted: bool) -> Obj | None:
        """Conditions Unknown on the live node; the node as written (None: unchanged)."""
        node = await self.client.get("v1 nodes", name)
        conditions = list((node.get("status") or {}).get("conditions") or [])
        now = rfc3339()
        changed = False
        for kind in MONITORED_CONDITIONS:
            found = next((c for c in conditions if c.get("type") == kind), None)
            if found is None:
                conditions.append({"type": kind, "status": "Unknown",
                                   "reason": "NodeStatusNeverUpdated",
                                   "message": "Kubelet never posted node status.",
                                   "lastHeartbeatTime": now, "lastTransitionTime": now})
                changed = True
            elif found.get("status") != "Unknown":
                index = conditions.index(found)
                conditions[index] = dict(found, status="Unknown", reason="NodeStatusUnknown",
                                         message="Kubelet stopped posting node status.",
                                         lastTransitionTime=now)
                changed = True
        if not changed:
            return None
        try:
            written = await self.client.update_status(
                "v1 nodes", dict(node, status=dict(node.get("status") or {},
                                                  conditions=conditions)))
        except ApiError as exc:
            if is_conflict(exc) or is_not_found(exc):
                return None     # the kubelet wrote meanwhile: look again next period
            raise
        log.info("node %s: %s; conditions set Unknown", name,
                 "never posted status" if never_posted else "stopped posting status")
        self.recorder.emit(written, "Normal", "NodeNotReady",
                           f"Node {name} status is now: NodeNotReady")
        # The heartbeat kept its value, so our own write is not taken for the kubelet.
        return written

    async def set_taints(self, name: str, new_no_execute: bool, no_execute: bool) -> None:
        # The live node: the cache may be behind our own status write.
        live = await self.client.get("v1 nodes", name)
        taints = reconcile_taints(live, new_no_execute=new_no_execute, no_execute=no_execute)
        if taints is None:
            return
        spec = dict(live.get("spec") or {})
        if taints:
            spec["taints"] = taints
        else:
            spec.pop("taints", None)
        try:
            await self.client.update("v1 nodes", dict(live, spec=spec))
        except ApiError as exc:
            if is_conflict(exc) or is_not_found(exc):
                return
            raise
        log.info("node %s: taints now %s", name,
                 ", ".join(f"{t['key']}:{t['effect']}" for t in taints) or "none managed")

    async def mark_pods_not_ready(self, name: str) -> None:
        for pod in self.pods.indexer.by_index(POD_NODE_INDEX, name):
            status = pod.get("status") or {}
            conditions = status.get("conditions") or []
            if not any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in conditions):
                continue
            now = rfc3339()
            fixed = [dict(c, status="False", lastTransitionTime=now)
                     if c.get("type") == "Ready" else c for c in conditions]
            try:
                await self.client.update_status("v1 pods", dict(pod, status=dict(
                    status, conditions=fixed)))
                self.recorder.emit(pod, "Warning", "NodeNotReady", "Node is not ready")
            except ApiError as exc:
                if not (is_conflict(exc) or is_not_found(exc)):
                    raise


# --- taint eviction -------------------------------------------------------------------

def tolerates(toleration: Obj, taint: Obj) -> bool:
    """Upstream's Toleration.ToleratesTaint."""
    effect = toleration.get("effect")
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key")
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    if operator == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return False


def min_toleration_seconds(taints: list[Obj], tolerations: list[Obj]) -> float | None:
    """Seconds a pod may stay on a node with these NoExecute taints: 0 when some taint
    is not tolerated, None when all are tolerated for ever."""
    shortest: float | None = None
    for taint in taints:
        matching = [t for t in tolerations if tolerates(t, taint)]
        if not matching:
            return 0.0
        for toleration in matching:
            seconds = toleration.get("tolerationSeconds")
            if seconds is None:
                continue
            seconds = max(float(seconds), 0.0)
            shortest = seconds if shortest is None else min(shortest, seconds)
    return shortest


def no_execute_taints(node: Obj | None) -> list[Obj]:
    if node is None:
        return []
    return [t for t in (node.get("spec") or {}).get("taints") or []
            if t.get("effect") == "NoExecute"]


@register("taint-eviction-controller")
class TaintEvictionController:
    def __init__(self, ctx: ControllerContext):
        self.client = ctx.client
        self.nodes = ctx.informers.informer("v1 nodes")
        self.pods = pods_by_node(ctx)
        self.recorder = ctx.recorder("taint-eviction-controller")
        self.queue = WorkQueue(name="taint_eviction")
        self.first_seen: dict[str, float] = {}   # pod key -> when first seen to go
        self.nodes.add_event_handler(on_add=self._node, on_update=self._node_update)
        self.pods.add_event_handler(on_add=self._pod, on_update=lambda old, new: self._pod(new),
                                    on_delete=self._pod_deleted)

    def _node(self, node: Obj) -> None:
        if no_execute_taints(node):
            self._queue_pods_of(node)

    def _node_update(self, old: Obj, new: Obj) -> None:
        if no_execute_taints(old) != no_execute_taints(new):
            self._queue_pods_of(new)

    def _queue_pods_of(self, node: Obj) -> None:
        name = (node.get("metadata") or {}).get("name", "")
        for pod in self.pods.indexer.by_index(POD_NODE_INDEX, name):
            self.queue.add(namespace_key(pod))

    def _pod(self, pod: Obj) -> None:
        node = pod_node_name(pod)
        if node and no_execute_taints(self.nodes.lister.get(node[0])):
            self.queue.add(namespace_key(pod))

    def _pod_deleted(self, pod: Obj | DeletedFinalStateUnknown) -> None:
        self.first_seen.pop(namespace_key(_unwrap(pod)), None)

    async def run(self, workers: int) -> None:
        await run_workers(self.queue, self.sync, max(workers, TAINT_EVICTION_WORKERS))

    async def sync(self, key: str) -> float | None:
        namespace, name = split_key(key)
        pod = self.pods.lister.get(name, namespace)
        if pod is None or (pod.get("metadata") or {}).get("deletionTimestamp"):
            self.first_seen.pop(key, None)
            return None
        node_name = pod_node_name(pod)
        taints = no_execute_taints(self.nodes.lister.get(node_name[0]) if node_name else None)
        seconds = min_toleration_seconds(taints, (pod.get("spec") or {}).get("tolerations")
                                         or []) if taints else None
        if seconds is None:
            self.first_seen.pop(key, None)
            return None
        now = time.monotonic()
        due = self.first_seen.setdefault(key, now) + seconds
        if now < due:
            return due - now    # looked at again then
        await self.evict(pod)
        self.first_seen.pop(key, None)
        return None

    async def evict(self, pod: Obj) -> None:
        meta = pod.get("metadata") or {}
        name, namespace = meta.get("name", ""), meta.get("namespace", "")
        log.info("evicting pod %s/%s: NoExecute taint", namespace, name)
        self.recorder.emit(pod, "Normal", "TaintManagerEviction",
                           f"Marking for deletion Pod {namespace}/{name}")
        try:
            await self.client.patch("v1 pods", name, {"status": {"conditions": [{
                "type": "DisruptionTarget", "status": "True",
                "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint",
                "lastTransitionTime": rfc3339()}]}}, namespace,
                patch_type="strategic", subresource="status")
            await self.client.delete("v1 pods", name, namespace,
                                     preconditions={"uid": meta.get("uid")})
        except ApiError as exc:
            if not (is_not_found(exc) or is_conflict(exc)):
                raise
