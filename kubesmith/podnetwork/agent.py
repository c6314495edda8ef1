"""The pod-network agent's loop: Node informer events in, CNI file + routes + iptables
out (see network.py for what each is and why).

    agent = PodNetworkAgent(node_name="node-1", cluster_cidrs=["10.244.0.0/16"],
                            cni_conf_dir=Path("/etc/cni/net.d"),
                            nodes=lambda: informer.lister.list())
    informer handlers -> agent.changed()
    await agent.run()

A sync runs after Node changes and every `resync_period` anyway, which repairs routes or
rules someone removed; syncs start at least `min_interval` apart (a burst of changes
gives one sync, a change after a quiet spell syncs at once: kubesmith.syncloop's
BoundedFrequencyRunner, as kube-proxy's). Full syncs also keep net.ipv4.ip_forward and
net.bridge.bridge-nf-call-iptables at 1 and, with `service_cidrs`, a route for the
service range when the host has none (network.py). The CNI file is written once this node
has a podCIDR (the controller manager's node IPAM assigns it); until then containerd has
no network for pods, and the kubelet reports the runtime's network as not ready.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from kubesmith.podnetwork.network import (CONFLIST_NAME, Route, Routes, conflist_text,
                                          ensure_iptables, node_internal_ip, node_pod_cidr,
                                          plan_routes, sync_service_routes, write_if_changed)
from kubesmith.proxy.iptables import (CommandError, CommandRunner, Iptables, get_sysctl,
                                      set_sysctl)
from kubesmith.syncloop import BoundedFrequencyRunner

log = logging.getLogger(__name__)

Obj = dict[str, Any]

BRIDGE_NF_CALL_IPTABLES = "net.bridge.bridge-nf-call-iptables"


class PodNetworkAgent:
    def __init__(self, *, node_name: str, cluster_cidrs: list[str], cni_conf_dir: Path,
                 nodes: Callable[[], list[Obj]], bridge: str = "cni0",
                 runner: CommandRunner | None = None, resync_period: float = 60.0,
                 min_interval: float = 0.2, service_cidrs: list[str] = ()):
        self.node_name = node_name
        self.cluster_cidrs = cluster_cidrs
        self.service_cidrs = list(service_cidrs)
        self.cni_conf_dir = Path(cni_conf_dir)
        self.nodes = nodes
        self.bridge = bridge
        self.runner = runner or CommandRunner()
        self.iptables = Iptables(self.runner)
        self.routes = Routes(self.runner)
        self.pod_cidr: str | None = None
        self.last_routes: list[Route] = []
        self.service_routes: list[str] = []
        self.healthy = False          # the last sync succeeded
        self.syncs = 0
        self._warned_bridge_nf = False
        self._runner = BoundedFrequencyRunner(self._sync_in_loop, period=resync_period,
                                              min_interval=min_interval, name="pod network")

    @property
    def resync_period(self) -> float:
        return self._runner.period

    @property
    def min_interval(self) -> float:
        return self._runner.min_interval

    @property
    def conflist_path(self) -> Path:
        return self.cni_conf_dir / CONFLIST_NAME

    def changed(self, *_: Any) -> None:
        """Ask for a sync (informer handlers call this; cheap)."""
        self._runner.request()

    async def run(self) -> None:
        """Sync now, then after changes (at least min_interval apart) and every
        resync_period, until cancelled."""
        await self._runner.run()

    async def _sync_in_loop(self, full: bool) -> None:
        try:
            await self.sync(full=full)
        except CommandError as exc:
            # e.g. a node whose InternalIP is not on any link of this one
            log.error("pod network sync failed: %s", exc)
            self.healthy = False
            return
        except Exception:
            self.healthy = False
            raise                       # logged by the runner, with the traceback
        self.healthy = True

    async def sync(self, *, full: bool = True) -> None:
        self.syncs += 1
        nodes = self.nodes()
        if full:
            # Forwarding between the bridge and the node's interfaces.
            if await set_sysctl(self.runner, "net.ipv4.ip_forward", "1"):
                log.info("enabled net.ipv4.ip_forward")
            # Replies between two pods on this bridge are bridged, not routed: without
            # this, a reply from a Service's endpoint to a pod on the same node would
            # skip conntrack and arrive un-DNATed (kubeadm requires it for that reason).
            if await get_sysctl(self.runner, BRIDGE_NF_CALL_IPTABLES) is None:
                if not self._warned_bridge_nf:
                    log.warning("%s is missing (br_netfilter not loaded): a pod reaching a "
                                "Service backed by a pod on the same node fails",
                                BRIDGE_NF_CALL_IPTABLES)
                    self._warned_bridge_nf = True
            elif await set_sysctl(self.runner, BRIDGE_NF_CALL_IPTABLES, "1"):
                log.info("enabled %s", BRIDGE_NF_CALL_IPTABLES)
            if self.cluster_cidrs:
                await ensure_iptables(self.iptables, self.cluster_cidrs)
        own = next((n for n in nodes
                    if (n.get("metadata") or {}).get("name") == self.node_name), None)
        pod_cidr = node_pod_cidr(own) if own else None
        if pod_cidr:
            if write_if_changed(self.conflist_path, conflist_text(pod_cidr, self.bridge)):
                log.info("wrote %s for podCIDR %s", self.conflist_path, pod_cidr)
            self.pod_cidr = pod_cidr
        elif own is not None and self.pod_cidr is None:
            log.info("node %s has no podCIDR yet", self.node_name)
        if full and self.service_cidrs:
            routed = await sync_service_routes(self.runner, self.service_cidrs,
                                               node_internal_ip(own) if own else None)
            if routed != self.service_routes:
                log.info("routing the service range %s on the node's interface (no other "
                         "route covers it)", ", ".join(routed) or "(none)")
                self.service_routes = routed
        wanted = plan_routes(nodes, self.node_name)
        if wanted == self.last_routes and not full:
            return
        changed, removed, errors = await self.routes.sync(wanted)
        for route in changed:
            log.info("route %s via %s", route.dst, route.via)
        for route in removed:
            log.info("removed route %s via %s", route.dst, route.via)
        self.last_routes = wanted
        if errors:
            self.last_routes = []           # try again at the next sync
            raise CommandError(["ip", "route"], 1, "; ".join(errors))
