"""The cluster's DNS records, kept from Services, EndpointSlices and Namespaces.

Upstream's Kubernetes DNS specification (schema 1.1.0) and CoreDNS's kubernetes plugin
(with its default "pods insecure") are the reference:

    <svc>.<ns>.svc.<zone>                  A/AAAA: the ClusterIPs; headless: the ready
                                           endpoint addresses; ExternalName: CNAME
    <host>.<svc>.<ns>.svc.<zone>           A/AAAA of one ready endpoint; <host> is the
                                           endpoint's hostname, else its dashed address
    _<port>._<proto>.<svc>.<ns>.svc.<zone> SRV per named port (headless: per endpoint)
    <reversed ip>.in-addr.arpa / ip6.arpa  PTR of ClusterIPs and endpoint addresses
    <a-b-c-d>.<ns>.pod.<zone>              A made from the name itself (insecure mode)
    dns-version.<zone>                     TXT with the schema version
    <zone>                                 SOA and NS (ns.dns.<zone>, whose A records are
                                           the cluster DNS Service's ClusterIPs)

A name under the zone with no records and no records below it is NXDOMAIN; an existing
name without the asked type is NOERROR with no answer (NODATA); both carry the zone's
SOA in the authority section, so resolvers cache the negative answer for --ttl seconds.

The store is fed one object at a time by informer handlers: each Service's records are
recomputed when the Service or one of its slices changes and only the difference is
filed, so a query never waits for a rebuild. The index is keyed by lower-case name text
and holds plain values (addresses, target names); dnspython's Name and rdata objects,
slow to hash, are made only for the records an answer carries.
"""
from __future__ import annotations

import functools
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.NS import NS
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.SRV import SRV

Obj = dict[str, Any]
Name = dns.name.Name

IN = dns.rdataclass.IN
SCHEMA_VERSION = "1.1.0"
VERSION_TTL = 28800          # CoreDNS's TTL of the dns-version record
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# SOA timers as CoreDNS sets them; the minimum (negative TTL) is the record TTL.
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 7200, 1800, 86400

REVERSE_V4 = dns.name.from_text("in-addr.arpa.")
REVERSE_V6 = dns.name.from_text("ip6.arpa.")


@dataclass
class Answer:
    """What the store says about one question. `external_target` is set when a CNAME
    (an ExternalName Service) points outside the cluster: the server resolves it
    upstream and appends those records."""
    rcode: int = dns.rcode.NOERROR
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    additional: list[dns.rrset.RRset] = field(default_factory=list)
    external_target: Name | None = None


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def address_type(ip: str) -> int:
    return dns.rdatatype.AAAA if ":" in ip else dns.rdatatype.A


def reverse_key(ip: str) -> str:
    """The reverse name of an address, as index key: 10.96.0.1 -> 1.0.96.10.in-addr.arpa."""
    return ipaddress.ip_address(ip).reverse_pointer + "."


def key_of(name: Name) -> str:
    """The index key of a name: its text, lower case, absolute."""
    return name.to_text().lower()


@functools.lru_cache(maxsize=65536)
def make_rdata(rdtype: int, value: Any):
    """The rdata of an index value: an address (A, AAAA), a target name (PTR, CNAME,
    NS), (priority, weight, port, target) (SRV) or a text (TXT)."""
    if rdtype == dns.rdatatype.A:
        return A(IN, rdtype, value)
    if rdtype == dns.rdatatype.AAAA:
        return AAAA(IN, rdtype, value)
    if rdtype == dns.rdatatype.PTR:
        return PTR(IN, rdtype, dns.name.from_text(value))
    if rdtype == dns.rdatatype.CNAME:
        return CNAME(IN, rdtype, dns.name.from_text(value))
    if rdtype == dns.rdatatype.NS:
        return NS(IN, rdtype, dns.name.from_text(value))
    if rdtype == dns.rdatatype.SRV:
        priority, weight, port, target = value
        return SRV(IN, rdtype, priority, weight, port, dns.name.from_text(target))
    if rdtype == dns.rdatatype.TXT:
        return TXT(IN, rdtype, [value.encode()])
    raise ValueError(f"no index values of type {rdtype}")


def dashed(ip: str) -> str:
    """An address as one DNS label: 10.1.2.3 -> 10-1-2-3, fd00::1 -> fd00--1."""
    return ip.replace(".", "-").replace(":", "-")


def undashed(label: str) -> str | None:
    """The address a dashed label spells (the pod records' form), None when none."""
    for candidate in (label.replace("-", "."), label.replace("-", ":")):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


def _valid_label(text: str) -> bool:
    return 0 < len(text) <= 63 and all(c.isalnum() or c == "-" for c in text)


def service_ips(service: Obj) -> list[str]:
    """The ClusterIPs of a Service; empty for a headless one."""
    spec = service.get("spec") or {}
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    out = []
    for ip in ips:
        try:
            out.append(str(ipaddress.ip_address(ip)))
        except ValueError:      # "None": headless
            continue
    return out


def ready_endpoints(service: Obj, slices: Iterable[Obj]) -> list[tuple[str, str, list[Obj]]]:
    """(address, hostname label, ports) of the ready endpoints of a service's slices, each
    address once. Ready is the endpoint's conditions.ready, which the API defines as true
    when unset; a Service publishing not-ready addresses takes every endpoint."""
    publish_all = bool((service.get("spec") or {}).get("publishNotReadyAddresses"))
    seen: set[str] = set()
    out = []
    for slice_ in sorted(slices, key=lambda s: _meta(s).get("name", "")):
        if slice_.get("addressType") not in ("IPv4", "IPv6"):
            continue        # FQDN slices carry names, not addresses
        ports = slice_.get("ports") or []
        for endpoint in slice_.get("endpoints") or []:
            ready = (endpoint.get("conditions") or {}).get("ready")
            if not publish_all and ready is False:
                continue
            for address in endpoint.get("addresses") or []:
                try:
                    ip = str(ipaddress.ip_address(address))
                except ValueError:
                    continue
                if ip in seen:
                    continue
                seen.add(ip)
                hostname = (endpoint.get("hostname") or "").lower()
                out.append((ip, hostname if _valid_label(hostname) else dashed(ip), ports))
    return out


# (owner key, rdtype, value); rdtype None: the name exists, with no record of its own
Record = tuple[str, int | None, Any]


class RecordStore:
    """The records of one cluster domain, fed by set_*/remove_* calls and read by
    lookup(). `dns_service` ("kube-system/kube-dns") gives ns.dns.<zone> its addresses.
    `reverse_cidrs`: address ranges whose reverse names are answered here only (NXDOMAIN
    when unknown); other reverse names are answered when known, else forwarded."""

    def __init__(self, domain: str = "cluster.local", ttl: int = 5, *,
                 dns_service: str = "kube-system/kube-dns",
                 reverse_cidrs: Iterable[str] = ()):
        self.zone = dns.name.from_text(domain)
        self.zone_key = key_of(self.zone)
        self.ttl = ttl
        self.dns_service = dns_service
        self.reverse_cidrs = [ipaddress.ip_network(c) for c in reverse_cidrs]
        self.synced = False
        self.serial = int(time.time())
        self.ns_name = dns.name.from_text("ns.dns", self.zone)
        self.ns_key = key_of(self.ns_name)
        # owner -> rdtype -> value -> how many sources give it
        self._records: dict[str, dict[int, dict[Any, int]]] = {}
        self._nodes: dict[str, int] = {}           # names with records at or below them
        self._contributed: dict[str, dict[Record, None]] = {}
        self._services: dict[str, Obj] = {}
        self._slices: dict[str, dict[str, Obj]] = {}    # service key -> slice key -> slice
        self._slice_owner: dict[str, str] = {}          # slice key -> service key
        self._namespaces: set[str] = set()
        self._contribute("static", [
            (f"dns-version.{self.zone_key}", dns.rdatatype.TXT, SCHEMA_VERSION),
            (self.zone_key, dns.rdatatype.NS, self.ns_key),
            (f"svc.{self.zone_key}", None, None),
            (f"pod.{self.zone_key}", None, None),
        ])

    # --- feeding ----------------------------------------------------------------------

    def set_service(self, service: Obj) -> None:
        key = f"{_meta(service).get('namespace')}/{_meta(service).get('name')}"
        self._services[key] = service
        self._refresh(key)

    def remove_service(self, service: Obj) -> None:
        key = f"{_meta(service).get('namespace')}/{_meta(service).get('name')}"
        self._services.pop(key, None)
        self._refresh(key)

    def set_slice(self, slice_: Obj) -> None:
        meta = _meta(slice_)
        slice_key = f"{meta.get('namespace')}/{meta.get('name')}"
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        old_owner = self._slice_owner.get(slice_key)
        owner = f"{meta.get('namespace')}/{service}" if service else None
        if old_owner and old_owner != owner:
            self._drop_slice(slice_key)
        if owner:
            self._slices.setdefault(owner, {})[slice_key] = slice_
            self._slice_owner[slice_key] = owner
            self._refresh(owner)

    def remove_slice(self, slice_: Obj) -> None:
        meta = _meta(slice_)
        self._drop_slice(f"{meta.get('namespace')}/{meta.get('name')}")

    def set_namespace(self, namespace: Obj) -> None:
        name = _meta(namespace).get("name", "")
        if name and name not in self._namespaces:
            self._namespaces.add(name)
            label = name.lower()
            self._contribute(f"namespace:{name}", [
                (f"{label}.svc.{self.zone_key}", None, None),
                (f"{label}.pod.{self.zone_key}", None, None)])

    def remove_namespace(self, namespace: Obj) -> None:
        name = _meta(namespace).get("name", "")
        self._namespaces.discard(name)
        self._contribute(f"namespace:{name}", [])

    def _drop_slice(self, slice_key: str) -> None:
        owner = self._slice_owner.pop(slice_key, None)
        if owner is not None:
            self._slices.get(owner, {}).pop(slice_key, None)
            if not self._slices.get(owner):
                self._slices.pop(owner, None)
            self._refresh(owner)

    def _refresh(self, key: str) -> None:
        service = self._services.get(key)
        records = (self.service_records(service, self._slices.get(key, {}).values())
                   if service is not None else [])
        self._contribute(f"service:{key}", records)

    def service_records(self, service: Obj, slices: Iterable[Obj]) -> list[Record]:
        """Every record one Service gives (see the module docstring)."""
        meta, spec = _meta(service), service.get("spec") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        base = f"{name}.{namespace}.svc.{self.zone_key}".lower()
        records: list[Record] = []
        if spec.get("type") == "ExternalName":
            target = spec.get("externalName") or ""
            if target:
                records.append((base, dns.rdatatype.CNAME, target.rstrip(".") + "."))
            return records
        cluster_ips = service_ips(service)
        endpoints = ready_endpoints(service, slices)
        if cluster_ips:
            for ip in cluster_ips:
                records.append((base, address_type(ip), ip))
                records.append((reverse_key(ip), dns.rdatatype.PTR, base))
                if f"{namespace}/{name}" == self.dns_service:
                    records.append((self.ns_key, address_type(ip), ip))
            for port in spec.get("ports") or []:
                if port.get("name"):
                    records.append((self._srv_key(port, base), dns.rdatatype.SRV,
                                    (0, 100, int(port["port"]), base)))
        else:
            weight = max(1, 100 // max(1, len(endpoints)))
            for ip, host, ports in endpoints:
                records.append((base, address_type(ip), ip))
                for port in ports:
                    if port.get("name") and port.get("port"):
                        records.append((self._srv_key(port, base), dns.rdatatype.SRV,
                                        (0, weight, int(port["port"]), f"{host}.{base}")))
        # Every ready endpoint has a name of its own under the service, and its address
        # points back to that name (for ClusterIP services too, as CoreDNS does).
        for ip, host, _ in endpoints:
            records.append((f"{host}.{base}", address_type(ip), ip))
            records.append((reverse_key(ip), dns.rdatatype.PTR, f"{host}.{base}"))
        return records

    @staticmethod
    def _srv_key(port: Obj, base: str) -> str:
        protocol = (port.get("protocol") or "TCP").lower()
        return f"_{port['name'].lower()}._{protocol}.{base}"

    def _contribute(self, source: str, records: list[Record]) -> None:
        """Replace what `source` (a service, a namespace) puts in the index: only the
        records that changed are unfiled and filed."""
        old = self._contributed.pop(source, {})
        new = dict.fromkeys(records)        # ordered, each record once
        if new:
            self._contributed[source] = new
        if old.keys() == new.keys():
            return
        for owner, rdtype, value in old:
            if (owner, rdtype, value) not in new:
                self._unfile(owner, rdtype, value)
        for owner, rdtype, value in new:
            if (owner, rdtype, value) not in old:
                self._file(owner, rdtype, value)
        self.serial = max(self.serial + 1, int(time.time()))

    @staticmethod
    def _ancestors(owner: str):
        """owner and the names above it, up to the top-level one ("a.b.c." -> "a.b.c.",
        "b.c.", "c.")."""
        position = 0
        while position < len(owner) - 1:
            yield owner[position:]
            position = owner.index(".", position) + 1

    def _file(self, owner: str, rdtype: int | None, value: Any) -> None:
        if rdtype is not None:
            by_type = self._records.setdefault(owner, {}).setdefault(rdtype, {})
            by_type[value] = by_type.get(value, 0) + 1
        for name in self._ancestors(owner):
            self._nodes[name] = self._nodes.get(name, 0) + 1

    def _unfile(self, owner: str, rdtype: int | None, value: Any) -> None:
        if rdtype is not None:
            by_name = self._records.get(owner, {})
            by_type = by_name.get(rdtype, {})
            count = by_type.get(value, 0) - 1
            if count > 0:
                by_type[value] = count
            else:
                by_type.pop(value, None)
                if not by_type:
                    by_name.pop(rdtype, None)
                    if not by_name:
                        self._records.pop(owner, None)
        for name in self._ancestors(owner):
            count = self._nodes.get(name, 0) - 1
            if count > 0:
                self._nodes[name] = count
            else:
                self._nodes.pop(name, None)

    # --- reading ----------------------------------------------------------------------

    def is_local(self, qname: Name) -> bool:
        """True when this store answers `qname` (never forwarded)."""
        return self._authority_zone(qname) is not None or (
            self._is_reverse(qname) and key_of(qname) in self._records)

    def _is_reverse(self, qname: Name) -> bool:
        return qname.is_subdomain(REVERSE_V4) or qname.is_subdomain(REVERSE_V6)

    def _authority_zone(self, qname: Name) -> Name | None:
        """The zone this store is authoritative for that holds qname, if any."""
        if qname.is_subdomain(self.zone):
            return self.zone
        if self.reverse_cidrs and self._is_reverse(qname):
            try:
                address = dns.reversename.to_address(qname)
                ip = ipaddress.ip_address(address.decode() if isinstance(address, bytes)
                                          else address)
            except Exception:       # not a whole address: a partial reverse name
                return None
            for net in self.reverse_cidrs:
                if ip.version == net.version and ip in net:
                    return self.reverse_zone(net)
        return None

    @staticmethod
    def reverse_zone(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Name:
        """The reverse zone of a range, cut at a label boundary (10.96.0.0/12 ->
        10.in-addr.arpa)."""
        name = dns.reversename.from_address(str(net.network_address))
        step = 8 if net.version == 4 else 4
        keep = net.prefixlen // step
        # labels: the address's own ones, then in-addr/ip6, arpa and the root
        return dns.name.Name(name.labels[len(name.labels) - 3 - keep:])

    def soa(self, zone: Name) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(zone, IN, dns.rdatatype.SOA)
        rrset.update_ttl(self.ttl)
        rrset.add(SOA(IN, dns.rdatatype.SOA, self.ns_name,
                      dns.name.from_text("hostmaster", self.zone), self.serial % 2**32,
                      SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, self.ttl))
        return rrset

    def _rrset(self, owner: Name, key: str, rdtype: int) -> dns.rrset.RRset | None:
        """The records of type `rdtype` at `key`, named `owner` (the question's
        spelling)."""
        values = self._records.get(key, {}).get(rdtype)
        if not values:
            return None
        rrset = dns.rrset.RRset(owner, IN, rdtype)
        rrset.update_ttl(VERSION_TTL if rdtype == dns.rdatatype.TXT else self.ttl)
        for value in values:
            rrset.add(make_rdata(rdtype, value))
        return rrset

    def lookup(self, qname: Name, qtype: int) -> Answer | None:
        """The answer to (qname, qtype, IN), or None when the name is not this store's
        (the server forwards it)."""
        key = key_of(qname)
        zone = self._authority_zone(qname)
        if zone is None:
            if self._is_reverse(qname) and key in self._records:
                zone = REVERSE_V4 if qname.is_subdomain(REVERSE_V4) else REVERSE_V6
            else:
                return None
        if not self.synced:
            # An empty cache would deny names that exist: fail until the lists are in.
            return Answer(rcode=dns.rcode.SERVFAIL)
        out = Answer()
        pod = self._pod_address(qname)
        if pod is not None:
            if pod is False:
                out.rcode = dns.rcode.NXDOMAIN
            elif qtype in (address_type(pod), dns.rdatatype.ANY):
                rrset = dns.rrset.RRset(qname, IN, address_type(pod))
                rrset.update_ttl(self.ttl)
                rrset.add(make_rdata(address_type(pod), pod))
                out.answer.append(rrset)
            if not out.answer:
                out.authority.append(self.soa(zone))
            return out
        by_type = self._records.get(key, {})
        is_apex = qname == zone
        if is_apex and qtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
            out.answer.append(self.soa(zone))
        if dns.rdatatype.CNAME in by_type and qtype not in (dns.rdatatype.CNAME,
                                                            dns.rdatatype.ANY):
            self._follow_cname(qname, key, qtype, out)
            return out
        for rdtype in (list(by_type) if qtype == dns.rdatatype.ANY else [qtype]):
            rrset = self._rrset(qname, key, rdtype)
            if rrset is not None:
                out.answer.append(rrset)
        if out.answer:
            self._add_additional(out)
        elif key in self._nodes or is_apex:
            out.authority.append(self.soa(zone))            # NODATA
        else:
            out.rcode = dns.rcode.NXDOMAIN
            out.authority.append(self.soa(zone))
        return out

    def _follow_cname(self, qname: Name, key: str, qtype: int, out: Answer) -> None:
        rrset = self._rrset(qname, key, dns.rdatatype.CNAME)
        out.answer.append(rrset)
        target = next(iter(rrset)).target
        if target.is_subdomain(self.zone):
            # A name of the cluster: answered here, one step (no chains of ExternalNames).
            for rdtype in ((dns.rdatatype.A, dns.rdatatype.AAAA)
                           if qtype == dns.rdatatype.ANY else (qtype,)):
                found = self._rrset(target, key_of(target), rdtype)
                if found is not None:
                    out.answer.append(found)
        else:
            out.external_target = target

    def _add_additional(self, out: Answer) -> None:
        """Addresses of SRV targets and of the zone's name server."""
        targets: dict[str, Name] = {}
        for rrset in out.answer:
            if rrset.rdtype in (dns.rdatatype.SRV, dns.rdatatype.NS):
                for rdata in rrset:
                    targets.setdefault(key_of(rdata.target), rdata.target)
        for key, target in targets.items():
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                found = self._rrset(target, key, rdtype)
                if found is not None:
                    out.additional.append(found)

    def _pod_address(self, qname: Name) -> str | bool | None:
        """<dashed ip>.<ns>.pod.<zone>: the address, False for NXDOMAIN, None when
        qname is no pod name. Insecure mode (CoreDNS's default): any address, in a
        namespace that exists."""
        if not qname.is_subdomain(self.zone):
            return None
        relative = qname.relativize(self.zone).labels
        if len(relative) < 3 or relative[-1].lower() != b"pod":
            return None
        if len(relative) > 3:
            return False
        namespace = relative[1].decode(errors="replace").lower()
        ip = undashed(relative[0].decode(errors="replace"))
        if ip is None or namespace not in self._namespaces:
            return False
        return ip

    # --- for tests and metrics ---------------------------------------------------------

    def service_count(self) -> int:
        return len(self._services)
