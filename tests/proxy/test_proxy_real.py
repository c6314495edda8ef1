"""kube-proxy's rules with real iptables, in throwaway network namespaces: the restore
is accepted and reads back as expected, an unchanged state writes nothing, stale chains
go; and real traffic: a client reaching a ClusterIP and a NodePort is DNATed to HTTP
servers in another namespace, spread over both endpoints (or kept on one with ClientIP
affinity), and a service without endpoints is refused at once."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

from kubesmith.proxy import config as proxy_config, main as proxy_main
from kubesmith.proxy.iptables import CommandRunner, Conntrack, Iptables
from kubesmith.proxy.proxier import Proxier
from kubesmith.proxy.rules import RuleOptions
from tests.proxy.proxy_netns import (HTTP_CLIENT, in_ns, netns, require_root_networking,
                                     wait_listening)
from tests.proxy.proxy_objects import endpoint, sep, service, slice_, svc_chain


def proxier_in(ns: str, state: dict, **options) -> Proxier:
    runner = CommandRunner(["ip", "netns", "exec", ns])
    options.setdefault("cluster_cidrs", ["10.244.0.0/16"])
    return Proxier(Iptables(runner), Conntrack(runner), node_name="node-1",
                   options=RuleOptions(**options), services=lambda: state["services"],
                   slices=lambda: state["slices"])


def nat_rules(ns: str) -> list[str]:
    return [line for line in in_ns(ns, "iptables-save", "-t", "nat").stdout.splitlines()
            if line.startswith(("-A", ":"))]


def test_restore_in_a_network_namespace():
    require_root_networking()
    with netns() as ns:
        state = {"services": [service()],
                 "slices": [slice_("web", "default", endpoint("10.244.1.5"),
                                   endpoint("10.244.2.5", node="node-2"))]}
        proxier = proxier_in(ns, state)
        assert asyncio.run(proxier.sync(full=True))
        saved = nat_rules(ns)
        for chain in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ",
                      svc_chain(), sep("10.244.1.5:8080"), sep("10.244.2.5:8080")):
            assert f":{chain} - [0:0]" in saved, chain
        assert ('-A PREROUTING -m comment --comment "kubernetes service portals" '
                '-j KUBE-SERVICES') in saved
        assert ('-A POSTROUTING -m comment --comment "kubernetes postrouting rules" '
                '-j KUBE-POSTROUTING') in saved
        assert any("--probability 0.50000000000" in line for line in saved)
        filter_ = in_ns(ns, "iptables-save", "-t", "filter").stdout
        assert ":KUBE-FORWARD - [0:0]" in filter_ and "-j KUBE-EXTERNAL-SERVICES" in filter_

        # The same state again: nothing is written; the rules are as they were.
        assert not asyncio.run(proxier.sync())
        assert proxier.writes == 1 and nat_rules(ns) == saved

        # An endpoint gone: its chain is deleted in the next restore.
        state["slices"] = [slice_("web", "default", endpoint("10.244.2.5", node="node-2"))]
        assert asyncio.run(proxier.sync())
        after = nat_rules(ns)
        assert f":{sep('10.244.1.5:8080')} - [0:0]" not in after
        assert f":{sep('10.244.2.5:8080')} - [0:0]" in after

        # Someone flushed the jump: the full sync puts it back (once).
        in_ns(ns, "iptables", "-t", "nat", "-F", "PREROUTING")
        asyncio.run(proxier.sync(full=True))
        asyncio.run(proxier.sync(full=True))
        prerouting = [line for line in nat_rules(ns) if line.startswith("-A PREROUTING")]
        assert len(prerouting) == 1

        # kube-proxy --cleanup
        config = proxy_config.parse(["--cleanup"])
        assert asyncio.run(proxy_main.cleanup(config, proxier.iptables.runner)) == 0
        assert not [line for line in nat_rules(ns) if "KUBE-" in line]
        left = in_ns(ns, "iptables-save", "-t", "filter").stdout
        assert "KUBE-" not in left.replace("KUBE-FIREWALL", "")


def test_traffic_to_cluster_ip_and_node_port(tmp_path):
    require_root_networking()
    servers: list[subprocess.Popen] = []
    tag = uuid.uuid4().hex[:6]
    with netns(2) as (client, server):
        try:
            client_if, server_if = f"ksc{tag}", f"kss{tag}"
            in_ns(client, "ip", "link", "add", client_if, "type", "veth", "peer", "name",
                  server_if, "netns", server)
            in_ns(client, "ip", "addr", "add", "10.244.1.1/24", "dev", client_if)
            in_ns(client, "ip", "link", "set", client_if, "up")
            # The service range must be routable for the first routing decision.
            in_ns(client, "ip", "route", "add", "10.96.0.0/12", "dev", client_if)
            for ip in ("10.244.1.10/24", "10.244.1.11/24"):
                in_ns(server, "ip", "addr", "add", ip, "dev", server_if)
            in_ns(server, "ip", "link", "set", server_if, "up")
            for name in ("a", "b"):
                folder = tmp_path / name
                folder.mkdir()
                (folder / "who").write_text(f"server-{name}\n")
                ip = "10.244.1.10" if name == "a" else "10.244.1.11"
                servers.append(subprocess.Popen(
                    ["ip", "netns", "exec", server, sys.executable, "-m", "http.server",
                     "8080", "--bind", ip], cwd=folder, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL))
            wait_listening(server, "10.244.1.10", 8080)
            wait_listening(server, "10.244.1.11", 8080)

            web = service(type_="NodePort", ports=[{"name": "http", "port": 80,
                                                    "protocol": "TCP", "nodePort": 30080}])
            empty = service("empty", cluster_ip="10.96.0.30")
            sticky = service("sticky", cluster_ip="10.96.0.40", sessionAffinity="ClientIP")
            both = (endpoint("10.244.1.10"), endpoint("10.244.1.11"))
            state = {"services": [web, empty, sticky],
                     "slices": [slice_("web", "default", *both),
                                slice_("sticky", "default", *both)]}
            assert asyncio.run(proxier_in(client, state).sync(full=True))

            answers = in_ns(client, sys.executable, "-c", HTTP_CLIENT,
                            "http://10.96.0.20/who", "24").stdout.split()
            assert len(answers) == 24 and set(answers) == {"server-a", "server-b"}
            answers = in_ns(client, sys.executable, "-c", HTTP_CLIENT,
                            "http://10.244.1.1:30080/who", "4").stdout.split()
            assert len(answers) == 4 and set(answers) <= {"server-a", "server-b"}

            # ClientIP affinity: every connection of this client goes to one endpoint.
            answers = in_ns(client, sys.executable, "-c", HTTP_CLIENT,
                            "http://10.96.0.40/who", "12").stdout.split()
            assert len(answers) == 12 and len(set(answers)) == 1

            # REJECT, not a silent drop: the client is refused instead of timing out.
            refused = in_ns(client, sys.executable, "-c", HTTP_CLIENT,
                            "http://10.96.0.30/who", "1", check=False)
            assert refused.returncode != 0 and "refused" in refused.stderr.lower()
        finally:
            for process in servers:
                process.terminate()
            for process in servers:
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
