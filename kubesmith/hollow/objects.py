"""What a hollow node writes: its Node, its Lease and its pods' status, shaped as a
kubelet writes them (pure functions of their inputs, no I/O).

    spec = NodeSpec(name="hollow-node-0", slot=address_slot("hollow-node-", 0), cpu="4")
    node = node_manifest(spec, labels={...})
    lease = lease_manifest(spec.name, node_uid, renew_time, 40)
    status = running_pod_status(pod, pod_ip, host_ip, started)
"""
from __future__ import annotations

import hashlib
import ipaddress
import platform
import re
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from kubesmith.scheduler.resources import Resources

Obj = dict[str, Any]

HOLLOW_LABEL = "type"               # kwok/kubemark mark their nodes with type=<kind>
HOLLOW_VALUE = "hollow"
# A pod with one of these annotations (restartPolicy Never or OnFailure) ends after the
# given time since it started: its containers "run to completion" (exit 0) or fail (exit 1).
SUCCEED_AFTER = "hollow.kubesmith.io/succeed-after"
FAIL_AFTER = "hollow.kubesmith.io/fail-after"

# Each node has an address slot: its address is the slot-th host of this range, and its
# pods get the slot-th /24 of the fallback range until node-ipam sets spec.podCIDR.
NODE_ADDRESS_RANGE = ipaddress.ip_network("172.20.0.0/14")
FALLBACK_POD_RANGE = ipaddress.ip_network("100.64.0.0/10")
FALLBACK_POD_PREFIX = 24
ADDRESS_SLOTS = 2 ** (FALLBACK_POD_PREFIX - FALLBACK_POD_RANGE.prefixlen)    # 16384
KUBELET_PORT = 10250
KUBE_VERSION = "v1.33.0"
RUNTIME_VERSION = "containerd://1.6.20"
KERNEL_VERSION = platform.release() or "6.1.0"


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine or "amd64")


ARCH = _arch()


def rfc3339(moment: datetime | None = None) -> str:
    """metav1.Time text (second precision, as the API server stores it)."""
    return (moment or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                 "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration ("10s", "1m30s", "500ms"); a bare number is seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if value < 0:
            raise ValueError(f"negative duration {text!r}")
        return value
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r} (e.g. 10s, 1m30s, 500ms)")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text:
        raise ValueError("empty duration")
    return total


def parse_labels(text: str) -> dict[str, str]:
    """"k=v,k2=v2" as kubelet's --node-labels takes them."""
    labels = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"invalid label {part!r}: want key=value")
        labels[key.strip()] = value.strip()
    return labels


def address_slot(prefix: str, index: int) -> int:
    """The address slot of node <prefix><index>: consecutive within a prefix, and from
    an offset of the prefix's own, so processes with other prefixes (and the same
    indexes) are unlikely to share addresses."""
    offset = 0 if prefix == "hollow-node-" else zlib.crc32(prefix.encode()) % ADDRESS_SLOTS
    return (offset + index) % ADDRESS_SLOTS


_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def parse_taints(text: str) -> list[Obj]:
    """kubelet's --register-with-taints: "key=value:Effect,key:Effect"."""
    taints = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        head, sep, effect = part.rpartition(":")
        key, _, value = head.partition("=")
        if not sep or not key or effect not in _EFFECTS:
            raise ValueError(f"invalid taint {part!r}: want key[=value]:"
                             f"{'|'.join(_EFFECTS)}")
        taint = {"key": key, "effect": effect}
        if value:
            taint["value"] = value
        taints.append(taint)
    return taints


def _digest(*parts: str, size: int = 64) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:size]


def _uuid_text(*parts: str) -> str:
    h = _digest(*parts, size=32)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# --- nodes ----------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeSpec:
    """One simulated node: its name, its address slot (see address_slot) and its size."""
    name: str
    slot: int
    cpu: str = "4"
    memory: str = "16Gi"
    pods: str = "110"
    ephemeral_storage: str = "100Gi"

    @property
    def address(self) -> str:
        return str(NODE_ADDRESS_RANGE.network_address + 1 + self.slot)

    @property
    def fallback_pod_cidr(self) -> str:
        size = 2 ** (32 - FALLBACK_POD_PREFIX)
        base = int(FALLBACK_POD_RANGE.network_address) + (self.slot % ADDRESS_SLOTS) * size
        return f"{ipaddress.ip_address(base)}/{FALLBACK_POD_PREFIX}"

    def resources(self) -> Obj:
        return {"cpu": self.cpu, "memory": self.memory, "pods": self.pods,
                "ephemeral-storage": self.ephemeral_storage,
                "hugepages-1Gi": "0", "hugepages-2Mi": "0"}


def node_labels(name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The labels a kubelet puts on its Node, then type=hollow and --labels."""
    labels = {"beta.kubernetes.io/arch": ARCH, "beta.kubernetes.io/os": "linux",
              "kubernetes.io/arch": ARCH, "kubernetes.io/hostname": name,
              "kubernetes.io/os": "linux", HOLLOW_LABEL: HOLLOW_VALUE}
    labels.update(extra or {})
    return labels


# (type, status when healthy, reason, message), in the kubelet's order.
_CONDITIONS = (
    ("MemoryPressure", "False", "KubeletHasSufficientMemory",
     "kubelet has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
)
# Set by the network plugin or route controller, not the kubelet; reported here so the
# node looks like one whose pod network is up.
_NETWORK_CONDITION = ("NetworkUnavailable", "False", "RouteCreated",
                      "RouteController created a route")


def node_conditions(now: str, previous: Iterable[Obj] = (),
                    network: bool = True) -> list[Obj]:
    """Healthy conditions with lastHeartbeatTime `now`; lastTransitionTime is kept from
    `previous` (the node's current conditions) where the status did not change."""
    before = {c.get("type"): c for c in previous or ()}
    wanted = ([_NETWORK_CONDITION] if network else []) + list(_CONDITIONS)
    out = []
    for kind, status, reason, message in wanted:
        old = before.get(kind) or {}
        transition = old.get("lastTransitionTime") if old.get("status") == status else None
        condition = {"type": kind, "status": status, "reason": reason, "message": message,
                     "lastHeartbeatTime": now, "lastTransitionTime": transition or now}
        if kind == "NetworkUnavailable":
            # The route controller's condition carries no heartbeat of its own.
            condition["lastHeartbeatTime"] = old.get("lastHeartbeatTime") or now
        out.append(condition)
    return out


def node_status(spec: NodeSpec, now: str) -> Obj:
    resources = spec.resources()
    return {
        "capacity": dict(resources),
        "allocatable": dict(resources),
        "conditions": node_conditions(now),
        "addresses": [{"type": "InternalIP", "address": spec.address},
                      {"type": "Hostname", "address": spec.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
        "nodeInfo": {
            "machineID": _digest("machine", spec.name, size=32),
            "systemUUID": _uuid_text("system", spec.name),
            "bootID": _uuid_text("boot", spec.name, now),
            "kernelVersion": KERNEL_VERSION,
            "osImage": "Debian GNU/Linux 12 (bookworm)",
            "containerRuntimeVersion": RUNTIME_VERSION,
            "kubeletVersion": KUBE_VERSION,
            "kubeProxyVersion": KUBE_VERSION,
            "operatingSystem": "linux",
            "architecture": ARCH,
        },
    }


def node_manifest(spec: NodeSpec, labels: dict[str, str] | None = None,
                  now: str | None = None, taints: list[Obj] | None = None) -> Obj:
    """The Node a kubelet registers (status included, as the kubelet posts it)."""
    node = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": spec.name,
            "labels": node_labels(spec.name, labels),
            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                            "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {},
        "status": node_status(spec, now or rfc3339()),
    }
    if taints:
        node["spec"]["taints"] = [dict(t) for t in taints]
    return node


def lease_manifest(node_name: str, node_uid: str, renew_time: str,
                   duration_seconds: int) -> Obj:
    """The node's heartbeat Lease in kube-node-lease, owned by its Node (kubelet's)."""
    return {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {
            "name": node_name, "namespace": "kube-node-lease",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node_name,
                                 "uid": node_uid}],
        },
        "spec": {"holderIdentity": node_name, "leaseDurationSeconds": duration_seconds,
                 "renewTime": renew_time},
    }


# --- pods -----------------------------------------------------------------------------

class PodIPs:
    """Addresses of one node's pod range: the lowest free one first; .0 and the gateway
    (.1) are never handed out."""

    def __init__(self, cidr: str):
        self.network = ipaddress.ip_network(cidr, strict=False)
        self._first = int(self.network.network_address) + 2
        self._last = int(self.network.broadcast_address) - 1
        self._next = self._first
        self._used: set[int] = set()

    def take(self) -> str:
        size = self._last - self._first + 1
        for step in range(size):
            candidate = self._first + (self._next - self._first + step) % size
            if candidate not in self._used:
                self._used.add(candidate)
                self._next = candidate + 1 if candidate < self._last else self._first
                return str(ipaddress.ip_address(candidate))
        raise RuntimeError(f"pod range {self.network} is full")

    def hold(self, address: str) -> None:
        """Mark an address in use (a pod that already had it before a restart)."""
        try:
            value = int(ipaddress.ip_address(address))
        except ValueError:
            return
        if self._first <= value <= self._last:
            self._used.add(value)

    def release(self, address: str) -> None:
        try:
            self._used.discard(int(ipaddress.ip_address(address)))
        except ValueError:
            pass

    def __contains__(self, address: str) -> bool:
        try:
            return ipaddress.ip_address(address) in self.network
        except ValueError:
            return False


def admission_failure(requested: Resources, used: Resources, pods_used: int,
                      allocatable: Resources, pods_allowed: int) -> tuple[str, str] | None:
    """(reason, message) when the kubelet would reject a pod that asks `requested` of a
    node whose admitted pods use `used` (as upstream's NodeResourcesFit, which the
    kubelet's admission runs): the first resource short, in upstream's order."""
    checks = [("pods", 1, pods_used, pods_allowed),
              ("cpu", requested.milli_cpu, used.milli_cpu, allocatable.milli_cpu),
              ("memory", requested.memory, used.memory, allocatable.memory),
              ("ephemeral-storage", requested.ephemeral, used.ephemeral,
               allocatable.ephemeral)]
    checks += [(name, amount, used.scalars.get(name, 0), allocatable.scalars.get(name, 0))
               for name, amount in sorted(requested.scalars.items())]
    for name, amount, in_use, capacity in checks:
        if amount and in_use + amount > capacity:
            return (f"OutOf{name}", f"Pod was rejected: Node didn't have enough resource: "
                                    f"{name}, requested: {amount}, used: {in_use}, "
                                    f"capacity: {capacity}")
    return None


def rejected_pod_status(reason: str, message: str) -> Obj:
    """The status of a pod the kubelet's admission refused."""
    return {"phase": "Failed", "reason": reason, "message": message}


def completion_after(pod: Obj) -> tuple[float, bool] | None:
    """(seconds after start, succeeded) when the pod's containers run to an end, else
    None. A restartPolicy Always pod would be restarted: it never ends; OnFailure would
    restart a failing one, so only Never pods fail."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    policy = (pod.get("spec") or {}).get("restartPolicy") or "Always"
    if policy == "Always":
        return None
    for key, succeeded in ((SUCCEED_AFTER, True), (FAIL_AFTER, False)):
        if key in annotations:
            if not succeeded and policy != "Never":
                continue
            try:
                return parse_duration(str(annotations[key])), succeeded
            except ValueError:
                return None
    return None


def _container_id(uid: str, name: str) -> str:
    return "containerd://" + _digest("container", uid, name)


def _image_id(image: str) -> str:
    return f"{image.split('@')[0].rsplit(':', 1)[0]}@sha256:{_digest('image', image)}"


def _container_status(pod_uid: str, container: Obj, state: Obj, *, ready: bool,
                      started: bool) -> Obj:
    image = container.get("image") or ""
    return {"name": container.get("name", ""), "image": image, "imageID": _image_id(image),
            "containerID": _container_id(pod_uid, container.get("name", "")),
            "ready": ready, "started": started, "restartCount": 0, "state": state,
            "lastState": {}}


def _condition(kind: str, status: str, now: str, previous: dict[str, Obj],
               reason: str | None = None) -> Obj:
    old = previous.get(kind) or {}
    transition = old.get("lastTransitionTime") if old.get("status") == status else None
    condition = {"type": kind, "status": status, "lastProbeTime": None,
                 "lastTransitionTime": transition or now}
    if reason:
        condition["reason"] = reason
    return condition


def _readiness_gates_pass(pod: Obj, previous: dict[str, Obj]) -> bool:
    gates = (pod.get("spec") or {}).get("readinessGates") or []
    return all((previous.get(g.get("conditionType")) or {}).get("status") == "True"
               for g in gates)


def _init_statuses(pod: Obj, uid: str, started: str) -> list[Obj]:
    statuses = []
    for container in (pod.get("spec") or {}).get("initContainers") or []:
        if container.get("restartPolicy") == "Always":   # a sidecar keeps running
            state = {"running": {"startedAt": started}}
            statuses.append(_container_status(uid, container, state, ready=True,
                                              started=True))
            continue
        state = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started,
                                "finishedAt": started,
                                "containerID": _container_id(uid, container.get("name", ""))}}
        statuses.append(_container_status(uid, container, state, ready=True, started=False))
    return statuses


def running_pod_status(pod: Obj, pod_ip: str, host_ip: str, started: str,
                       now: str | None = None) -> Obj:
    """The status a kubelet posts once every container of `pod` runs and is ready."""
    now = now or started
    uid = (pod.get("metadata") or {}).get("uid", "")
    spec = pod.get("spec") or {}
    previous = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
    ready = "True" if _readiness_gates_pass(pod, previous) else "False"
    containers = sorted(spec.get("containers") or [], key=lambda c: c.get("name", ""))
    status: Obj = {
        "phase": "Running",
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
        "startTime": started,
        "conditions": [
            _condition("PodReadyToStartContainers", "True", now, previous),
            _condition("Initialized", "True", now, previous),
            _condition("Ready", ready, now, previous,
                       None if ready == "True" else "ReadinessGatesNotReady"),
            _condition("ContainersReady", "True", now, previous),
            _condition("PodScheduled", "True", now, previous),
        ],
        "containerStatuses": [
            _container_status(uid, c, {"running": {"startedAt": started}}, ready=True,
                              started=True) for c in containers],
    }
    init = _init_statuses(pod, uid, started)
    if init:
        status["initContainerStatuses"] = init
    return status


def terminated_pod_status(pod: Obj, succeeded: bool, started: str, now: str,
                          exit_code: int | None = None) -> Obj:
    """The status once every container has exited: phase Succeeded (all exited 0) or
    Failed, each container terminated (Completed, or Error with `exit_code`)."""
    uid = (pod.get("metadata") or {}).get("uid", "")
    spec = pod.get("spec") or {}
    current = pod.get("status") or {}
    previous = {c.get("type"): c for c in current.get("conditions") or []}
    code = 0 if succeeded else (exit_code if exit_code is not None else 1)
    reason = "Completed" if code == 0 else "Error"
    containers = sorted(spec.get("containers") or [], key=lambda c: c.get("name", ""))
    status: Obj = {
        "phase": "Succeeded" if code == 0 else "Failed",
        "startTime": current.get("startTime") or started,
        "conditions": [
            _condition("PodReadyToStartContainers", "False", now, previous),
            _condition("Initialized", "True", now, previous, "PodCompleted"),
            _condition("Ready", "False", now, previous, "PodCompleted"),
            _condition("ContainersReady", "False", now, previous, "PodCompleted"),
            _condition("PodScheduled", "True", now, previous),
        ],
        "containerStatuses": [
            _container_status(uid, c, {"terminated": {
                "exitCode": code, "reason": reason, "startedAt": started,
                "finishedAt": now, "containerID": _container_id(uid, c.get("name", ""))}},
                ready=False, started=False) for c in containers],
    }
    for key in ("hostIP", "hostIPs", "podIP", "podIPs"):
        if key in current:
            status[key] = current[key]
    init = _init_statuses(pod, uid, started)
    if init:
        status["initContainerStatuses"] = init
    return status
