"""The kubelet's Node: registration, status and the Lease heartbeat.

    node = NodeAgent(client, runtime, options)
    await node.register()          # create the Node, or adopt the one already there
    node.start()                   # Lease renewals and status updates in the background
    node.pod_cidr                  # spec.podCIDR once the controller manager set it

As upstream's kubelet:
  * the Node is registered with capacity = allocatable read from the host (logical
    CPUs, MemTotal, the root dir's file system, pods = maxPods), InternalIP and
    Hostname addresses, the kubelet's standard labels plus --node-labels, the
    registration taints, nodeInfo and the kubelet port; an existing Node (a restart) is
    adopted and its labels brought up to date;
  * the Lease kube-node-lease/<node> is renewed every leaseDuration/4 (10 s by default)
    with one PUT of the last copy written;
  * the status is computed every nodeStatusUpdateFrequency and patched when it changed,
    and at least every nodeStatusReportFrequency; Ready follows the runtime (false with
    the runtime's NetworkReady message until the CNI config is there);
  * the podCIDR the controller manager assigns is handed to the runtime
    (UpdateRuntimeConfig), which hands it to the CNI plugins.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import os
import platform
import socket
import time
from typing import Any, Callable

from kubesmith.client.leaderelection import micro_time
from kubesmith.client.rest import (ApiClient, ApiError, is_already_exists, is_conflict,
                                   is_not_found)
from kubesmith.kubelet.config import KubeletOptions
from kubesmith.api.times import rfc3339

log = logging.getLogger(__name__)

Obj = dict[str, Any]
LEASES = "leases.coordination.k8s.io"
LEASE_NAMESPACE = "kube-node-lease"
KUBELET_VERSION = "v1.33.0"


def host_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine,
                                                                      machine or "amd64")


# --- what the host has ----------------------------------------------------------------

def memory_capacity(meminfo: str = "/proc/meminfo") -> int:
    """MemTotal in bytes (0 when unreadable)."""
    try:
        with open(meminfo, encoding="utf-8") as source:
            for line in source:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_capacity() -> int:
    return os.cpu_count() or 1


def storage_capacity(path: str) -> int:
    """Size in bytes of the file system holding `path` (its nearest existing folder)."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path.rstrip("/")) or "/"
    try:
        stat = os.statvfs(path or "/")
    except OSError:
        return 0
    return stat.f_blocks * stat.f_frsize


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as source:
            return source.read().strip()
    except OSError:
        return ""


def os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return "Linux"


def node_capacity(max_pods: int, root_dir: str) -> Obj:
    return {"cpu": str(cpu_capacity()), "memory": f"{memory_capacity() // 1024}Ki",
            "ephemeral-storage": f"{storage_capacity(root_dir) // 1024}Ki",
            "hugepages-1Gi": "0", "hugepages-2Mi": "0", "pods": str(max_pods)}


def default_node_ip(hostname: str) -> str:
    """The node's address when --node-ip is not given: the host name's first address
    that is not a loopback one (upstream looks the node name up the same way)."""
    try:
        infos = socket.getaddrinfo(hostname, None, socket.AF_INET)
    except OSError:
        infos = []
    for info in infos:
        address = info[4][0]
        if not address.startswith("127."):
            return address
    return ""


def node_info(runtime_version: str) -> Obj:
    return {"machineID": _read("/etc/machine-id"),
            "systemUUID": _read("/sys/class/dmi/id/product_uuid"),
            "bootID": _read("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": platform.release(), "osImage": os_image(),
            "containerRuntimeVersion": runtime_version,
            "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": host_arch()}


def node_labels(name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    arch = host_arch()
    labels = {"beta.kubernetes.io/arch": arch, "beta.kubernetes.io/os": "linux",
              "kubernetes.io/arch": arch, "kubernetes.io/hostname": name,
              "kubernetes.io/os": "linux"}
    labels.update(extra or {})
    return labels


# --- conditions -----------------------------------------------------------------------

# (type, reason, message) of the pressure conditions, all False here: eviction is not
# done by this kubelet, so it reports none.
_PRESSURE = (
    ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
)


def runtime_problems(status: Any) -> list[str]:
    """Upstream's Ready messages from a CRI StatusResponse (or its .status)."""
    conditions = getattr(getattr(status, "status", status), "conditions", [])
    found = {c.type: c for c in conditions}
    problems = []
    runtime_ready = found.get("RuntimeReady")
    if runtime_ready is None or not runtime_ready.status:
        reason = getattr(runtime_ready, "reason", "") if runtime_ready else ""
        message = getattr(runtime_ready, "message", "") if runtime_ready else ""
        problems.append(f"container runtime status check may not have completed yet: "
                        f"RuntimeReady=false reason:{reason} message:{message}")
    network = found.get("NetworkReady")
    if network is None or not network.status:
        reason = getattr(network, "reason", "") if network else ""
        message = getattr(network, "message", "") if network else ""
        problems.append(f"container runtime network not ready: NetworkReady=false "
                        f"reason:{reason} message:{message}")
    return problems


def node_conditions(now: str, previous: list[Obj], problems: list[str]) -> list[Obj]:
    before = {c.get("type"): c for c in previous or []}
    out = []
    wanted = [(kind, "False", reason, message) for kind, reason, message in _PRESSURE]
    if problems:
        wanted.append(("Ready", "False", "KubeletNotReady", ", ".join(problems)))
    else:
        wanted.append(("Ready", "True", "KubeletReady", "kubelet is posting ready status"))
    for kind, status, reason, message in wanted:
        old = before.get(kind) or {}
        transition = old.get("lastTransitionTime") if old.get("status") == status else None
        out.append({"type": kind, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": now, "lastTransitionTime": transition or now})
    return out


# The event upstream's kubelet records when a condition takes a status.
_CONDITION_EVENTS = {("MemoryPressure", "False"): "NodeHasSufficientMemory",
                     ("MemoryPressure", "True"): "NodeHasInsufficientMemory",
                     ("DiskPressure", "False"): "NodeHasNoDiskPressure",
                     ("DiskPressure", "True"): "NodeHasDiskPressure",
                     ("PIDPressure", "False"): "NodeHasSufficientPID",
                     ("PIDPressure", "True"): "NodeHasInsufficientPID",
                     ("Ready", "True"): "NodeReady", ("Ready", "False"): "NodeNotReady"}
MAX_NODE_IMAGES = 50     # upstream's nodeStatusMaxImages


def condition_events(previous: list[Obj], conditions: list[Obj]) -> list[str]:
    """The events (reasons) of the conditions whose status is new."""
    before = {c.get("type"): c.get("status") for c in previous or []}
    return [_CONDITION_EVENTS[(c["type"], c["status"])] for c in conditions
            if before.get(c["type"]) != c["status"]
            and (c["type"], c["status"]) in _CONDITION_EVENTS]


def node_images(images: list[Any]) -> list[Obj]:
    """status.images from the runtime's images: largest first, at most 50, each with
    its tags and digests as names."""
    out = []
    for image in sorted(images, key=lambda i: i.size, reverse=True)[:MAX_NODE_IMAGES]:
        names = list(image.repo_digests) + list(image.repo_tags)
        if names:
            out.append({"names": names, "sizeBytes": int(image.size)})
    return out


def _without_heartbeats(status: Obj) -> Obj:
    out = copy.deepcopy(status)
    for condition in out.get("conditions") or []:
        condition.pop("lastHeartbeatTime", None)
    return out


class NodeAgent:
    """Registers this kubelet's Node and keeps its Lease and status (module docstring)."""

    def __init__(self, client: ApiClient, runtime: Any, options: KubeletOptions, *,
                 on_pod_cidr: Callable[[str], Any] | None = None,
                 ready_checks: list[Callable[[], str | None]] | None = None,
                 recorder: Any = None):
        self.client = client
        self.runtime = runtime
        self.options = options
        self.config = options.config
        self.name = options.node_name
        self.address = options.node_ip or default_node_ip(self.name)
        self.uid = ""
        self.pod_cidr = ""
        self.node: Obj | None = None
        self.lease: Obj | None = None
        self.runtime_version = ""
        self.on_pod_cidr = on_pod_cidr
        self.ready_checks = ready_checks or []
        self.recorder = recorder        # an EventRecorder for the Node's events, or None
        self._last_report = 0.0
        self._last_status: Obj | None = None
        self._tasks: list[asyncio.Task] = []
        self.counts = {"lease_renewals": 0, "status_posts": 0}

    # --- what the status says ---------------------------------------------------------

    async def _runtime_version(self) -> str:
        if not self.runtime_version:
            try:
                version = await self.runtime.version()
                self.runtime_version = f"{version.runtime_name}://{version.runtime_version}"
            except Exception as exc:    # reported in Ready; retried next time
                log.warning("runtime version: %s", exc)
                return "containerd://unknown"
        return self.runtime_version

    async def _problems(self) -> list[str]:
        try:
            status = await self.runtime.status()
            problems = runtime_problems(status)
        except Exception as exc:
            problems = [f"container runtime is down: {exc}"]
        for check in self.ready_checks:
            problem = check()
            if problem:
                problems.append(problem)
        return problems

    def addresses(self) -> list[Obj]:
        addresses = []
        if self.address:
            addresses.append({"type": "InternalIP", "address": self.address})
        addresses.append({"type": "Hostname", "address": self.name})
        return addresses

    async def _images(self) -> list[Obj]:
        try:
            return node_images(await self.runtime.list_images())
        except Exception as exc:    # the images are a hint for the scheduler only
            log.debug("listing images: %s", exc)
            return []

    async def status(self, previous: list[Obj] | None = None) -> Obj:
        capacity = node_capacity(self.config.max_pods, self.options.root_dir)
        return {"capacity": capacity, "allocatable": dict(capacity),
                "conditions": node_conditions(rfc3339(), previous or [],
                                              await self._problems()),
                "addresses": self.addresses(),
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.config.port}},
                "nodeInfo": node_info(await self._runtime_version()),
                "images": await self._images()}

    def _event(self, event_type: str, reason: str, message: str) -> None:
        if self.recorder is not None:
            # Upstream refers to its Node by name, with the name as the uid.
            ref = {"kind": "Node", "apiVersion": "v1",
                   "metadata": {"name": self.name, "uid": self.name}}
            self.recorder.emit(ref, event_type, reason, message)

    def _condition_events(self, previous: list[Obj], conditions: list[Obj]) -> None:
        for reason in condition_events(previous, conditions):
            self._event("Normal", reason, f"Node {self.name} status is now: {reason}")

    # --- registration -----------------------------------------------------------------

    async def register(self) -> Obj:
        self._event("Normal", "Starting", "Starting kubelet.")
        status = await self.status()
        labels = node_labels(self.name, self.config.node_labels)
        manifest = {"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": self.name, "labels": labels,
                                 "annotations": {
                                     "volumes.kubernetes.io/controller-managed-attach-detach":
                                         "true"}},
                    "spec": {}, "status": status}
        if self.config.register_with_taints:
            manifest["spec"]["taints"] = copy.deepcopy(self.config.register_with_taints)
        if self.config.provider_id:
            manifest["spec"]["providerID"] = self.config.provider_id
        previous: list[Obj] = []        # the conditions of a Node registered before
        try:
            node = await self.client.create("v1 nodes", manifest)
            log.info("registered node %s", self.name)
        except ApiError as exc:
            if not is_already_exists(exc):
                raise
            # Registered before (a restart): adopt it, labels brought up to date.
            node = await self.client.patch("v1 nodes", self.name,
                                           {"metadata": {"labels": labels}})
            previous = (node.get("status") or {}).get("conditions") or []
            status["conditions"] = node_conditions(rfc3339(), previous,
                                                   await self._problems())
            node = await self.client.patch("v1 nodes", self.name, {"status": status},
                                           patch_type="strategic", subresource="status")
            log.info("node %s was registered already: adopted", self.name)
        self._condition_events(previous, status["conditions"])
        self._last_status = status
        self._last_report = time.monotonic()
        self._observe(node)
        return node

    def _observe(self, node: Obj) -> None:
        self.node = node
        self.uid = (node.get("metadata") or {}).get("uid", self.uid)
        cidr = (node.get("spec") or {}).get("podCIDR") or ""
        if cidr and cidr != self.pod_cidr:
            self.pod_cidr = cidr
            if self.on_pod_cidr is not None:
                result = self.on_pod_cidr(cidr)
                if asyncio.iscoroutine(result):
                    asyncio.ensure_future(result)

    # --- background -------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._lease_loop(), name="kubelet-lease"),
                       asyncio.create_task(self._status_loop(), name="kubelet-node-status")]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _lease_loop(self) -> None:
        period = max(1.0, self.config.node_lease_duration_seconds / 4)
        while True:
            try:
                await self.renew_lease()
            except (ApiError, ConnectionError) as exc:
                log.warning("lease renewal failed: %s", exc)
            except Exception:
                log.exception("lease renewal failed")
            await asyncio.sleep(period)

    async def renew_lease(self) -> None:
        """One PUT of the last copy written; read or create it when that copy is
        missing or stale (as upstream's lease controller)."""
        duration = self.config.node_lease_duration_seconds
        owner = [{"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}]
        for _ in range(3):
            if self.lease is None:
                try:
                    self.lease = await self.client.get(LEASES, self.name, LEASE_NAMESPACE)
                except ApiError as exc:
                    if not is_not_found(exc):
                        raise
                    manifest = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                "metadata": {"name": self.name, "namespace": LEASE_NAMESPACE,
                                             "ownerReferences": owner if self.uid else []},
                                "spec": {"holderIdentity": self.name,
                                         "leaseDurationSeconds": duration,
                                         "renewTime": micro_time()}}
                    try:
                        self.lease = await self.client.create(LEASES, manifest,
                                                              LEASE_NAMESPACE)
                        self.counts["lease_renewals"] += 1
                        return
                    except ApiError as exc2:
                        if not is_already_exists(exc2):
                            raise
                        continue
            lease = copy.deepcopy(self.lease)
            lease["spec"] = dict(lease.get("spec") or {}, holderIdentity=self.name,
                                 leaseDurationSeconds=duration, renewTime=micro_time())
            if self.uid and not (lease.get("metadata") or {}).get("ownerReferences"):
                lease["metadata"]["ownerReferences"] = owner
            try:
                self.lease = await self.client.update(LEASES, lease, LEASE_NAMESPACE)
                self.counts["lease_renewals"] += 1
                return
            except ApiError as exc:
                if not (is_conflict(exc) or is_not_found(exc)):
                    raise
                self.lease = None
        raise ApiError({"reason": "Conflict", "code": 409,
                        "message": f"lease {self.name} kept changing"})

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.node_status_update_frequency)
            try:
                await self.update_status()
            except (ApiError, ConnectionError) as exc:
                log.warning("node status update failed: %s", exc)
            except Exception:
                log.exception("node status update failed")

    async def update_status(self, force: bool = False) -> bool:
        """Patch the status when it changed, or when the report interval passed;
        returns whether it was written."""
        try:
            current = await self.client.get("v1 nodes", self.name)
        except ApiError as exc:
            if is_not_found(exc):
                # Deleted under us: register again, as upstream's kubelet does.
                await self.register()
                return True
            raise
        self._observe(current)
        previous = (current.get("status") or {}).get("conditions") or []
        status = await self.status(previous)
        due = time.monotonic() - self._last_report >= self.config.node_status_report_frequency
        # Changed: from what this kubelet wrote last, or in the API server (the node
        # lifecycle controller marks a silent node's conditions Unknown).
        seen = {c.get("type"): c.get("status") for c in previous}
        changed = (self._last_status is None
                   or _without_heartbeats(status) != _without_heartbeats(self._last_status)
                   or any(seen.get(c["type"]) != c["status"] for c in status["conditions"]))
        if not force and not due and not changed:
            return False
        node = await self.client.patch("v1 nodes", self.name, {"status": status},
                                       patch_type="strategic", subresource="status")
        self._condition_events((self._last_status or {}).get("conditions") or previous,
                               status["conditions"])
        self._observe(node)
        self._last_status = status
        self._last_report = time.monotonic()
        self.counts["status_posts"] += 1
        return True
