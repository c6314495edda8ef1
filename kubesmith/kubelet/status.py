"""Pod status: computed from what the runtime reports, written to the API server.

    records = [ContainerRecord.from_cri(status) for status in cri_statuses]
    status = pod_status(pod, PodRuntime(sandbox_ready=True, pod_ips=["10.244.1.5"],
                                        containers=records),
                        host_ip="192.168.1.10", waiting={}, ready=lambda name: True)
    manager.set(pod, status)        # StatusManager: one merge patch, only when changed

The rules are upstream's kubelet's: container statuses (state, lastState, restartCount,
ready/started, image/imageID, containerID "containerd://<id>") from each container
name's newest and previous runtime container; the phase from init and app containers
and the restart policy (getPhase); the conditions PodReadyToStartContainers,
Initialized, ContainersReady and Ready (with readiness gates), keeping each condition's
lastTransitionTime while its status stays; PodScheduled and conditions owned by others
are kept as the API server has them.
"""
from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from kubesmith.api.times import rfc3339
from kubesmith.client.rest import ApiClient, ApiError, is_conflict, is_not_found
from kubesmith.client.workqueue import WorkQueue, run_workers

log = logging.getLogger(__name__)

Obj = dict[str, Any]
CONTAINER_ID_PREFIX = "containerd://"
TERMINAL_PHASES = ("Succeeded", "Failed")
# Conditions the kubelet owns; the others (PodScheduled, DisruptionTarget, gates) are
# kept as the API server has them.
KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
# A waiting reason the pod worker gives for a container it could not start.
CREATING = "ContainerCreating"
INITIALIZING = "PodInitializing"


@dataclass
class ContainerRecord:
    """One runtime container of a pod, as the status needs it (times in seconds)."""
    id: str
    name: str
    state: str                  # created | running | exited | unknown
    restart_count: int = 0
    created_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    exit_code: int = 0
    reason: str = ""            # from the runtime: OOMKilled, Error, Completed
    message: str = ""           # termination message, filled in by the pod worker
    image: str = ""
    image_id: str = ""
    init: bool = False
    spec_hash: str = ""         # the container spec's digest when it was created

    @classmethod
    def from_cri(cls, status: Any, *, init: bool = False) -> "ContainerRecord":
        """From an api.ContainerStatus (labels/annotations as the kubelet set them)."""
        from kubesmith.kubelet import runtime      # the CRI messages only when used
        states = {0: "created", 1: "running", 2: "exited"}
        annotations = dict(status.annotations)
        labels = dict(status.labels)
        try:
            restarts = int(annotations.get(runtime.RESTART_COUNT_ANNOTATION, "0"))
        except ValueError:
            restarts = 0
        return cls(id=status.id, name=labels.get(runtime.CONTAINER_NAME_LABEL,
                                                 status.metadata.name),
                   state=states.get(status.state, "unknown"), restart_count=restarts,
                   created_at=status.created_at / 1e9, started_at=status.started_at / 1e9,
                   finished_at=status.finished_at / 1e9, exit_code=status.exit_code,
                   reason=status.reason, message=status.message,
                   image=status.image.user_specified_image or status.image.image,
                   image_id=status.image_ref,
                   init=init or labels.get(runtime.CONTAINER_TYPE_LABEL) == "init",
                   spec_hash=annotations.get(runtime.HASH_ANNOTATION, ""))


@dataclass
class PodRuntime:
    """What the runtime has of one pod."""
    sandbox_ready: bool = False
    pod_ips: list[str] = field(default_factory=list)
    containers: list[ContainerRecord] = field(default_factory=list)

    def history(self, name: str) -> list[ContainerRecord]:
        """The containers of one container name, newest first."""
        return sorted((c for c in self.containers if c.name == name),
                      key=lambda c: (c.created_at, c.restart_count), reverse=True)

    def latest(self, name: str) -> ContainerRecord | None:
        found = self.history(name)
        return found[0] if found else None


def _terminated(record: ContainerRecord) -> Obj:
    reason = record.reason or ("Completed" if record.exit_code == 0 else "Error")
    state = {"exitCode": record.exit_code, "reason": reason,
             "startedAt": rfc3339(record.started_at) if record.started_at else None,
             "finishedAt": rfc3339(record.finished_at) if record.finished_at else None,
             "containerID": CONTAINER_ID_PREFIX + record.id}
    if record.message:
        state["message"] = record.message
    return state


def container_status(container: Obj, runtime: PodRuntime, *, waiting: tuple[str, str] | None,
                     default_reason: str, ready: bool, started: bool | None) -> Obj:
    """One entry of containerStatuses / initContainerStatuses."""
    name = container.get("name", "")
    history = runtime.history(name)
    latest = history[0] if history else None
    status: Obj = {"name": name, "image": container.get("image", ""), "imageID": "",
                   "ready": False, "restartCount": 0, "started": False,
                   "lastState": {}, "state": {}}
    if latest is not None:
        status.update(image=latest.image or status["image"], imageID=latest.image_id,
                      containerID=CONTAINER_ID_PREFIX + latest.id,
                      restartCount=latest.restart_count)
    previous = next((c for c in history[1:] if c.state == "exited"), None)
    if latest is not None and latest.state == "running":
        status["state"] = {"running": {"startedAt": rfc3339(latest.started_at or None)}}
        status["ready"] = ready
        status["started"] = True if started is None else started
        if previous is not None:
            status["lastState"] = {"terminated": _terminated(previous)}
    elif latest is not None and latest.state == "exited":
        if waiting is not None:
            # Waiting to be restarted (back-off): the exit is the last state.
            status["state"] = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
            status["lastState"] = {"terminated": _terminated(latest)}
        else:
            status["state"] = {"terminated": _terminated(latest)}
            if previous is not None:
                status["lastState"] = {"terminated": _terminated(previous)}
    else:
        reason, message = waiting or (default_reason, "")
        state = {"reason": reason}
        if message:
            state["message"] = message
        status["state"] = {"waiting": state}
        if previous is not None:
            status["lastState"] = {"terminated": _terminated(previous)}
    for key in ("terminated",):
        for where in ("state", "lastState"):
            found = status[where].get(key)
            if found is not None:
                status[where][key] = {k: v for k, v in found.items() if v is not None}
    return status


def is_sidecar(container: Obj) -> bool:
    """An init container with restartPolicy Always (a sidecar: it keeps running)."""
    return container.get("restartPolicy") == "Always"


def init_done(pod: Obj, runtime: PodRuntime) -> tuple[bool, list[str]]:
    """(every init container exited 0 -- a sidecar: is running, or the app containers
    have started already --, the names of those that have not)."""
    spec = pod.get("spec") or {}
    app_started = any(runtime.latest(c.get("name", "")) is not None
                      for c in spec.get("containers") or [])
    pending = []
    for container in spec.get("initContainers") or []:
        latest = runtime.latest(container.get("name", ""))
        if is_sidecar(container):
            if app_started or (latest is not None and latest.state == "running"):
                continue
        elif latest is not None and latest.state == "exited" and latest.exit_code == 0:
            continue
        pending.append(container.get("name", ""))
    return not pending, pending


def pod_phase(pod: Obj, statuses: list[Obj], init_statuses: list[Obj],
              initialized: bool) -> str:
    """Upstream's getPhase."""
    spec = pod.get("spec") or {}
    policy = spec.get("restartPolicy") or "Always"
    if not initialized:
        sidecars = {c.get("name") for c in spec.get("initContainers") or [] if is_sidecar(c)}
        for status in init_statuses:
            if status["name"] in sidecars:
                continue
            terminated = status["state"].get("terminated") or (
                status["lastState"].get("terminated") if "waiting" in status["state"] else None)
            if terminated and terminated.get("exitCode") != 0 and policy == "Never":
                return "Failed"
        return "Pending"
    running = waiting = stopped = succeeded = 0
    for status in statuses:
        state = status["state"]
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            if state["terminated"].get("exitCode") == 0:
                succeeded += 1
        elif "waiting" in state:
            if status["lastState"].get("terminated"):
                stopped += 1
            else:
                waiting += 1
    if waiting > 0:
        return "Pending"
    if running > 0:
        return "Running"
    if stopped > 0:
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def _condition(kind: str, ok: bool, reason: str = "", message: str = "") -> Obj:
    condition: Obj = {"type": kind, "status": "True" if ok else "False"}
    if not ok and reason:
        condition["reason"] = reason
    if not ok and message:
        condition["message"] = message
    return condition


def pod_status(pod: Obj, runtime: PodRuntime, *, host_ip: str,
               waiting: dict[str, tuple[str, str]] | None = None,
               ready: Callable[[str], bool] = lambda name: True,
               started: Callable[[str], bool | None] = lambda name: None,
               previous: Obj | None = None, now: str | None = None) -> Obj:
    """The pod's status (see the module docstring). `waiting` maps container names to
    the (reason, message) the pod worker has for them; `ready`/`started` are the probe
    results of running containers. `previous` is the status this kubelet last computed
    (the API server's copy may lag it): start time, terminal phase and the transition
    times of the kubelet's conditions carry on from it."""
    spec = pod.get("spec") or {}
    current = pod.get("status") or {}
    base = previous or current
    waiting = waiting or {}
    now = now or rfc3339()
    initialized, incomplete = init_done(pod, runtime)
    init_statuses = []
    for container in spec.get("initContainers") or []:
        name = container.get("name", "")
        status = container_status(container, runtime, waiting=waiting.get(name),
                                  default_reason=INITIALIZING, ready=ready(name),
                                  started=started(name))
        if not is_sidecar(container):
            # An init container that exited 0 counts as ready, as upstream reports it.
            status["ready"] = bool(status["state"].get("terminated", {}).get("exitCode") == 0
                                   and "terminated" in status["state"])
            status["started"] = "running" in status["state"]
        init_statuses.append(status)
    statuses = []
    for container in spec.get("containers") or []:
        name = container.get("name", "")
        statuses.append(container_status(
            container, runtime, waiting=waiting.get(name),
            default_reason=CREATING if initialized else INITIALIZING,
            ready=ready(name), started=started(name)))
    # Ephemeral containers: never ready, never part of the phase or the conditions.
    ephemeral_statuses = [
        container_status(container, runtime, waiting=waiting.get(container.get("name", "")),
                         default_reason=CREATING, ready=False, started=None)
        for container in spec.get("ephemeralContainers") or []]
    phase = pod_phase(pod, statuses, init_statuses, initialized)
    for seen in (current, base):
        if seen.get("phase") in TERMINAL_PHASES:
            phase = seen["phase"]        # a pod that ended never runs again
    unready = [s["name"] for s in statuses if not s["ready"]]
    gates = [g.get("conditionType") for g in spec.get("readinessGates") or []]
    existing = {c.get("type"): c for c in current.get("conditions") or []}
    existing.update({c.get("type"): c for c in base.get("conditions") or []
                     if c.get("type") in KUBELET_CONDITIONS})
    gates_missing = [g for g in gates if (existing.get(g) or {}).get("status") != "True"]
    if phase == "Succeeded":
        containers_ready = _condition("ContainersReady", False, "PodCompleted")
        pod_ready = _condition("Ready", False, "PodCompleted")
    else:
        containers_ready = _condition(
            "ContainersReady", not unready, "ContainersNotReady",
            f"containers with unready status: [{' '.join(unready)}]")
        if unready:
            pod_ready = _condition("Ready", False, "ContainersNotReady",
                                   f"containers with unready status: [{' '.join(unready)}]")
        elif gates_missing:
            pod_ready = _condition("Ready", False, "ReadinessGatesNotReady",
                                   "corresponding condition of pod readiness gate "
                                   f"\"{gates_missing[0]}\" does not exist.")
        else:
            pod_ready = _condition("Ready", True)
    if phase == "Succeeded" and spec.get("initContainers"):
        initialized_condition = _condition("Initialized", True)
    elif phase in TERMINAL_PHASES and not spec.get("initContainers"):
        initialized_condition = _condition("Initialized", True)
    else:
        initialized_condition = _condition(
            "Initialized", initialized, "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(incomplete)}]")
    sandbox_condition = _condition("PodReadyToStartContainers",
                                   runtime.sandbox_ready and phase not in TERMINAL_PHASES)
    ours = [sandbox_condition, initialized_condition, containers_ready, pod_ready]
    conditions = [dict(c) for c in current.get("conditions") or []
                  if c.get("type") not in KUBELET_CONDITIONS]
    if not any(c.get("type") == "PodScheduled" for c in conditions):
        conditions.insert(0, _condition("PodScheduled", True))
    for condition in ours:
        old = existing.get(condition["type"]) or {}
        condition["lastProbeTime"] = None
        condition["lastTransitionTime"] = (old.get("lastTransitionTime")
                                           if old.get("status") == condition["status"]
                                           and old.get("lastTransitionTime") else now)
        conditions.append(condition)
    for condition in conditions:
        if condition.get("type") == "PodScheduled" and not condition.get("lastTransitionTime"):
            condition["lastTransitionTime"] = now
            condition.setdefault("lastProbeTime", None)
    status: Obj = {"phase": phase, "conditions": conditions,
                   "hostIP": host_ip, "hostIPs": [{"ip": host_ip}] if host_ip else [],
                   "startTime": base.get("startTime") or current.get("startTime") or now,
                   "containerStatuses": statuses}
    if spec.get("initContainers"):
        status["initContainerStatuses"] = init_statuses
    if ephemeral_statuses:
        status["ephemeralContainerStatuses"] = ephemeral_statuses
    pod_ips = runtime.pod_ips if not spec.get("hostNetwork") else ([host_ip] if host_ip else [])
    if not pod_ips and current.get("podIP"):
        pod_ips = [ip.get("ip") for ip in current.get("podIPs") or []] or [current["podIP"]]
    if pod_ips:
        status["podIP"] = pod_ips[0]
        status["podIPs"] = [{"ip": ip} for ip in pod_ips]
    if current.get("qosClass"):
        status["qosClass"] = current["qosClass"]
    return status


def _comparable(status: Obj) -> Obj:
    """A status without the times that change on every computation of it."""
    out = copy.deepcopy(status)
    for condition in out.get("conditions") or []:
        condition.pop("lastProbeTime", None)
    return out


def same_status(a: Obj | None, b: Obj | None) -> bool:
    if a is None or b is None:
        return a is b
    return _comparable(a) == _comparable(b)


# --- writing --------------------------------------------------------------------------

@dataclass
class _Target:
    namespace: str
    name: str
    uid: str            # the API object's uid (a static pod's mirror pod has its own)


class StatusManager:
    """Writes pod statuses to the API server: one merge patch per change, in the
    background, newest status wins; a pod gone from the API server is forgotten."""

    def __init__(self, client: ApiClient, workers: int = 4):
        self.client = client
        self.queue = WorkQueue(name="kubelet-status")
        self._wanted: dict[str, tuple[_Target, Obj]] = {}     # pod uid -> newest status
        self._written: dict[str, Obj] = {}                     # pod uid -> last written
        self._task: asyncio.Task | None = None
        self._workers = workers
        self.writes = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                run_workers(self.queue, self._write, self._workers), name="kubelet-status")

    async def stop(self) -> None:
        self.queue.shutdown()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def set(self, key: str, namespace: str, name: str, api_uid: str, status: Obj) -> bool:
        """Ask for `status` to be written to pod namespace/name (uid `api_uid`); `key`
        is the kubelet's own id of the pod. Returns whether anything will be written."""
        if same_status(self._written.get(key), status) and key not in self._wanted:
            return False
        self._wanted[key] = (_Target(namespace, name, api_uid), status)
        self.queue.add(key)
        return True

    def cached(self, key: str) -> Obj | None:
        wanted = self._wanted.get(key)
        return wanted[1] if wanted else self._written.get(key)

    def forget(self, key: str) -> None:
        self._wanted.pop(key, None)
        self._written.pop(key, None)

    async def flush(self, key: str, timeout: float = 10.0) -> None:
        """Wait (bounded) until the newest status of `key` has been written."""
        deadline = asyncio.get_running_loop().time() + timeout
        while key in self._wanted and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    async def _write(self, key: str) -> None:
        wanted = self._wanted.get(key)
        if wanted is None:
            return
        target, status = wanted
        if same_status(self._written.get(key), status):
            if self._wanted.get(key) is wanted:
                del self._wanted[key]
            return
        body = {"metadata": {"uid": target.uid}, "status": status} if target.uid \
            else {"status": status}
        try:
            await self.client.patch("v1 pods", target.name, body, target.namespace,
                                    patch_type="merge", subresource="status")
        except ApiError as exc:
            if is_not_found(exc) or is_conflict(exc):
                # Gone (or replaced by a pod of the same name): nothing to report to.
                if self._wanted.get(key) is wanted:
                    del self._wanted[key]
                return
            raise
        self.writes += 1
        self._written[key] = status
        if self._wanted.get(key) is wanted:
            del self._wanted[key]
