"""pods/eviction with disruption budgets; pods/log and pods/exec through a fake kubelet."""
from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time

import pytest
import trustme
from aiohttp import WSMsgType, web

from tests.e2e.kubectl_versions import kubectl_builds

PODS = "/api/v1/namespaces/{ns}/pods"
MERGE = "application/merge-patch+json"


@pytest.fixture
def ns(cluster):
    return cluster.new_namespace("p-", default_service_account=True)


def pod(name: str, node: str | None = None, labels: dict | None = None) -> dict:
    spec = {"containers": [{"name": "app", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def eviction(name: str, **options) -> dict:
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}}
    if options:
        body["deleteOptions"] = options
    return body


def running(cluster, ns, name):
    status = {"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True"}]}}
    answer = cluster.request("PATCH", PODS.format(ns=ns) + f"/{name}/status", status,
                             content_type=MERGE)
    assert answer.status == 200, answer.body


# --- eviction --------------------------------------------------------------------------

def test_eviction_without_budget_deletes(cluster, ns):
    assert cluster.request("POST", PODS.format(ns=ns), pod("a")).status == 201
    answer = cluster.request("POST", PODS.format(ns=ns) + "/a/eviction", eviction("a"))
    assert answer.status == 201, answer.body
    assert answer.json()["status"] == "Success"
    assert cluster.request("GET", PODS.format(ns=ns) + "/a").status == 404
    missing = cluster.request("POST", PODS.format(ns=ns) + "/a/eviction", eviction("a"))
    assert missing.status == 404
    wrong = cluster.request("POST", PODS.format(ns=ns) + "/a/eviction", eviction("b"))
    assert wrong.status == 400


def test_eviction_honours_the_budget(cluster, ns):
    for name in ("w1", "w2"):
        created = cluster.request("POST", PODS.format(ns=ns),
                                  pod(name, node="node-x", labels={"app": "web"}))
        assert created.status == 201, created.body
        running(cluster, ns, name)
    pdbs = f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets"
    budget = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
              "metadata": {"name": "web"},
              "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}
    created = cluster.request("POST", pdbs, budget)
    assert created.status == 201, created.body
    status = {"status": {"observedGeneration": created.json()["metadata"]["generation"],
                         "disruptionsAllowed": 1, "currentHealthy": 2, "desiredHealthy": 1,
                         "expectedPods": 2}}
    assert cluster.request("PATCH", pdbs + "/web/status", status,
                           content_type=MERGE).status == 200
    first = cluster.request("POST", PODS.format(ns=ns) + "/w1/eviction", eviction("w1"))
    assert first.status == 201, first.body
    marked = cluster.request("GET", PODS.format(ns=ns) + "/w1").json()
    assert marked["metadata"].get("deletionTimestamp")      # graceful: the kubelet ends it
    after = cluster.request("GET", pdbs + "/web").json()["status"]
    assert after["disruptionsAllowed"] == 0 and "w1" in after["disruptedPods"]
    second = cluster.request("POST", PODS.format(ns=ns) + "/w2/eviction", eviction("w2"))
    assert second.status == 429
    body = second.json()
    assert body["reason"] == "TooManyRequests"
    assert body["message"] == ("Cannot evict pod as it would violate the pod's disruption "
                               "budget.")
    assert body["details"]["causes"] == [{
        "reason": "DisruptionBudget",
        "message": "The disruption budget web needs 1 healthy pods and has 2 currently"}]
    assert cluster.request("GET", PODS.format(ns=ns) + "/w2").status == 200


# --- a fake kubelet --------------------------------------------------------------------

class FakeKubelet:
    """An aiohttp TLS server in a thread: containerLogs, and exec over WebSocket (v4/v5
    channel protocols) or any other upgrade (bytes echoed back after the 101)."""

    def __init__(self, client_ca: str):
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("127.0.0.1")
        self.client_ca = client_ca
        self.port = 0
        self.seen: list[tuple[str, str, str | None]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "FakeKubelet":
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.cert.configure_cert(context)
        context.load_verify_locations(cafile=self.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED     # only the API server's client cert
        return context

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/containerLogs/{ns}/{pod}/{container}", self.logs)
        app.router.add_route("*", "/exec/{ns}/{pod}/{container}", self.exec)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        site = web.SockSite(runner, sock, ssl_context=self._context())
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    async def logs(self, request: web.Request):
        info = request.match_info
        self.seen.append(("log", request.path_qs, None))
        response = web.StreamResponse()
        response.content_type = "text/plain"
        await response.prepare(request)
        lines = [f"log of {info['ns']}/{info['pod']}/{info['container']}\n"]
        if request.query:
            lines.append("query " + "&".join(f"{k}={v}" for k, v in
                                             sorted(request.query.items())) + "\n")
        if request.query.get("follow") == "true":
            lines += [f"tick {i}\n" for i in range(3)]
        for line in lines:
            await response.write(line.encode())
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def exec(self, request: web.Request):
        self.seen.append(("exec", request.path_qs, request.headers.get("Upgrade")))
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return await self._raw(request)
        ws = web.WebSocketResponse(protocols=("v5.channel.k8s.io", "v4.channel.k8s.io"))
        await ws.prepare(request)
        command = " ".join(request.query.getall("command", []))
        await ws.send_bytes(b"\x01" + f"ran: {command}\n".encode())
        if request.query.get("stdin") == "true":
            async for message in ws:
                if message.type != WSMsgType.BINARY or not message.data:
                    break
                if message.data[0] == 0:
                    await ws.send_bytes(b"\x01" + message.data[1:])
                elif message.data[:2] == b"\xff\x00":      # v5: stdin closed
                    break
        await ws.send_bytes(b"\x03" + json.dumps({"metadata": {}, "status": "Success"})
                            .encode())
        await ws.close()
        return ws

    async def _raw(self, request: web.Request):
        """A stand-in for SPDY: 101, then every byte echoed back."""
        response = web.StreamResponse(status=101, headers={
            "Connection": "Upgrade", "Upgrade": request.headers.get("Upgrade", "")})
        reader = request.content
        request.protocol.keep_alive(False)

        class Echo:
            def feed_data(self_inner, data):
                asyncio.ensure_future(response.write(data.upper()))
                return False, b""

            def feed_eof(self_inner):
                pass
        request.protocol.set_parser(Echo())
        await response.prepare(request)
        await response.write(b"")
        await asyncio.sleep(1.0)
        del reader
        return response


@pytest.fixture(scope="module")
def kubelet(cluster):
    fake = FakeKubelet(str(cluster.pki / "ca.crt")).start()
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "fake-node"}}
    answer = cluster.request("POST", "/api/v1/nodes", node)
    assert answer.status in (201, 409), answer.body
    status = {"status": {"addresses": [{"type": "Hostname", "address": "fake-node"},
                                       {"type": "InternalIP", "address": "127.0.0.1"}],
                         "daemonEndpoints": {"kubeletEndpoint": {"Port": fake.port}}}}
    answer = cluster.request("PATCH", "/api/v1/nodes/fake-node/status", status,
                             content_type=MERGE)
    assert answer.status == 200, answer.body
    yield fake
    fake.stop()


def test_logs_through_the_kubelet(cluster, ns, kubelet):
    assert cluster.request("POST", PODS.format(ns=ns), pod("web", node="fake-node")).status \
        == 201
    answer = cluster.request("GET", PODS.format(ns=ns) + "/web/log?tailLines=5&timestamps=true")
    assert answer.status == 200, answer.body
    assert answer.body.decode() == (f"log of {ns}/web/app\n"
                                    "query tailLines=5&timestamps=true\n")
    bad = cluster.request("GET", PODS.format(ns=ns) + "/web/log?container=nope")
    assert bad.status == 400 and "container nope is not valid for pod web" in bad.json()["message"]
    negative = cluster.request("GET", PODS.format(ns=ns) + "/web/log?tailLines=-1")
    assert negative.status == 422
    for version, binary in sorted(kubectl_builds().items()):
        result = cluster.kubectl("logs", "-n", ns, "web", "--tail=3", binary=binary)
        assert result.stdout == f"log of {ns}/web/app\nquery tailLines=3\n", version
    followed = cluster.kubectl("logs", "-n", ns, "web", "-f")
    assert followed.stdout.endswith("tick 0\ntick 1\ntick 2\n")
    unscheduled = cluster.request("POST", PODS.format(ns=ns), pod("idle"))
    assert unscheduled.status == 201
    answer = cluster.request("GET", PODS.format(ns=ns) + "/idle/log")
    assert answer.status == 400
    assert answer.json()["message"] == "pod idle does not have a host assigned"


def test_exec_over_websocket(cluster, ns, kubelet):
    assert cluster.request("POST", PODS.format(ns=ns), pod("sh", node="fake-node")).status \
        == 201
    running(cluster, ns, "sh")
    builds = {v: b for v, b in kubectl_builds().items()
              if v != "default" and tuple(map(int, v.split("."))) >= (1, 30)}
    if not builds:
        pytest.skip("needs kubectl >= 1.30 (WebSocket exec)")
    for version, binary in sorted(builds.items()):
        result = cluster.kubectl("exec", "-n", ns, "sh", "--", "echo", "hi", binary=binary)
        assert result.stdout == "ran: echo hi\n", (version, result.stderr)
    newest = builds[max(builds, key=lambda v: tuple(map(int, v.split("."))))]
    piped = cluster.kubectl("exec", "-i", "-n", ns, "sh", "--", "cat", binary=newest,
                            input="from stdin\n")
    assert piped.stdout == "ran: cat\nfrom stdin\n", piped.stderr
    assert any(kind == "exec" and upgrade and upgrade.lower() == "websocket"
               for kind, _, upgrade in kubelet.seen)


def test_other_upgrades_are_relayed_byte_for_byte(cluster, ns, kubelet):
    """SPDY's upgrade is relayed the same way: after the 101 the bytes pass untouched."""
    assert cluster.request("POST", PODS.format(ns=ns), pod("raw", node="fake-node")).status \
        == 201
    context = cluster.ssl_context()
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=10) as plain:
        with context.wrap_socket(plain, server_hostname="127.0.0.1") as conn:
            path = PODS.format(ns=ns) + "/raw/exec?command=sh&stdin=true&stdout=true"
            conn.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                          "Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: "
                          "v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            assert head.startswith(b"HTTP/1.1 101"), head
            assert b"upgrade: spdy/3.1" in head.lower()
            rest = head.split(b"\r\n\r\n", 1)[1]
            conn.sendall(b"\x80\x03\x00\x01spdy-frame")
            deadline = time.monotonic() + 5
            while b"SPDY-FRAME" not in rest and time.monotonic() < deadline:
                rest += conn.recv(4096)
            assert rest == b"\x80\x03\x00\x01SPDY-FRAME"


def test_kubelet_certificate_is_verified_with_a_ca(cluster, ns, kubelet):
    """--kubelet-certificate-authority: the kubelet's serving certificate must chain to it."""
    from kubesmith.store.testing import free_port
    assert cluster.request("POST", PODS.format(ns=ns), pod("v", node="fake-node")).status \
        == 201
    good = cluster.base / "kubelet-ca.crt"
    kubelet.ca.cert_pem.write_to_path(str(good))
    answers = {}
    for label, ca in (("good", good), ("wrong", cluster.pki / "ca.crt")):
        port = free_port()
        flags = cluster.flags(port=port) + [f"--kubelet-certificate-authority={ca}"]
        process = cluster.spawn(flags, cluster.base / f"verify-{label}.log")
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if cluster.request("GET", "/readyz", port=port, timeout=2).status == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            answers[label] = cluster.request("GET", PODS.format(ns=ns) + "/v/log", port=port)
        finally:
            process.terminate()
            process.wait(10)
    assert answers["good"].status == 200, answers["good"].body
    assert answers["good"].body.decode() == f"log of {ns}/v/app\n"
    assert answers["wrong"].status == 500
    assert "certificate verify failed" in answers["wrong"].json()["message"]


# --- DefaultTolerationSeconds admission ------------------------------------------------

def test_new_pods_tolerate_not_ready_and_unreachable_for_300_seconds(cluster, ns):
    assert cluster.request("POST", PODS.format(ns=ns), pod("tol")).status == 201
    tolerations = cluster.request("GET", PODS.format(ns=ns) + "/tol").json()[
        "spec"]["tolerations"]
    assert {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 300} in tolerations
    assert {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 300} in tolerations
    # A pod's own toleration for one of them is kept as it is.
    own = pod("own")
    own["spec"]["tolerations"] = [{"key": "node.kubernetes.io/unreachable",
                                   "operator": "Exists", "effect": "NoExecute",
                                   "tolerationSeconds": 3}]
    assert cluster.request("POST", PODS.format(ns=ns), own).status == 201
    tolerations = cluster.request("GET", PODS.format(ns=ns) + "/own").json()[
        "spec"]["tolerations"]
    unreachable = [t for t in tolerations if t["key"] == "node.kubernetes.io/unreachable"]
    assert unreachable == own["spec"]["tolerations"]
    assert len(tolerations) == 2
