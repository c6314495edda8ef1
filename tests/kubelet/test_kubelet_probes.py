"""Probes (kubesmith.kubelet.probes): httpGet against a local aiohttp server on
127.0.0.1, tcpSocket and grpc against local ports, exec against a fake runtime. Every
duration runs at a hundredth of its value (time_scale), so periodSeconds 1 is 10 ms."""
from __future__ import annotations

import asyncio
import socket
import time

import grpc
import pytest
from aiohttp import web

from kubesmith.cri.client import RuntimeError_
from kubesmith.kubelet.probes import USER_AGENT, ProbeManager
from tests.kubelet.contents_helpers import FakeRuntime, deadline_exceeded

SCALE = 0.01
UID = "pod-uid-1"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def pod_with(container, uid=UID):
    return {"metadata": {"name": "web-1", "namespace": "default", "uid": uid},
            "spec": {"containers": [container]}}


def probe(action, **settings):
    settings.setdefault("periodSeconds", 1)
    settings.setdefault("timeoutSeconds", 10)   # 100 ms
    return {**action, **settings}


class Changes:
    """on_change recorder."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, uid):
        self.calls.append(uid)


class HttpServer:
    """A local HTTP server whose /health answers `status` (settable)."""

    def __init__(self):
        self.status = 200
        self.delay = 0.0
        self.requests: list[web.Request] = []

    async def start(self):
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/same", self.redirect_same)
        app.router.add_get("/loop", self.redirect_loop)
        app.router.add_get("/other", self.redirect_other)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        await self.runner.cleanup()

    async def health(self, request):
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text="body")

    async def redirect_same(self, request):
        raise web.HTTPFound("/health")

    async def redirect_loop(self, request):
        raise web.HTTPFound("/loop")

    async def redirect_other(self, request):
        raise web.HTTPFound(f"http://localhost:{self.port}/health")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- httpGet ---------------------------------------------------------------------------

def test_http_readiness_follows_the_server():
    async def main():
        server = await HttpServer().start()
        changes = Changes()
        manager = ProbeManager(FakeRuntime(lambda *_: (0, b"", b"")), changes,
                               time_scale=SCALE)
        try:
            container = {"name": "web", "ports": [{"name": "http",
                                                   "containerPort": server.port}],
                         "readinessProbe": probe({"httpGet": {
                             "path": "/health", "port": "http",
                             "httpHeaders": [{"name": "X-Probe", "value": "yes"}]}},
                             successThreshold=2, failureThreshold=2)}
            pod = pod_with(container)
            assert not manager.started(UID, "web") and not manager.ready(UID, "web")
            manager.update(pod, "127.0.0.1", {"web": ("c1", time.monotonic())})
            assert manager.started(UID, "web") and not manager.ready(UID, "web")
            await asyncio.sleep(0)
            assert changes.calls == [UID]       # started by the update itself
            await wait_until(lambda: manager.ready(UID, "web"))
            assert changes.calls == [UID, UID]
            assert len(server.requests) >= 2                # successThreshold 2
            request = server.requests[0]
            assert request.headers["User-Agent"] == USER_AGENT
            assert request.headers["Accept"] == "*/*"
            assert request.headers["X-Probe"] == "yes"
            server.status = 503
            await wait_until(lambda: not manager.ready(UID, "web"))
            assert changes.calls == [UID] * 3
            assert manager.liveness_failed(UID, "web") is None
            server.status = 302     # a redirect without Location: 3xx counts as success
            await wait_until(lambda: manager.ready(UID, "web"))
        finally:
            await manager.close()
            await server.stop()
    run(main())


def test_http_results_and_messages():
    from kubesmith.kubelet.probes import http_probe
    import aiohttp

    async def main():
        server = await HttpServer().start()
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            try:
                assert (await http_probe(session, base + "/health", [], 1)).ok
                result = await http_probe(session, base + "/same", [], 1)
                assert result.ok and result.output == ""
                result = await http_probe(session, base + "/other", [], 1)
                assert result.ok and result.output.startswith("Probe terminated redirects")
                result = await http_probe(session, base + "/loop", [], 1)
                assert not result.ok and "stopped after 10 redirects" in result.output
                server.status = 404
                result = await http_probe(session, base + "/health", [], 1)
                assert (result.ok, result.output) == (
                    False, "HTTP probe failed with statuscode: 404")
                server.status, server.delay = 200, 0.5
                result = await http_probe(session, base + "/health", [], 0.05)
                assert not result.ok and "context deadline exceeded" in result.output
                server.delay = 0
                result = await http_probe(session, base + "/health",
                                          [{"name": "Host", "value": "example.test"},
                                           {"name": "User-Agent", "value": "mine"}], 1)
                assert result.ok
                assert server.requests[-1].headers["Host"] == "example.test"
                assert server.requests[-1].headers["User-Agent"] == "mine"
                port = free_port()
                result = await http_probe(session, f"http://127.0.0.1:{port}/", [], 1)
                assert not result.ok
                assert result.output == (f'Get "http://127.0.0.1:{port}/": dial tcp '
                                         f"127.0.0.1:{port}: connect: connection refused")
            finally:
                await server.stop()
    run(main())


# --- tcpSocket and grpc ---------------------------------------------------------------

def test_tcp_liveness():
    async def main():
        listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        changes = Changes()
        manager = ProbeManager(FakeRuntime(lambda *_: (0, b"", b"")), changes,
                               time_scale=SCALE)
        try:
            container = {"name": "db", "livenessProbe": probe({"tcpSocket": {"port": port}},
                                                              failureThreshold=2)}
            manager.update(pod_with(container), "127.0.0.1", {"db": ("c1", time.monotonic())})
            await asyncio.sleep(0.1)
            assert manager.liveness_failed(UID, "db") is None and manager.ready(UID, "db")
            listener.close()
            await listener.wait_closed()
            await wait_until(lambda: manager.liveness_failed(UID, "db") is not None)
            assert manager.liveness_failed(UID, "db") == (
                f"Liveness probe failed: dial tcp 127.0.0.1:{port}: connect: "
                f"connection refused")
            assert changes.calls == [UID, UID]      # running (update), then failed
        finally:
            await manager.close()
    run(main())


def test_grpc_probe():
    from kubesmith.kubelet.probes import grpc_probe

    async def main():
        answer = {"": b"\x08\x01", "broken": b"\x08\x02"}
        handler = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(
                lambda request, context: answer["broken" if request else ""])})
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            assert (await grpc_probe("127.0.0.1", port, "", 1)).ok
            result = await grpc_probe("127.0.0.1", port, "broken", 1)
            assert (result.ok, result.output) == (
                False, 'service unhealthy (responded with "NOT_SERVING")')
            result = await grpc_probe("127.0.0.1", free_port(), "", 0.2)
            assert not result.ok and result.output.startswith("timeout: failed to connect")
        finally:
            await server.stop(None)
    run(main())


# --- exec, thresholds, hold and restart -----------------------------------------------

def test_exec_liveness_failure_holds_until_restart():
    healthy = {"c1": False, "c2": True}
    runtime = FakeRuntime(lambda cid, cmd: (0, b"", b"") if healthy[cid]
                          else (1, b"unhealthy\n", b"err"))

    async def main():
        changes = Changes()
        manager = ProbeManager(runtime, changes, time_scale=SCALE)
        try:
            container = {"name": "app", "livenessProbe": probe(
                {"exec": {"command": ["cat", "/tmp/healthy"]}}, failureThreshold=3,
                timeoutSeconds=5)}
            pod = pod_with(container)
            manager.update(pod, "10.0.0.1", {"app": ("c1", time.monotonic())})
            await wait_until(lambda: manager.liveness_failed(UID, "app") is not None)
            assert manager.liveness_failed(UID, "app") == \
                "Liveness probe failed: unhealthy\nerr"
            assert len(runtime.calls) == 3
            assert runtime.calls[0] == ("c1", ["cat", "/tmp/healthy"], 1)
            await asyncio.sleep(0.1)
            assert len(runtime.calls) == 3      # on hold: the container is not probed
            # The kubelet restarts it: a new container ID, probing starts over.
            manager.update(pod, "10.0.0.1", {"app": ("c2", time.monotonic())})
            assert manager.liveness_failed(UID, "app") is None
            await wait_until(lambda: len(runtime.calls) > 5)
            assert manager.liveness_failed(UID, "app") is None
            assert {cid for cid, _, _ in runtime.calls[3:]} == {"c2"}
            # reset() also ends a hold (the same ID restarted in place).
            healthy["c2"] = False
            await wait_until(lambda: manager.liveness_failed(UID, "app") is not None)
            count = len(runtime.calls)
            healthy["c2"] = True
            manager.reset(UID, "app")
            await wait_until(lambda: len(runtime.calls) > count)
            assert manager.liveness_failed(UID, "app") is None
        finally:
            await manager.close()
    run(main())


def test_exec_timeout_and_errors():
    answers = iter([deadline_exceeded(),
                    RuntimeError_("ExecSync", grpc.StatusCode.UNKNOWN, "exec failed")])

    def handler(cid, cmd):
        answer = next(answers, (0, b"", b""))
        if isinstance(answer, Exception):
            raise answer
        return answer
    events = []

    async def main():
        manager = ProbeManager(FakeRuntime(handler), Changes(), time_scale=SCALE,
                               record_event=lambda pod, name, kind, reason, message:
                               events.append((name, kind, reason, message)))
        try:
            container = {"name": "app", "readinessProbe": probe(
                {"exec": {"command": ["sh", "-c", "sleep 9"]}}, failureThreshold=1)}
            manager.update(pod_with(container), "", {"app": ("c1", time.monotonic())})
            await wait_until(lambda: manager.ready(UID, "app"))
        finally:
            await manager.close()
    run(main())
    # The timeout counted as a failure; the runtime's other error was thrown away.
    assert events == [("app", "Warning", "Unhealthy",
                       'Readiness probe failed: command "sh -c sleep 9" timed out')]


def test_startup_probe_gates_liveness_and_readiness():
    calls = []
    startup_answers = iter([(1, b"not yet", b""), (1, b"not yet", b"")])

    def handler(cid, cmd):
        calls.append(cmd[0])
        if cmd[0] == "startup":
            return next(startup_answers, (0, b"", b""))
        return (0, b"", b"")

    async def main():
        changes = Changes()
        manager = ProbeManager(FakeRuntime(handler), changes, time_scale=SCALE)
        try:
            container = {"name": "app",
                         "startupProbe": probe({"exec": {"command": ["startup"]}},
                                               failureThreshold=5),
                         "livenessProbe": probe({"exec": {"command": ["live"]}}),
                         "readinessProbe": probe({"exec": {"command": ["ready"]}})}
            manager.update(pod_with(container), "", {"app": ("c1", time.monotonic())})
            assert not manager.started(UID, "app") and not manager.ready(UID, "app")
            await wait_until(lambda: manager.started(UID, "app"))
            await wait_until(lambda: manager.ready(UID, "app"))
            first_other = min(i for i, name in enumerate(calls) if name != "startup")
            assert calls[:first_other] == ["startup"] * 3
            await asyncio.sleep(0.05)
            assert "startup" not in calls[first_other:]     # done once started
            assert changes.calls.count(UID) >= 2            # started, then ready
        finally:
            await manager.close()
    run(main())


def test_startup_failure_asks_for_a_restart():
    async def main():
        manager = ProbeManager(FakeRuntime(lambda *_: (2, b"still booting", b"")),
                               Changes(), time_scale=SCALE)
        try:
            container = {"name": "app",
                         "startupProbe": probe({"exec": {"command": ["check"]}},
                                               failureThreshold=2),
                         "livenessProbe": probe({"exec": {"command": ["live"]}})}
            manager.update(pod_with(container), "", {"app": ("c1", time.monotonic())})
            await wait_until(lambda: manager.liveness_failed(UID, "app") is not None)
            assert manager.liveness_failed(UID, "app") == \
                "Startup probe failed: still booting"
            assert not manager.started(UID, "app")
        finally:
            await manager.close()
    run(main())


def test_initial_delay():
    runtime = FakeRuntime(lambda *_: (0, b"", b""))

    async def main():
        manager = ProbeManager(runtime, Changes(), time_scale=SCALE)
        try:
            container = {"name": "app", "readinessProbe": probe(
                {"exec": {"command": ["ready"]}}, initialDelaySeconds=30)}   # 300 ms
            started = time.monotonic()
            manager.update(pod_with(container), "", {"app": ("c1", started)})
            await wait_until(lambda: manager.ready(UID, "app"))
            assert time.monotonic() - started >= 0.3
        finally:
            await manager.close()
    run(main())


def test_containers_without_probes_and_unrunnable_probes():
    async def main():
        changes = Changes()
        manager = ProbeManager(FakeRuntime(lambda *_: (0, b"", b"")), changes,
                               time_scale=SCALE)
        try:
            plain = {"name": "plain"}
            broken = {"name": "broken", "readinessProbe": probe(
                {"httpGet": {"port": "no-such-port"}})}
            pod = {"metadata": {"name": "p", "namespace": "default", "uid": UID},
                   "spec": {"containers": [plain, broken]}}
            manager.update(pod, "127.0.0.1", {"plain": ("c1", time.monotonic()),
                                              "broken": ("c2", time.monotonic())})
            assert manager.ready(UID, "plain") and manager.started(UID, "plain")
            await asyncio.sleep(0.1)
            assert changes.calls == [UID]   # plain became ready with the update
            manager.update(pod, "127.0.0.1", {"plain": ("c1", time.monotonic()),
                                              "broken": ("c2", time.monotonic())})
            await asyncio.sleep(0)
            assert changes.calls == [UID]   # the same again: nothing to tell
            assert not manager.ready(UID, "broken")     # errors are not successes
            assert manager.liveness_failed(UID, "broken") is None
            # A container that stops running: its probes stop and it is not ready.
            manager.update(pod, "127.0.0.1", {"plain": ("c1", time.monotonic())})
            assert not manager.ready(UID, "broken")
            manager.remove(UID)
            assert not manager.ready(UID, "plain")      # not known to run
            assert not any(t for t in asyncio.all_tasks()
                           if t.get_name().startswith("probe-") and not t.done()
                           and not t.cancelling())
        finally:
            await manager.close()
    run(main())


def test_sidecar_probes_run():
    async def main():
        manager = ProbeManager(FakeRuntime(lambda *_: (0, b"", b"")), Changes(),
                               time_scale=SCALE)
        try:
            pod = {"metadata": {"name": "p", "namespace": "default", "uid": UID},
                   "spec": {"initContainers": [{"name": "proxy", "restartPolicy": "Always",
                                                "readinessProbe": probe(
                                                    {"exec": {"command": ["ok"]}})}],
                            "containers": [{"name": "app"}]}}
            manager.update(pod, "", {"proxy": ("c1", time.monotonic()),
                                     "app": ("c2", time.monotonic())})
            assert not manager.ready(UID, "proxy")
            await wait_until(lambda: manager.ready(UID, "proxy"))
        finally:
            await manager.close()
    run(main())


@pytest.mark.parametrize("port", [0, 70000, "x"])
def test_resolve_port_errors(port):
    from kubesmith.kubelet.probes import ProbeError, resolve_port
    with pytest.raises(ProbeError):
        resolve_port(port, {"name": "c", "ports": [{"name": "http", "containerPort": 80}]})


def test_network_probes_wait_for_a_pod_ip():
    async def main():
        manager = ProbeManager(FakeRuntime(lambda *_: (0, b"", b"")), Changes(),
                               time_scale=SCALE)
        try:
            container = {"name": "app",
                         "livenessProbe": probe({"tcpSocket": {"port": 80}},
                                                failureThreshold=1),
                         "readinessProbe": probe({"httpGet": {"port": 80}})}
            manager.update(pod_with(container), "", {"app": ("c1", time.monotonic())})
            await asyncio.sleep(0.1)
            assert manager.liveness_failed(UID, "app") is None    # not a failure
            assert not manager.ready(UID, "app")
        finally:
            await manager.close()
    run(main())
