"""`kube-proxy`: kubesmith's kube-proxy in iptables mode.

    kube-proxy --config=/var/lib/kube-proxy/config.conf --hostname-override=node-1

Informers (the shared client machinery) on Services and EndpointSlices, both without
the service-proxy-name and headless labels as upstream, and on this node's Node. Rules
are first written once both caches have synced, so a restart never programs a partial
view of the cluster. Serves /healthz and /livez (HTTP, healthzBindAddress, default
0.0.0.0:10256) and /metrics, /proxyMode (metricsBindAddress, default 127.0.0.1:10249).
SIGTERM stops it; the rules stay, so service traffic keeps flowing across a restart.
`kube-proxy --cleanup` removes them and exits.

NodePorts are served on 127.0.0.1 too unless iptables.localhostNodePorts is false or
nodePortAddresses leaves out loopback (upstream's iptables-mode default); that needs
net.ipv4.conf.all.route_localnet=1, which is then set, with the KUBE-FIREWALL rule
dropping martian packets to 127.0.0.0/8 from outside.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import logging
import socket
import sys

from aiohttp import web

from kubesmith import process
from kubesmith.client.informers import InformerFactory
from kubesmith.client.rest import ApiClient
from kubesmith.proxy import config as proxy_config
from kubesmith.proxy.iptables import CommandRunner, Conntrack, Iptables, get_sysctl, set_sysctl
from kubesmith.proxy.metrics import ProxyHealth, ProxyMetrics
from kubesmith.proxy.proxier import Proxier, node_ips, node_port_ips
from kubesmith.proxy.rules import RuleOptions
from kubesmith.proxy.servicemap import INFORMER_LABEL_SELECTOR

log = logging.getLogger("kube-proxy")

SYNC_TIMEOUT = 60.0
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"


def _rfc3339(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat()


def health_app(health: ProxyHealth) -> web.Application:
    """Upstream's proxy health server: JSON with lastUpdated and currentTime, 200 or 503;
    /healthz also reports nodeEligible (false while the node is being deleted)."""

    def answer(with_node: bool) -> web.Response:
        healthy = health.is_healthy()
        body = {"lastUpdated": _rfc3339(health.last_updated),
                "currentTime": _rfc3339(health.clock())}
        if with_node:
            body["nodeEligible"] = health.node_eligible
            healthy = healthy and health.node_eligible
        return web.Response(status=200 if healthy else 503, text=json.dumps(body),
                            content_type="application/json",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def healthz(request: web.Request) -> web.Response:
        return answer(True)

    async def livez(request: web.Request) -> web.Response:
        return answer(False)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    return app


def metrics_app(metrics: ProxyMetrics) -> web.Application:
    async def serve_metrics(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})

    async def proxy_mode(request: web.Request) -> web.Response:
        return web.Response(text="iptables")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/proxyMode", proxy_mode)
    app.router.add_get("/healthz", ok)
    return app


async def _serve(app: web.Application, address: str, what: str) -> web.AppRunner | None:
    if not address:
        return None
    host, port = proxy_config.host_port(address, what)
    if port == 0:
        return None
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("serving %s on http://%s:%d", what, host, port)
    return runner


async def local_ipv4_addresses(runner: CommandRunner) -> list[str]:
    result = await runner.run(["ip", "-j", "-4", "addr", "show"], check=False)
    try:
        links = json.loads(result.stdout or "[]")
    except ValueError:
        return []
    return [info["local"] for link in links for info in link.get("addr_info") or []
            if info.get("local")]


def node_being_deleted(node: dict | None) -> bool:
    if not node:
        return False
    if (node.get("metadata") or {}).get("deletionTimestamp"):
        return True
    return any(t.get("key") == TO_BE_DELETED_TAINT
               for t in (node.get("spec") or {}).get("taints") or [])


async def run(config: proxy_config.ProxyConfig, *, runner: CommandRunner | None = None,
              stopping: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or until `stopping` is set, when given); `runner` runs
    the host commands (tests give one that enters a network namespace)."""
    node_name = (config.hostname_override or socket.gethostname()).strip().lower()
    runner = runner or CommandRunner()
    iptables = Iptables(runner)
    client = ApiClient.from_kubeconfig(config.kubeconfig, component="kube-proxy",
                                       qps=config.kube_api_qps, burst=config.kube_api_burst)
    informers = InformerFactory(client)
    services = informers.informer("v1 services", label_selector=INFORMER_LABEL_SELECTOR)
    slices = informers.informer("discovery.k8s.io/v1 endpointslices",
                                label_selector=INFORMER_LABEL_SELECTOR)
    nodes = informers.informer("v1 nodes", field_selector=f"metadata.name={node_name}")

    cluster_cidrs = ([str(c) for c in config.cluster_cidr]
                     if config.detect_local_mode == "ClusterCIDR" else [])
    if not cluster_cidrs:
        log.warning("no cluster CIDR: traffic from outside the pod range to ClusterIPs is "
                    "not masqueraded")
    liberal = await get_sysctl(runner, "net.netfilter.nf_conntrack_tcp_be_liberal")
    options = RuleOptions(masquerade_mark=RuleOptions.mark_for_bit(config.masquerade_bit),
                          masquerade_all=config.masquerade_all, cluster_cidrs=cluster_cidrs,
                          localhost_node_ports=config.localhost_node_ports,
                          conntrack_tcp_liberal=liberal not in (None, "0"))

    def primary_ips() -> list[str]:
        ips = node_ips(nodes.lister.get(node_name))
        if config.bind_address not in ("", "0.0.0.0", "::"):
            ips = [config.bind_address] + [ip for ip in ips if ip != config.bind_address]
        return ips

    async def resolve_node_ports():
        options.node_ips = primary_ips()
        return node_port_ips(config.node_port_addresses, await local_ipv4_addresses(runner),
                             options.node_ips)

    # NodePorts on 127.0.0.1 need martian packets routed (upstream sets it the same way,
    # and adds the KUBE-FIREWALL rule dropping such packets from outside).
    resolved = await resolve_node_ports()
    serves_localhost = options.localhost_node_ports and (
        resolved is None or any(ip.startswith("127.") for ip in resolved))
    options.localhost_node_ports = serves_localhost
    if serves_localhost:
        log.info("setting route_localnet=1 to allow node-ports on localhost; to change this "
                 "set iptables.localhostNodePorts=false or nodePortAddresses")
        await set_sysctl(runner, "net.ipv4.conf.all.route_localnet", "1")

    metrics = ProxyMetrics()
    health = ProxyHealth(timeout=2 * config.sync_period)
    proxier = Proxier(iptables, Conntrack(runner), node_name=node_name, options=options,
                      services=services.lister.list, slices=slices.lister.list,
                      sync_period=config.sync_period, min_sync_period=config.min_sync_period,
                      metrics=metrics, health=health, node_port_resolver=resolve_node_ports)
    services.add_event_handler(proxier.service_changed, proxier.service_changed,
                               proxier.service_changed)
    slices.add_event_handler(proxier.endpoints_changed, proxier.endpoints_changed,
                             proxier.endpoints_changed)

    def node_changed(*objs) -> None:
        node = objs[-1] if isinstance(objs[-1], dict) else None
        health.node_eligible = not node_being_deleted(node)
        proxier.changed()
    nodes.add_event_handler(node_changed, node_changed, lambda obj: node_changed(None))

    servers = [await _serve(health_app(health), config.healthz_bind_address, "healthz"),
               await _serve(metrics_app(metrics), config.metrics_bind_address, "metrics")]

    try:
        return await process.run_when_synced(informers, process.stop_on_signals(stopping),
                                             SYNC_TIMEOUT, proxier.run, name="proxier",
                                             log=log)
    finally:
        await informers.shutdown()
        for server in servers:
            if server is not None:
                await server.cleanup()
        await client.close()


async def cleanup(config: proxy_config.ProxyConfig, runner: CommandRunner | None = None
                  ) -> int:
    """--cleanup: every rule and chain kube-proxy made is removed (upstream's flag)."""
    options = RuleOptions(localhost_node_ports=config.localhost_node_ports)
    proxier = Proxier(Iptables(runner or CommandRunner()), None, node_name="",
                      options=options, services=list, slices=list)
    await proxier.cleanup()
    log.info("removed kube-proxy's iptables rules")
    return 0


def main(argv: list[str] | None = None) -> int:
    def run_or_cleanup(config: proxy_config.ProxyConfig):
        return cleanup(config) if config.cleanup else run(config)
    return process.command_main("kube-proxy", proxy_config.parse, run_or_cleanup, argv,
                                usage_errors=proxy_config.ConfigError)


if __name__ == "__main__":
    sys.exit(main())
