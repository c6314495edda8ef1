"""The iptables proxier: turns the informers' Services and EndpointSlices into rules and
keeps them written.

    proxier = Proxier(iptables, conntrack, node_name="node-1", options=RuleOptions(...),
                      services=lambda: svc_informer.lister.list(),
                      slices=lambda: eps_informer.lister.list())
    handler -> proxier.changed()          # from the informers' event handlers
    await proxier.run()                   # syncs until cancelled

A sync computes the whole desired state of kube-proxy's chains (rules.py) and, when it
differs from what was last written, writes it with one `iptables-restore --noflush`, in
which stale KUBE-SVC/SEP/... chains are flushed and deleted. The loop is
kubesmith.syncloop's BoundedFrequencyRunner: syncs start at least min_sync_period apart
(a change after a quiet spell syncs at once); every sync_period a full sync runs anyway:
it re-checks the jump rules from the built-in chains and rewrites the chains even if
nothing changed, repairing whatever someone else flushed. A failed write is retried at
the next change or period.

After a write, conntrack entries that would keep UDP flows on gone endpoints are
deleted, as upstream does (this matters for DNS): entries to a removed UDP ClusterIP,
to a UDP service that just got its first endpoint (packets were rejected until now),
and DNATed to a removed endpoint.
"""
from __future__ import annotations

import datetime
import ipaddress
import logging
import time
from typing import Any, Callable

from kubesmith.proxy.iptables import CommandError, Conntrack, Iptables
from kubesmith.proxy.metrics import ProxyHealth, ProxyMetrics
from kubesmith.proxy.rules import (JUMP_RULES, RuleOptions, RuleSet, build_rules,
                                   is_service_chain)
from kubesmith.proxy.servicemap import ServicePort, build, categorize
from kubesmith.syncloop import BoundedFrequencyRunner

log = logging.getLogger(__name__)

Obj = dict[str, Any]

TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"


class _UdpState:
    """What conntrack cleanup compares between syncs, for one UDP service port."""

    def __init__(self, svc: ServicePort):
        self.cluster_ip = svc.cluster_ip
        self.node_port = svc.node_port
        self.external = list(svc.external_ips) + list(svc.load_balancer_ips)
        self.endpoint_ips = {ep.ip for ep in categorize(svc).reachable}


class Proxier:
    def __init__(self, iptables: Iptables, conntrack: Conntrack | None, *, node_name: str,
                 options: RuleOptions, services: Callable[[], list[Obj]],
                 slices: Callable[[], list[Obj]], sync_period: float = 30.0,
                 min_sync_period: float = 1.0, metrics: ProxyMetrics | None = None,
                 health: ProxyHealth | None = None,
                 node_port_resolver: Callable[[], Any] | None = None):
        self.iptables = iptables
        self.conntrack = conntrack
        self.node_name = node_name
        self.options = options
        self.services = services
        self.slices = slices
        self.metrics = metrics
        self.health = health
        # Async function giving options.node_port_ips before each full sync (the
        # node's addresses can change); None keeps the options as they are.
        self.node_port_resolver = node_port_resolver
        self.last_written: str | None = None
        self.last_rules: RuleSet | None = None
        self.writes = 0           # restores done (a test checks that a no-op writes none)
        self.syncs = 0
        self._udp: dict[str, _UdpState] = {}
        self._slice_versions: dict[str, str] = {}
        self._started_at = time.time()
        self._jumps_ok = False
        self._runner = BoundedFrequencyRunner(self._sync_in_loop, period=sync_period,
                                              min_interval=min_sync_period,
                                              name="proxy rules")

    @property
    def sync_period(self) -> float:
        return self._runner.period

    @property
    def min_sync_period(self) -> float:
        return self._runner.min_interval

    @property
    def _last_sync(self) -> float:
        """time.monotonic() when the loop's last sync began."""
        return self._runner.last_start

    # --- from the informers -------------------------------------------------------------

    def changed(self, *_: Any) -> None:
        """Ask for a sync (informer handlers call this; cheap)."""
        if self.health is not None:
            self.health.queued()
        if self.metrics is not None:
            self.metrics.last_queued.set_to_current_time()
        self._runner.request()

    def service_changed(self, *_: Any) -> None:
        if self.metrics is not None:
            self.metrics.service_changes.inc()
        self.changed()

    def endpoints_changed(self, *_: Any) -> None:
        if self.metrics is not None:
            self.metrics.endpoint_changes.inc()
        self.changed()

    # --- syncing ------------------------------------------------------------------------

    async def run(self) -> None:
        """Sync now, then after changes (at least min_sync_period apart) and every
        sync_period, until cancelled."""
        await self._runner.run()

    async def _sync_in_loop(self, full: bool) -> None:
        try:
            await self.sync(full=full)
        except Exception:
            self._jumps_ok = False      # re-ensure the jumps at the next sync
            raise

    async def sync(self, *, full: bool = False) -> bool:
        """One sync; True when iptables was written."""
        started = time.perf_counter()
        self.syncs += 1
        if full and self.node_port_resolver is not None:
            self.options.node_port_ips = await self.node_port_resolver()
        slices = self.slices()
        services = build(self.services(), slices, self.node_name)
        rules = build_rules(services, self.options)
        text = rules.restore_input()
        wrote = False
        if full or text != self.last_written:
            stale: list[str] = []
            try:
                existing = await self.iptables.chains("nat")
                stale = [c for c in existing
                         if is_service_chain(c) and c not in rules.active_nat_chains]
            except CommandError as exc:
                log.warning("cannot list nat chains, stale chains stay: %s", exc)
            try:
                await self.iptables.restore(rules.restore_input(stale))
            except CommandError as exc:
                log.error("iptables-restore failed: %s", exc)
                if self.metrics is not None:
                    self.metrics.restore_failures.inc()
                self.last_written = None
                raise
            self.last_written, self.last_rules = text, rules
            self.writes += 1
            wrote = True
            log.info("wrote proxy rules: %d service ports, %d endpoints, %d filter and "
                     "%d nat rules (%d stale chains deleted)", rules.services,
                     rules.endpoints, len(rules.filter_rules), len(rules.nat_rules),
                     len(stale))
        if full or not self._jumps_ok:
            # After the chains exist: the jumps from the built-in chains.
            for jump in rules.jump_rules:
                await self.iptables.ensure_rule(jump.table, jump.chain, jump.args())
            self._jumps_ok = True
        self._observe_programming(slices, wrote)
        if wrote:
            await self._clean_conntrack(services)
        self._observe(rules, time.perf_counter() - started, full, wrote)
        return wrote

    def _observe_programming(self, slices: list[Obj], wrote: bool) -> None:
        """Network programming latency (upstream's SLI): from the change a slice's
        last-change-trigger-time annotation records to the rules being written, once
        per slice version."""
        seen: dict[str, str] = {}
        for eps in slices:
            meta = eps.get("metadata") or {}
            key = f"{meta.get('namespace')}/{meta.get('name')}"
            seen[key] = meta.get("resourceVersion") or ""
            if not wrote or self._slice_versions.get(key) == seen[key]:
                continue
            trigger = (meta.get("annotations") or {}).get(TRIGGER_TIME)
            if self.metrics is None or not trigger:
                continue
            try:
                when = datetime.datetime.fromisoformat(trigger.replace("Z", "+00:00"))
            except ValueError:
                continue
            # Changes from before this process started are not its latency (upstream).
            if when.timestamp() >= self._started_at:
                self.metrics.network_programming.observe(
                    max(0.0, time.time() - when.timestamp()))
        if wrote:
            self._slice_versions = seen

    def _observe(self, rules: RuleSet, seconds: float, full: bool, wrote: bool) -> None:
        if self.health is not None:
            self.health.updated()
        metrics = self.metrics
        if metrics is None:
            return
        metrics.sync_duration.observe(seconds)
        (metrics.sync_full_duration if full else metrics.sync_partial_duration).observe(seconds)
        metrics.last_sync.set_to_current_time()
        metrics.rules_total.labels("filter").set(len(rules.filter_rules))
        metrics.rules_total.labels("nat").set(len(rules.nat_rules))
        if wrote:
            metrics.rules_last.labels("filter").set(len(rules.filter_rules))
            metrics.rules_last.labels("nat").set(len(rules.nat_rules))
        metrics.no_local_endpoints.labels("internal").set(rules.no_local_endpoints_internal)
        metrics.no_local_endpoints.labels("external").set(rules.no_local_endpoints_external)

    async def _clean_conntrack(self, services: list[ServicePort]) -> None:
        now = {f"{svc.name}/{svc.proto}": _UdpState(svc)
               for svc in services if svc.protocol == "UDP"}
        before, self._udp = self._udp, now
        if self.conntrack is None:
            return
        clear_ips: set[str] = set()
        clear_ports: set[int] = set()
        for key, old in before.items():
            if key not in now:
                clear_ips.add(old.cluster_ip)
        for key, new in now.items():
            old = before.get(key)
            if new.endpoint_ips and (old is None or not old.endpoint_ips):
                # Newly active: flows that were rejected so far must start over.
                clear_ips.add(new.cluster_ip)
                clear_ips.update(new.external)
                if new.node_port:
                    clear_ports.add(new.node_port)
            if old is None:
                continue
            for ip in old.endpoint_ips - new.endpoint_ips:
                await self.conntrack.clear_nat(new.cluster_ip, ip)
                for external in new.external:
                    await self.conntrack.clear_nat(external, ip)
                if new.node_port:
                    await self.conntrack.clear_port_nat(new.node_port, ip)
        for ip in sorted(clear_ips):
            await self.conntrack.clear_ip(ip)
        for port in sorted(clear_ports):
            await self.conntrack.clear_port(port)

    async def cleanup(self) -> None:
        """Remove every rule and chain of kube-proxy (upstream's --cleanup). KUBE-FIREWALL
        stays, as upstream: the kubelet keeps the same chain."""
        for jump in JUMP_RULES:
            await self.iptables.delete_rule(jump.table, jump.chain, jump.args())
        for table, own in (("nat", ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
                                    "KUBE-MARK-MASQ")),
                           ("filter", ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES",
                                       "KUBE-FORWARD", "KUBE-NODEPORTS",
                                       "KUBE-PROXY-FIREWALL"))):
            existing = await self.iptables.chains(table)
            doomed = [c for c in existing if c in own or (table == "nat"
                                                          and is_service_chain(c))]
            if doomed:
                text = "\n".join([f"*{table}", *(f":{c} - [0:0]" for c in doomed),
                                  *(f"-X {c}" for c in doomed), "COMMIT", ""])
                await self.iptables.restore(text)


def node_ips(node: Obj | None) -> list[str]:
    """The node's InternalIPs (IPv4), else its ExternalIPs."""
    addresses = ((node or {}).get("status") or {}).get("addresses") or []
    for kind in ("InternalIP", "ExternalIP"):
        found = []
        for address in addresses:
            if address.get("type") == kind:
                try:
                    ip = ipaddress.ip_address(address.get("address", ""))
                except ValueError:
                    continue
                if ip.version == 4:
                    found.append(str(ip))
        if found:
            return found
    return []


def node_port_ips(entries: list[str], local_ips: list[str], primary: list[str]
                  ) -> list[str] | None:
    """The addresses NodePorts are served on, from nodePortAddresses: None for every
    local address (unset, or "all"); else the local addresses within the CIDRs,
    "localhost" (127.0.0.0/8) and "primary" (the node's own IPs)."""
    if not entries or "all" in entries:
        return None
    nets = []
    for entry in entries:
        if entry == "localhost":
            nets.append(ipaddress.ip_network("127.0.0.0/8"))
        elif entry != "primary":
            net = ipaddress.ip_network(entry, strict=False)
            if net.version == 4:
                if net.prefixlen == 0:
                    return None
                nets.append(net)
    chosen = [ip for ip in local_ips if any(ipaddress.ip_address(ip) in n for n in nets)]
    if "primary" in entries:
        chosen += [ip for ip in primary if ip not in chosen]
    return chosen
