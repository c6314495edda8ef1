"""`kubesmith-pod-network`: the node agent for pod networking without an overlay.

    kubesmith-pod-network --kubeconfig=/etc/kubernetes/kube-proxy.conf \
        --node-name=node-1 --cluster-cidr=10.244.0.0/16

Runs on every node, as root, on a Node informer (any identity that may list and watch
Nodes will do: kube-proxy's or the kubelet's). It writes the CNI configuration for this
node's podCIDR, keeps routes to the other nodes' podCIDRs, masquerades pod traffic
leaving the pod range and enables IP forwarding (network.py says how and why). With
--service-cluster-ip-range, a host without a default route gets a route for the Service
range, so that the node itself reaches ClusterIPs. With
--healthz-port (default 10258, 0 turns it off) it serves /healthz on 127.0.0.1: 200
once a sync has succeeded and as long as the last one did.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from kubesmith import process
from kubesmith.client.informers import InformerFactory
from kubesmith.client.rest import ApiClient
from kubesmith.flags import FlagParser, cidrs, parse_duration, port_or_zero
from kubesmith.podnetwork.agent import PodNetworkAgent
from kubesmith.proxy.iptables import CommandRunner

log = logging.getLogger("kubesmith-pod-network")

SYNC_TIMEOUT = 60.0
PLUGINS = ("bridge", "host-local", "portmap", "loopback")


class UsageError(Exception):
    pass


@dataclass
class Options:
    kubeconfig: str = ""
    node_name: str = ""
    cluster_cidr: list = None
    service_cluster_ip_range: list = None
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_bin_dir: str = "/usr/lib/cni"
    bridge_name: str = "cni0"
    resync_period: float = 60.0
    healthz_port: int = 10258
    v: int = 0


def parse(argv: list[str]) -> Options:
    parser = FlagParser("kubesmith-pod-network", "kubesmith's pod network agent",
                        error=UsageError)
    flag = parser.flag
    flag("--kubeconfig", help_="kubeconfig of the API server (required)")
    flag("--node-name", help_="this node's name (default: the hostname)")
    flag("--cluster-cidr", cidrs, "the cluster's pod range (required)")
    flag("--service-cluster-ip-range", cidrs, "the Service range: routed on the node's "
         "interface when no route covers it, so the node reaches ClusterIPs")
    flag("--cni-conf-dir", help_="where the CNI configuration goes (default /etc/cni/net.d)")
    flag("--cni-bin-dir", help_="where the CNI plugins are (default /usr/lib/cni)")
    flag("--bridge-name", help_="the pods' bridge (default cni0)")
    flag("--resync-period", parse_duration, "full re-check period (default 1m)")
    flag("--healthz-port", port_or_zero, "port of /healthz on 127.0.0.1 (default 10258, "
         "0: off)")
    parser.verbosity_flag()
    known, unknown = parser.parse_known_args(argv)
    if unknown:
        raise UsageError(f"unknown flag: {unknown[0].split('=')[0]}")
    options = Options(**vars(known))
    if not options.kubeconfig:
        raise UsageError("--kubeconfig is required")
    if not options.cluster_cidr:
        raise UsageError("--cluster-cidr is required")
    options.cluster_cidr = [str(c) for c in options.cluster_cidr
                            if isinstance(c, ipaddress.IPv4Network)]
    options.service_cluster_ip_range = [str(c) for c in options.service_cluster_ip_range or []
                                        if isinstance(c, ipaddress.IPv4Network)]
    options.node_name = (options.node_name or socket.gethostname()).strip().lower()
    return options


async def run(options: Options, *, runner: CommandRunner | None = None,
              stopping: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or until `stopping` is set, when given); `runner` runs
    the host commands (tests give one that enters a network namespace)."""
    missing = [p for p in PLUGINS if not Path(options.cni_bin_dir, p).exists()]
    if missing:
        log.warning("CNI plugins missing from %s: %s", options.cni_bin_dir, ", ".join(missing))
    client = ApiClient.from_kubeconfig(options.kubeconfig, component="kubesmith-pod-network")
    informers = InformerFactory(client)
    nodes = informers.informer("v1 nodes")
    agent = PodNetworkAgent(node_name=options.node_name, cluster_cidrs=options.cluster_cidr,
                            cni_conf_dir=Path(options.cni_conf_dir), nodes=nodes.lister.list,
                            bridge=options.bridge_name, resync_period=options.resync_period,
                            runner=runner, service_cidrs=options.service_cluster_ip_range)
    nodes.add_event_handler(agent.changed, agent.changed, agent.changed)

    runner = None
    if options.healthz_port:
        async def healthz(request: web.Request) -> web.Response:
            return web.Response(status=200 if agent.healthy else 503,
                                text="ok" if agent.healthy else "not synced")
        app = web.Application()
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", options.healthz_port).start()

    try:
        # Routes, rules and the CNI file stay: pods keep their network across restarts.
        return await process.run_when_synced(informers, process.stop_on_signals(stopping),
                                             SYNC_TIMEOUT, agent.run, name="agent",
                                             task_name="pod-network", what="node informer",
                                             log=log)
    finally:
        await informers.shutdown()
        if runner is not None:
            await runner.cleanup()
        await client.close()


def main(argv: list[str] | None = None) -> int:
    return process.command_main("kubesmith-pod-network", parse, run, argv,
                                usage_errors=UsageError)


if __name__ == "__main__":
    sys.exit(main())
