"""Pod workers: one asyncio task per pod that brings the runtime to what the pod asks.

    workers = PodWorkers(deps)
    workers.update(pod)            # from the pods informer or the static pod source
    workers.wake(uid)              # the runtime or a probe saw something change
    workers.forget(uid)            # the pod is gone from the API server: stop it
    await workers.stop()           # the kubelet stops; containers keep running

A sync of one pod (upstream's SyncPod, in the same order):
  0. a new pod is admitted against the node's allocatable pods, cpu, memory and extended
     resources, or fails at once (OutOf<resource>); a pod past its activeDeadlineSeconds
     is stopped and fails (DeadlineExceeded);
  1. volumes (VolumeManager.setup); a failure is a FailedMount event and a retry;
  2. the sandbox: the newest ready one of the pod, or a new one (after stopping the
     containers of a sandbox that died); the pod IP from its status;
  3. init containers one at a time, each until it exits 0 (a failure restarts it unless
     restartPolicy is Never, which fails the pod); a sidecar (restartPolicy Always) is
     kept running instead, and the next starts once it has started;
  4. the app containers: image pulled per imagePullPolicy (with the imagePullSecrets'
     credentials; kubesmith.local/* images are local and never pulled), started when
     missing, restarted per restartPolicy with CrashLoopBackOff back-off (10 s doubling
     to 5 min, forgotten after 10 min without a restart), killed and restarted when
     their liveness probe fails or their spec changed;
  5. the status (status.py) handed to the StatusManager, the running containers to
     the ProbeManager; older dead containers removed (the newest exited one of each
     name stays: `kubectl logs --previous` reads it).
A pod being deleted runs each container's preStop hook, stops the containers within
what is left of the grace period, stops and removes the sandbox, tears down volumes and
the pod cgroup, writes the final status and deletes the pod for good
(gracePeriodSeconds=0), which is when `kubectl delete` returns.

The relist (`Relister`, upstream's generic PLEG) lists the runtime's sandboxes and
containers every second and wakes the worker of each pod whose containers changed, so
exits show in the status within about a second.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp

from kubesmith.api.times import parse_rfc3339
from kubesmith.client.events import NORMAL, WARNING, EventRecorder
from kubesmith.client.rest import ApiClient, ApiError, is_conflict, is_not_found
from kubesmith.cri import api
from kubesmith.cri.client import NotFoundError, RuntimeError_
from kubesmith.kubelet import cgroups
from kubesmith.kubelet import runtime as cri_config
from kubesmith.kubelet.envvars import EnvError
from kubesmith.kubelet.pullsecrets import credentials_for
from kubesmith.kubelet.status import (TERMINAL_PHASES, ContainerRecord, PodRuntime,
                                      StatusManager, pod_status)
from kubesmith.kubelet.volumes import VolumeError
from kubesmith.scheduler.resources import Resources, pod_requests, quantity_value

log = logging.getLogger(__name__)

Obj = dict[str, Any]

BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET = 2 * BACKOFF_MAX     # upstream forgets a back-off after 2 x the maximum
MIN_GRACE_PERIOD = 2                # upstream's minimumGracePeriodInSeconds
MAX_TERMINATION_MESSAGE = 4096
FALLBACK_LOG_LINES = 80
RELIST_PERIOD = 1.0
RETRY_AFTER_ERROR = 2.0
CREATE_CONFIG_ERROR = "CreateContainerConfigError"
LOCAL_REGISTRY = "kubesmith.local"   # images built and imported locally: never pulled
CONFIG_SOURCE_ANNOTATION = "kubernetes.io/config.source"


# --- back-off -------------------------------------------------------------------------

class Backoff:
    """Upstream's flowcontrol.Backoff keyed by (pod uid, container or image): the delay
    starts at `initial`, doubles at each restart up to `maximum`, and is forgotten when
    the key saw no restart for `reset` seconds."""

    def __init__(self, initial: float = BACKOFF_INITIAL, maximum: float = BACKOFF_MAX,
                 reset: float = BACKOFF_RESET, clock: Callable[[], float] = time.time):
        self.initial, self.maximum, self.reset = initial, maximum, reset
        self.clock = clock
        self._entries: dict[Any, tuple[float, float]] = {}   # key -> (delay, last update)

    def delay(self, key: Any) -> float:
        entry = self._entries.get(key)
        return entry[0] if entry else 0.0

    def next(self, key: Any) -> float:
        """A restart happens now: the delay grows (or starts)."""
        now = self.clock()
        entry = self._entries.get(key)
        if entry is None or now - entry[1] > self.reset:
            delay = self.initial
        else:
            delay = min(entry[0] * 2, self.maximum)
        self._entries[key] = (delay, now)
        return delay

    def remaining(self, key: Any, since: float) -> float:
        """Seconds left of the back-off counted from `since` (a container's exit); 0
        when it is over or there is none."""
        entry = self._entries.get(key)
        if entry is None:
            return 0.0
        if self.clock() - entry[1] > self.reset:
            del self._entries[key]
            return 0.0
        return max(0.0, since + entry[0] - self.clock())

    def forget_prefix(self, prefix: Any) -> None:
        for key in [k for k in self._entries if isinstance(k, tuple) and k[0] == prefix]:
            del self._entries[key]


# --- what a worker needs --------------------------------------------------------------

@dataclass
class WorkerDeps:
    """The kubelet's parts a pod worker uses (main.py makes them)."""
    client: ApiClient
    runtime: Any                        # kubesmith.cri.client.RuntimeClient
    settings: cri_config.RuntimeSettings
    status: StatusManager
    recorder: EventRecorder
    volumes: Any                        # VolumeManager
    probes: Any                         # ProbeManager
    container_env: Callable[..., Awaitable[list]]
    services: Callable[[str], list[Obj]] = lambda namespace: []
    node_name: str = ""
    host_ip: Callable[[], str] = lambda: ""
    node_allocatable: Callable[[], Obj | None] = lambda: None
    # (namespace, name, uid) of the API object a pod's status goes to; None: not yet
    # (a static pod whose mirror pod does not exist).
    status_target: Callable[[Obj], tuple[str, str, str] | None] = (
        lambda pod: ((pod.get("metadata") or {}).get("namespace", ""),
                     (pod.get("metadata") or {}).get("name", ""),
                     (pod.get("metadata") or {}).get("uid", "")))
    # Called instead of the final API delete when a static pod is finished for good
    # (the mirror pod goes).
    on_static_removed: Callable[[Obj], Awaitable[None]] | None = None
    sync_frequency: float = 60.0
    volume_refresh: float = 60.0


@dataclass
class _Pod:
    pod: Obj
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    waiting: dict[str, tuple[str, str]] = field(default_factory=dict)
    sandbox_id: str = ""
    sandbox_config: Any = None
    pod_ips: list[str] = field(default_factory=list)
    volume_paths: dict[str, str] | None = None
    volumes_refreshed: float = 0.0
    gone: bool = False          # deleted from the API server already (no final delete)
    done: bool = False
    failures: int = 0
    admitted: bool = False
    rejected: tuple[str, str] | None = None     # (reason, message) of a refusal


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _spec(obj: Obj) -> Obj:
    return obj.get("spec") or {}


def pod_full_name(pod: Obj) -> str:
    meta = _meta(pod)
    return f"{meta.get('name', '')}_{meta.get('namespace', '')}({meta.get('uid', '')})"


def container_field_path(pod: Obj, name: str) -> str:
    """The involvedObject.fieldPath of a container's events, as upstream writes it."""
    for index, container in enumerate(_spec(pod).get("containers") or []):
        if container.get("name") == name:
            return f"spec.containers{{{name}}}"
    for index, container in enumerate(_spec(pod).get("initContainers") or []):
        if container.get("name") == name:
            return f"spec.initContainers{{{name}}}"
    for container in _spec(pod).get("ephemeralContainers") or []:
        if container.get("name") == name:
            return f"spec.ephemeralContainers{{{name}}}"
    return ""


def is_static(pod: Obj) -> bool:
    """A pod from the kubelet's static pod folder (not from the API server)."""
    return (_meta(pod).get("annotations") or {}).get(CONFIG_SOURCE_ANNOTATION,
                                                      "api") != "api"


def is_sidecar(container: Obj) -> bool:
    """An init container with restartPolicy Always (upstream's sidecar containers)."""
    return container.get("restartPolicy") == "Always"


def should_restart(policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def image_registry(image: str) -> str:
    """The registry host of an image reference ("" for Docker Hub's short names)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return ""


# --- lifecycle hooks ------------------------------------------------------------------

async def run_handler(runtime: Any, handler: Obj, *, container_id: str, container: Obj,
                      pod_ip: str, timeout: float) -> str | None:
    """Run a lifecycle handler (exec, httpGet, sleep); None when it succeeded, else the
    failure message."""
    timeout = max(1.0, timeout)
    if handler.get("exec"):
        command = list((handler["exec"] or {}).get("command") or [])
        try:
            code, stdout, stderr = await asyncio.wait_for(
                runtime.exec_sync(container_id, command, int(timeout)), timeout + 5)
        except (RuntimeError_, asyncio.TimeoutError) as exc:
            return f"Exec lifecycle hook ({command}) for Container \"{container.get('name')}\" " \
                   f"failed - error: {exc}"
        if code != 0:
            return (f"Exec lifecycle hook ({command}) for Container "
                    f"\"{container.get('name')}\" failed - error: command "
                    f"'{' '.join(command)}' exited with {code}: "
                    f"{(stdout + stderr).decode(errors='replace')}")
        return None
    if handler.get("httpGet"):
        get = handler["httpGet"] or {}
        port = get.get("port")
        if isinstance(port, str) and not port.isdigit():
            port = next((p.get("containerPort") for p in container.get("ports") or []
                         if p.get("name") == port), None)
            if port is None:
                return f"couldn't find port {get.get('port')!r} in container"
        host = get.get("host") or pod_ip
        scheme = (get.get("scheme") or "HTTP").lower()
        path = get.get("path") or "/"
        if not path.startswith("/"):
            path = "/" + path
        headers = {h.get("name", ""): h.get("value", "") for h in get.get("httpHeaders") or []}
        url = f"{scheme}://{host}:{port}{path}"
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=timeout)) as session:
                async with session.get(url, headers=headers, ssl=False) as response:
                    await response.read()
                    if response.status >= 400:
                        return f"HTTP lifecycle hook ({path}) for Container " \
                               f"\"{container.get('name')}\" failed - error: " \
                               f"HTTP status {response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return f"HTTP lifecycle hook ({path}) for Container \"{container.get('name')}\" " \
                   f"failed - error: {exc or type(exc).__name__}"
        return None
    if handler.get("sleep"):
        await asyncio.sleep(min(timeout, float((handler["sleep"] or {}).get("seconds") or 0)))
        return None
    return None


# --- the workers ----------------------------------------------------------------------

class PodWorkers:
    """One worker task per pod uid (see the module docstring)."""

    def __init__(self, deps: WorkerDeps):
        self.deps = deps
        self.runtime = deps.runtime
        self.settings = deps.settings
        self.pods: dict[str, _Pod] = {}
        self.backoff = Backoff()
        self.image_backoff = Backoff()
        self._exited: dict[str, ContainerRecord] = {}   # container id -> final record
        self._pull_failures: dict[tuple[str, str], float] = {}  # (uid, image) -> when
        # Pods finished for good whose API object is still there (finalizers hold it):
        # their updates are not work any more.
        self._finished: set[str] = set()
        self._stopping = False
        self.counts = {"syncs": 0, "containers_started": 0, "sandboxes_started": 0,
                       "pods_finished": 0}

    # --- driving ----------------------------------------------------------------------

    def update(self, pod: Obj) -> None:
        """The newest version of a pod this node runs."""
        uid = _meta(pod).get("uid", "")
        if not uid or self._stopping or uid in self._finished:
            return
        state = self.pods.get(uid)
        if state is None:
            state = self.pods[uid] = _Pod(pod=pod)
            state.task = asyncio.create_task(self._run(uid, state), name=f"pod {uid}")
        elif state.done:
            return
        else:
            state.pod = pod
        state.wake.set()

    def wake(self, uid: str) -> None:
        state = self.pods.get(uid)
        if state is not None and not state.done:
            state.wake.set()

    def forget(self, uid: str) -> None:
        """The pod is gone from the API server: stop whatever still runs of it (no
        final delete is needed)."""
        self._finished.discard(uid)
        state = self.pods.get(uid)
        if state is None or state.done:
            return
        state.gone = True
        state.wake.set()

    def running(self, uid: str) -> bool:
        return uid in self.pods and not self.pods[uid].done

    def get_pod(self, uid: str) -> Obj | None:
        state = self.pods.get(uid)
        return state.pod if state else None

    async def stop(self) -> None:
        """Stop every worker; containers keep running (a restarted kubelet adopts them)."""
        self._stopping = True
        tasks = [s.task for s in self.pods.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, uid: str, state: _Pod) -> None:
        while not state.done:
            state.wake.clear()
            try:
                delay = await self._sync(uid, state)
                state.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                state.failures += 1
                delay = min(RETRY_AFTER_ERROR * (2 ** min(state.failures, 5)), 60.0)
                log.warning("sync of pod %s failed (retry in %.0fs): %s",
                            pod_full_name(state.pod), delay, exc,
                            exc_info=not isinstance(exc, (RuntimeError_, ApiError,
                                                          ConnectionError)))
            if state.done:
                break
            try:
                # At least every syncFrequency (volume refreshes ride on it).
                await asyncio.wait_for(state.wake.wait(), timeout=min(
                    delay or self.deps.sync_frequency, self.deps.sync_frequency))
            except asyncio.TimeoutError:
                pass
        # A finished pod's worker leaves; a pod with this uid never comes back.
        self.pods.pop(uid, None)
        if not state.gone and not is_static(state.pod):
            self._finished.add(uid)     # static pods: the same manifest may come back

    # --- one sync ---------------------------------------------------------------------

    async def _sync(self, uid: str, state: _Pod) -> float | None:
        """Bring one pod along; seconds until the next look (None: the usual period)."""
        self.counts["syncs"] += 1
        pod = state.pod
        meta = _meta(pod)
        if state.gone or meta.get("deletionTimestamp"):
            await self._finish(uid, state)
            return None
        current_phase = (pod.get("status") or {}).get("phase")
        cached = self.deps.status.cached(uid)
        if current_phase in TERMINAL_PHASES or (cached or {}).get("phase") in TERMINAL_PHASES:
            await self._stop_pod(uid, state, grace=None)
            return None
        if not state.admitted:
            state.rejected = await self._admission(uid, state)
            if state.rejected is not None:
                reason, message = state.rejected
                log.info("pod %s rejected: %s", pod_full_name(pod), message)
                self.deps.recorder.emit(pod, WARNING, reason, message)
                await self._report(uid, state, PodRuntime(), terminal=True)
                return None
            state.admitted = True
        deadline = self._deadline_left(uid, state)
        if deadline is not None and deadline <= 0:
            # activeDeadlineSeconds passed: the pod is killed and fails, as upstream.
            state.rejected = ("DeadlineExceeded",
                              "Pod was active on the node longer than the specified deadline")
            self.deps.recorder.emit(pod, NORMAL, "DeadlineExceeded", state.rejected[1])
            await self._stop_pod(uid, state, grace=None)
            return None
        next_look: list[float] = []
        began = time.monotonic()
        # 1. volumes
        try:
            if state.volume_paths is None:
                state.volume_paths = await self.deps.volumes.setup(pod)
                state.volumes_refreshed = time.monotonic()
            elif time.monotonic() - state.volumes_refreshed >= self.deps.volume_refresh:
                await self.deps.volumes.refresh(pod)
                state.volumes_refreshed = time.monotonic()
        except Exception as exc:
            if state.volume_paths is None:
                self.deps.recorder.emit(pod, WARNING, "FailedMount", str(exc))
                await self._report(uid, state, PodRuntime())
                return RETRY_AFTER_ERROR * 2
            log.warning("refreshing volumes of %s: %s", pod_full_name(pod), exc)
        # 2. the sandbox
        sandboxes = await self.runtime.list_pod_sandbox(api.PodSandboxFilter(
            label_selector={cri_config.POD_UID_LABEL: uid}))
        sandboxes.sort(key=lambda s: s.created_at, reverse=True)
        ready = next((s for s in sandboxes if s.state == api.SANDBOX_READY), None)
        if ready is not None and sandboxes[0].id != ready.id:
            ready = None        # a newer sandbox failed: start over
        if ready is None:
            if sandboxes:
                # The sandbox died (a host restart, say): upstream kills what is left
                # and starts over with a new sandbox.
                await self._kill_containers(uid, state, grace=0)
                for sandbox in sandboxes:
                    if sandbox.state == api.SANDBOX_READY:
                        await self._ignore_missing(self.runtime.stop_pod_sandbox(sandbox.id))
                self.deps.recorder.emit(pod, NORMAL, "SandboxChanged",
                                        "Pod sandbox changed, it will be killed and re-created.")
            if not await self._start_sandbox(uid, state, attempt=len(sandboxes)):
                await self._report(uid, state, PodRuntime())
                return RETRY_AFTER_ERROR * 2
        else:
            if state.sandbox_id != ready.id:
                state.sandbox_id, state.pod_ips = ready.id, []
            if state.sandbox_config is None:
                state.sandbox_config = cri_config.sandbox_config(
                    pod, self.settings, attempt=ready.metadata.attempt)
            if not state.pod_ips:
                state.pod_ips = await self._pod_ips(ready.id)
        if _spec(pod).get("hostNetwork"):
            host_ip = self.deps.host_ip()
            state.pod_ips = [host_ip] if host_ip else []
        log.debug("pod %s: volumes and sandbox after %.3fs", pod_full_name(pod),
                  time.monotonic() - began)
        # 3. and 4. containers; ephemeral ones first, as upstream, so that a pod stuck on
        # an init container can still be debugged
        runtime = await self.pod_runtime(uid, state)
        for container in _spec(pod).get("ephemeralContainers") or []:
            wait = await self._sync_ephemeral(uid, state, container, runtime)
            if wait:
                next_look.append(wait)
        policy = _spec(pod).get("restartPolicy") or "Always"
        initialized = True
        for container in _spec(pod).get("initContainers") or []:
            name = container.get("name", "")
            latest = runtime.latest(name)
            if is_sidecar(container):
                # A restartable init container (sidecar): kept running like an app
                # container; the next one starts once it has started.
                wait = await self._sync_container(uid, state, container, runtime, "Always",
                                                  init=True)
                if wait:
                    next_look.append(wait)
                if latest is not None and latest.state == "running" \
                        and self.deps.probes.started(uid, name) is not False:
                    continue
                initialized = False
                break
            if latest is not None and latest.state == "exited" and latest.exit_code == 0:
                continue
            initialized = False
            if latest is not None and latest.state == "running":
                break
            if latest is not None and latest.state == "exited" and policy == "Never":
                break       # the pod has failed
            wait = await self._start_container(uid, state, container, runtime, init=True)
            if wait:
                next_look.append(wait)
            break
        if initialized:
            for container in _spec(pod).get("containers") or []:
                wait = await self._sync_container(uid, state, container, runtime, policy)
                if wait:
                    next_look.append(wait)
        # 5. probes, status, old containers (the probe manager first: it answers
        # readiness only for the containers it was told of)
        runtime = await self.pod_runtime(uid, state)
        probed = {c.get("name") for c in _spec(pod).get("containers") or []} | {
            c.get("name") for c in _spec(pod).get("initContainers") or [] if is_sidecar(c)}
        running = {c.name: (c.id, time.monotonic() - max(0.0, time.time() - c.started_at))
                   for c in (runtime.latest(n) for n in probed)
                   if c is not None and c.state == "running"}
        self.deps.probes.update(pod, state.pod_ips[0] if state.pod_ips else "", running)
        await self._report(uid, state, runtime)
        log.debug("pod %s: synced in %.3fs", pod_full_name(pod), time.monotonic() - began)
        deadline = self._deadline_left(uid, state)     # known once startTime is set
        if deadline is not None:
            next_look.append(max(0.05, deadline))
        await self._remove_old_containers(runtime)
        return min(next_look) if next_look else None

    async def _sync_container(self, uid: str, state: _Pod, container: Obj,
                              runtime: PodRuntime, policy: str, init: bool = False
                              ) -> float | None:
        name = container.get("name", "")
        latest = runtime.latest(name)
        pod = state.pod
        if latest is not None and latest.state == "running":
            message = self.deps.probes.liveness_failed(uid, name)
            changed = bool(latest.spec_hash) and \
                latest.spec_hash != cri_config.container_hash(container)
            if not message and not changed:
                return None
            # The probe manager has recorded the Unhealthy events; the kill is ours.
            reason = (f"Container {name} failed liveness probe, will be restarted" if message
                      else f"Container {name} definition changed, will be restarted")
            await self._kill_container(pod, container, latest.id,
                                       grace=_spec(pod).get("terminationGracePeriodSeconds", 30),
                                       message=reason)
            self.deps.probes.reset(uid, name)
            runtime = await self.pod_runtime(uid, state)
            latest = runtime.latest(name)
            if latest is None or latest.state != "exited":
                return 1.0
        if latest is not None and latest.state == "created":
            # Made but never started (the kubelet stopped in between): start over.
            await self._ignore_missing(self.runtime.remove_container(latest.id))
            runtime.containers = [c for c in runtime.containers if c.id != latest.id]
        elif latest is not None and latest.state == "exited":
            if not should_restart(policy, latest.exit_code):
                return None
        elif latest is not None and latest.state == "unknown":
            return None
        return await self._start_container(uid, state, container, runtime, init=init)

    async def _sync_ephemeral(self, uid: str, state: _Pod, container: Obj,
                              runtime: PodRuntime) -> float | None:
        """Start an ephemeral container once: it is never restarted, whatever its exit
        (as upstream), and one the runtime already has is left alone."""
        if runtime.latest(container.get("name", "")) is not None:
            return None
        target_id = ""
        target = container.get("targetContainerName")
        if target:
            found = runtime.latest(target)
            if found is None or found.state != "running":
                state.waiting[container.get("name", "")] = (
                    CREATE_CONFIG_ERROR, f"target container {target!r} is not running")
                return RETRY_AFTER_ERROR
            target_id = found.id
        return await self._start_container(uid, state, container, runtime, init=False,
                                           ephemeral=True, target_id=target_id)

    # --- sandbox ----------------------------------------------------------------------

    def _deadline_left(self, uid: str, state: _Pod) -> float | None:
        """Seconds left of the pod's activeDeadlineSeconds (from its startTime), or None."""
        seconds = _spec(state.pod).get("activeDeadlineSeconds")
        status = self.deps.status.cached(uid) or state.pod.get("status") or {}
        started = parse_rfc3339(status.get("startTime"))
        if seconds is None or started is None:
            return None
        return started + float(seconds) - time.time()

    async def _admission(self, uid: str, state: _Pod) -> tuple[str, str] | None:
        """Upstream's kubelet admission of a new pod: (reason, message) when the node's
        pods, cpu, memory or extended resources cannot hold it. A pod the runtime runs
        already (a kubelet restart) is admitted as it is."""
        sandboxes = await self.runtime.list_pod_sandbox(api.PodSandboxFilter(
            label_selector={cri_config.POD_UID_LABEL: uid}))
        allocatable = self.deps.node_allocatable()
        if sandboxes or not allocatable:
            return None
        available = Resources.from_list(allocatable)
        pods_allowed = quantity_value(allocatable.get("pods", 0))
        used = Resources()
        pods_used = 0
        for other_uid, other in self.pods.items():
            if other_uid == uid or not other.admitted or other.done:
                continue
            phase = ((self.deps.status.cached(other_uid) or other.pod.get("status") or {})
                     .get("phase"))
            if phase in TERMINAL_PHASES:
                continue
            used.add(pod_requests(_spec(other.pod)))
            pods_used += 1
        requested = pod_requests(_spec(state.pod))
        checks = [("pods", 1, pods_used, pods_allowed),
                  ("cpu", requested.milli_cpu, used.milli_cpu, available.milli_cpu),
                  ("memory", requested.memory, used.memory, available.memory)]
        checks += [(name, amount, used.scalars.get(name, 0), available.scalars.get(name, 0))
                   for name, amount in sorted(requested.scalars.items())]
        for name, amount, in_use, capacity in checks:
            if amount and in_use + amount > capacity:
                return (f"OutOf{name}", f"Pod was rejected: Node didn't have enough resource: "
                                        f"{name}, requested: {amount}, used: {in_use}, "
                                        f"capacity: {capacity}")
        # Admitted before any other pod is looked at (no await since the count): pods
        # arriving together are counted one after the other.
        state.admitted = True
        return None

    async def _start_sandbox(self, uid: str, state: _Pod, attempt: int) -> bool:
        pod = state.pod
        config = cri_config.sandbox_config(pod, self.settings, attempt=attempt)
        os.makedirs(config.log_directory, exist_ok=True)
        cgroups.ensure(config.linux.cgroup_parent,
                       cgroups.pod_limits(pod, self.settings.pod_pids_limit))
        try:
            sandbox_id = await self.runtime.run_pod_sandbox(config)
        except RuntimeError_ as exc:
            message = f"Failed to create pod sandbox: {exc.detail or exc}"
            self.deps.recorder.emit(pod, WARNING, "FailedCreatePodSandBox", message)
            log.warning("%s: %s", pod_full_name(pod), message)
            return False
        self.counts["sandboxes_started"] += 1
        state.sandbox_id = sandbox_id
        state.sandbox_config = config
        state.pod_ips = await self._pod_ips(sandbox_id)
        return True

    async def _pod_ips(self, sandbox_id: str) -> list[str]:
        try:
            response = await self.runtime.pod_sandbox_status(sandbox_id)
        except NotFoundError:
            return []
        network = response.status.network
        ips = [network.ip] if network.ip else []
        ips += [extra.ip for extra in network.additional_ips if extra.ip]
        return ips

    # --- containers -------------------------------------------------------------------

    async def pod_runtime(self, uid: str, state: _Pod | None = None) -> PodRuntime:
        """The pod's containers as the runtime has them now."""
        containers = await self.runtime.list_containers(api.ContainerFilter(
            label_selector={cri_config.POD_UID_LABEL: uid}))
        records = []
        for container in containers:
            known = self._exited.get(container.id)
            if known is not None:
                records.append(known)
                continue
            try:
                status = await self.runtime.container_status(container.id)
            except NotFoundError:
                continue
            if status is None:
                continue
            record = ContainerRecord.from_cri(status)
            if record.state == "exited":
                record.message = self._termination_message(uid, record, status)
                self._exited[container.id] = record
            records.append(record)
        sandbox_ready = bool(state and state.sandbox_id)
        return PodRuntime(sandbox_ready=sandbox_ready,
                          pod_ips=list(state.pod_ips) if state else [], containers=records)

    def _termination_message(self, uid: str, record: ContainerRecord, status: Any) -> str:
        """The termination message file's text, else (FallbackToLogsOnError on a
        failure) the log's last lines, as upstream."""
        path = cri_config.termination_message_file(self.settings.root_dir, uid, record.name,
                                                   record.restart_count)
        try:
            with open(path, "rb") as source:
                text = source.read(MAX_TERMINATION_MESSAGE).decode(errors="replace")
        except OSError:
            text = ""
        policy = dict(status.annotations).get(cri_config.TERMINATION_POLICY_ANNOTATION, "File")
        if not text and policy == "FallbackToLogsOnError" and record.exit_code != 0:
            text = self._log_tail(status.log_path)
        return text or record.message

    @staticmethod
    def _log_tail(path: str) -> str:
        try:
            with open(path, "rb") as source:
                source.seek(0, os.SEEK_END)
                size = source.tell()
                source.seek(max(0, size - 64 * 1024))
                lines = source.read().splitlines()[-FALLBACK_LOG_LINES:]
        except OSError:
            return ""
        texts = []
        for line in lines:
            parts = line.split(b" ", 3)     # <time> <stream> <tag> <text>
            texts.append(parts[3].decode(errors="replace") if len(parts) == 4 else "")
        return "\n".join(texts)[-MAX_TERMINATION_MESSAGE:]

    async def _ensure_image(self, state: _Pod, container: Obj
                            ) -> tuple[str, Any] | tuple[None, float]:
        """(image id, api.Image) of the container's image, pulled per its
        imagePullPolicy; (None, seconds to wait) when it is not there (the waiting
        reason is set)."""
        pod, name = state.pod, container.get("name", "")
        image = container.get("image", "")
        field_path = container_field_path(pod, name)
        policy = container.get("imagePullPolicy") or (
            "Always" if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
            else "IfNotPresent")
        present = await self.runtime.image_status(image)
        if policy == "Never" and present is None:
            message = f'Container image "{image}" is not present with pull policy of Never'
            self.deps.recorder.emit(pod, WARNING, "ErrImageNeverPull", message,
                                    field_path=field_path)
            state.waiting[name] = ("ErrImageNeverPull", message)
            return None, RETRY_AFTER_ERROR * 5
        local_only = image_registry(image) == LOCAL_REGISTRY
        if present is not None and (policy != "Always" or local_only):
            self.deps.recorder.emit(pod, NORMAL, "Pulled",
                                    f'Container image "{image}" already present on machine',
                                    field_path=field_path)
            return present.id, present
        if local_only:
            # No registry serves these: the node's images are imported by the deploy.
            message = (f'image "{image}" is built locally and is not imported on this node '
                       f'(no registry serves {LOCAL_REGISTRY} images)')
            self.deps.recorder.emit(pod, WARNING, "Failed", f"Error: {message}",
                                    field_path=field_path)
            state.waiting[name] = ("ErrImagePull", message)
            return None, RETRY_AFTER_ERROR * 5
        key = (_meta(pod).get("uid", ""), image)
        last_failure = self._pull_failures.get(key)
        if last_failure is not None:
            wait = self.image_backoff.remaining(key, last_failure)
            if wait > 0:
                message = f'Back-off pulling image "{image}"'
                state.waiting[name] = ("ImagePullBackOff", message)
                self.deps.recorder.emit(pod, NORMAL, "BackOff", message, field_path=field_path)
                return None, wait
        self.deps.recorder.emit(pod, NORMAL, "Pulling", f'Pulling image "{image}"',
                                field_path=field_path)
        started = time.monotonic()
        try:
            await self._pull(pod, image, state.sandbox_config)
        except RuntimeError_ as exc:
            self._pull_failures[key] = time.time()
            self.image_backoff.next(key)
            detail = exc.detail if hasattr(exc, "detail") else str(exc)
            self.deps.recorder.emit(pod, WARNING, "Failed",
                                    f'Failed to pull image "{image}": {detail}',
                                    field_path=field_path)
            self.deps.recorder.emit(pod, WARNING, "Failed", "Error: ErrImagePull",
                                    field_path=field_path)
            state.waiting[name] = ("ErrImagePull", f'failed to pull image "{image}": {detail}')
            return None, self.image_backoff.delay(key)
        self._pull_failures.pop(key, None)
        pulled = await self.runtime.image_status(image)
        took = time.monotonic() - started
        size = f" Image size: {pulled.size} bytes." if pulled is not None else ""
        self.deps.recorder.emit(pod, NORMAL, "Pulled",
                                f'Successfully pulled image "{image}" in {took:.3f}s '
                                f'({took:.3f}s including waiting).{size}',
                                field_path=field_path)
        if pulled is None:
            state.waiting[name] = ("ErrImagePull", f'image "{image}" missing after its pull')
            return None, RETRY_AFTER_ERROR
        return pulled.id, pulled

    async def _pull(self, pod: Obj, image: str, sandbox_config: Any) -> None:
        """Pull with each credential of the pod's imagePullSecrets that fits the image
        (then without any), until one pull works; raises the last failure."""
        secrets = []
        for ref in _spec(pod).get("imagePullSecrets") or []:
            try:
                secrets.append(await self.deps.client.get(
                    "v1 secrets", ref.get("name", ""), _meta(pod).get("namespace", "")))
            except ApiError as exc:
                log.warning("imagePullSecret %s of %s: %s", ref.get("name"),
                            pod_full_name(pod), exc)
        auths = credentials_for(image, secrets) or [None]
        for index, auth in enumerate(auths):
            try:
                await self.runtime.pull_image(image, sandbox_config, auth=auth)
                return
            except RuntimeError_:
                if index == len(auths) - 1:
                    raise

    async def _start_container(self, uid: str, state: _Pod, container: Obj,
                               runtime: PodRuntime, *, init: bool, ephemeral: bool = False,
                               target_id: str = "") -> float | None:
        """Create and start one container (a restart when an earlier one exited);
        seconds until it is worth trying again when it could not be started."""
        pod, name = state.pod, container.get("name", "")
        field_path = container_field_path(pod, name)
        latest = runtime.latest(name)
        restart_count = latest.restart_count + 1 if latest is not None else 0
        key = (uid, name)
        if latest is not None and latest.state == "exited":
            wait = self.backoff.remaining(key, latest.finished_at)
            if wait > 0:
                delay = int(self.backoff.delay(key))
                state.waiting[name] = (
                    "CrashLoopBackOff", f"back-off {_go_duration(delay)} restarting failed "
                    f"container={name} pod={pod_full_name(pod)}")
                self.deps.recorder.emit(pod, WARNING, "BackOff",
                                        f"Back-off restarting failed container {name} in pod "
                                        f"{pod_full_name(pod)}", field_path=field_path)
                return wait
            self.backoff.next(key)
        image_id, image = await self._ensure_image(state, container)
        if image_id is None:
            return image        # seconds to wait
        host_ip = self.deps.host_ip()
        pod_ip = state.pod_ips[0] if state.pod_ips else (
            host_ip if _spec(pod).get("hostNetwork") else "")
        try:
            envs = await self.deps.container_env(
                pod, container, client=self.deps.client,
                services=self.deps.services(_meta(pod).get("namespace", "")),
                node_name=self.deps.node_name, host_ip=host_ip, pod_ip=pod_ip,
                node_allocatable=self.deps.node_allocatable())
            mounts = list(self.deps.volumes.mounts(
                pod, container, state.volume_paths or {},
                env={kv.key: kv.value for kv in envs}))
            ips = state.pod_ips or ([host_ip] if host_ip else [])
            mounts += cri_config.managed_mounts(pod, container, self.settings, ips,
                                                restart_count)
            config = cri_config.container_config(pod, container, self.settings,
                                                 attempt=restart_count, image_ref=image_id,
                                                 envs=envs, mounts=mounts, init=init,
                                                 image=image, ephemeral=ephemeral,
                                                 target_id=target_id)
        except (EnvError, VolumeError, cri_config.ContainerConfigError, OSError,
                ValueError) as exc:
            message = str(exc)
            state.waiting[name] = (CREATE_CONFIG_ERROR, message)
            self.deps.recorder.emit(pod, WARNING, "Failed", f"Error: {message}",
                                    field_path=field_path)
            return RETRY_AFTER_ERROR * 5
        try:
            container_id = await self.runtime.create_container(state.sandbox_id, config,
                                                               state.sandbox_config)
        except RuntimeError_ as exc:
            message = exc.detail if hasattr(exc, "detail") else str(exc)
            state.waiting[name] = ("CreateContainerError", message)
            self.deps.recorder.emit(pod, WARNING, "Failed", f"Error: {message}",
                                    field_path=field_path)
            return RETRY_AFTER_ERROR * 5
        self.deps.recorder.emit(pod, NORMAL, "Created", f"Created container {name}",
                                field_path=field_path)
        try:
            await self.runtime.start_container(container_id)
        except RuntimeError_ as exc:
            message = exc.detail if hasattr(exc, "detail") else str(exc)
            state.waiting[name] = ("RunContainerError", message)
            self.deps.recorder.emit(pod, WARNING, "Failed", f"Error: {message}",
                                    field_path=field_path)
            return RETRY_AFTER_ERROR * 5
        self.counts["containers_started"] += 1
        state.waiting.pop(name, None)
        self.deps.recorder.emit(pod, NORMAL, "Started", f"Started container {name}",
                                field_path=field_path)
        post_start = (container.get("lifecycle") or {}).get("postStart")
        if post_start:
            failure = await run_handler(self.runtime, post_start, container_id=container_id,
                                        container=container, pod_ip=pod_ip,
                                        timeout=float(_spec(pod).get(
                                            "terminationGracePeriodSeconds", 30) or 30))
            if failure:
                self.deps.recorder.emit(pod, WARNING, "FailedPostStartHook", failure,
                                        field_path=field_path)
                await self._kill_container(pod, container, container_id, grace=0,
                                           message="FailedPostStartHook", run_pre_stop=False)
        return None

    async def _kill_container(self, pod: Obj, container: Obj, container_id: str, *,
                              grace: float | None, message: str = "",
                              run_pre_stop: bool = True) -> None:
        """preStop (within the grace period), then stop with what is left of it."""
        name = container.get("name", "")
        field_path = container_field_path(pod, name)
        if grace is None:
            grace = _spec(pod).get("terminationGracePeriodSeconds", 30)
        grace = float(grace if grace is not None else 30)
        self.deps.recorder.emit(pod, NORMAL, "Killing", message or f"Stopping container {name}",
                                field_path=field_path)
        started = time.monotonic()
        pre_stop = (container.get("lifecycle") or {}).get("preStop")
        if pre_stop and run_pre_stop and grace > 0:
            state = self.pods.get(_meta(pod).get("uid", ""))
            pod_ip = state.pod_ips[0] if state and state.pod_ips else self.deps.host_ip()
            try:
                failure = await asyncio.wait_for(
                    run_handler(self.runtime, pre_stop, container_id=container_id,
                                container=container, pod_ip=pod_ip, timeout=grace), grace)
            except asyncio.TimeoutError:
                failure = f"PreStop hook for Container \"{name}\" did not finish in " \
                          f"{grace:.0f}s"
            if failure:
                self.deps.recorder.emit(pod, WARNING, "FailedPreStopHook", failure,
                                        field_path=field_path)
        left = max(MIN_GRACE_PERIOD, int(round(grace - (time.monotonic() - started))))
        if grace == 0:
            left = 0
        await self._ignore_missing(self.runtime.stop_container(container_id, left))

    async def _kill_containers(self, uid: str, state: _Pod, grace: float | None) -> None:
        """Stop every running container of the pod at once (app containers and init)."""
        runtime = await self.pod_runtime(uid, state)
        specs = {c.get("name"): c for c in cri_config.all_containers(state.pod)}
        # App containers first, then the init containers (sidecars) that serve them.
        for init in (False, True):
            kills = []
            for record in runtime.containers:
                if record.init == init and record.state in ("running", "created", "unknown"):
                    container = specs.get(record.name) or {"name": record.name}
                    kills.append(self._kill_container(state.pod, container, record.id,
                                                      grace=grace,
                                                      run_pre_stop=record.state == "running"))
            if kills:
                await asyncio.gather(*kills)

    async def _stop_pod(self, uid: str, state: _Pod, grace: float | None) -> None:
        """A pod that ended (or is being deleted): containers and sandbox stopped."""
        self.deps.probes.remove(uid)
        await self._kill_containers(uid, state, grace)
        sandboxes = await self.runtime.list_pod_sandbox(api.PodSandboxFilter(
            label_selector={cri_config.POD_UID_LABEL: uid}))
        for sandbox in sandboxes:
            if sandbox.state == api.SANDBOX_READY:
                await self._ignore_missing(self.runtime.stop_pod_sandbox(sandbox.id))
        runtime = await self.pod_runtime(uid, state)
        runtime.sandbox_ready = False
        await self._report(uid, state, runtime, terminal=True)

    async def _finish(self, uid: str, state: _Pod) -> None:
        """The pod is being deleted: stop it within its grace period, clean up, write
        the final status, then delete it for good."""
        pod = state.pod
        meta = _meta(pod)
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = _spec(pod).get("terminationGracePeriodSeconds", 30)
        if state.gone:
            grace = min(float(grace or 0), MIN_GRACE_PERIOD)
        await self._stop_pod(uid, state, grace)
        await self.deps.status.flush(uid)
        await self.cleanup_pod(uid, pod)
        if is_static(pod):
            if self.deps.on_static_removed is not None:
                await self.deps.on_static_removed(pod)
        elif not state.gone:
            try:
                await self.deps.client.delete("v1 pods", meta.get("name", ""),
                                              meta.get("namespace", ""),
                                              grace_period_seconds=0,
                                              preconditions={"uid": uid})
            except ApiError as exc:
                if not (is_not_found(exc) or is_conflict(exc)):
                    raise
        self.deps.status.forget(uid)
        self.backoff.forget_prefix(uid)
        self.counts["pods_finished"] += 1
        state.done = True
        log.info("pod %s stopped and removed", pod_full_name(pod))

    async def cleanup_pod(self, uid: str, pod: Obj | None = None) -> None:
        """Remove the pod's containers, sandboxes, volumes, cgroup and folder."""
        containers = await self.runtime.list_containers(api.ContainerFilter(
            label_selector={cri_config.POD_UID_LABEL: uid}))
        for container in containers:
            if container.state == api.CONTAINER_RUNNING:
                await self._ignore_missing(self.runtime.stop_container(container.id, 0))
            await self._ignore_missing(self.runtime.remove_container(container.id))
            self._exited.pop(container.id, None)
        sandboxes = await self.runtime.list_pod_sandbox(api.PodSandboxFilter(
            label_selector={cri_config.POD_UID_LABEL: uid}))
        for sandbox in sandboxes:
            await self._ignore_missing(self.runtime.stop_pod_sandbox(sandbox.id))
            await self._ignore_missing(self.runtime.remove_pod_sandbox(sandbox.id))
        await self.deps.volumes.teardown(uid)
        if pod is not None:
            cgroups.remove(cri_config.pod_cgroup_parent(pod, self.settings))
        else:
            for qos in ("", "burstable", "besteffort"):
                parts = [self.settings.cgroup_root.rstrip("/"), "kubepods", qos, f"pod{uid}"]
                cgroups.remove("/".join(p for p in parts if p))
        folder = cri_config.pod_dir(self.settings.root_dir, uid)
        if os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)
        # The pod's log folder (<namespace>_<name>_<uid>) goes with it.
        if os.path.isdir(self.settings.log_root):
            for name in os.listdir(self.settings.log_root):
                if name.endswith(f"_{uid}"):
                    shutil.rmtree(os.path.join(self.settings.log_root, name),
                                  ignore_errors=True)

    async def _remove_old_containers(self, runtime: PodRuntime) -> None:
        """Of each container name, keep the running one and the newest exited one."""
        for name in {c.name for c in runtime.containers}:
            exited = [c for c in runtime.history(name) if c.state == "exited"]
            for record in exited[1:]:
                await self._ignore_missing(self.runtime.remove_container(record.id))
                self._exited.pop(record.id, None)

    async def _report(self, uid: str, state: _Pod, runtime: PodRuntime,
                      terminal: bool = False) -> None:
        pod = state.pod
        probes = self.deps.probes
        status = pod_status(pod, runtime, host_ip=self.deps.host_ip(),
                            waiting=state.waiting,
                            ready=lambda name: probes.ready(uid, name),
                            started=lambda name: probes.started(uid, name),
                            previous=self.deps.status.cached(uid))
        if state.rejected is not None:
            status.update(phase="Failed", reason=state.rejected[0], message=state.rejected[1])
        elif terminal and status["phase"] not in TERMINAL_PHASES:
            # Every container is stopped: the pod ends, Succeeded only when each of
            # its containers exited 0 (upstream's terminal phase of a stopped pod).
            codes = [((s.get("state") or {}).get("terminated") or {}).get("exitCode")
                     for s in status.get("containerStatuses") or []]
            status["phase"] = "Succeeded" if codes and all(c == 0 for c in codes) \
                else "Failed"
            for condition in status["conditions"]:
                if condition["type"] in ("Ready", "ContainersReady") \
                        and condition["status"] == "True":
                    condition.update(status="False", reason="PodCompleted"
                                     if status["phase"] == "Succeeded" else "PodFailed")
                    condition.pop("message", None)
            for entry in status.get("containerStatuses") or []:
                entry["ready"] = False
                entry["started"] = False
        target = self.deps.status_target(pod)
        if target is None:
            return
        namespace, name, api_uid = target
        self.deps.status.set(uid, namespace, name, api_uid, status)

    @staticmethod
    async def _ignore_missing(call: Awaitable) -> None:
        try:
            await call
        except NotFoundError:
            pass
        except RuntimeError_ as exc:
            log.warning("runtime: %s", exc)


def _go_duration(seconds: int) -> str:
    """Go's time.Duration text of whole seconds ("10s", "1m20s", "5m0s")."""
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


# --- the relist -----------------------------------------------------------------------

class Relister:
    """Lists the runtime's containers and sandboxes every `period` seconds and calls
    `on_change(pod_uid)` for each pod whose containers or sandboxes changed state, and
    `on_orphan(pod_uid)` for each pod uid found that the kubelet does not run."""

    def __init__(self, runtime: Any, on_change: Callable[[str], None],
                 on_orphan: Callable[[str], None] | None = None,
                 known: Callable[[str], bool] = lambda uid: True,
                 period: float = RELIST_PERIOD):
        self.runtime = runtime
        self.on_change = on_change
        self.on_orphan = on_orphan
        self.known = known
        self.period = period
        self._seen: dict[str, tuple[str, int]] = {}   # id -> (pod uid, state)
        self._task: asyncio.Task | None = None
        self.relists = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="kubelet-relist")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.relist()
            except Exception as exc:
                log.warning("relist failed: %s", exc)
            await asyncio.sleep(self.period)

    async def relist(self) -> None:
        containers = await self.runtime.list_containers()
        sandboxes = await self.runtime.list_pod_sandbox()
        now: dict[str, tuple[str, int]] = {}
        for item in list(containers) + list(sandboxes):
            uid = dict(item.labels).get(cri_config.POD_UID_LABEL)
            if uid:
                kind = 0 if isinstance(item, api.Container) else 10
                now[item.id] = (uid, kind + item.state)
        changed = {uid for key, (uid, value) in now.items()
                   if self._seen.get(key) != (uid, value)}
        changed |= {uid for key, (uid, _) in self._seen.items() if key not in now}
        self._seen = now
        self.relists += 1
        for uid in changed:
            self.on_change(uid)
        if self.on_orphan is not None:
            for uid in {uid for uid, _ in now.values()}:
                if not self.known(uid):
                    self.on_orphan(uid)
