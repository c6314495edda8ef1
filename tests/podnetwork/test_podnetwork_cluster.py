"""The pod-network agent as a whole against a real API server (etcd + kube-apiserver from
tests/apiserver's harness), with kube-proxy's credentials, working in a throwaway
network namespace: Nodes with podCIDRs become the CNI file and proto-199 routes, and
follow Node changes and deletions."""
from __future__ import annotations

import asyncio
import functools
import json
import time

import aiohttp

from kubesmith.client.rest import ApiClient
from kubesmith.podnetwork import main as agent_main
from kubesmith.proxy.iptables import CommandRunner
from kubesmith.store.testing import free_port
from tests.apiserver import module_cluster
from tests.client import helpers
from tests.proxy.proxy_netns import in_ns, netns, require_root_networking


# The `cluster` fixture: an API server of this module's own.
cluster = module_cluster.cluster

# The checks run commands in the network namespace: in a worker thread, so that the
# agent under test goes on meanwhile.
eventually = functools.partial(helpers.eventually, timeout=15.0, interval=0.1,
                               in_thread=True)


async def make_node(admin: ApiClient, name: str, pod_cidr: str, ip: str) -> None:
    node = await admin.create("v1 nodes", {"metadata": {"name": name},
                                           "spec": {"podCIDR": pod_cidr,
                                                    "podCIDRs": [pod_cidr]}})
    node["status"] = {"addresses": [{"type": "InternalIP", "address": ip},
                                    {"type": "Hostname", "address": name}]}
    await admin.update_status("v1 nodes", node)


async def test_agent_follows_nodes(cluster, tmp_path):
    require_root_networking()
    prefix = f"pn{int(time.time()) % 100000}"
    own, other, third = f"{prefix}-a", f"{prefix}-b", f"{prefix}-c"
    healthz = free_port()
    options = agent_main.parse([
        f"--kubeconfig={cluster.state / 'kubeconfigs' / 'kube-proxy.conf'}",
        f"--node-name={own}", "--cluster-cidr=10.244.0.0/16",
        f"--cni-conf-dir={tmp_path}", f"--healthz-port={healthz}"])
    with netns() as ns:
        in_ns(ns, "ip", "link", "add", "node0", "type", "veth", "peer", "name", "peer0")
        in_ns(ns, "ip", "addr", "add", "192.168.78.1/24", "dev", "node0")
        in_ns(ns, "ip", "link", "set", "peer0", "up")
        in_ns(ns, "ip", "link", "set", "node0", "up")

        def routes() -> dict[str, str]:
            out = in_ns(ns, "ip", "-j", "-4", "route", "show", "proto", "199").stdout
            return {r["dst"]: r.get("gateway", "") for r in json.loads(out or "[]")}

        stopping = asyncio.Event()
        agent = asyncio.create_task(agent_main.run(
            options, runner=CommandRunner(["ip", "netns", "exec", ns]), stopping=stopping))
        async with ApiClient.from_kubeconfig(cluster.kubeconfig, component="test") as admin:
            try:
                await make_node(admin, own, "10.244.11.0/24", "192.168.78.1")
                await make_node(admin, other, "10.244.12.0/24", "192.168.78.2")
                await make_node(admin, third, "10.244.13.0/24", "192.168.78.3")
                await eventually(lambda: routes() == {"10.244.12.0/24": "192.168.78.2",
                                                      "10.244.13.0/24": "192.168.78.3"})
                conf = json.loads((tmp_path / "10-kubesmith.conflist").read_text())
                assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.11.0/24"}]]

                await admin.delete("v1 nodes", third)
                await eventually(lambda: "10.244.13.0/24" not in routes())
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"http://127.0.0.1:{healthz}/healthz") as response:
                        assert response.status == 200
            finally:
                stopping.set()
                assert await asyncio.wait_for(agent, 20) == 0
                for name in (own, other, third):
                    try:
                        await admin.delete("v1 nodes", name)
                    except Exception:
                        pass
