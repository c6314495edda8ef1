"""`kubesmith-dns`: the cluster DNS add-on's command line and the running server.

    kubesmith-dns --kubeconfig=/etc/kubernetes/dns.conf --node-name=cp1 \
        --bind-address=192.168.50.10 --cluster-domain=cluster.local

Flags (pflag syntax; defaults in brackets):
    --kubeconfig                 kubeconfig of the API server (required)
    --cluster-domain             [cluster.local]
    --bind-address               listen address; repeat or comma-separate for several
                                 [0.0.0.0]
    --port                       DNS port, UDP and TCP [53]
    --advertise-address          the address put in this server's EndpointSlice [the
                                 first --bind-address; required when that is 0.0.0.0
                                 or :: and --service is not empty]
    --node-name                  names the EndpointSlice kube-dns-<node name> [hostname]
    --service                    <namespace>/<name> of the cluster DNS Service whose
                                 endpoints these servers are; "" turns self-registration
                                 off [kube-system/kube-dns]
    --upstream-resolv-conf       where the upstream resolvers are read [/etc/resolv.conf]
    --upstream-port              port of the upstream resolvers [53]
    --upstream-timeout           per try, Go duration [2s]
    --reverse-cidrs              ranges (e.g. the service and pod CIDRs) whose reverse
                                 names are only answered here, never forwarded [none]
    --ttl                        TTL of the cluster's records, seconds [5]
    --cache-size                 answers kept from upstreams [10000]
    --lameduck                   how long queries are still answered after SIGTERM,
                                 Go duration [5s]
    --health-port                HTTPS /health [8080; 0 turns it off]
    --ready-port                 HTTPS /ready, 200 once the informers synced [8181; 0 off]
    --metrics-port               HTTPS /metrics, Prometheus text [9153; 0 off]
    --v                          log verbosity

CoreDNS serves /health, /ready and /metrics over plain HTTP; kubesmith serves every
port over TLS, here with a certificate made at start (kubesmith/serving.py), as
kube-scheduler does for :10259. On SIGTERM or SIGINT the server withdraws its
EndpointSlice, answers /ready with 503 and goes on answering queries for --lameduck
(CoreDNS's `health { lameduck 5s }` of kubeadm's Corefile: kube-proxy has time to take
it out of the Service first), then stops listening and exits 0.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import socket
import sys
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubesmith import process
from kubesmith.client.informers import DeletedFinalStateUnknown, InformerFactory
from kubesmith.client.kubeconfig import KubeconfigError
from kubesmith.client.rest import ApiClient
from kubesmith.dns.forward import Cache, Forwarder
from kubesmith.dns.records import RecordStore, service_ips
from kubesmith.dns.registration import SLICES, SliceRegistration
from kubesmith.dns.server import DnsServer, Metrics
from kubesmith.flags import (FlagParser, cidrs, comma_list, ip, parse_duration, port,
                             port_or_zero)
from kubesmith.serving import self_signed_context

log = logging.getLogger("kubesmith-dns")


@dataclass
class Options:
    kubeconfig: str
    cluster_domain: str = "cluster.local"
    bind_address: list[str] = field(default_factory=lambda: ["0.0.0.0"])
    port: int = 53
    advertise_address: str = ""
    node_name: str = ""
    service: str = "kube-system/kube-dns"
    upstream_resolv_conf: str = "/etc/resolv.conf"
    upstream_port: int = 53
    upstream_timeout: float = 2.0
    lameduck: float = 5.0
    reverse_cidrs: list[str] = field(default_factory=list)
    ttl: int = 5
    cache_size: int = 10000
    health_port: int = 8080
    ready_port: int = 8181
    metrics_port: int = 9153
    v: int = 0


class UsageError(Exception):
    pass


def _ttl(text: str) -> int:
    value = int(parse_duration(text if not text.isdigit() else text + "s"))
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError("the TTL must be between 0 and 3600 seconds")
    return value


def _addresses(text: str) -> list[str]:
    return [ip(part) for part in comma_list(text)]


def _cidr_list(text: str) -> list[str]:
    nets = []
    for part in comma_list(text):
        nets.extend(str(net) for net in cidrs(part))
    return nets


def _parser() -> FlagParser:
    parser = FlagParser("kubesmith-dns", "kubesmith's cluster DNS server", UsageError)
    flag = parser.flag
    flag("--kubeconfig", help_="kubeconfig of the API server (required)")
    flag("--cluster-domain", help_="the cluster's DNS domain (default cluster.local)")
    parser.add_argument("--bind-address", type=_addresses, action="extend",
                        default=argparse.SUPPRESS, dest="bind_address",
                        help="listen address, repeated or comma separated (default 0.0.0.0)")
    flag("--port", port, "DNS port, UDP and TCP (default 53)")
    flag("--advertise-address", ip, "address in this server's EndpointSlice "
         "(default the first --bind-address)")
    flag("--node-name", help_="node name for the EndpointSlice (default the hostname)")
    flag("--service", help_="<namespace>/<name> of the cluster DNS Service "
         "(default kube-system/kube-dns; empty: no self-registration)")
    flag("--upstream-resolv-conf", help_="resolv.conf naming the upstream resolvers "
         "(default /etc/resolv.conf)")
    flag("--upstream-port", port, "port of the upstream resolvers (default 53)")
    flag("--upstream-timeout", parse_duration, "time per upstream try (default 2s)")
    flag("--reverse-cidrs", _cidr_list, "ranges whose reverse names are never forwarded")
    flag("--ttl", _ttl, "TTL of the cluster's records in seconds (default 5)")
    flag("--cache-size", int, "answers kept from upstreams (default 10000)")
    flag("--lameduck", parse_duration, "queries still answered after SIGTERM "
         "(default 5s)")
    flag("--health-port", port_or_zero, "HTTPS /health (default 8080; 0 disables)")
    flag("--ready-port", port_or_zero, "HTTPS /ready (default 8181; 0 disables)")
    flag("--metrics-port", port_or_zero, "HTTPS /metrics (default 9153; 0 disables)")
    parser.verbosity_flag()
    return parser


def parse(argv: list[str]) -> Options:
    known, unknown = _parser().parse_known_args(argv)
    if unknown:
        raise UsageError(f"unknown flag: {unknown[0].split('=')[0]}")
    values = vars(known)
    if not values.get("kubeconfig"):
        raise UsageError("--kubeconfig is required")
    options = Options(**values)
    if not options.bind_address:
        raise UsageError("--bind-address needs an address")
    # Several --bind-address flags add up; the same address twice is one listener.
    options.bind_address = list(dict.fromkeys(options.bind_address))
    if options.service:
        namespace, _, name = options.service.partition("/")
        if not namespace or not name:
            raise UsageError("--service must be <namespace>/<name>")
        if not options.advertise_address:
            first = ipaddress.ip_address(options.bind_address[0])
            if first.is_unspecified:
                raise UsageError("--advertise-address is needed when --bind-address is "
                                 f"{first} (or turn self-registration off with --service=)")
            options.advertise_address = str(first)
    if not options.node_name:
        options.node_name = socket.gethostname().lower()
    return options


# --- the running add-on ---------------------------------------------------------------

class ClusterDns:
    """Informers feeding the records, the DNS listeners, the HTTPS endpoints and the
    self-registration, started and stopped together."""

    def __init__(self, options: Options, client: ApiClient):
        self.options = options
        self.client = client
        self.store = RecordStore(options.cluster_domain, options.ttl,
                                 dns_service=options.service,
                                 reverse_cidrs=options.reverse_cidrs)
        self.forwarder = Forwarder(options.upstream_resolv_conf, port=options.upstream_port,
                                   timeout=options.upstream_timeout, excluded=self._excluded,
                                   cache=Cache(options.cache_size))
        self.metrics = Metrics(self.forwarder, f"dns://:{options.port}")
        self.server = DnsServer(self.store, self.forwarder, metrics=self.metrics)
        self.informers = InformerFactory(client)
        self.services = self.informers.informer("v1 services")
        self.slices = self.informers.informer(SLICES)
        self.namespaces = self.informers.informer("v1 namespaces")
        self.registration: SliceRegistration | None = None
        if options.service:
            self.registration = SliceRegistration(
                client, slices=self.slices.lister, services=self.services.lister,
                service=options.service, node_name=options.node_name,
                address=options.advertise_address, dns_port=options.port,
                metrics_port=options.metrics_port)
        self._feed()
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task] = []
        self.stopping = False

    def _feed(self) -> None:
        store = self.store

        def last(obj):
            return obj.obj if isinstance(obj, DeletedFinalStateUnknown) else obj

        def service_changed(obj) -> None:
            if self.registration is not None and self._is_dns_service(obj):
                self.registration.wake()

        def slice_changed(obj) -> None:
            if self.registration is not None and self.registration.is_ours(obj):
                self.registration.wake()

        self.services.add_event_handler(
            on_add=lambda obj: (store.set_service(obj), service_changed(obj)),
            on_update=lambda old, new: (store.set_service(new), service_changed(new)),
            on_delete=lambda obj: (store.remove_service(last(obj)),
                                   service_changed(last(obj))))
        self.slices.add_event_handler(
            on_add=lambda obj: (store.set_slice(obj), slice_changed(obj)),
            on_update=lambda old, new: (store.set_slice(new), slice_changed(new)),
            on_delete=lambda obj: (store.remove_slice(last(obj)), slice_changed(last(obj))))
        self.namespaces.add_event_handler(
            on_add=store.set_namespace, on_update=lambda old, new: store.set_namespace(new),
            on_delete=lambda obj: store.remove_namespace(last(obj)))

    def _is_dns_service(self, obj) -> bool:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace')}/{meta.get('name')}" == self.options.service

    def _excluded(self) -> set[str]:
        """Upstreams never to ask: this server itself (by its own addresses and the
        cluster DNS Service's), which would send a query round in a loop."""
        out: set[str] = set()
        if self.options.upstream_port == self.options.port:
            for address in self.options.bind_address:
                parsed = ipaddress.ip_address(address)
                if parsed.is_unspecified:
                    out.update(("127.0.0.1", "::1"))
                else:
                    out.add(str(parsed))
            if self.options.advertise_address:
                out.add(self.options.advertise_address)
        if self.options.service:
            namespace, _, name = self.options.service.partition("/")
            service = self.services.lister.get(name, namespace)
            if service is not None:
                out.update(service_ips(service))
        return out

    @property
    def ready(self) -> bool:
        return self.store.synced and not self.stopping

    async def start(self) -> None:
        try:
            await self.server.start(self.options.bind_address, self.options.port)
            await self._start_https()
        except BaseException:
            await self.stop(withdraw=False)
            raise
        if not self.forwarder.nameservers():
            log.warning("no upstream resolver in %s: names outside the cluster get "
                        "SERVFAIL", self.options.upstream_resolv_conf)
        self.informers.start()
        self._tasks.append(asyncio.create_task(self._mark_synced(), name="dns-sync"))

    async def _mark_synced(self) -> None:
        await self.informers.wait_for_sync()
        self.store.synced = True
        log.info("informers synced: %d services", self.store.service_count())
        if self.registration is not None:
            # Registered only now: the slice cache is complete (no blind create) and
            # the server answers the cluster's names.
            self.registration.ready = True
            self._tasks.append(asyncio.create_task(self.registration.run(),
                                                   name="dns-registration"))

    async def stop(self, *, withdraw: bool = True) -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if withdraw and self.registration is not None:
            await self.registration.withdraw()
            if self.options.lameduck > 0:
                log.info("answering for %gs more (lameduck)", self.options.lameduck)
                await asyncio.sleep(self.options.lameduck)
        await self.server.stop()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        await self.informers.shutdown()

    # --- /health, /ready, /metrics over HTTPS ------------------------------------------

    async def _start_https(self) -> None:
        async def health(request: web.Request) -> web.Response:
            return web.Response(text="OK")

        async def ready(request: web.Request) -> web.Response:
            if self.ready:
                return web.Response(text="OK")
            return web.Response(status=503, text="informers not synced")

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.metrics.registry),
                                headers={"Content-Type": CONTENT_TYPE_LATEST})

        routes: dict[int, list[tuple[str, object]]] = {}
        for number, path, handler in ((self.options.health_port, "/health", health),
                                      (self.options.ready_port, "/ready", ready),
                                      (self.options.metrics_port, "/metrics", metrics)):
            if number:
                routes.setdefault(number, []).append((path, handler))
        if not routes:
            return
        context = self_signed_context(socket.gethostname())
        for number, handlers in routes.items():
            app = web.Application()
            for path, handler in handlers:
                app.router.add_get(path, handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            self._runners.append(runner)
            for address in self.options.bind_address:
                await web.TCPSite(runner, address, number, ssl_context=context).start()
            log.info("serving %s over HTTPS on port %d",
                     ", ".join(path for path, _ in handlers), number)


async def run(options: Options) -> int:
    try:
        client = ApiClient.from_kubeconfig(options.kubeconfig, component="kubesmith-dns")
    except KubeconfigError as exc:
        log.error("%s", exc)
        return 1
    app = ClusterDns(options, client)
    stopping = process.stop_on_signals()
    try:
        try:
            await app.start()
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            return 1
        await stopping.wait()
        log.info("stopping")
        await app.stop()
    finally:
        await client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    return process.command_main("kubesmith-dns", parse, run, argv, usage_errors=UsageError)


if __name__ == "__main__":
    sys.exit(main())
