"""The kubelet's HTTPS server over real TLS on 127.0.0.1.

With fakes behind it: client certificates and bearer tokens (a fake TokenReview),
SubjectAccessReview authorization and its 403 text, /containerLogs, exec relayed to a
fake CRI streaming server (WebSocket) or passed byte for byte (SPDY), port-forward,
/metrics, /metrics/resource and /stats/summary.

Real (skipped when containerd or etcd is missing): a throwaway containerd behind the
server (logs, exec, stdin, summary, follow across a rotation), and a real API server and
every kubectl build in front of it (logs, logs -f, exec, exec -i, port-forward, a
service account token reviewed and denied)."""
from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from urllib.parse import urlencode

import aiohttp
import pytest
import trustme
from aiohttp import WSMsgType, web

from kubesmith.cri import api
from kubesmith.cri.client import NotFoundError
from kubesmith.kubelet import logs
from kubesmith.kubelet.server import KubeletServer, authorization_subresources
from provision.images import BUSYBOX_IMAGE, PAUSE_IMAGE
from tests.apiserver import module_cluster
from tests.cri.throwaway_containerd import containerd_fixture

NODE = "node-1"
UID = "0b7a1c3e-0000-4000-8000-000000000001"
T0 = 1_700_000_000 * 1_000_000_000


# --- fakes ----------------------------------------------------------------------------

class FakeApi:
    """TokenReview and SubjectAccessReview answers: `tokens` maps a token to a user
    dict; `allowed` holds (user, verb, subresource) triples."""

    def __init__(self):
        self.tokens: dict[str, dict] = {}
        self.allowed: set[tuple[str, str, str]] = set()
        self.calls: list[tuple[str, dict]] = []

    async def create(self, resource, body, namespace=None, **_):
        self.calls.append((resource, body))
        spec = body["spec"]
        if resource == "authentication.k8s.io/v1 tokenreviews":
            user = self.tokens.get(spec["token"])
            status = {"authenticated": True, "user": user} if user else {"authenticated": False}
            return dict(body, status=status)
        assert resource == "authorization.k8s.io/v1 subjectaccessreviews"
        attrs = spec["resourceAttributes"]
        assert (attrs["resource"], attrs["name"], attrs["version"]) == ("nodes", NODE, "v1")
        allowed = (spec["user"], attrs["verb"], attrs["subresource"]) in self.allowed
        return dict(body, status={"allowed": allowed})

    def reviews(self, kind: str) -> list[dict]:
        return [body for resource, body in self.calls if kind in resource]


class FakeRuntime:
    """The CRI calls the server makes, over a list of api.Container records."""

    def __init__(self):
        self.containers: list[api.Container] = []
        self.log_paths: dict[str, str] = {}
        self.stream_url = ""
        self.exec_calls: list[tuple] = []

    def add(self, cid: str, pod: str, container: str, restarts: int, state, log_path: str,
            uid: str = UID, namespace: str = "default") -> None:
        self.containers.append(api.Container(
            id=cid, state=state, created_at=T0 + restarts,
            metadata=api.ContainerMetadata(name=container, attempt=restarts),
            labels={"io.kubernetes.pod.name": pod, "io.kubernetes.pod.namespace": namespace,
                    "io.kubernetes.pod.uid": uid, "io.kubernetes.container.name": container},
            annotations={"io.kubernetes.container.restartCount": str(restarts)}))
        self.log_paths[cid] = log_path

    def set_state(self, cid: str, state) -> None:
        for c in self.containers:
            if c.id == cid:
                c.state = state

    async def list_containers(self, filter=None):
        found = []
        for c in self.containers:
            if filter is not None:
                if filter.HasField("state") and c.state != filter.state.state:
                    continue
                if any(c.labels.get(k) != v for k, v in filter.label_selector.items()):
                    continue
            found.append(c)
        return found

    async def container_status(self, container_id, verbose=False):
        for c in self.containers:
            if c.id == container_id:
                return api.ContainerStatus(id=c.id, state=c.state, metadata=c.metadata,
                                           log_path=self.log_paths[c.id])
        return None

    async def exec(self, container_id, cmd, tty=False, stdin=False, stdout=True,
                   stderr=True):
        if container_id == "gone":
            raise NotFoundError("Exec", None, "container gone")
        self.exec_calls.append((container_id, list(cmd), tty, stdin, stdout, stderr))
        return self.stream_url

    async def list_pod_sandbox(self, filter=None):
        return [api.PodSandbox(id="sb1", state=api.SANDBOX_READY, created_at=T0,
                               metadata=api.PodSandboxMetadata(name="web", namespace="default",
                                                               uid=UID))]

    async def list_container_stats(self, filter=None):
        stats = []
        for c in self.containers:
            stats.append(api.ContainerStats(
                attributes=api.ContainerAttributes(id=c.id, metadata=c.metadata,
                                                   labels=c.labels),
                cpu=api.CpuUsage(timestamp=time.time_ns(),
                                 usage_core_nano_seconds=api.UInt64Value(value=5_000_000),
                                 usage_nano_cores=api.UInt64Value(value=1_000)),
                memory=api.MemoryUsage(timestamp=time.time_ns(),
                                       working_set_bytes=api.UInt64Value(value=4096),
                                       usage_bytes=api.UInt64Value(value=8192))))
        return stats

    async def image_fs_info(self):
        return api.ImageFsInfoResponse(image_filesystems=[api.FilesystemUsage(
            timestamp=time.time_ns(), fs_id=api.FilesystemIdentifier(mountpoint="/"),
            used_bytes=api.UInt64Value(value=1234))])


class StreamingServer:
    """A stand-in for containerd's CRI streaming server: a WebSocket on 127.0.0.1 that
    speaks the v4/v1 channel protocols, echoes stdin to stdout upper-cased, and on a
    stdin line "exit" sends a Success Status on channel 3 and closes."""

    def __init__(self):
        self.protocols: list[str | None] = []
        self.received: list[bytes] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handler(self, request):
        socket = web.WebSocketResponse(protocols=["v4.channel.k8s.io", "channel.k8s.io"])
        await socket.prepare(request)
        self.protocols.append(socket.ws_protocol)
        await socket.send_bytes(b"\x01ready\n")
        async for message in socket:
            if message.type != WSMsgType.BINARY:
                break
            self.received.append(message.data)
            channel, data = message.data[0], message.data[1:]
            if channel == 0 and data.strip() == b"exit":
                await socket.send_bytes(b"\x03" + json.dumps(
                    {"metadata": {}, "status": "Success"}).encode())
                break
            if channel == 0:
                await socket.send_bytes(b"\x01" + data.upper())
        await socket.close()
        return socket

    async def start(self):
        app = web.Application()
        app.router.add_get("/exec/{token}", self.handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/exec/abc123"

    async def stop(self):
        await self.runner.cleanup()


# --- harness --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    serving_ca, client_ca, stranger_ca = trustme.CA(), trustme.CA(), trustme.CA()
    serving = serving_ca.issue_cert("127.0.0.1")
    paths = {}
    serving.cert_chain_pems[0].write_to_path(str(folder / "tls.crt"))
    serving.private_key_pem.write_to_path(str(folder / "tls.key"))
    client_ca.cert_pem.write_to_path(str(folder / "client-ca.crt"))
    paths.update(cert=str(folder / "tls.crt"), key=str(folder / "tls.key"),
                 client_ca=str(folder / "client-ca.crt"))
    return {"paths": paths, "serving_ca": serving_ca, "client_ca": client_ca,
            "stranger_ca": stranger_ca}


def client_context(pki, ca=None, cn=None, orgs=None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki["serving_ca"].configure_trust(context)
    if cn:
        leaf = (ca or pki["client_ca"]).issue_cert(common_name=cn, organization_name=orgs)
        leaf.configure_cert(context)
    return context


class Kubelet:
    def __init__(self, pki, tmp_path):
        self.pki = pki
        self.api = FakeApi()
        self.runtime = FakeRuntime()
        self.pods: dict[tuple[str, str], dict] = {}
        self.tmp = tmp_path
        paths = pki["paths"]
        self.server = KubeletServer(
            address="127.0.0.1", port=0, cert_file=paths["cert"], key_file=paths["key"],
            client_ca_file=paths["client_ca"], client=self.api, runtime=self.runtime,
            node_name=NODE, get_pod=lambda ns, name: self.pods.get((ns, name)),
            list_pods=lambda: list(self.pods.values()), root_dir=str(tmp_path),
            pod_log_dir=str(tmp_path / "pods-logs"))

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.server.bound_port}"

    def session(self, cn="admin", orgs=None, ca=None, token=None) -> aiohttp.ClientSession:
        context = client_context(self.pki, ca=ca, cn=cn, orgs=orgs)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context),
                                     headers=headers)

    def add_pod(self, name="web", containers=("app",), status=None) -> dict:
        pod = {"metadata": {"name": name, "namespace": "default", "uid": UID},
               "spec": {"containers": [{"name": c} for c in containers]},
               "status": status or {}}
        self.pods[("default", name)] = pod
        return pod

    def write_log(self, name: str, *lines: str) -> str:
        path = self.tmp / "pods-logs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as out:
            for n, text in enumerate(lines):
                out.write(f"{logs.format_rfc3339(T0 + n)} stdout F {text}\n")
        return str(path)


def run(pki, tmp_path, body, timeout: float = 30):
    """Starts a kubelet server, runs `body(kubelet)`, stops it (also on failure)."""
    async def main():
        kubelet = Kubelet(pki, tmp_path)
        await kubelet.server.start()
        try:
            return await asyncio.wait_for(body(kubelet), timeout)
        finally:
            await kubelet.server.stop()
    return asyncio.run(main())


async def get(session, url, **kwargs) -> tuple[int, str]:
    async with session.get(url, **kwargs) as response:
        return response.status, await response.text()


# --- authentication and authorization -------------------------------------------------

def test_subresources_by_path():
    assert authorization_subresources("/stats/summary") == ["stats"]
    assert authorization_subresources("/stats") == ["stats"]
    assert authorization_subresources("/statsfoo") == ["proxy"]
    assert authorization_subresources("/metrics/cadvisor") == ["metrics"]
    assert authorization_subresources("/logs/syslog") == ["log"]
    assert authorization_subresources("/checkpoint/a/b/c") == ["checkpoint"]
    assert authorization_subresources("/containerLogs/ns/p/c") == ["proxy"]
    assert authorization_subresources("/exec/ns/p/c") == ["proxy"]
    assert authorization_subresources("/pods") == ["pods", "proxy"]
    assert authorization_subresources("/healthz") == ["healthz", "proxy"]
    assert authorization_subresources("/configz") == ["configz", "proxy"]


def test_client_certificate_is_the_user(pki, tmp_path):
    async def body(k: Kubelet):
        k.api.allowed.add(("kube-apiserver-kubelet-client", "get", "proxy"))
        async with k.session("kube-apiserver-kubelet-client", "kubeadm:cluster-admins") as s:
            assert await get(s, k.base + "/healthz") == (200, "ok")
        review = k.api.reviews("subjectaccessreviews")
        # healthz is asked as its own subresource first, then as proxy.
        assert [r["spec"]["resourceAttributes"]["subresource"] for r in review] == [
            "healthz", "proxy"]
        assert review[0]["spec"]["user"] == "kube-apiserver-kubelet-client"
        assert set(review[0]["spec"]["groups"]) == {"kubeadm:cluster-admins",
                                                    "system:authenticated"}
    run(pki, tmp_path, body)


def test_no_credentials_is_401(pki, tmp_path):
    async def body(k: Kubelet):
        async with k.session(cn=None) as s:
            assert await get(s, k.base + "/healthz") == (401, "Unauthorized")
            assert (await get(s, k.base + "/nothing-here"))[0] == 401
        async with k.session(cn=None, token="bogus") as s:
            assert await get(s, k.base + "/healthz") == (401, "Unauthorized")
        assert k.api.reviews("subjectaccessreviews") == []
    run(pki, tmp_path, body)


def test_certificate_of_another_ca_is_refused(pki, tmp_path):
    async def body(k: Kubelet):
        async with k.session("mallory", ca=pki["stranger_ca"]) as s:
            with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                await get(s, k.base + "/healthz")
    run(pki, tmp_path, body)


def test_bearer_token_through_token_review_is_cached(pki, tmp_path):
    async def body(k: Kubelet):
        k.api.tokens["good-token"] = {"username": "system:serviceaccount:mon:scraper",
                                      "uid": "u-1", "groups": ["system:serviceaccounts"]}
        k.api.allowed.add(("system:serviceaccount:mon:scraper", "get", "metrics"))
        async with k.session(cn=None, token="good-token") as s:
            for _ in range(3):
                status, text = await get(s, k.base + "/metrics")
                assert status == 200 and "kubelet_http_requests_total" in text
        assert len(k.api.reviews("tokenreviews")) == 1
        assert len(k.api.reviews("subjectaccessreviews")) == 1
        spec = k.api.reviews("subjectaccessreviews")[0]["spec"]
        assert spec["uid"] == "u-1"
        assert "system:authenticated" in spec["groups"]
    run(pki, tmp_path, body)


def test_denied_is_403_with_upstreams_text(pki, tmp_path):
    async def body(k: Kubelet):
        k.add_pod()
        async with k.session("alice", "devs") as s:
            assert await get(s, k.base + "/containerLogs/default/web/app") == (
                403, "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[proxy])")
            assert await get(s, k.base + "/stats/summary") == (
                403, "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[stats])")
            assert await get(s, k.base + "/pods") == (
                403, "Forbidden (user=alice, verb=get, resource=nodes, "
                     "subresource(s)=[pods proxy])")
            async with s.post(k.base + "/exec/default/web/app?command=ls&stdout=1") as r:
                assert r.status == 403
                assert "verb=create" in await r.text()
            # Denials are cached too (30 s): the same question is not asked again.
            before = len(k.api.reviews("subjectaccessreviews"))
            await get(s, k.base + "/stats/summary")
            assert len(k.api.reviews("subjectaccessreviews")) == before
    run(pki, tmp_path, body)


# --- containerLogs --------------------------------------------------------------------

def test_container_logs_over_https(pki, tmp_path):
    async def body(k: Kubelet):
        k.api.allowed.add(("admin", "get", "proxy"))
        k.add_pod(status={"containerStatuses": [{
            "name": "app", "state": {"running": {}},
            "lastState": {"terminated": {"containerID": "containerd://c0"}}}]})
        old = k.write_log("c0.log", "old 1", "old 2")
        new = k.write_log("c1.log", "new 1", "new 2", "new 3")
        k.runtime.add("c0", "web", "app", 0, api.CONTAINER_EXITED, old)
        k.runtime.add("c1", "web", "app", 1, api.CONTAINER_RUNNING, new)
        base = k.base + "/containerLogs/default/web/app"
        async with k.session() as s:
            assert await get(s, base) == (200, "new 1\nnew 2\nnew 3\n")
            assert await get(s, base + "?tailLines=1") == (200, "new 3\n")
            assert await get(s, base + "?previous=true") == (200, "old 1\nold 2\n")
            assert await get(s, base + "?limitBytes=8") == (200, "new 1\nne")
            status, text = await get(s, base + "?timestamps=true&tailLines=1")
            assert text == f"{logs.format_rfc3339(T0 + 2)} new 3\n"
            assert await get(s, k.base + "/containerLogs/default/nope/app") == (
                404, 'pod "nope" does not exist')
            assert await get(s, k.base + "/containerLogs/default/web/db") == (
                404, 'container "db" not found in pod "web"')
            assert await get(s, base + "?tailLines=-1") == (422, '{"message": "Invalid request."}')
            assert await get(s, base + "?tailLines=x") == (
                400, '{"message": "Unable to decode query."}')
    run(pki, tmp_path, body)


def test_previous_without_a_terminated_container(pki, tmp_path):
    async def body(k: Kubelet):
        k.api.allowed.add(("admin", "get", "proxy"))
        k.add_pod(status={"containerStatuses": [{"name": "app", "state": {"running": {}},
                                                 "lastState": {}}]})
        k.runtime.add("c1", "web", "app", 0, api.CONTAINER_RUNNING, k.write_log("c1.log", "x"))
        k.add_pod("pending", status={"containerStatuses": [{
            "name": "app", "state": {"waiting": {"reason": "ContainerCreating"}}}]})
        async with k.session() as s:
            assert await get(s, k.base + "/containerLogs/default/web/app?previous=1") == (
                400, 'previous terminated container "app" in pod "web" not found')
            assert await get(s, k.base + "/containerLogs/default/pending/app") == (
                400, 'container "app" in pod "pending" is waiting to start: ContainerCreating')
    run(pki, tmp_path, body)


def test_previous_when_the_status_lags(pki, tmp_path):
    """Without lastState in the status read, the runtime's attempts tell which one ended
    last: the exited newest while it waits to restart, else the one before."""
    async def body(k: Kubelet):
        k.api.allowed.add(("admin", "get", "proxy"))
        k.add_pod(status={"containerStatuses": [{"name": "app", "state": {"running": {}}}]})
        k.runtime.add("c0", "web", "app", 0, api.CONTAINER_EXITED, k.write_log("c0.log", "0"))
        url = k.base + "/containerLogs/default/web/app?previous=true"
        async with k.session() as s:
            assert await get(s, url) == (200, "0\n")       # crashed, back-off pending
            k.runtime.add("c1", "web", "app", 1, api.CONTAINER_RUNNING,
                          k.write_log("c1.log", "1"))
            assert await get(s, url) == (200, "0\n")       # restarted: the one before
            k.pods[("default", "web")]["status"]["containerStatuses"][0]["state"] = {
                "terminated": {"containerID": "containerd://c1"}}
            k.runtime.set_state("c1", api.CONTAINER_EXITED)
            assert await get(s, url) == (200, "0\n")       # done for good
            assert await get(s, url.replace("?previous=true", "")) == (200, "1\n")
    run(pki, tmp_path, body)


def test_follow_streams_until_the_container_exits(pki, tmp_path):
    async def body(k: Kubelet):
        k.api.allowed.add(("admin", "get", "proxy"))
        k.add_pod()
        path = k.write_log("c1.log", "one")
        k.runtime.add("c1", "web", "app", 0, api.CONTAINER_RUNNING, path)
        async with k.session() as s:
            async with s.get(k.base + "/containerLogs/default/web/app?follow=true") as r:
                assert r.status == 200
                assert await r.content.readline() == b"one\n"
                with open(path, "a") as out:
                    out.write(f"{logs.format_rfc3339(T0)} stdout F two\n")
                assert await asyncio.wait_for(r.content.readline(), 5) == b"two\n"
                k.runtime.set_state("c1", api.CONTAINER_EXITED)
                # The stream ends by itself once the container has exited.
                assert await asyncio.wait_for(r.content.read(), 5) == b""
    run(pki, tmp_path, body)


# --- exec -----------------------------------------------------------------------------

def test_exec_is_relayed_to_the_streaming_server(pki, tmp_path):
    async def body(k: Kubelet):
        streaming = StreamingServer()
        await streaming.start()
        try:
            k.runtime.stream_url = streaming.url
            k.api.allowed.add(("admin", "get", "proxy"))
            k.add_pod()
            k.runtime.add("c1", "web", "app", 0, api.CONTAINER_RUNNING, "")
            url = (k.base + "/exec/default/web/app?command=sh&command=-c&command=cat"
                   "&stdin=true&stdout=true&stderr=true")
            async with k.session() as s:
                # v5 with stdin is refused: kubectl then falls back to SPDY.
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await s.ws_connect(url, protocols=["v5.channel.k8s.io"])
                assert refused.value.status == 400
                async with s.ws_connect(url, protocols=["v4.channel.k8s.io"]) as ws:
                    assert ws.protocol == "v4.channel.k8s.io"
                    assert (await ws.receive_bytes(timeout=5)) == b"\x01ready\n"
                    await ws.send_bytes(b"\x00hello\n")
                    assert (await ws.receive_bytes(timeout=5)) == b"\x01HELLO\n"
                    await ws.send_bytes(b"\x00exit\n")
                    status = await ws.receive_bytes(timeout=5)
                    assert status[0] == 3
                    assert json.loads(status[1:])["status"] == "Success"
                    closing = await ws.receive(timeout=5)
                    assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
            assert streaming.protocols == ["v4.channel.k8s.io"]
            assert k.runtime.exec_calls == [("c1", ["sh", "-c", "cat"], False, True, True, True)]
        finally:
            await streaming.stop()
    run(pki, tmp_path, body)


def test_exec_refusals(pki, tmp_path):
    async def body(k: Kubelet):
        k.api.allowed.add(("admin", "get", "proxy"))
        k.add_pod()
        k.add_pod("idle")
        k.runtime.add("c1", "web", "app", 0, api.CONTAINER_RUNNING, "")
        ws_headers = {"Connection": "Upgrade", "Upgrade": "websocket",
                      "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGVzdGtleTEyMzQ1Njc4OQ==",
                      "Sec-WebSocket-Protocol": "v5.channel.k8s.io"}
        async with k.session() as s:
            url = k.base + "/exec/default/{}/app?command=ls&stdout=1"
            assert await get(s, url.format("web")) == (400, "Upgrade request required")
            status, text = await get(s, url.format("web"), headers=dict(
                ws_headers, Upgrade="h2c", **{"Sec-WebSocket-Protocol": ""}))
            assert status == 400 and "h2c is not supported" in text
            assert await get(s, url.format("missing"), headers=ws_headers) == (
                404, "pod does not exist")
            assert await get(s, url.format("idle"), headers=ws_headers) == (
                500, 'container not found ("app")')
            assert await get(s, k.base + "/exec/default/web/app?command=ls",
                             headers=ws_headers) == (
                400, "you must specify at least 1 of stdin, stdout, stderr")
            status, text = await get(s, url.format("web"), headers=dict(
                ws_headers, **{"Sec-WebSocket-Protocol": "v9.nonsense"}))
            assert status == 400 and "unable to negotiate protocol" in text
    run(pki, tmp_path, body)


class RawUpgradeServer:
    """A stand-in for the streaming server's SPDY side: answers an upgrade with 101 and
    then echoes the connection's bytes upper-cased; refuses paths under /refuse."""

    def __init__(self):
        self.requests: list[bytes] = []
        self.server = None
        self.url = ""

    async def handle(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        if b" /refuse" in head.split(b"\r\n", 1)[0]:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 7\r\n\r\nno such")
            await writer.drain()
            writer.close()
            return
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                     b"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n")
        await writer.drain()
        while True:
            data = await reader.read(4096)
            if not data:
                break
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/exec/token1"

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


async def raw_upgrade(k: Kubelet, path: str, headers: str) -> tuple[bytes, object, object]:
    """Sends an upgrade request over TLS with the admin certificate: (answer head so
    far, reader, writer)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", k.server.bound_port, ssl=client_context(k.pki, cn="admin"))
    writer.write((f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return head, reader, writer


def test_spdy_upgrades_are_relayed_byte_for_byte(pki, tmp_path):
    async def body(k: Kubelet):
        backend = RawUpgradeServer()
        await backend.start()
        try:
            k.runtime.stream_url = backend.url
            k.api.allowed.add(("admin", "create", "proxy"))
            k.add_pod()
            k.runtime.add("c1", "web", "app", 0, api.CONTAINER_RUNNING, "")
            head, reader, writer = await raw_upgrade(
                k, "/exec/default/web/app?command=sh&stdin=true&stdout=true",
                "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
                "X-Stream-Protocol-Version: channel.k8s.io\r\n"
                "Authorization: Bearer secret\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            assert b"x-stream-protocol-version: v4.channel.k8s.io" in head.lower()
            writer.write(b"\x80\x03\x00\x01spdy-frame")
            await writer.drain()
            echoed = b""
            while len(echoed) < 14:
                echoed += await asyncio.wait_for(reader.read(100), 5)
            assert echoed == b"\x80\x03\x00\x01SPDY-FRAME"
            writer.close()
            [sent] = backend.requests
            assert sent.startswith(b"POST /exec/token1 HTTP/1.1\r\n")
            assert sent.count(b"X-Stream-Protocol-Version") == 2
            # The caller's credentials stay here.
            assert b"secret" not in sent
            # A refusal of the runtime's goes back as it is.
            k.runtime.stream_url = backend.url.replace("/exec/", "/refuse/")
            head, reader, writer = await raw_upgrade(
                k, "/exec/default/web/app?command=sh&stdout=true",
                "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n")
            assert head.startswith(b"HTTP/1.1 404"), head
            writer.close()
        finally:
            await backend.stop()
    run(pki, tmp_path, body)


def test_port_forward_tunnelled_in_websocket(pki, tmp_path):
    async def body(k: Kubelet):
        backend = RawUpgradeServer()
        await backend.start()
        try:
            k.api.allowed.add(("admin", "get", "proxy"))
            k.add_pod()
            ports = []

            async def port_forward(sandbox_id, wanted):
                ports.append((sandbox_id, wanted))
                return backend.url.replace("/exec/", "/portforward/")
            k.runtime.port_forward = port_forward
            async with k.session() as s:
                url = k.base + "/portForward/default/web"
                async with s.ws_connect(url, protocols=["SPDY/3.1+portforward.k8s.io"]) as ws:
                    assert ws.protocol == "SPDY/3.1+portforward.k8s.io"
                    await ws.send_bytes(b"spdy inside")
                    assert await ws.receive_bytes(timeout=5) == b"SPDY INSIDE"
                status, text = await get(s, k.base + "/portForward/default/missing")
                assert (status, text) == (404, "pod does not exist")
            assert ports == [("sb1", [])]
            [sent] = backend.requests
            assert b"Upgrade: SPDY/3.1" in sent
            assert b"X-Stream-Protocol-Version: portforward.k8s.io" in sent
        finally:
            await backend.stop()
    run(pki, tmp_path, body)


# --- metrics and stats ----------------------------------------------------------------

def test_metrics_and_summary(pki, tmp_path):
    async def body(k: Kubelet):
        k.api.allowed.update({("admin", "get", "metrics"), ("admin", "get", "stats")})
        k.runtime.add("c1", "web", "app", 0, api.CONTAINER_RUNNING, "")
        k.runtime.add("c0", "web", "app", 0, api.CONTAINER_EXITED, "")
        async with k.session() as s:
            status, text = await get(s, k.base + "/metrics")
            assert status == 200
            assert "kubelet_running_pods 1.0" in text
            assert 'kubelet_running_containers{container_state="running"} 1.0' in text
            assert f'kubelet_node_name{{node="{NODE}"}} 1.0' in text
            status, text = await get(s, k.base + "/stats/summary")
            assert status == 200
            summary = json.loads(text)
            node = summary["node"]
            assert node["nodeName"] == NODE
            assert node["memory"]["workingSetBytes"] > 0
            assert node["cpu"]["usageCoreNanoSeconds"] > 0
            assert node["fs"]["capacityBytes"] > 0
            assert node["runtime"]["imageFs"]["usedBytes"] == 1234
            [pod] = summary["pods"]
            assert pod["podRef"] == {"name": "web", "namespace": "default", "uid": UID}
            # Only the running container counts.
            assert [c["name"] for c in pod["containers"]] == ["app"]
            assert pod["cpu"]["usageNanoCores"] == 1000
            assert pod["memory"]["workingSetBytes"] == 4096
            status, text = await get(s, k.base + "/stats/summary?only_cpu_and_memory=true")
            assert "fs" not in json.loads(text)["node"]
            status, text = await get(s, k.base + "/metrics/resource")
            assert status == 200
            samples = {line.rsplit(" ", 2)[0]: line for line in text.splitlines()
                       if line and not line.startswith("#")}
            labels = '{container="app",namespace="default",pod="web"}'
            assert samples[f"container_memory_working_set_bytes{labels}"].split()[1] == "4096.0"
            assert samples[f"container_cpu_usage_seconds_total{labels}"].split()[1] == "0.005"
            assert 'pod_memory_working_set_bytes{namespace="default",pod="web"}' in samples
            assert "node_cpu_usage_seconds_total" in samples
            assert samples["scrape_error"] == "scrape_error 0.0"
    run(pki, tmp_path, body)


def test_pods_list(pki, tmp_path):
    async def body(k: Kubelet):
        k.api.allowed.add(("admin", "get", "pods"))
        k.add_pod()
        async with k.session() as s:
            status, text = await get(s, k.base + "/pods")
        assert status == 200
        listed = json.loads(text)
        assert listed["kind"] == "PodList"
        assert [p["metadata"]["name"] for p in listed["items"]] == ["web"]
    run(pki, tmp_path, body)


def fake_proc(folder) -> str:
    """A /proc with known figures."""
    (folder / "net").mkdir(parents=True)
    (folder / "sys" / "kernel").mkdir(parents=True)
    (folder / "self").mkdir()
    (folder / "stat").write_text("cpu  100 0 50 1000 20 0 0 0 0 0\ncpu0 100 0 50 1000 20 0 0 0 0 0\n"
                                 "btime 1700000000\n")
    (folder / "meminfo").write_text("MemTotal: 1000 kB\nMemFree: 200 kB\nInactive(file): 300 kB\n"
                                    "Active(anon): 100 kB\nInactive(anon): 50 kB\n")
    (folder / "vmstat").write_text("pgfault 7\npgmajfault 2\n")
    (folder / "net" / "dev").write_text(
        "Inter-|   Receive\n face |bytes packets\n"
        "    lo: 5 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n"
        "  eth0: 100 2 3 0 0 0 0 0 200 4 5 0 0 0 0 0\n")
    (folder / "net" / "route").write_text("Iface\tDestination\tGateway\neth0\t00000000\t0100000A\n")
    (folder / "sys" / "kernel" / "pid_max").write_text("4096\n")
    (folder / "loadavg").write_text("0.1 0.2 0.3 2/345 999\n")
    (folder / "self" / "stat").write_text("1 (python (x)) S " + " ".join(["0"] * 10) + " 10 5 "
                                          + " ".join(["0"] * 8) + " 25 0\n")
    return str(folder)


def test_node_figures_from_proc(tmp_path):
    from kubesmith.kubelet import stats
    proc = fake_proc(tmp_path / "proc")
    ticks = os.sysconf("SC_CLK_TCK")
    assert stats.read_cpu(proc) == 150 * 1_000_000_000 // ticks     # idle and iowait left out
    memory = stats.read_memory(proc)
    assert memory == {"availableBytes": 500 * 1024, "usageBytes": 800 * 1024,
                      "workingSetBytes": 500 * 1024, "rssBytes": 150 * 1024,
                      "pageFaults": 7, "majorPageFaults": 2}
    assert stats.read_network(proc) == [{"name": "eth0", "rxBytes": 100, "rxErrors": 3,
                                         "txBytes": 200, "txErrors": 5}]
    assert stats.default_interface(proc) == "eth0"
    assert stats.read_rlimit(proc) == {"maxpid": 4096, "curproc": 345}
    assert stats.read_self(proc) == (15 * 1_000_000_000 // ticks,
                                     25 * os.sysconf("SC_PAGE_SIZE"))
    provider = stats.StatsProvider(FakeRuntime(), NODE, root_dir=str(tmp_path), proc=proc)
    node = provider._node(False)
    assert node["startTime"] == "2023-11-14T22:13:20Z"
    assert node["network"]["name"] == "eth0"
    assert node["fs"]["capacityBytes"] > 0
    # The CPU rate comes from two readings.
    with open(os.path.join(proc, "stat"), "w") as out:
        out.write("cpu  200 0 50 1000 20 0 0 0 0 0\nbtime 1700000000\n")
    assert provider._node(True)["cpu"]["usageNanoCores"] > 0


def test_emptydir_volumes_in_the_summary(tmp_path):
    from kubesmith.kubelet import stats
    volume = tmp_path / "pods" / UID / "volumes" / "kubernetes.io~empty-dir" / "cache"
    volume.mkdir(parents=True)
    (volume / "data").write_bytes(b"x" * 10000)
    runtime = FakeRuntime()
    runtime.add("c1", "web", "app", 0, api.CONTAINER_RUNNING, "")
    provider = stats.StatsProvider(runtime, NODE, root_dir=str(tmp_path),
                                   pod_log_dir=str(tmp_path / "logs"))
    summary = asyncio.run(provider.summary())
    [pod] = summary["pods"]
    [entry] = pod["volume"]
    assert entry["name"] == "cache" and entry["usedBytes"] >= 10000
    assert entry["inodesUsed"] == 1
    assert pod["ephemeral-storage"]["usedBytes"] >= 10000


# --- real: a throwaway containerd behind the server -------------------------------------

# A throwaway containerd with the locally built pause and busybox images.
containerd = containerd_fixture(PAUSE_IMAGE, BUSYBOX_IMAGE)


class RealPod:
    """A host-network sandbox with one busybox container, labelled as the kubelet
    labels them; stopped and removed on leaving (also on failure)."""

    def __init__(self, runtime, cgroup_parent: str, log_dir, script: str, name="web",
                 namespace="default", uid=UID):
        self.runtime = runtime
        self.labels = {"io.kubernetes.pod.name": name,
                       "io.kubernetes.pod.namespace": namespace,
                       "io.kubernetes.pod.uid": uid}
        options = api.NamespaceOption(network=api.NODE, pid=api.POD, ipc=api.POD)
        self.config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, uid=uid, namespace=namespace),
            log_directory=str(log_dir / f"{namespace}_{name}_{uid}"), labels=self.labels,
            linux=api.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent,
                security_context=api.LinuxSandboxSecurityContext(namespace_options=options)))
        self.script = script
        self.sandbox_id = ""
        self.container_id = ""

    async def __aenter__(self) -> "RealPod":
        self.sandbox_id = await self.runtime.run_pod_sandbox(self.config)
        container = api.ContainerConfig(
            metadata=api.ContainerMetadata(name="app"),
            image=api.ImageSpec(image=BUSYBOX_IMAGE),
            command=["sh", "-c", f"trap 'exit 0' TERM; {self.script}"],
            labels=dict(self.labels, **{"io.kubernetes.container.name": "app"}),
            annotations={"io.kubernetes.container.restartCount": "0"},
            log_path="app/0.log",
            linux=api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(
                namespace_options=api.NamespaceOption(network=api.NODE, pid=api.CONTAINER,
                                                      ipc=api.POD))))
        self.container_id = await self.runtime.create_container(self.sandbox_id, container,
                                                                self.config)
        await self.runtime.start_container(self.container_id)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runtime.stop_pod_sandbox(self.sandbox_id)
        await self.runtime.remove_pod_sandbox(self.sandbox_id)


async def wait_until(predicate, timeout: float = 10.0):
    give_up = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > give_up:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def exec_frames(session, url: str, send: list[bytes] = (),
                      protocols=("v5.channel.k8s.io", "v4.channel.k8s.io")
                      ) -> tuple[str, dict[int, bytes]]:
    """Runs one exec over WebSocket; (protocol, channel -> bytes received)."""
    received: dict[int, bytes] = {}
    async with session.ws_connect(url, protocols=list(protocols),
                                  timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
        for frame in send:
            await ws.send_bytes(frame)
        while True:
            message = await ws.receive(timeout=10)
            if message.type != WSMsgType.BINARY:
                break
            if message.data:
                received[message.data[0]] = received.get(message.data[0], b"") + \
                    message.data[1:]
        return ws.protocol, received


def test_real_containerd_logs_exec_and_rotation(pki, tmp_path, containerd):
    async def body(k: Kubelet):
        k.api.allowed.update({("admin", "get", "proxy"), ("admin", "get", "stats")})
        k.add_pod()
        script = ("for i in 1 2 3; do echo line $i; done; sleep 0.3; echo to stderr >&2; "
                  "while :; do sleep 1; done")
        async with containerd.client() as runtime:
            k.server.runtime = runtime
            k.server.stats.runtime = runtime
            async with RealPod(runtime, containerd.cgroup_parent(), tmp_path, script) as pod:
                base = k.base + "/containerLogs/default/web/app"
                async with k.session() as s:
                    async def logged() -> bool:
                        status, text = await get(s, base)
                        return status == 200 and "to stderr" in text
                    await wait_until(logged)
                    assert await get(s, base + "?stream=Stdout") == (
                        200, "line 1\nline 2\nline 3\n")
                    assert await get(s, base + "?tailLines=1") == (200, "to stderr\n")
                    assert (await get(s, base + "?previous=true"))[0] == 400

                    exec_url = k.base + "/exec/default/web/app?" + urlencode(
                        [("stdout", "1"), ("stderr", "1")] + [("command", c) for c in (
                            "sh", "-c", "echo out; echo err >&2; exit 3")])
                    protocol, frames = await exec_frames(s, exec_url)
                    assert protocol == "v5.channel.k8s.io"
                    assert (frames.get(1), frames.get(2)) == (b"out\n", b"err\n")
                    status = json.loads(frames[3])
                    assert status["status"] == "Failure"
                    assert status["reason"] == "NonZeroExitCode"
                    assert status["details"]["causes"] == [{"reason": "ExitCode",
                                                            "message": "3"}]
                    # stdin reaches the command (head ends after one line, no EOF needed).
                    stdin_url = (k.base + "/exec/default/web/app?stdin=1&stdout=1"
                                 "&command=head&command=-n1")
                    protocol, frames = await exec_frames(s, stdin_url, [b"\x00hello\n"],
                                                         protocols=["v4.channel.k8s.io"])
                    assert frames.get(1) == b"hello\n"
                    assert json.loads(frames[3])["status"] == "Success"

                    # Summary: the running container is counted.
                    status, text = await get(s, k.base + "/stats/summary")
                    assert status == 200, text
                    [entry] = json.loads(text)["pods"]
                    assert [c["name"] for c in entry["containers"]] == ["app"]
                    assert entry["containers"][0]["memory"]["workingSetBytes"] > 0

                    # Rotation: the log is renamed, containerd reopens it, and a
                    # follower reads on into the new file.
                    log_path = (await runtime.container_status(pod.container_id)).log_path
                    async with s.get(base + "?follow=true") as follow:
                        assert (await follow.content.readline()) in (b"line 1\n", b"to stderr\n")
                        rotator = logs.LogRotator(runtime, max_size=1, max_files=2)
                        assert await rotator.rotate_container(pod.container_id)
                        assert len(logs.rotated_logs(log_path)) == 1
                        await runtime.exec_sync(pod.container_id, [
                            "sh", "-c", "echo after rotation > /proc/1/fd/1"], 5)
                        seen = b""
                        while b"after rotation" not in seen:
                            seen += await asyncio.wait_for(follow.content.readline(), 10)
                    assert "after rotation" in open(log_path).read()
    run(pki, tmp_path, body)


# --- real: the API server and kubectl in front, containerd behind ----------------------

cluster = module_cluster.cluster


def node_kubeconfig(cluster, node: str) -> str:
    """A kubeconfig with the node's identity (system:node:<node> in system:nodes)."""
    cert, key = cluster.client_cert(f"system:node:{node}", "system:nodes")
    path = cluster.base / f"kubelet-{node}.conf"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "node",
        "clusters": [{"name": "c", "cluster": {
            "server": cluster.url, "certificate-authority": str(cluster.pki / "ca.crt")}}],
        "users": [{"name": "u", "user": {"client-certificate": cert, "client-key": key}}],
        "contexts": [{"name": "node", "context": {"cluster": "c", "user": "u"}}]}))
    return str(path)


async def kubectl(cluster, *args: str, binary: str = "kubectl", timeout: float = 20,
                  stdin: bytes | None = None) -> tuple[int, str, str]:
    """kubectl run without blocking the event loop the kubelet server serves from."""
    env = dict(os.environ, HOME=str(cluster.home), KUBECONFIG=str(cluster.kubeconfig))
    process = await asyncio.create_subprocess_exec(
        binary, *args, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode, out.decode(), err.decode()


def test_real_through_the_api_server_with_kubectl(pki, tmp_path, containerd, cluster):
    """kubectl logs and exec go API server -> this server (authorized by a real
    SubjectAccessReview for the API server's kubelet-client certificate) -> containerd."""
    from kubesmith.client.rest import ApiClient
    from kubesmith.store.testing import free_port
    from tests.e2e.kubectl_versions import kubectl_builds
    namespace = cluster.new_namespace("kubelet-server-", default_service_account=True)
    node = NODE

    async def body(k: Kubelet):
        admin = ApiClient.from_kubeconfig(cluster.kubeconfig, component="test")
        k.server.client = ApiClient.from_kubeconfig(node_kubeconfig(cluster, node),
                                                    component="kubelet")
        k.server.client_ca_file = str(cluster.pki / "ca.crt")
        await k.server.stop()
        await k.server.start()        # again, now trusting the cluster CA
        try:
            await admin.create("v1 nodes", {"apiVersion": "v1", "kind": "Node",
                                            "metadata": {"name": node}})
            await admin.patch("v1 nodes", node, {"status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": k.server.bound_port}}}},
                subresource="status", patch_type="merge")
            created = await admin.create("v1 pods", {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                "spec": {"nodeName": node, "containers": [
                    {"name": "app", "image": "kubesmith.local/busybox:latest"}]}}, namespace)
            uid = created["metadata"]["uid"]
            k.pods[(namespace, "web")] = created
            # kubectl port-forward wants a running pod.
            await admin.patch("v1 pods", "web", {"status": {"phase": "Running"}}, namespace,
                              subresource="status", patch_type="merge")
            http_port = free_port()
            script = (f"httpd -p 127.0.0.1:{http_port} -h /etc; echo hello from the pod; "
                      "while :; do sleep 1; done")
            async with containerd.client() as runtime:
                k.server.runtime = runtime
                async with RealPod(runtime, containerd.cgroup_parent(), tmp_path, script,
                                   namespace=namespace, uid=uid):
                    async def logged() -> bool:
                        code, out, _ = await kubectl(cluster, "logs", "-n", namespace, "web")
                        return code == 0 and out == "hello from the pod\n"
                    await wait_until(logged)
                    builds = kubectl_builds()
                    for version, binary in sorted(builds.items()):
                        code, out, err = await kubectl(cluster, "logs", "-n", namespace,
                                                       "web", "--tail=1", binary=binary)
                        assert (code, out) == (0, "hello from the pod\n"), (version, err)
                    # logs -f follows until the container exits.
                    job = await admin.create("v1 pods", {
                        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "job"},
                        "spec": {"nodeName": node, "restartPolicy": "Never", "containers": [
                            {"name": "app", "image": "kubesmith.local/busybox:latest"}]}},
                        namespace)
                    k.pods[(namespace, "job")] = job
                    async with RealPod(runtime, containerd.cgroup_parent(), tmp_path,
                                       "echo first; sleep 1; echo second", name="job",
                                       namespace=namespace, uid=job["metadata"]["uid"]):
                        started = time.monotonic()
                        code, out, err = await kubectl(cluster, "logs", "-f", "-n",
                                                       namespace, "job")
                        assert (code, out) == (0, "first\nsecond\n"), err
                        assert time.monotonic() - started < 10
                    # Every kubectl: WebSocket from 1.30, SPDY (relayed as is) before.
                    for version, binary in sorted(builds.items()):
                        code, out, err = await kubectl(cluster, "exec", "-n", namespace,
                                                       "web", "--", "echo", "hi",
                                                       binary=binary)
                        assert (code, out) == (0, "hi\n"), (version, err)
                    code, out, err = await kubectl(cluster, "exec", "-n", namespace, "web",
                                                   "--", "sh", "-c", "exit 7")
                    assert code == 7, (out, err)
                    # The end of a piped stdin reaches the command (SPDY carries it;
                    # WebSocket clients fall back to SPDY for stdin).
                    for version, binary in sorted(builds.items()):
                        code, out, err = await kubectl(cluster, "exec", "-i", "-n",
                                                       namespace, "web", "--", "cat",
                                                       binary=binary, stdin=b"piped\n")
                        assert (code, out) == (0, "piped\n"), (version, err)
                    # port-forward to busybox httpd in the (host-network) pod: SPDY from
                    # the oldest kubectl, SPDY tunnelled in WebSocket from the newest.
                    versions = sorted((v for v in builds if v != "default"),
                                      key=lambda v: tuple(map(int, v.split("."))))
                    for version in {versions[0], versions[-1]} if versions else {"default"}:
                        local = free_port()
                        forward = await asyncio.create_subprocess_exec(
                            builds[version], "port-forward", "-n", namespace, "pod/web",
                            f"{local}:{http_port}", env=dict(
                                os.environ, HOME=str(cluster.home),
                                KUBECONFIG=str(cluster.kubeconfig)),
                            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                        try:
                            first = await asyncio.wait_for(forward.stdout.readline(), 15)
                            assert first.startswith(b"Forwarding from"), (
                                version, first, await forward.stderr.read(2000))
                            async with aiohttp.ClientSession() as plain:
                                url = f"http://127.0.0.1:{local}/passwd"
                                async with plain.get(url) as r:
                                    assert r.status == 200, version
                                    assert "root:x:0:0" in await r.text()
                        finally:
                            forward.terminate()
                            await forward.wait()
            # A service account's token: authenticated by TokenReview, then denied.
            token = (await admin.create("v1 serviceaccounts", {
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {}}, namespace, name="default", subresource="token"))["status"]["token"]
            async with k.session(cn=None, token=token) as s:
                assert await get(s, k.base + "/healthz") == (
                    403, f"Forbidden (user=system:serviceaccount:{namespace}:default, "
                         "verb=get, resource=nodes, subresource(s)=[healthz proxy])")
        finally:
            await admin.delete("v1 nodes", node)
            await admin.close()
            await k.server.client.close()
    run(pki, tmp_path, body, timeout=120)
