"""The whole data path of one node, for real, in throwaway network namespaces: the
agent's conflist run through Debian's CNI plugins (bridge + host-local + portmap, as
containerd would run them) for two "pods", then pod-to-pod HTTP over the bridge, a pod
reaching a ClusterIP whose endpoint is the other pod on the same bridge (kube-proxy's
rules; needs bridge-nf-call-iptables), the node reaching that ClusterIP without a
default route, and a hostPort through portmap."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubesmith.podnetwork.agent import PodNetworkAgent
from kubesmith.proxy.iptables import CommandRunner, Conntrack, Iptables
from kubesmith.proxy.proxier import Proxier
from kubesmith.proxy.rules import RuleOptions
from tests.podnetwork.podnetwork_objects import node
from tests.proxy.proxy_netns import (HTTP_CLIENT, in_ns, netns, require_root_networking,
                                     wait_listening)
from tests.proxy.proxy_objects import endpoint, service, slice_

CNI_BIN = Path("/usr/lib/cni")


def run_conflist(command: str, conflist: dict, node_ns: str, pod_ns: str, container_id: str,
                 port_mappings: list[dict] | None = None) -> dict:
    """Run every plugin of the list as libcni does (prevResult chained; capabilities
    given as runtimeConfig), in the node's namespace, for the pod's namespace."""
    env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=container_id,
               CNI_NETNS=f"/var/run/netns/{pod_ns}", CNI_IFNAME="eth0", CNI_PATH=str(CNI_BIN))
    plugins = conflist["plugins"] if command == "ADD" else list(reversed(conflist["plugins"]))
    result: dict = {}
    for plugin in plugins:
        conf = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}
        if result and command == "ADD":
            conf["prevResult"] = result
        if (plugin.get("capabilities") or {}).get("portMappings"):
            conf["runtimeConfig"] = {"portMappings": port_mappings or []}
        done = subprocess.run(["ip", "netns", "exec", node_ns, str(CNI_BIN / plugin["type"])],
                              input=json.dumps(conf), env=env, capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, f"{plugin['type']} {command}: {done.stdout}{done.stderr}"
        if command == "ADD":
            result = json.loads(done.stdout)
    return result


def test_pods_on_one_node(tmp_path):
    require_root_networking()
    if not all((CNI_BIN / p).exists() for p in ("bridge", "host-local", "portmap")):
        pytest.skip("needs the CNI plugins (containernetworking-plugins)")
    servers: list[subprocess.Popen] = []
    with netns(3) as (node_ns, pod_a, pod_b):
        runner = CommandRunner(["ip", "netns", "exec", node_ns])
        in_ns(node_ns, "ip", "link", "add", "node0", "type", "veth", "peer", "name", "peer0")
        in_ns(node_ns, "ip", "addr", "add", "192.168.79.1/24", "dev", "node0")
        in_ns(node_ns, "ip", "link", "set", "peer0", "up")
        in_ns(node_ns, "ip", "link", "set", "node0", "up")
        agent = PodNetworkAgent(node_name="n1", cluster_cidrs=["10.244.0.0/16"],
                                cni_conf_dir=tmp_path / "net.d", runner=runner,
                                service_cidrs=["10.96.0.0/12"],
                                nodes=lambda: [node("n1", "10.244.1.0/24", "192.168.79.1")])
        asyncio.run(agent.sync())
        conflist = json.loads((tmp_path / "net.d" / "10-kubesmith.conflist").read_text())
        # host-local's allocations go to the test's folder, not /var/lib/cni.
        conflist["plugins"][0]["ipam"]["dataDir"] = str(tmp_path / "ipam")
        added = []
        try:
            result_a = run_conflist("ADD", conflist, node_ns, pod_a, "pod-a")
            added.append((pod_a, "pod-a", None))
            mappings = [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]
            result_b = run_conflist("ADD", conflist, node_ns, pod_b, "pod-b", mappings)
            added.append((pod_b, "pod-b", mappings))
            ip_a = result_a["ips"][0]["address"].split("/")[0]
            ip_b = result_b["ips"][0]["address"].split("/")[0]
            assert ip_a.startswith("10.244.1.") and ip_b.startswith("10.244.1.")
            assert in_ns(node_ns, "ip", "-4", "addr", "show", "cni0").stdout.count(
                "10.244.1.1/24") == 1

            (tmp_path / "who").write_text("pod-b\n")
            servers.append(subprocess.Popen(
                ["ip", "netns", "exec", pod_b, sys.executable, "-m", "http.server", "8080"],
                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_listening(pod_b, ip_b, 8080)

            def fetch(url: str, ns: str = pod_a) -> list[str]:
                return in_ns(ns, sys.executable, "-c", HTTP_CLIENT, url, "2").stdout.split()

            assert fetch(f"http://{ip_b}:8080/who") == ["pod-b", "pod-b"]

            state = {"services": [service()],
                     "slices": [slice_("web", "default", endpoint(ip_b, node="n1"))]}
            proxier = Proxier(Iptables(runner), Conntrack(runner), node_name="n1",
                              options=RuleOptions(cluster_cidrs=["10.244.0.0/16"]),
                              services=lambda: state["services"],
                              slices=lambda: state["slices"])
            asyncio.run(proxier.sync(full=True))
            assert fetch("http://10.96.0.20/who") == ["pod-b", "pod-b"]
            # From the node itself, which has no default route (the agent routes the
            # service range; kube-proxy masquerades the node's traffic).
            assert fetch("http://10.96.0.20/who", node_ns) == ["pod-b", "pod-b"]
            # hostPort on the node's address, from the node itself.
            assert fetch("http://192.168.79.1:18080/who", node_ns) == ["pod-b", "pod-b"]
        finally:
            for process in servers:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for pod_ns, container_id, mappings in added:
                try:
                    run_conflist("DEL", conflist, node_ns, pod_ns, container_id, mappings)
                except AssertionError:
                    pass


def _http_server(ns: str, folder: Path, bind: str, port: int, log: Path) -> subprocess.Popen:
    """python's http.server in `ns`; its access log (client addresses) goes to `log`."""
    (folder / "who").write_text(f"{ns}\n")
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "http.server",
                             str(port), "--bind", bind], cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))


def test_pods_on_two_nodes(tmp_path):
    """Pod to pod across nodes is routed, source address kept; pod to a node address is
    masqueraded to the pod's node."""
    require_root_networking()
    if not all((CNI_BIN / p).exists() for p in ("bridge", "host-local", "portmap")):
        pytest.skip("needs the CNI plugins (containernetworking-plugins)")
    nodes = [node("n1", "10.244.1.0/24", "192.168.80.1"),
             node("n2", "10.244.2.0/24", "192.168.80.2")]
    servers: list[subprocess.Popen] = []
    with netns(4) as (node1, node2, pod1, pod2):
        # The nodes' link: one veth pair between the two node namespaces.
        in_ns(node1, "ip", "link", "add", "eth-n1", "type", "veth", "peer", "name", "eth-n2",
              "netns", node2)
        for ns, dev, ip in ((node1, "eth-n1", "192.168.80.1/24"),
                            (node2, "eth-n2", "192.168.80.2/24")):
            in_ns(ns, "ip", "addr", "add", ip, "dev", dev)
            in_ns(ns, "ip", "link", "set", dev, "up")
        added = []
        try:
            pod_ips = {}
            for name, node_ns, pod_ns in (("n1", node1, pod1), ("n2", node2, pod2)):
                conf_dir = tmp_path / name / "net.d"
                agent = PodNetworkAgent(node_name=name, cluster_cidrs=["10.244.0.0/16"],
                                        cni_conf_dir=conf_dir, nodes=lambda: nodes,
                                        runner=CommandRunner(["ip", "netns", "exec", node_ns]))
                asyncio.run(agent.sync())
                conflist = json.loads((conf_dir / "10-kubesmith.conflist").read_text())
                conflist["plugins"][0]["ipam"]["dataDir"] = str(tmp_path / name / "ipam")
                result = run_conflist("ADD", conflist, node_ns, pod_ns, f"pod-{name}")
                added.append((conflist, node_ns, pod_ns, f"pod-{name}"))
                pod_ips[name] = result["ips"][0]["address"].split("/")[0]
            assert pod_ips["n1"].startswith("10.244.1.") and pod_ips["n2"].startswith("10.244.2.")

            pod_log, node_log = tmp_path / "pod2.log", tmp_path / "node2.log"
            for folder in (tmp_path / "www-pod", tmp_path / "www-node"):
                folder.mkdir()
            servers.append(_http_server(pod2, tmp_path / "www-pod", pod_ips["n2"], 8080,
                                        pod_log))
            servers.append(_http_server(node2, tmp_path / "www-node", "192.168.80.2", 8081,
                                        node_log))
            wait_listening(pod2, pod_ips["n2"], 8080)
            wait_listening(node2, "192.168.80.2", 8081)

            got = in_ns(pod1, sys.executable, "-c", HTTP_CLIENT,
                        f"http://{pod_ips['n2']}:8080/who", "1").stdout.split()
            assert got == [pod2]
            got = in_ns(pod1, sys.executable, "-c", HTTP_CLIENT,
                        "http://192.168.80.2:8081/who", "1").stdout.split()
            assert got == [node2]
            for process in servers:
                process.terminate()
                process.wait(timeout=5)
            # The pod on n2 saw the other pod's own address; the node saw n1's address.
            assert pod_log.read_text().split()[0] == pod_ips["n1"]
            assert node_log.read_text().split()[0] == "192.168.80.1"
        finally:
            for process in servers:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            for conflist, node_ns, pod_ns, container_id in added:
                try:
                    run_conflist("DEL", conflist, node_ns, pod_ns, container_id)
                except AssertionError:
                    pass
