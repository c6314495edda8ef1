"""kube-proxy as a whole against a real API server (etcd + kube-apiserver from
tests/apiserver's harness), with kube-proxy's own credentials (system:kube-proxy, so
RBAC is as on a cluster), writing its rules into a throwaway network namespace: a
Service and its EndpointSlice become chains, endpoint and service changes follow,
/healthz and /metrics answer."""
from __future__ import annotations

import asyncio
import functools

import aiohttp

from kubesmith.client.rest import ApiClient
from kubesmith.proxy import main as proxy_main
from kubesmith.proxy.config import ProxyConfig
from kubesmith.proxy.iptables import CommandRunner
from kubesmith.proxy.servicemap import endpoint_chain_name, port_proto_hash
from kubesmith.store.testing import free_port
from tests.apiserver import module_cluster
from tests.client import helpers
from tests.proxy.proxy_netns import in_ns, netns, require_root_networking


# The `cluster` fixture: an API server of this module's own.
cluster = module_cluster.cluster

# The checks run iptables-save in the network namespace: in a worker thread, so that the
# kube-proxy under test goes on meanwhile.
eventually = functools.partial(helpers.eventually, timeout=15.0, interval=0.1,
                               in_thread=True)


def endpoint_slice(namespace: str, ips: list[str]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True},
                           "nodeName": "node-1"} for ip in ips]}


async def test_kube_proxy_follows_services_and_endpoint_slices(cluster):
    require_root_networking()
    namespace = cluster.new_namespace("proxy-")
    healthz, metrics = free_port(), free_port()
    config = ProxyConfig(kubeconfig=str(cluster.state / "kubeconfigs" / "kube-proxy.conf"),
                         hostname_override="node-1", cluster_cidr=[],
                         healthz_bind_address=f"127.0.0.1:{healthz}",
                         metrics_bind_address=f"127.0.0.1:{metrics}",
                         min_sync_period=0.1, localhost_node_ports=False)
    name = f"{namespace}/web:http"
    svc_chain = "KUBE-SVC-" + port_proto_hash(name, "tcp")
    sep = lambda ip: endpoint_chain_name(name, "tcp", f"{ip}:8080")   # noqa: E731
    with netns() as ns:
        def nat() -> str:
            return in_ns(ns, "iptables-save", "-t", "nat").stdout

        def filter_() -> str:
            return in_ns(ns, "iptables-save", "-t", "filter").stdout

        stopping = asyncio.Event()
        proxy = asyncio.create_task(proxy_main.run(
            config, runner=CommandRunner(["ip", "netns", "exec", ns]), stopping=stopping))
        async with ApiClient.from_kubeconfig(cluster.kubeconfig, component="test") as admin:
            try:
                service = await admin.create("v1 services", {
                    "metadata": {"name": "web"},
                    "spec": {"type": "NodePort", "selector": {"app": "web"},
                             "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
                    namespace)
                cluster_ip = service["spec"]["clusterIP"]
                await eventually(lambda: f"-d {cluster_ip}/32" in filter_()
                                 and "has no endpoints" in filter_())
                await admin.create("discovery.k8s.io/v1 endpointslices",
                                   endpoint_slice(namespace, ["10.244.1.5"]), namespace)
                await eventually(lambda: f":{sep('10.244.1.5')} - [0:0]" in nat())
                assert f"-d {cluster_ip}/32" in nat() and f"-j {svc_chain}" in nat()
                assert f"-d {cluster_ip}/32" not in filter_()

                current = await admin.get("discovery.k8s.io/v1 endpointslices", "web-1",
                                          namespace)
                current["endpoints"] = endpoint_slice(
                    namespace, ["10.244.1.6", "10.244.2.6"])["endpoints"]
                await admin.update("discovery.k8s.io/v1 endpointslices", current, namespace)
                await eventually(lambda: f":{sep('10.244.2.6')} - [0:0]" in nat()
                                 and f":{sep('10.244.1.5')} - [0:0]" not in nat())

                async with aiohttp.ClientSession() as http:
                    async with http.get(f"http://127.0.0.1:{healthz}/healthz") as response:
                        assert response.status == 200
                        assert (await response.json())["nodeEligible"] is True
                    async with http.get(f"http://127.0.0.1:{metrics}/metrics") as response:
                        text = await response.text()
                        assert "kubeproxy_sync_proxy_rules_duration_seconds_count" in text

                await admin.delete("v1 services", "web", namespace)
                await eventually(lambda: svc_chain not in nat())
            finally:
                stopping.set()
                assert await asyncio.wait_for(proxy, 20) == 0
