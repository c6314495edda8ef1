"""The pod-network agent's planning, without touching the host: the CNI conflist, route
planning, the iptables text, the command line, and one sync against recorded commands."""
from __future__ import annotations

import json

import pytest

from kubesmith.podnetwork import main as agent_main
from kubesmith.podnetwork.agent import PodNetworkAgent
from kubesmith.podnetwork.network import (Route, conflist, covered, device_of, iptables_rules,
                                          parse_routes, plan_routes, write_if_changed)
from kubesmith.proxy.iptables import CommandRunner, Result
from tests.podnetwork.podnetwork_objects import node


def test_conflist():
    conf = conflist("10.244.1.0/24")
    assert conf["cniVersion"] == "0.4.0" and conf["name"] == "kubesmith"
    bridge, portmap = conf["plugins"]
    assert bridge == {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
                      "hairpinMode": True,
                      "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                               "routes": [{"dst": "0.0.0.0/0"}]}}
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}


def test_write_if_changed(tmp_path):
    path = tmp_path / "net.d" / "10-kubesmith.conflist"
    assert write_if_changed(path, "one\n")
    mtime = path.stat().st_mtime_ns
    assert not write_if_changed(path, "one\n") and path.stat().st_mtime_ns == mtime
    assert write_if_changed(path, "two\n") and path.read_text() == "two\n"
    assert [p.name for p in path.parent.iterdir()] == [path.name]    # no temporary left
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_plan_routes():
    nodes = [node("n1", "10.244.1.0/24", "192.168.50.1"),
             node("n2", "10.244.2.0/24", "192.168.50.2"),
             node("n3", None, "192.168.50.3"),                   # no podCIDR yet
             node("n4", "10.244.4.0/24", external_ip="203.0.113.4"),   # no InternalIP
             node("n5", "fd00:10:244:5::/64", "fd00::5")]        # IPv6: not routed
    assert plan_routes(nodes, "n1") == [Route("10.244.2.0/24", "192.168.50.2")]
    assert plan_routes(nodes, "n2") == [Route("10.244.1.0/24", "192.168.50.1")]


def test_parse_routes():
    output = json.dumps([
        {"dst": "10.244.2.0/24", "gateway": "192.168.50.2", "dev": "eth0", "protocol": "199",
         "flags": []},
        {"dst": "default", "gateway": "192.168.50.254", "dev": "eth0", "flags": []},
        {"dst": "10.244.3.0/24", "dev": "eth0", "flags": []}])
    assert parse_routes(output) == [Route("10.244.2.0/24", "192.168.50.2")]
    assert parse_routes("") == []


def test_service_range_route_planning():
    table = [{"dst": "192.168.50.0/24", "dev": "eth0", "protocol": "kernel"},
             {"dst": "10.96.0.0/12", "dev": "eth0", "protocol": "199", "scope": "link"}]
    # Our own route does not count as someone else's.
    assert not covered("10.96.0.0/12", json.dumps(table))
    assert covered("10.96.0.0/12", json.dumps(table + [{"dst": "default",
                                                         "gateway": "192.168.50.254"}]))
    assert covered("10.96.0.0/12", json.dumps(table + [{"dst": "10.0.0.0/8", "dev": "x"}]))
    assert not covered("10.96.0.0/12", json.dumps(
        table + [{"type": "blackhole", "dst": "10.0.0.0/8"}]))
    addrs = [{"ifname": "lo", "addr_info": [{"local": "127.0.0.1"}]},
             {"ifname": "eth0", "addr_info": [{"local": "192.168.50.1", "prefixlen": 24}]}]
    assert device_of("192.168.50.1", json.dumps(addrs)) == "eth0"
    assert device_of("192.168.50.9", json.dumps(addrs)) is None


def test_iptables_rules():
    text = iptables_rules(["10.244.0.0/16"])
    assert text.splitlines() == [
        "*nat", ":KUBESMITH-POD-MASQ - [0:0]",
        "-A KUBESMITH-POD-MASQ -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN",
        "-A KUBESMITH-POD-MASQ -s 10.244.0.0/16 -j MASQUERADE", "COMMIT",
        "*filter", ":KUBESMITH-FORWARD - [0:0]",
        "-A KUBESMITH-FORWARD -s 10.244.0.0/16 -j ACCEPT",
        "-A KUBESMITH-FORWARD -d 10.244.0.0/16 -j ACCEPT", "COMMIT"]


class RecordingRunner(CommandRunner):
    def __init__(self, routes=()):
        super().__init__()
        self.commands: list[list[str]] = []
        self.routes = list(routes)

    async def run(self, argv, *, input=None, check=True):
        self.commands.append(list(argv))
        if argv[:3] == ["ip", "-j", "-4"]:
            return Result(0, json.dumps([{"dst": r.dst, "gateway": r.via}
                                         for r in self.routes]), "")
        if argv[:2] == ["sysctl", "-n"]:
            return Result(0, "0\n", "")
        if argv[:2] == ["iptables", "-w"] and "-C" in argv:
            return Result(1, "", "")
        return Result(0, "", "")


async def test_agent_sync_plans_commands(tmp_path):
    nodes = [node("n1", "10.244.1.0/24", "192.168.50.1"),
             node("n2", "10.244.2.0/24", "192.168.50.2")]
    runner = RecordingRunner(routes=[Route("10.244.9.0/24", "192.168.50.9"),
                                     Route("10.244.2.0/24", "192.168.50.22")])
    agent = PodNetworkAgent(node_name="n1", cluster_cidrs=["10.244.0.0/16"],
                            cni_conf_dir=tmp_path, nodes=lambda: nodes, runner=runner)
    await agent.sync()
    commands = runner.commands
    assert ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"] in commands
    assert ["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"] in commands
    assert ["ip", "route", "replace", "10.244.2.0/24", "via", "192.168.50.2", "proto",
            "199"] in commands
    assert ["ip", "route", "del", "10.244.9.0/24", "proto", "199"] in commands
    assert not any(c[:3] == ["ip", "route", "del"] and "10.244.2.0/24" in c for c in commands)
    assert any(c[0] == "iptables-restore" for c in commands)
    assert json.loads((tmp_path / "10-kubesmith.conflist").read_text())[
        "plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]
    # Nothing changed: a partial sync runs no route command at all.
    runner.commands.clear()
    runner.routes = [Route("10.244.2.0/24", "192.168.50.2")]
    await agent.sync(full=False)
    assert runner.commands == []


@pytest.mark.parametrize("argv, message", [
    (["--cluster-cidr=10.244.0.0/16"], "--kubeconfig"),
    (["--kubeconfig=/k"], "--cluster-cidr"),
    (["--kubeconfig=/k", "--cluster-cidr=nonsense"], "cluster-cidr"),
    (["--kubeconfig=/k", "--cluster-cidr=10.244.0.0/16", "--bogus"], "unknown flag"),
])
def test_command_line_errors(argv, message, capsys):
    assert agent_main.main(argv) == 2
    assert message in capsys.readouterr().err


def test_command_line():
    options = agent_main.parse(["--kubeconfig=/k", "--node-name=Worker-1",
                                "--cluster-cidr=10.244.0.0/16", "--cni-conf-dir=/tmp/x",
                                "--bridge-name=br-pods", "--healthz-port=0", "--v=2",
                                "--service-cluster-ip-range=10.96.0.0/12"])
    assert (options.node_name, options.cluster_cidr, options.cni_conf_dir,
            options.cni_bin_dir, options.bridge_name, options.healthz_port,
            options.service_cluster_ip_range) == (
        "worker-1", ["10.244.0.0/16"], "/tmp/x", "/usr/lib/cni", "br-pods", 0,
        ["10.96.0.0/12"])
