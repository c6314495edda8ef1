"""kubesmith-dns against a real kube-apiserver: answers follow Services and
EndpointSlices as they change, the server registers itself in kube-system/kube-dns,
and /health, /ready and /metrics are served over HTTPS. It runs with the restricted
identity of conftest's dns_kubeconfig, on 127.0.0.1 and free ports."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import urllib.request

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from kubesmith.client.rest import ApiClient, ApiError, is_not_found
from kubesmith.dns.main import ClusterDns, parse
from kubesmith.store.testing import free_port
from tests.client.helpers import eventually
from tests.dns.conftest import KUBE_DNS_IP
from tests.dns.fakes import FakeUpstream, free_udp_and_tcp_port

SLICES = "discovery.k8s.io/v1 endpointslices"
UPDATE_BOUND = 2.5     # seconds for a change in the API to show in answers
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dns_flags(kubeconfig, tmp_path, node: str, port: int, *extra: str,
              upstream_port: int = 53) -> list[str]:
    resolv_conf = tmp_path / f"resolv-{node}.conf"
    if not resolv_conf.exists():
        resolv_conf.write_text("")
    return [f"--kubeconfig={kubeconfig}", "--bind-address=127.0.0.1", f"--port={port}",
            f"--node-name={node}", f"--upstream-resolv-conf={resolv_conf}",
            f"--upstream-port={upstream_port}", "--reverse-cidrs=10.96.0.0/12",
            f"--health-port={free_port()}", f"--ready-port={free_port()}",
            f"--metrics-port={free_port()}", "--lameduck=0", *extra]


@contextlib.asynccontextmanager
async def dns_server(kubeconfig, tmp_path, node: str, *extra: str, upstream_port: int = 53):
    port = free_udp_and_tcp_port()
    options = parse(dns_flags(kubeconfig, tmp_path, node, port, *extra,
                              upstream_port=upstream_port))
    client = ApiClient.from_kubeconfig(kubeconfig, component="kubesmith-dns")
    app = ClusterDns(options, client)
    try:
        await app.start()
        await eventually(lambda: app.ready, timeout=15)
        yield app, port
    finally:
        await app.stop()
        await client.close()


async def ask(port: int, qname: str, qtype: str = "A", proto: str = "udp"
              ) -> dns.message.Message:
    query = dns.message.make_query(qname, qtype)
    send = dns.asyncquery.udp if proto == "udp" else dns.asyncquery.tcp
    return await send(query, "127.0.0.1", port=port, timeout=3)


def rdatas(response: dns.message.Message) -> list[str]:
    return sorted(rdata.to_text() for rrset in response.answer for rdata in rrset)


async def answers(port: int, qname: str, qtype: str = "A", proto: str = "udp") -> list[str]:
    return rdatas(await ask(port, qname, qtype, proto))


@pytest.fixture
def namespace(cluster) -> str:
    name = cluster.new_namespace("dns-")
    yield name
    cluster.request("DELETE", f"/api/v1/namespaces/{name}")


def service(name: str, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": spec}


def test_answers_follow_services_and_slices(cluster, dns_kubeconfig, admin, namespace,
                                            tmp_path):
    async def main():
        async with admin() as api, dns_server(dns_kubeconfig, tmp_path, "dns-a") as (_, port):
            web = await api.create("v1 services", service(
                "web", selector={"app": "web"},
                ports=[{"name": "http", "port": 80, "protocol": "TCP"}]), namespace)
            ip = web["spec"]["clusterIP"]
            fqdn = f"web.{namespace}.svc.cluster.local"
            # A new Service answers within about a second (the bound leaves room for a
            # busy machine).
            await eventually(lambda: answers(port, fqdn), timeout=UPDATE_BOUND)
            response = await ask(port, fqdn)
            assert rdatas(response) == [ip] and response.flags & dns.flags.AA
            assert response.answer[0].ttl == 5
            assert await answers(port, f"_http._tcp.{fqdn}", "SRV") == [f"0 100 80 {fqdn}."]
            reverse = ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
            assert await answers(port, reverse, "PTR") == [f"{fqdn}."]
            assert await answers(port, fqdn, proto="tcp") == [ip]
            # The apiserver's own Service and the schema version.
            assert await answers(port, "kubernetes.default.svc.cluster.local") == ["10.96.0.1"]
            assert await answers(port, "dns-version.cluster.local", "TXT") == ['"1.1.0"']

            # Negative answers.
            missing = await ask(port, f"nope.{namespace}.svc.cluster.local")
            assert missing.rcode() == dns.rcode.NXDOMAIN
            assert missing.authority[0].rdtype == dns.rdatatype.SOA
            nodata = await ask(port, fqdn, "AAAA")
            assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
            assert (await ask(port, f"{namespace}.svc.cluster.local")).rcode() \
                == dns.rcode.NOERROR

            # A headless Service with a slice of its own.
            await api.create("v1 services", service(
                "db", clusterIP="None", ports=[{"name": "pg", "port": 5432}]), namespace)
            await api.create(SLICES, {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "db-1", "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.1.5"], "hostname": "db-0",
                               "conditions": {"ready": True}},
                              {"addresses": ["10.244.2.6"], "conditions": {"ready": True}},
                              {"addresses": ["10.244.2.7"], "conditions": {"ready": False}}],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}, namespace)
            db = f"db.{namespace}.svc.cluster.local"
            assert await eventually(lambda: answers(port, db), timeout=UPDATE_BOUND) == [
                "10.244.1.5", "10.244.2.6"]
            assert await answers(port, f"db-0.{db}") == ["10.244.1.5"]
            assert await answers(port, f"10-244-2-6.{db}") == ["10.244.2.6"]
            srv = await answers(port, f"_pg._tcp.{db}", "SRV")
            assert [record.split()[2:] for record in srv] == [
                ["5432", f"10-244-2-6.{db}."], ["5432", f"db-0.{db}."]]
            assert await answers(port, "5.1.244.10.in-addr.arpa", "PTR") == [f"db-0.{db}."]

            # An endpoint turning ready shows within a second.
            current = await api.get(SLICES, "db-1", namespace)
            current["endpoints"][2]["conditions"]["ready"] = True
            await api.update(SLICES, current, namespace)
            await eventually(lambda: _has(answers(port, db), "10.244.2.7"),
                             timeout=UPDATE_BOUND)

            # ExternalName.
            await api.create("v1 services", service(
                "ext", type="ExternalName", externalName=f"web.{namespace}.svc.cluster.local"),
                namespace)
            ext = await eventually(lambda: answers(port, f"ext.{namespace}.svc.cluster.local"),
                                   timeout=UPDATE_BOUND)
            assert ext == [ip, f"{fqdn}."]

            # Pod records.
            assert await answers(port, f"10-244-3-4.{namespace}.pod.cluster.local") == [
                "10.244.3.4"]

            # A changed Service changes its answers; a deleted one is gone within a second.
            web["spec"]["ports"].append({"name": "metrics", "port": 9090, "protocol": "TCP"})
            await api.update("v1 services", web, namespace)
            await eventually(lambda: answers(port, f"_metrics._tcp.{fqdn}", "SRV"),
                             timeout=UPDATE_BOUND)
            await api.delete("v1 services", "web", namespace)

            async def gone():
                return (await ask(port, fqdn)).rcode() == dns.rcode.NXDOMAIN
            await eventually(gone, timeout=UPDATE_BOUND)
    asyncio.run(main())


async def _has(pending, value) -> bool:
    return value in await pending


def test_self_registration_in_the_kube_dns_service(cluster, dns_kubeconfig, admin,
                                                   kube_dns_service, tmp_path):
    async def main():
        async with admin() as api:
            async with dns_server(dns_kubeconfig, tmp_path, "dns-b") as (app, port):
                async def registered():
                    try:
                        slice_ = await api.get(SLICES, "kube-dns-dns-b", "kube-system")
                    except ApiError as exc:
                        if is_not_found(exc):
                            return None
                        raise
                    endpoint = (slice_.get("endpoints") or [{}])[0]
                    return slice_ if (endpoint.get("conditions") or {}).get("ready") else None

                slice_ = await eventually(registered, timeout=5)
                labels = slice_["metadata"]["labels"]
                assert labels["kubernetes.io/service-name"] == "kube-dns"
                assert labels["endpointslice.kubernetes.io/managed-by"] == "kubesmith-dns"
                assert slice_["addressType"] == "IPv4"
                assert slice_["endpoints"][0]["addresses"] == ["127.0.0.1"]
                assert slice_["endpoints"][0]["nodeName"] == "dns-b"
                owner = slice_["metadata"]["ownerReferences"][0]
                assert (owner["kind"], owner["name"], owner["uid"]) == (
                    "Service", "kube-dns", kube_dns_service["metadata"]["uid"])
                assert sorted((p["name"], p["port"], p["protocol"]) for p in slice_["ports"]) \
                    == [("dns", port, "UDP"), ("dns-tcp", port, "TCP"),
                        ("metrics", app.options.metrics_port, "TCP")]
                # The zone's name server is the Service's IP; its own SRV records exist.
                assert await answers(port, "ns.dns.cluster.local") == [KUBE_DNS_IP]
                assert await answers(port, "_dns._udp.kube-dns.kube-system.svc.cluster.local",
                                     "SRV") == ["0 100 53 kube-dns.kube-system.svc.cluster.local."]
                # Someone deleting the slice sees it come back; changing it, put right.
                await api.delete(SLICES, "kube-dns-dns-b", "kube-system")
                await eventually(registered, timeout=5)
                current = await api.get(SLICES, "kube-dns-dns-b", "kube-system")
                current["endpoints"][0]["addresses"] = ["127.0.0.9"]
                await api.update(SLICES, current, "kube-system")

                async def repaired():
                    got = await registered()
                    return got and got["endpoints"][0]["addresses"] == ["127.0.0.1"]
                await eventually(repaired, timeout=5)
            # Stopped: the slice is withdrawn.
            assert await registered() is None
    asyncio.run(main())


def test_forwarding_through_the_running_server(cluster, dns_kubeconfig, tmp_path):
    async def main():
        async with FakeUpstream({("www.example.com", "A"): ["192.0.2.40"]}) as upstream:
            (tmp_path / "resolv-dns-c.conf").write_text(f"nameserver {upstream.address}\n")
            async with dns_server(dns_kubeconfig, tmp_path, "dns-c", "--service=",
                                  upstream_port=upstream.port) as (_, port):
                assert await answers(port, "www.example.com") == ["192.0.2.40"]
                assert await answers(port, "www.example.com", proto="tcp") == ["192.0.2.40"]
                assert upstream.count("www.example.com") == 1
                # The cluster's names stay here, also unknown ones.
                assert (await ask(port, "nope.svc.cluster.local")).rcode() == \
                    dns.rcode.NXDOMAIN
                assert upstream.count("nope.svc.cluster.local") == 0
    asyncio.run(main())


def _https_get(url: str) -> tuple[int, str]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE     # a certificate made at start, self-signed
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_ready_and_metrics_over_https(cluster, dns_kubeconfig, tmp_path):
    async def main():
        async with dns_server(dns_kubeconfig, tmp_path, "dns-d", "--service=") as (app, port):
            await ask(port, "kubernetes.default.svc.cluster.local")
            options = app.options
            results = await asyncio.gather(*(asyncio.to_thread(_https_get, url) for url in (
                f"https://127.0.0.1:{options.health_port}/health",
                f"https://127.0.0.1:{options.ready_port}/ready",
                f"https://127.0.0.1:{options.metrics_port}/metrics")))
            (health, _), (ready, _), (metrics, text) = results
            assert (health, ready, metrics) == (200, 200, 200)
            assert 'coredns_dns_requests_total{family="1",proto="udp"' in text
            assert "coredns_dns_responses_total" in text
            assert "coredns_cache_entries" in text
    asyncio.run(main())


def test_command_runs_and_withdraws_on_sigterm(cluster, dns_kubeconfig, admin,
                                              kube_dns_service, tmp_path):
    """The console script's code path: start, register, SIGTERM, slice gone while the
    server still answers (lameduck), exit 0."""
    port = free_udp_and_tcp_port()
    flags = dns_flags(dns_kubeconfig, tmp_path, "dns-e", port, "--lameduck=1s")
    log_path = tmp_path / "dns.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "kubesmith.dns.main", *flags],
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        async def main():
            async with admin() as api:
                async def ready_slice():
                    try:
                        got = await api.get(SLICES, "kube-dns-dns-e", "kube-system")
                    except ApiError:
                        return None
                    return got["endpoints"][0]["conditions"]["ready"] or None
                await eventually(ready_slice, timeout=20, interval=0.1)
                assert await answers(port, "kubernetes.default.svc.cluster.local") == [
                    "10.96.0.1"]
                process.send_signal(signal.SIGTERM)

                async def withdrawn():
                    try:
                        await api.get(SLICES, "kube-dns-dns-e", "kube-system")
                    except ApiError as exc:
                        return is_not_found(exc)
                    return False
                await eventually(withdrawn, timeout=5, interval=0.05)
                assert process.poll() is None
                assert await answers(port, "kubernetes.default.svc.cluster.local") == [
                    "10.96.0.1"]
                assert await asyncio.to_thread(process.wait, 10) == 0
        asyncio.run(main())
    except BaseException:
        print(log_path.read_text())
        raise
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
