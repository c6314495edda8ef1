"""Service cluster IPs and node ports, allocated as upstream's REST storage does it.

Each allocated IP or port is one etcd key, created in the same transaction as the
Service that holds it and deleted in the one that releases it, so an address is never
handed out twice (concurrent creates, several API servers, restarts) and never leaks.

    /registry/serviceipallocations/<ip>             -> {"service": "<ns>/<name>", "uid": ...}
    /registry/servicenodeportallocations/<port>

Dynamic picks prefer the upper part of a range and leave the lower band to explicit
requests (upstream's static subrange); the range's first IP is the kubernetes Service's.
"""
from __future__ import annotations

import copy
import ipaddress
import logging
import random
from typing import TYPE_CHECKING, Any

import orjson

from kubesmith.api.registry import FieldError, ResourceType
from kubesmith.apiserver import errors
from kubesmith.apiserver.txn import Extra, Guard, Retry
from kubesmith.store import KeyExistsError

if TYPE_CHECKING:
    from kubesmith.apiserver.server import APIServer

log = logging.getLogger(__name__)

Obj = dict[str, Any]
IP_PREFIX = b"/registry/serviceipallocations/"
PORT_PREFIX = b"/registry/servicenodeportallocations/"
IP_ALLOCATED = "provided IP is already allocated"
PORT_ALLOCATED = "provided port is already allocated"


def is_services(rt: ResourceType) -> bool:
    return rt.group == "" and rt.plural == "services"


# --- what a service holds ---------------------------------------------------------------

def needs_cluster_ip(spec: Obj) -> bool:
    return spec.get("type") != "ExternalName"


def needs_node_ports(spec: Obj) -> bool:
    return spec.get("type") in ("NodePort", "LoadBalancer")


def allocates_node_ports(spec: Obj) -> bool:
    if spec.get("type") == "NodePort":
        return True
    return spec.get("type") == "LoadBalancer" and \
        spec.get("allocateLoadBalancerNodePorts") is not False


def _spec(obj: Obj | None) -> Obj:
    spec = (obj or {}).get("spec")
    return spec if isinstance(spec, dict) else {}


def held_ips(obj: Obj | None) -> set[str]:
    spec = _spec(obj)
    ips = [i for i in (spec.get("clusterIPs") or []) if isinstance(i, str)]
    if isinstance(spec.get("clusterIP"), str):
        ips.append(spec["clusterIP"])
    result = set()
    for ip in ips:
        try:
            result.add(str(ipaddress.ip_address(ip)))
        except ValueError:
            pass    # "None" and the empty string hold nothing
    return result


def held_ports(obj: Obj | None) -> set[int]:
    ports = set()
    for port in _spec(obj).get("ports") or []:
        if isinstance(port, dict):
            value = port.get("nodePort")
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                ports.add(value)
    return ports


def _key(prefix: bytes, value) -> bytes:
    return prefix + str(value).encode()


def _owner(obj: Obj) -> bytes:
    meta = obj.get("metadata") or {}
    return orjson.dumps({"service": f"{meta.get('namespace', '')}/{meta.get('name', '')}",
                         "uid": meta.get("uid", "")})


# --- update-time clean up (upstream's dropTypeDependentFields) ----------------------------

def drop_type_dependent_fields(new: Obj, old: Obj) -> None:
    """On a type change, wipe what the old type needed unless the request changed it."""
    spec, old_spec = _spec(new), _spec(old)
    if not spec:
        return
    if needs_cluster_ip(old_spec) and not needs_cluster_ip(spec):
        if (spec.get("clusterIP"), spec.get("clusterIPs")) in (
                (old_spec.get("clusterIP"), old_spec.get("clusterIPs")),
                (old_spec.get("clusterIP"), None)):
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        if spec.get("ipFamilies") == old_spec.get("ipFamilies"):
            spec.pop("ipFamilies", None)
        if spec.get("ipFamilyPolicy") == old_spec.get("ipFamilyPolicy"):
            spec.pop("ipFamilyPolicy", None)
        if spec.get("internalTrafficPolicy") == old_spec.get("internalTrafficPolicy"):
            spec.pop("internalTrafficPolicy", None)
    if needs_node_ports(old_spec) and not needs_node_ports(spec):
        old_ports = [p.get("nodePort") for p in old_spec.get("ports") or []
                     if isinstance(p, dict)]
        new_ports = [p.get("nodePort") for p in spec.get("ports") or [] if isinstance(p, dict)]
        if all(p in old_ports for p in new_ports if p):
            for port in spec.get("ports") or []:
                if isinstance(port, dict):
                    port.pop("nodePort", None)
    if old_spec.get("type") == "LoadBalancer" and spec.get("type") != "LoadBalancer":
        if spec.get("allocateLoadBalancerNodePorts") == \
                old_spec.get("allocateLoadBalancerNodePorts"):
            spec.pop("allocateLoadBalancerNodePorts", None)
    if spec.get("type") not in ("NodePort", "LoadBalancer"):
        spec.pop("externalTrafficPolicy", None)


# --- ranges -----------------------------------------------------------------------------

def _band(size: int, low: int, high: int, step: int) -> int:
    """Upstream's static band: min(max(low, size/step), high); none for tiny ranges."""
    if size < low:
        return 0
    return min(max(low, size // step), high)


class IPRange:
    def __init__(self, network):
        self.network = network
        self.family = "IPv6" if network.version == 6 else "IPv4"
        first = int(network.network_address) + 1
        last = int(network.broadcast_address) - (1 if network.version == 4 else 0)
        self.first, self.size = first, max(last - first + 1, 0)
        self.band = _band(self.size, 16, 256, 16)

    def contains(self, ip: str) -> bool:
        value = int(ipaddress.ip_address(ip))
        return self.first <= value < self.first + self.size

    def address(self, offset: int) -> str:
        return str(ipaddress.ip_address(self.first + offset))


class Allocator:
    """Dynamic picks and range checks over one server's configured ranges."""

    def __init__(self, ip_ranges: list, port_range: tuple[int, int]):
        self.ip_ranges = [IPRange(n) for n in ip_ranges]
        self.port_low, self.port_high = port_range
        self.port_size = self.port_high - self.port_low + 1
        self.port_band = _band(self.port_size, 16, 128, 32)

    def range_for(self, family: str) -> IPRange | None:
        return next((r for r in self.ip_ranges if r.family == family), None)

    @staticmethod
    def _pick(size: int, band: int, taken, reserved: int = -1) -> int | None:
        """A free offset: random in the upper part first, then the lower band."""
        for low, high in ((band, size), (0, band)):
            if high <= low:
                continue
            for _ in range(32):
                offset = random.randrange(low, high)
                if offset != reserved and not taken(offset):
                    return offset
            start = random.randrange(low, high)
            for step in range(high - low):
                offset = low + (start - low + step) % (high - low)
                if offset != reserved and not taken(offset):
                    return offset
        return None

    def pick_ip(self, ip_range: IPRange, taken: set[str]) -> str | None:
        offset = self._pick(ip_range.size, ip_range.band,
                            lambda o: ip_range.address(o) in taken, reserved=0)
        return None if offset is None else ip_range.address(offset)

    def pick_port(self, taken: set[int]) -> int | None:
        offset = self._pick(self.port_size, self.port_band,
                            lambda o: self.port_low + o in taken)
        return None if offset is None else self.port_low + offset

    def port_in_range(self, port: int) -> bool:
        return self.port_low <= port <= self.port_high


def for_server(srv: "APIServer") -> Allocator:
    allocator = getattr(srv, "_service_allocator", None)
    if allocator is None:
        options = srv.options
        allocator = Allocator(list(options.service_cluster_ip_range or []),
                              options.service_node_port_range)
        srv._service_allocator = allocator
    return allocator


async def _taken(srv: "APIServer", prefix: bytes) -> set[str]:
    result = await srv.store.range(prefix, keys_only=True)
    return {kv.key[len(prefix):].decode() for kv in result.kvs}


def _invalid(obj: Obj, field: str, value_text: str, detail: str) -> errors.APIError:
    name = (obj.get("metadata") or {}).get("name", "")
    return errors.invalid("Service", "", name, [
        FieldError("FieldValueInvalid", field, f"Invalid value: {value_text}: {detail}")])


def _go_strings(values: list[str]) -> str:
    return "[]string{" + ", ".join(orjson.dumps(v).decode() for v in values) + "}"


# --- planning ---------------------------------------------------------------------------

def _families(allocator: Allocator, obj: Obj) -> list[str]:
    spec = _spec(obj)
    families = [f for f in spec.get("ipFamilies") or [] if f in ("IPv4", "IPv6")]
    policy = spec.get("ipFamilyPolicy") or "SingleStack"
    configured = [r.family for r in allocator.ip_ranges]
    for ip in spec.get("clusterIPs") or []:
        try:
            family = "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"
        except ValueError:
            continue
        if family not in families:
            families.append(family)
    if not families:
        families = configured[:1]
    if policy in ("PreferDualStack", "RequireDualStack"):
        if policy == "RequireDualStack" and len(configured) < 2:
            raise _invalid(obj, "spec.ipFamilyPolicy", '"RequireDualStack"',
                           "this cluster is not configured for dual-stack services")
        for family in configured:
            if family not in families:
                families.append(family)
    else:
        families = families[:1]
    for index, family in enumerate(families):
        if family not in configured:
            raise _invalid(obj, f"spec.ipFamilies[{index}]", orjson.dumps(family).decode(),
                           "not configured on this cluster")
    return families


async def _plan_ips(srv: "APIServer", obj: Obj, old: Obj | None, extra: Extra,
                    dry: bool) -> None:
    spec = _spec(obj)
    allocator = for_server(srv)
    if not needs_cluster_ip(spec):
        spec.pop("clusterIPs", None)
        if spec.get("clusterIP") in ("", None):
            spec.pop("clusterIP", None)
        return
    if not allocator.ip_ranges:
        return
    ips = [i for i in spec.get("clusterIPs") or [] if isinstance(i, str)]
    single = spec.get("clusterIP")
    if single and not ips:
        ips = [single]
    if "None" in ips or single == "None":
        spec["clusterIP"], spec["clusterIPs"] = "None", ["None"]
        return
    held = held_ips(old)
    families = _families(allocator, obj)
    wanted: list[str] = []
    for ip in ips:
        if ip in held:
            wanted.append(ip)
            continue
        ip_range = next((r for r in allocator.ip_ranges if r.contains(ip)), None)
        if ip_range is None:
            valid = ", ".join(str(r.network) for r in allocator.ip_ranges)
            raise _invalid(obj, "spec.clusterIPs", _go_strings(ips),
                           f"failed to allocate IP {ip}: the provided IP ({ip}) is not in the "
                           f"valid range. The range of valid IPs is {valid}")
        key = _key(IP_PREFIX, ip)
        if dry:
            if await srv.store.get(key) is not None:
                raise _invalid(obj, "spec.clusterIPs", _go_strings(ips),
                               f"failed to allocate IP {ip}: {IP_ALLOCATED}")
        message = f"failed to allocate IP {ip}: {IP_ALLOCATED}"
        extra.guards.append(Guard(key, absent=True, failed=lambda m=message, v=list(ips):
                                  _invalid(obj, "spec.clusterIPs", _go_strings(v), m)))
        extra.puts[key] = _owner(obj)
        wanted.append(ip)
    have = set()
    for ip in wanted:
        have.add("IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4")
    taken: set[str] | None = None
    for family in families:
        if family in have:
            continue
        ip_range = allocator.range_for(family)
        if taken is None:
            taken = await _taken(srv, IP_PREFIX)
        ip = allocator.pick_ip(ip_range, taken)
        if ip is None:
            raise errors.internal("failed to allocate a serviceIP: range is full")
        taken.add(ip)
        key = _key(IP_PREFIX, ip)
        extra.guards.append(Guard(key, absent=True))    # lost a race: pick again
        extra.puts[key] = _owner(obj)
        wanted.append(ip)
        have.add(family)
    before = (copy.deepcopy(spec.get("clusterIP")), copy.deepcopy(spec.get("clusterIPs")),
              copy.deepcopy(spec.get("ipFamilies")))

    def undo(before=before):
        for name, value in zip(("clusterIP", "clusterIPs", "ipFamilies"), before):
            if value is None:
                spec.pop(name, None)
            else:
                spec[name] = value
    extra.undo.append(undo)
    spec["clusterIPs"] = wanted
    spec["clusterIP"] = wanted[0] if wanted else ""
    spec["ipFamilies"] = ["IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"
                          for ip in wanted]


async def _plan_ports(srv: "APIServer", obj: Obj, old: Obj | None, extra: Extra,
                      dry: bool) -> None:
    spec = _spec(obj)
    ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
    if not needs_node_ports(spec):
        return
    allocator = for_server(srv)
    held = held_ports(old)
    allocate_new = allocates_node_ports(spec)
    before = [copy.deepcopy(p.get("nodePort")) for p in ports]

    def undo(before=before, ports=ports):
        for port, value in zip(ports, before):
            if value is None:
                port.pop("nodePort", None)
            else:
                port["nodePort"] = value
    extra.undo.append(undo)
    by_number: dict[Any, int] = {}
    booked: set[int] = set()
    taken: set[int] | None = None
    for index, port in enumerate(ports):
        requested = port.get("nodePort")
        if not isinstance(requested, int) or isinstance(requested, bool) or requested <= 0:
            requested = None
        if requested is None:
            # The same port number (say TCP and UDP) shares one node port.
            requested = by_number.get(port.get("port"))
            if requested is None:
                requested = next((p.get("nodePort") for p in ports
                                  if p.get("port") == port.get("port") and
                                  isinstance(p.get("nodePort"), int) and p.get("nodePort")),
                                 None)
        if requested is not None:
            port["nodePort"] = requested
            by_number.setdefault(port.get("port"), requested)
            if requested in held or requested in booked:
                continue
            path = f"spec.ports[{index}].nodePort"
            if not allocator.port_in_range(requested):
                raise _invalid(obj, path, str(requested),
                               "provided port is not in the valid range. The range of valid "
                               f"ports is {allocator.port_low}-{allocator.port_high}")
            key = _key(PORT_PREFIX, requested)
            if dry and await srv.store.get(key) is not None:
                raise _invalid(obj, path, str(requested), PORT_ALLOCATED)
            extra.guards.append(Guard(key, absent=True, failed=lambda p=path, v=requested:
                                      _invalid(obj, p, str(v), PORT_ALLOCATED)))
            extra.puts[key] = _owner(obj)
            booked.add(requested)
            continue
        if not allocate_new:
            continue
        if taken is None:
            taken = {int(p) for p in await _taken(srv, PORT_PREFIX) if p.isdigit()}
        chosen = allocator.pick_port(taken | booked | held)
        if chosen is None:
            raise errors.internal("failed to allocate a nodePort: range is full")
        key = _key(PORT_PREFIX, chosen)
        extra.guards.append(Guard(key, absent=True))
        extra.puts[key] = _owner(obj)
        booked.add(chosen)
        port["nodePort"] = chosen
        by_number[port.get("port")] = chosen


def _release(old: Obj | None, new: Obj | None, extra: Extra) -> None:
    for ip in held_ips(old) - held_ips(new):
        extra.deletes.append(_key(IP_PREFIX, ip))
    for port in held_ports(old) - held_ports(new):
        extra.deletes.append(_key(PORT_PREFIX, port))


async def on_create(srv: "APIServer", rt: ResourceType, obj: Obj, dry: bool) -> Extra | None:
    """Fill in the service's IPs and node ports; the keys to write with it."""
    if not is_services(rt) or not isinstance(obj.get("spec"), dict):
        return None
    extra = Extra()
    await _plan_ips(srv, obj, None, extra, dry)
    await _plan_ports(srv, obj, None, extra, dry)
    return extra


async def on_update(srv: "APIServer", rt: ResourceType, new: Obj, old: Obj,
                    dry: bool) -> Extra | None:
    if not is_services(rt) or not isinstance(new.get("spec"), dict):
        return None
    extra = Extra()
    await _plan_ips(srv, new, old, extra, dry)
    await _plan_ports(srv, new, old, extra, dry)
    _release(old, new, extra)
    return extra


def on_delete(rt: ResourceType, old: Obj) -> Extra | None:
    if not is_services(rt):
        return None
    extra = Extra()
    _release(old, None, extra)
    return extra


async def repair(srv: "APIServer") -> None:
    """Book what existing services hold (data written before allocations were kept)."""
    from kubesmith.api.registry import REGISTRY
    rt = REGISTRY.get("", "v1", "services")
    if rt is None:
        return
    storage = srv.storage.for_type(rt)
    result = await srv.store.range(rt.storage_prefix(None))
    booked = {_key(IP_PREFIX, ip) for ip in await _taken(srv, IP_PREFIX)}
    booked |= {_key(PORT_PREFIX, port) for port in await _taken(srv, PORT_PREFIX)}
    for kv in result.kvs:
        try:
            obj = storage.decode(kv)
        except Exception:
            continue    # undecodable objects are reported where they are read
        keys = [_key(IP_PREFIX, ip) for ip in held_ips(obj)]
        keys += [_key(PORT_PREFIX, port) for port in held_ports(obj)]
        for key in keys:
            if key in booked:
                continue
            try:
                await srv.store.create(key, _owner(obj))
            except KeyExistsError:
                pass
            booked.add(key)


__all__ = ["Retry", "on_create", "on_update", "on_delete", "repair",
           "drop_type_dependent_fields"]
