"""The API client against a fake HTTP server on loopback: retries, headers, odd answers,
watch framing; and resource lookup, in-cluster config and the rate limit helpers."""
from __future__ import annotations

import asyncio
import ssl
from contextlib import asynccontextmanager

import orjson
import pytest
from aiohttp import web

from kubesmith.client import kubeconfig
from kubesmith.client.kubeconfig import ClientConfig, KubeconfigError
from kubesmith.client.ratelimit import Backoff, TokenBucket
from kubesmith.client.rest import (
    ApiClient,
    ApiError,
    TransportError,
    is_not_found,
    is_too_many_requests,
    resource_path,
    resource_type,
)


@asynccontextmanager
async def fake_server(routes):
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def client_for(url: str, **options) -> ApiClient:
    config = ClientConfig(server=url, ssl_context=ssl.create_default_context(), token="t0k")
    return ApiClient(config, component="unit-test", **options)


def test_retries_429_with_retry_after_and_sends_identity():
    calls = []

    async def handler(request):
        calls.append(dict(request.headers))
        if len(calls) < 3:
            return web.json_response({"kind": "Status", "code": 429,
                                      "reason": "TooManyRequests", "message": "slow down"},
                                     status=429, headers={"Retry-After": "0"})
        return web.json_response({"kind": "Namespace", "metadata": {"name": "default"}})

    async def main():
        async with fake_server([web.get("/api/v1/namespaces/default", handler)]) as url:
            async with client_for(url) as client:
                answer = await client.get("v1 namespaces", "default")
        assert answer["metadata"]["name"] == "default"
        assert len(calls) == 3
        assert calls[0]["Authorization"] == "Bearer t0k"
        assert calls[0]["User-Agent"].startswith("unit-test/v")
    asyncio.run(main())


def test_429_without_retry_after_is_an_error_and_non_status_bodies_get_a_reason():
    async def busy(request):
        return web.json_response({"kind": "Status", "code": 429, "reason": "TooManyRequests",
                                  "message": "no"}, status=429)

    async def proxy_error(request):
        return web.Response(status=404, text="<html>nothing here</html>")

    async def main():
        routes = [web.get("/api/v1/namespaces/busy", busy),
                  web.get("/api/v1/namespaces/gone", proxy_error)]
        async with fake_server(routes) as url:
            async with client_for(url) as client:
                with pytest.raises(ApiError) as caught:
                    await client.get("v1 namespaces", "busy")
                assert is_too_many_requests(caught.value)
                with pytest.raises(ApiError) as caught:
                    await client.get("v1 namespaces", "gone")
                assert is_not_found(caught.value) and "nothing here" in caught.value.message
    asyncio.run(main())


def test_unreachable_server_is_a_transport_error():
    async def main():
        async with fake_server([]) as url:
            pass    # the port is closed again
        async with client_for(url, timeout=2) as client:
            with pytest.raises(TransportError):
                await client.get("v1 namespaces", "default")
    asyncio.run(main())


def test_watch_splits_lines_across_chunks_and_raises_error_events():
    big = "x" * 300_000       # longer than aiohttp's own readline limit

    async def handler(request):
        assert request.query["watch"] == "1" and request.query["allowWatchBookmarks"] == "true"
        response = web.StreamResponse()
        await response.prepare(request)
        lines = b"".join(orjson.dumps(e) + b"\n" for e in [
            {"type": "ADDED", "object": {"metadata": {"name": "a"}, "data": {"v": big}}},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
            {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                         "message": "too old"}},
        ])
        for start in range(0, len(lines), 7000):    # arbitrary chunk boundaries
            await response.write(lines[start:start + 7000])
        return response

    async def main():
        async with fake_server([web.get("/api/v1/namespaces/ns/configmaps", handler)]) as url:
            async with client_for(url) as client:
                seen = []
                with pytest.raises(ApiError) as caught:
                    async with client.watch("v1 configmaps", "ns") as events:
                        async for event_type, obj in events:
                            seen.append((event_type, len(orjson.dumps(obj))))
        assert [t for t, _ in seen] == ["ADDED", "BOOKMARK"] and seen[0][1] > 300_000
        assert caught.value.code == 410 and caught.value.reason == "Expired"
    asyncio.run(main())


def test_resource_lookup_and_paths():
    assert resource_type("pods").kind == "Pod"
    assert resource_type("events").group == ""                 # the core group wins
    assert resource_type("events.events.k8s.io").group == "events.k8s.io"
    assert resource_type("deployments").group == "apps"
    assert resource_type("apps/v1 deployments").kind == "Deployment"
    assert resource_type("leases.coordination.k8s.io").kind == "Lease"
    with pytest.raises(ValueError):
        resource_type("v1 deployments")
    with pytest.raises(ValueError):
        resource_type("widgets")
    nodes, pods = resource_type("nodes"), resource_type("pods")
    assert resource_path(pods) == "/api/v1/pods"
    assert resource_path(pods, "kube-system", "p", "status") == \
        "/api/v1/namespaces/kube-system/pods/p/status"
    assert resource_path(nodes, "ignored", "n1") == "/api/v1/nodes/n1"
    assert resource_path(resource_type("clusterroles"), None, "system:a b") == \
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/system%3Aa%20b"


def test_in_cluster_config(tmp_path):
    import trustme
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    (tmp_path / "token").write_text("abc\n")
    (tmp_path / "namespace").write_text("kube-system")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    config = kubeconfig.in_cluster(tmp_path, env)
    assert config.server == "https://[fd00::1]:443"
    assert config.token == "abc" and config.token_file == str(tmp_path / "token")
    assert kubeconfig.in_cluster_namespace(tmp_path) == "kube-system"
    with pytest.raises(KubeconfigError):
        kubeconfig.in_cluster(tmp_path, {})


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket():
    clock = FakeClock()
    bucket = TokenBucket(10, 3, clock=clock)
    assert [bucket.reserve() for _ in range(3)] == [0, 0, 0]
    assert bucket.reserve() == pytest.approx(0.1)
    assert bucket.reserve() == pytest.approx(0.2)     # queued behind the previous one
    clock.now += 10
    assert bucket.reserve() == 0                      # refilled, but never beyond burst
    assert TokenBucket(0, 1).reserve() == 0           # qps 0: no limit


def test_backoff_grows_caps_and_resets():
    clock = FakeClock()
    backoff = Backoff(1.0, 4.0, jitter=0.0, reset_after=60, clock=clock)
    assert [backoff.next() for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    clock.now += 61
    assert backoff.next() == 1.0
