"""Liveness, readiness and startup probes of running containers, as upstream's prober.

    probes = ProbeManager(runtime, on_change=lambda pod_uid: ...)
    probes.update(pod, "10.244.1.7", {"web": (container_id, started_monotonic)})
    probes.ready(pod_uid, "web")            # drives the pod's Ready condition
    probes.liveness_failed(pod_uid, "web")  # "Liveness probe failed: ..." -> restart it
    probes.reset(pod_uid, "web")            # after the kubelet restarted it

Each (pod, container, probe kind) has its own asyncio task that probes every
periodSeconds once initialDelaySeconds have passed since the container started. A result
counts only after successThreshold successes or failureThreshold failures in a row;
whenever a counted result changes, `on_change(pod_uid)` is called so the kubelet writes
the pod's status. As upstream:

- readiness starts as failure, liveness as success, startup as unknown;
- a container with a startup probe is not "started" until it succeeds, and its liveness
  and readiness probes wait for that; a container without one is started once running;
- a liveness (or startup) failure puts that probe on hold until the container is
  restarted (a new container ID, or `reset`), so a dying container is not probed;
- a probe that cannot be run at all (a port name the container does not declare, the
  container gone) is thrown away rather than counted.

Probes are exec (through the runtime's ExecSync, output in the failure message), httpGet
(200-399 is success; redirects followed only on the same host; User-Agent
kube-probe/<major>.<minor>), tcpSocket (a connection within timeoutSeconds) and grpc
(grpc.health.v1 Check).
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from kubesmith.cri.client import NotFoundError, RuntimeClient, RuntimeError_
from kubesmith.kubelet.envvars import go_quote
from kubesmith.protowire import length_delimited

log = logging.getLogger(__name__)
Obj = dict[str, Any]

KUBE_VERSION = "1.33"       # the Kubernetes version this kubelet speaks for
USER_AGENT = f"kube-probe/{KUBE_VERSION}"
LIVENESS, READINESS, STARTUP = "liveness", "readiness", "startup"
KINDS = {LIVENESS: "livenessProbe", READINESS: "readinessProbe", STARTUP: "startupProbe"}
SUCCESS, FAILURE = "success", "failure"
MAX_REDIRECTS = 10
MAX_BODY = 10 * 1024        # the most of a response body a probe reads


class ProbeError(Exception):
    """The probe could not be run; its result is thrown away (not a failure)."""


@dataclass
class ProbeResult:
    ok: bool
    output: str = ""


@dataclass
class _ContainerState:
    """What the probes know about one running container."""
    container: Obj
    container_id: str
    started_at: float                       # time.monotonic() it started
    results: dict[str, str | None] = field(default_factory=dict)
    failure_message: str | None = None      # liveness/startup past failureThreshold
    tasks: dict[str, asyncio.Task] = field(default_factory=dict)

    def has(self, kind: str) -> bool:
        return self.container.get(KINDS[kind]) is not None

    def started(self) -> bool:
        return not self.has(STARTUP) or self.results.get(STARTUP) == SUCCESS


class ProbeManager:
    """Runs the probes of every container on the node; read their results here."""

    def __init__(self, runtime: RuntimeClient, on_change: Callable[[str], None], *,
                 time_scale: float = 1.0,
                 record_event: Callable[[Obj, str, str, str, str], None] | None = None):
        """`time_scale` multiplies every probe duration (tests run with small values);
        `record_event(pod, container_name, type, reason, message)` is told of probe
        failures (upstream's Unhealthy / ProbeWarning events)."""
        self.runtime = runtime
        self.on_change = on_change
        self.time_scale = time_scale
        self.record_event = record_event
        self._pods: dict[str, Obj] = {}
        self._pod_ips: dict[str, str] = {}
        self._states: dict[tuple[str, str], _ContainerState] = {}
        self._session: aiohttp.ClientSession | None = None

    # --- what the kubelet calls -------------------------------------------------------

    def update(self, pod: Obj, pod_ip: str, containers: dict[str, tuple[str, float]]) -> None:
        """The pod's running containers (name -> (container id, started monotonic
        time)): probe workers start for new containers, restart for restarted ones and
        stop for containers that no longer run."""
        uid = pod["metadata"]["uid"]
        specs = {c.get("name"): c for c in _probed_containers(pod)}
        names = set(specs) | set(containers) | {n for (u, n) in self._states if u == uid}
        before = self._answers(uid, names)
        self._pods[uid] = pod
        self._pod_ips[uid] = pod_ip
        for (state_uid, name) in list(self._states):
            if state_uid == uid and (name not in containers or name not in specs):
                self._drop(uid, name)
        for name, (container_id, started_at) in containers.items():
            spec = specs.get(name)
            if spec is None:
                continue
            state = self._states.get((uid, name))
            if state is not None and state.container_id == container_id:
                state.container = spec
                continue
            if state is not None:
                self._drop(uid, name)
            state = _ContainerState(spec, container_id, started_at)
            state.results = {LIVENESS: SUCCESS, READINESS: FAILURE, STARTUP: None}
            self._states[(uid, name)] = state
            for kind in KINDS:
                if state.has(kind):
                    state.tasks[kind] = asyncio.get_running_loop().create_task(
                        self._worker(uid, name, state, kind),
                        name=f"probe-{kind}-{uid}-{name}")
        if self._answers(uid, names) != before:
            # A container became started/ready (or stopped being) by this update alone,
            # e.g. one without probes that now runs: the pod's status must be written
            # again. Told after the caller's current step, not inside it.
            asyncio.get_running_loop().call_soon(self._notify, uid)

    def remove(self, pod_uid: str) -> None:
        """Stops every probe of the pod and forgets it."""
        for (uid, name) in list(self._states):
            if uid == pod_uid:
                self._drop(uid, name)
        self._pods.pop(pod_uid, None)
        self._pod_ips.pop(pod_uid, None)

    def started(self, pod_uid: str, name: str) -> bool:
        """Running (as the last update() said) and past its startup probe if it has
        one."""
        state = self._states.get((pod_uid, name))
        return state is not None and state.started()

    def ready(self, pod_uid: str, name: str) -> bool:
        """Started and, with a readiness probe, past its successThreshold; true for a
        running container without probes. False for containers update() has not been
        told of: an update() that changes an answer calls on_change."""
        state = self._states.get((pod_uid, name))
        if state is None or not state.started():
            return False
        return not state.has(READINESS) or state.results.get(READINESS) == SUCCESS

    def liveness_failed(self, pod_uid: str, name: str) -> str | None:
        """The failure message once the liveness (or startup) probe reached its
        failureThreshold: the kubelet kills and restarts the container."""
        state = self._states.get((pod_uid, name))
        return state.failure_message if state is not None else None

    def reset(self, pod_uid: str, name: str) -> None:
        """The kubelet restarted the container: its probes start over."""
        state = self._states.get((pod_uid, name))
        if state is None:
            return
        state.failure_message = None
        state.results = {LIVENESS: SUCCESS, READINESS: FAILURE, STARTUP: None}

    async def close(self) -> None:
        """Stops every probe and closes the HTTP session."""
        tasks = [task for state in self._states.values() for task in state.tasks.values()]
        for key in list(self._states):
            self._drop(*key)
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- workers ----------------------------------------------------------------------

    def _answers(self, pod_uid: str, names: set[str]) -> dict[str, tuple[bool, bool]]:
        return {name: (self.started(pod_uid, name), self.ready(pod_uid, name))
                for name in names}

    def _notify(self, pod_uid: str) -> None:
        try:
            self.on_change(pod_uid)
        except Exception:
            log.exception("probe result handler")

    def _drop(self, pod_uid: str, name: str) -> None:
        state = self._states.pop((pod_uid, name), None)
        if state is not None:
            for task in state.tasks.values():
                task.cancel()

    def _seconds(self, value: Any, default: float) -> float:
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else default
        return number * self.time_scale

    async def _worker(self, uid: str, name: str, state: _ContainerState, kind: str) -> None:
        spec = state.container[KINDS[kind]]
        period = self._seconds(spec.get("periodSeconds"), 10)
        initial_delay = self._seconds(spec.get("initialDelaySeconds"), 0)
        success_threshold = int(spec.get("successThreshold") or 1)
        failure_threshold = int(spec.get("failureThreshold") or 3)
        if kind != READINESS:
            success_threshold = 1   # only readiness may ask for more (as validation says)
        last: str | None = None
        run = 0
        # Workers of a restarted kubelet would all probe at once; spread the first ones.
        if time.monotonic() - state.started_at > period:
            await asyncio.sleep(random.uniform(0, period))
        while self._states.get((uid, name)) is state:
            # After a liveness/startup failure the container is only waited on until the
            # kubelet restarts it (a new container ID or reset()).
            on_hold = kind in (LIVENESS, STARTUP) and state.failure_message is not None
            if self._due(state, kind, initial_delay) and not on_hold:
                try:
                    result = await self._probe(uid, state, kind, spec)
                except asyncio.CancelledError:
                    raise
                except ProbeError as err:
                    log.debug("%s probe of %s/%s errored: %s", kind, uid, name, err)
                    result = None
                except Exception:       # a probe bug must not end the worker
                    log.exception("%s probe of %s/%s", kind, uid, name)
                    result = None
                if result is not None and self._states.get((uid, name)) is state:
                    outcome = SUCCESS if result.ok else FAILURE
                    run = run + 1 if outcome == last else 1
                    last = outcome
                    threshold = success_threshold if result.ok else failure_threshold
                    if not result.ok:
                        self._event(uid, name, "Unhealthy",
                                    f"{kind.capitalize()} probe failed: {result.output}")
                    elif result.output:
                        self._event(uid, name, "ProbeWarning",
                                    f"{kind.capitalize()} probe warning: {result.output}")
                    if run >= threshold:
                        self._set(uid, state, kind, outcome, result)
                        if outcome == FAILURE and kind in (LIVENESS, STARTUP):
                            run = 0             # counting starts over after the restart
                            last = None
            await asyncio.sleep(period)

    def _due(self, state: _ContainerState, kind: str, initial_delay: float) -> bool:
        if time.monotonic() - state.started_at < initial_delay:
            return False
        if kind == STARTUP:
            return not state.started()      # done once the container has started
        return state.started()              # the others wait for the startup probe

    def _set(self, uid: str, state: _ContainerState, kind: str, outcome: str,
             result: ProbeResult) -> None:
        changed = state.results.get(kind) != outcome
        state.results[kind] = outcome
        if outcome == FAILURE and kind in (LIVENESS, STARTUP):
            state.failure_message = f"{kind.capitalize()} probe failed: {result.output}"
            changed = True
        if changed:
            self._notify(uid)

    def _event(self, uid: str, name: str, reason: str, message: str) -> None:
        if self.record_event is None or uid not in self._pods:
            return
        try:
            self.record_event(self._pods[uid], name, "Warning", reason, message)
        except Exception:
            log.exception("probe event")

    # --- the probes -------------------------------------------------------------------

    async def _probe(self, uid: str, state: _ContainerState, kind: str, spec: Obj
                     ) -> ProbeResult:
        timeout = self._seconds(spec.get("timeoutSeconds"), 1)
        if spec.get("exec") is not None:
            return await self._exec(state, spec["exec"].get("command") or [], timeout)
        if spec.get("httpGet") is not None:
            action = spec["httpGet"]
            port = resolve_port(action.get("port"), state.container)
            return await self._http(action, self._host(uid, action), port, timeout)
        if spec.get("tcpSocket") is not None:
            action = spec["tcpSocket"]
            port = resolve_port(action.get("port"), state.container)
            return await tcp_probe(self._host(uid, action), port, timeout)
        if spec.get("grpc") is not None:
            action = spec["grpc"]
            return await grpc_probe(self._host(uid, {}), int(action.get("port") or 0),
                                    action.get("service") or "", timeout)
        raise ProbeError("the probe names no action")

    def _host(self, uid: str, action: Obj) -> str:
        """Where a network probe goes: its `host`, else the pod's IP (the node's for a
        host-network pod, as the kubelet passes it)."""
        host = action.get("host") or self._pod_ips.get(uid, "")
        if not host:
            raise ProbeError("the pod has no IP yet")    # not counted as a failure
        return host

    async def _exec(self, state: _ContainerState, command: list[str], timeout: float
                    ) -> ProbeResult:
        try:
            code, stdout, stderr = await asyncio.wait_for(
                self.runtime.exec_sync(state.container_id, list(command),
                                       max(1, math.ceil(timeout))),
                timeout + max(1.0, timeout))    # the runtime enforces the timeout itself
        except NotFoundError as err:
            raise ProbeError(str(err)) from None
        except RuntimeError_ as err:
            if getattr(err, "timed_out", False):
                return ProbeResult(False, f"command {_go_quote_list(command)} timed out")
            raise ProbeError(str(err)) from None
        except asyncio.TimeoutError:
            return ProbeResult(False, f"command {_go_quote_list(command)} timed out")
        output = (stdout + stderr).decode(errors="replace")
        return ProbeResult(code == 0, output)

    def _http_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No keep-alive and no cookies, as upstream's prober: every probe is a fresh
            # connection, so a dead server is never hidden behind a pooled one.
            connector = aiohttp.TCPConnector(ssl=False, force_close=True)
            self._session = aiohttp.ClientSession(connector=connector,
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def _http(self, action: Obj, host: str, port: int, timeout: float) -> ProbeResult:
        scheme = (action.get("scheme") or "HTTP").lower()
        path = action.get("path") or "/"
        if not path.startswith("/"):
            path = "/" + path
        host_part = f"[{host}]" if ":" in host else host
        url = f"{scheme}://{host_part}:{port}{path}"
        return await http_probe(self._http_session(), url, action.get("httpHeaders") or [],
                                timeout)


def _probed_containers(pod: Obj) -> list[Obj]:
    """Containers whose probes run: the regular ones and restartable init containers
    (sidecars)."""
    spec = pod.get("spec") or {}
    sidecars = [c for c in spec.get("initContainers") or []
                if c.get("restartPolicy") == "Always"]
    return list(spec.get("containers") or []) + sidecars


def resolve_port(port: Any, container: Obj) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) and not isinstance(port, bool):
        if 0 < port < 65536:
            return port
        raise ProbeError(f"invalid port number: {port}")
    if isinstance(port, str):
        if port.isdigit():
            return resolve_port(int(port), container)
        for declared in container.get("ports") or []:
            if declared.get("name") == port:
                return int(declared.get("containerPort") or 0)
        raise ProbeError(f"couldn't find port: {port} in {container.get('name')}")
    raise ProbeError(f"invalid port: {port!r}")


def _go_quote_list(command: list[str]) -> str:
    """The command as upstream's timeout message quotes it (%q of the joined words)."""
    return go_quote(" ".join(command))


async def http_probe(session: aiohttp.ClientSession, url: str, headers: list[Obj],
                     timeout: float) -> ProbeResult:
    """GET `url`: 200-399 succeeds (a redirect not followed is a success with a
    warning), anything else fails; redirects are followed on the same host only."""
    request_headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    extra: list[tuple[str, str]] = []
    for header in headers:
        name, value = header.get("name") or "", header.get("value") or ""
        if name.lower() in ("user-agent", "accept", "host"):
            request_headers = {k: v for k, v in request_headers.items()
                               if k.lower() != name.lower()}
        extra.append((name, value))
    first_host = URL(url).host
    current = url
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        for _ in range(MAX_REDIRECTS + 1):
            remaining = max(0.001, deadline - asyncio.get_running_loop().time())
            all_headers = list(request_headers.items()) + extra
            async with session.get(current, headers=CIMultiDict(all_headers),
                                   allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=remaining)) as response:
                body = await response.content.read(MAX_BODY)
                status = response.status
                location = response.headers.get("Location")
            if 300 <= status < 400 and location:
                target = URL(current).join(URL(location))
                if target.host == first_host:
                    current = str(target)
                    continue
                # Upstream stops at a redirect to another host and reports it.
                return ProbeResult(True, "Probe terminated redirects, Response body: "
                                   + body.decode(errors="replace"))
            if 200 <= status < 300:
                return ProbeResult(True)
            if 300 <= status < 400:
                return ProbeResult(True, "Probe terminated redirects, Response body: "
                                   + body.decode(errors="replace"))
            return ProbeResult(False, f"HTTP probe failed with statuscode: {status}")
        return ProbeResult(False, f'Get "{current}": stopped after {MAX_REDIRECTS} redirects')
    except asyncio.TimeoutError:
        return ProbeResult(False, f'Get "{current}": context deadline exceeded '
                                  f"(Client.Timeout exceeded while awaiting headers)")
    except aiohttp.ClientConnectorError as err:
        return ProbeResult(False, f'Get "{current}": dial tcp {err.host}:{err.port}: '
                                  f"connect: {_reason(err.os_error)}")
    except (aiohttp.ClientError, OSError) as err:
        return ProbeResult(False, f'Get "{current}": {err}')


def _reason(err: BaseException | None) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return str(err)


async def tcp_probe(host: str, port: int, timeout: float) -> ProbeResult:
    """Success when a TCP connection opens within `timeout`."""
    host_port = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except asyncio.TimeoutError:
        return ProbeResult(False, f"dial tcp {host_port}: i/o timeout")
    except OSError as err:
        return ProbeResult(False, f"dial tcp {host_port}: connect: {_reason(err)}")
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return ProbeResult(True)


# grpc.health.v1.HealthCheckResponse.ServingStatus
_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


async def grpc_probe(host: str, port: int, service: str, timeout: float) -> ProbeResult:
    """grpc.health.v1.Health/Check: success when the answer is SERVING. The two tiny
    messages are encoded by hand (one string field; one enum field)."""
    import grpc
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    encoded = service.encode()
    request = length_delimited(1, encoded) if encoded else b""   # field 1: service
    async with grpc.aio.insecure_channel(target) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            return ProbeResult(False, f'timeout: failed to connect service "{target}" within '
                                      f"{timeout:g}s")
        try:
            answer = await check(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                return ProbeResult(False, f"timeout: health rpc did not complete within "
                                          f"{timeout:g}s")
            return ProbeResult(False, f"error: health rpc probe failed: {err.details()}")
    status = answer[1] if len(answer) >= 2 and answer[0] == 0x08 else 0
    if status == 1:
        return ProbeResult(True)
    return ProbeResult(False, f'service unhealthy (responded with '
                              f'"{_SERVING_STATUS.get(status, status)}")')
