"""What the pod-network agent keeps on a node, planned from Node dicts (pure) and applied
with the host's commands.

CNI: <cni-conf-dir>/10-kubesmith.conflist, the standard bridge plugin (bridge cni0 as
the pods' gateway, host-local addresses from this node's podCIDR, hairpin so a pod can
reach itself through a Service) and portmap (hostPort). containerd's CRI plugin reads
the folder by itself. cniVersion 0.4.0: Debian's plugins (1.1.1) support 0.1.0 to
1.0.0 and containerd 1.6 reads both 0.4.0 and 1.0.0; 0.4.0 is the one every CNI
library in use understands.

Routes: every other node's podCIDR via that node's InternalIP, so pods on different
nodes reach each other without an overlay. The agent's routes carry `proto 199`; only
those are ever replaced or removed, so routes made by anyone else stay untouched.

iptables (own chains, jumped to from the built-in ones):
    nat KUBESMITH-POD-MASQ (from POSTROUTING)
        traffic from the pod range to the pod range: RETURN (pod to pod across nodes
        keeps its source address: that is what routes are for);
        everything else from the pod range: MASQUERADE. That includes the node
        addresses: a pod reaching a master (API server, DNS) leaves with this node's
        address, so the answer comes back even when that host has no route to this
        node's podCIDR (an agent not running yet, a host outside the cluster).
    filter KUBESMITH-FORWARD (from FORWARD)
        accept forwarding from and to the pod range, in case the FORWARD policy is DROP.
"""
from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubesmith.proxy.iptables import CommandRunner, Iptables

Obj = dict[str, Any]

CONFLIST_NAME = "10-kubesmith.conflist"
NETWORK_NAME = "kubesmith"
CNI_VERSION = "0.4.0"
ROUTE_PROTO = "199"
MASQ_CHAIN = "KUBESMITH-POD-MASQ"
FORWARD_CHAIN = "KUBESMITH-FORWARD"


# --- CNI ------------------------------------------------------------------------------

def conflist(pod_cidr: str, bridge: str = "cni0") -> dict:
    return {
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def conflist_text(pod_cidr: str, bridge: str = "cni0") -> str:
    return json.dumps(conflist(pod_cidr, bridge), indent=2) + "\n"


def write_if_changed(path: Path, text: str) -> bool:
    """Write atomically (temporary file + rename) unless the file holds `text`; True when
    written. containerd never sees a half-written configuration."""
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


# --- routes ---------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Route:
    dst: str           # a podCIDR
    via: str           # the node's InternalIP


def _ipv4(value: Any) -> str | None:
    try:
        ip = ipaddress.ip_address(str(value))
    except ValueError:
        return None
    return str(ip) if ip.version == 4 else None


def _ipv4_cidr(value: Any) -> str | None:
    try:
        net = ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        return None
    return str(net) if net.version == 4 else None


def node_pod_cidr(node: Obj) -> str | None:
    spec = node.get("spec") or {}
    for cidr in [*(spec.get("podCIDRs") or []), spec.get("podCIDR")]:
        if cidr and (found := _ipv4_cidr(cidr)):
            return found
    return None


def node_internal_ip(node: Obj) -> str | None:
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP" and (ip := _ipv4(address.get("address"))):
            return ip
    return None


def plan_routes(nodes: list[Obj], own_name: str) -> list[Route]:
    """One route per other node that has both a podCIDR and an InternalIP."""
    routes = []
    for node in nodes:
        if (node.get("metadata") or {}).get("name") == own_name:
            continue
        cidr, ip = node_pod_cidr(node), node_internal_ip(node)
        if cidr and ip:
            routes.append(Route(cidr, ip))
    return sorted(set(routes))


def parse_routes(ip_json: str) -> list[Route]:
    """Routes via a gateway of `ip -j -4 route show proto 199` (the service range's
    device route, below, is not one of them)."""
    try:
        entries = json.loads(ip_json or "[]")
    except ValueError:
        return []
    routes = []
    for entry in entries:
        dst, via = _ipv4_cidr(entry.get("dst")), _ipv4(entry.get("gateway"))
        if dst and via:
            routes.append(Route(dst, via))
    return routes


class Routes:
    """The agent's routes (proto 199) in the main table."""

    def __init__(self, runner: CommandRunner):
        self.runner = runner

    async def current(self) -> list[Route]:
        result = await self.runner.run(["ip", "-j", "-4", "route", "show", "proto",
                                        ROUTE_PROTO])
        return parse_routes(result.stdout)

    async def sync(self, wanted: list[Route]) -> tuple[list[Route], list[Route], list[str]]:
        """Make the proto-199 routes exactly `wanted`: (added or replaced, removed,
        errors). A route whose gateway is not directly reachable fails alone."""
        current = await self.current()
        errors = []
        changed = []
        for route in wanted:
            if route in current:
                continue
            result = await self.runner.run(
                ["ip", "route", "replace", route.dst, "via", route.via, "proto", ROUTE_PROTO],
                check=False)
            if result.code == 0:
                changed.append(route)
            else:
                errors.append(f"{route.dst} via {route.via}: {result.stderr.strip()}")
        wanted_dsts = {route.dst for route in wanted}
        removed = []
        for route in current:
            # A destination still wanted was just replaced in place.
            if route.dst in wanted_dsts:
                continue
            result = await self.runner.run(
                ["ip", "route", "del", route.dst, "proto", ROUTE_PROTO], check=False)
            if result.code == 0:
                removed.append(route)
            else:
                errors.append(f"removing {route.dst}: {result.stderr.strip()}")
        return changed, removed, errors

    async def remove_all(self) -> None:
        for route in await self.current():
            await self.runner.run(["ip", "route", "del", route.dst, "proto", ROUTE_PROTO],
                                  check=False)


# --- the service range ----------------------------------------------------------------
#
# A process on the node connecting to a ClusterIP needs *some* route to it: the kernel
# picks a route before kube-proxy's DNAT in the nat OUTPUT chain (and routes again
# after it). Hosts normally have a default route; hosts without one (an isolated lab,
# an air-gapped site) get a device route for the service range on the node's own
# interface. Traffic to an address no Service has goes nowhere, as it would anyway.

def covered(cidr: str, ip_json: str) -> bool:
    """Whether a route of someone else (`ip -j -4 route show`) covers all of `cidr`."""
    net = ipaddress.ip_network(cidr, strict=False)
    try:
        entries = json.loads(ip_json or "[]")
    except ValueError:
        return False
    for entry in entries:
        if str(entry.get("protocol", "")) == ROUTE_PROTO or entry.get("type") in (
                "blackhole", "unreachable", "prohibit"):
            continue
        dst = entry.get("dst")
        if dst == "default":
            return True
        found = _ipv4_cidr(dst)
        if found and net.subnet_of(ipaddress.ip_network(found)):
            return True
    return False


def device_of(ip: str, addr_json: str) -> str | None:
    """The interface holding `ip`, from `ip -j -4 addr show`."""
    try:
        links = json.loads(addr_json or "[]")
    except ValueError:
        return None
    for link in links:
        if any(info.get("local") == ip for info in link.get("addr_info") or []):
            return link.get("ifname")
    return None


async def sync_service_routes(runner: CommandRunner, service_cidrs: list[str],
                              node_ip: str | None) -> list[str]:
    """Keep a proto-199 device route for each service range no other route covers (and
    remove it once one does); the ranges routed now."""
    table = (await runner.run(["ip", "-j", "-4", "route", "show"])).stdout
    ours = {}
    for entry in json.loads(table or "[]"):
        if str(entry.get("protocol", "")) == ROUTE_PROTO and not entry.get("gateway"):
            ours[_ipv4_cidr(entry.get("dst"))] = entry.get("dev")
    device = None
    if node_ip:
        device = device_of(node_ip, (await runner.run(["ip", "-j", "-4", "addr",
                                                        "show"])).stdout)
    routed = []
    for cidr in service_cidrs:
        if covered(cidr, table):
            if cidr in ours:
                await runner.run(["ip", "route", "del", cidr, "proto", ROUTE_PROTO],
                                 check=False)
            continue
        if device is None:
            continue
        if ours.get(cidr) != device:
            await runner.run(["ip", "route", "replace", cidr, "dev", device, "proto",
                              ROUTE_PROTO, "scope", "link"])
        routed.append(cidr)
    return routed


# --- iptables -------------------------------------------------------------------------

MASQ_JUMP = ("nat", "POSTROUTING", ["-m", "comment", "--comment",
                                    "kubesmith pod traffic leaving the pod range",
                                    "-j", MASQ_CHAIN])
FORWARD_JUMP = ("filter", "FORWARD", ["-m", "comment", "--comment",
                                      "kubesmith pod forwarding", "-j", FORWARD_CHAIN])


def iptables_rules(cluster_cidrs: list[str]) -> str:
    """The iptables-restore --noflush input of the agent's two chains."""
    nat = [f"-A {MASQ_CHAIN} -s {c} -d {c} -j RETURN" for c in cluster_cidrs]
    nat += [f"-A {MASQ_CHAIN} -s {c} -j MASQUERADE" for c in cluster_cidrs]
    forward = [f"-A {FORWARD_CHAIN} -s {c} -j ACCEPT" for c in cluster_cidrs]
    forward += [f"-A {FORWARD_CHAIN} -d {c} -j ACCEPT" for c in cluster_cidrs]
    return "\n".join(["*nat", f":{MASQ_CHAIN} - [0:0]", *nat, "COMMIT",
                      "*filter", f":{FORWARD_CHAIN} - [0:0]", *forward, "COMMIT", ""])


async def ensure_iptables(iptables: Iptables, cluster_cidrs: list[str]) -> None:
    await iptables.restore(iptables_rules(cluster_cidrs))
    # SNAT rules of others in POSTROUTING keep precedence; the ACCEPT goes first in
    # FORWARD, before any catch-all REJECT a host firewall may have.
    await iptables.ensure_rule(*MASQ_JUMP[:2], MASQ_JUMP[2], prepend=False)
    await iptables.ensure_rule(*FORWARD_JUMP[:2], FORWARD_JUMP[2], prepend=True)


async def remove_iptables(iptables: Iptables) -> None:
    for table, chain, args in (MASQ_JUMP, FORWARD_JUMP):
        while await iptables.delete_rule(table, chain, args):
            pass
    for table, chain in (("nat", MASQ_CHAIN), ("filter", FORWARD_CHAIN)):
        if chain in await iptables.chains(table):
            await iptables.restore(f"*{table}\n:{chain} - [0:0]\n-X {chain}\nCOMMIT\n")
