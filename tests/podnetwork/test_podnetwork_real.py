"""The pod-network agent on a real network stack, inside a throwaway network namespace
with a veth interface standing for the node's link: routes to the other nodes' podCIDRs
are added, replaced and removed (proto 199 only; a route of someone else stays), the
conflist is written, forwarding is on and the masquerade/forward chains exist."""
from __future__ import annotations

import asyncio
import json

from kubesmith.podnetwork.agent import PodNetworkAgent
from kubesmith.podnetwork.network import remove_iptables
from kubesmith.proxy.iptables import CommandRunner
from tests.podnetwork.podnetwork_objects import node
from tests.proxy.proxy_netns import in_ns, netns, require_root_networking


def routes(ns: str) -> dict[str, tuple[str, str]]:
    """dst -> (gateway, protocol) of the namespace's main table."""
    entries = json.loads(in_ns(ns, "ip", "-j", "-4", "route", "show").stdout or "[]")
    return {e["dst"]: (e.get("gateway", ""), str(e.get("protocol", ""))) for e in entries}


def test_routes_conflist_and_rules_in_a_network_namespace(tmp_path):
    require_root_networking()
    with netns() as ns:
        # A veth pair (dummy interfaces need a kernel module that may be absent).
        in_ns(ns, "ip", "link", "add", "node0", "type", "veth", "peer", "name", "peer0")
        in_ns(ns, "ip", "addr", "add", "192.168.77.1/24", "dev", "node0")
        in_ns(ns, "ip", "link", "set", "peer0", "up")
        in_ns(ns, "ip", "link", "set", "node0", "up")
        # A route the agent did not make must survive everything below.
        in_ns(ns, "ip", "route", "add", "10.99.0.0/24", "via", "192.168.77.9")
        nodes = [node("n1", "10.244.1.0/24", "192.168.77.1"),
                 node("n2", "10.244.2.0/24", "192.168.77.2"),
                 node("n3", "10.244.3.0/24", "192.168.77.3")]
        agent = PodNetworkAgent(node_name="n1", cluster_cidrs=["10.244.0.0/16"],
                                cni_conf_dir=tmp_path / "net.d", nodes=lambda: nodes,
                                runner=CommandRunner(["ip", "netns", "exec", ns]),
                                service_cidrs=["10.96.0.0/12"])
        try:
            asyncio.run(agent.sync())
            table = routes(ns)
            assert table["10.244.2.0/24"] == ("192.168.77.2", "199")
            assert table["10.244.3.0/24"] == ("192.168.77.3", "199")
            assert "10.244.1.0/24" not in table          # our own range: the bridge's
            # No default route here: the service range is routed on the node's link.
            assert table["10.96.0.0/12"] == ("", "199")
            conf = json.loads((tmp_path / "net.d" / "10-kubesmith.conflist").read_text())
            assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]
            assert in_ns(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
            nat = in_ns(ns, "iptables-save", "-t", "nat").stdout
            assert "-A POSTROUTING -m comment --comment \"kubesmith pod traffic leaving the " \
                   "pod range\" -j KUBESMITH-POD-MASQ" in nat
            assert "-A KUBESMITH-POD-MASQ -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN" in nat
            assert "-A KUBESMITH-POD-MASQ -s 10.244.0.0/16 -j MASQUERADE" in nat
            assert "-j KUBESMITH-FORWARD" in in_ns(ns, "iptables-save", "-t", "filter").stdout

            # n2 moved to another address, n3 is gone.
            nodes[1] = node("n2", "10.244.2.0/24", "192.168.77.22")
            del nodes[2]
            asyncio.run(agent.sync(full=False))
            table = routes(ns)
            assert table["10.244.2.0/24"] == ("192.168.77.22", "199")
            assert "10.244.3.0/24" not in table
            assert table["10.99.0.0/24"][0] == "192.168.77.9"
            assert "10.96.0.0/12" in table           # partial syncs leave it alone

            # Once the host has a default route, the service range route goes.
            in_ns(ns, "ip", "route", "add", "default", "via", "192.168.77.254")
            asyncio.run(agent.sync(full=True))
            assert "10.96.0.0/12" not in routes(ns)
            in_ns(ns, "ip", "route", "del", "default")

            # Someone deleted our route: the periodic full sync restores it; the rules
            # are not duplicated.
            in_ns(ns, "ip", "route", "del", "10.244.2.0/24")
            asyncio.run(agent.sync(full=True))
            assert routes(ns)["10.244.2.0/24"] == ("192.168.77.22", "199")
            nat = in_ns(ns, "iptables-save", "-t", "nat").stdout
            assert nat.count("-j KUBESMITH-POD-MASQ") == 1

            # A gateway that is not on any link fails alone, the rest is kept.
            nodes.append(node("n4", "10.244.4.0/24", "172.31.0.4"))
            try:
                asyncio.run(agent.sync(full=False))
            except Exception as exc:
                assert "10.244.4.0/24" in str(exc)
            else:
                raise AssertionError("an unreachable gateway was accepted")
            assert routes(ns)["10.244.2.0/24"] == ("192.168.77.22", "199")
        finally:
            asyncio.run(agent.routes.remove_all())
            asyncio.run(remove_iptables(agent.iptables))
        assert "10.244.2.0/24" not in routes(ns)
        assert "KUBESMITH" not in in_ns(ns, "iptables-save").stdout
