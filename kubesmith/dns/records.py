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
recomputed whole when the Service or one of its slices changes (cheap: one service's
endpoints), so a query never waits for a rebuild.
"""
from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import dns.name
import dns.rcode
import dns.rdata
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


def address_record(ip: str):
    """An A or AAAA rdata for an address."""
    parsed = ipaddress.ip_address(ip)
    if parsed.version == 4:
        return A(IN, dns.rdatatype.A, str(parsed))
    return AAAA(IN, dns.rdatatype.AAAA, str(parsed))


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


Record = tuple[Name, int | None, Any]      # (owner, rdtype, rdata); rdtype None: name only


class RecordStore:
    """The records of one cluster domain, fed by set_*/remove_* calls and read by
    lookup(). `dns_service` ("kube-system/kube-dns") gives ns.dns.<zone> its addresses.
    `reverse_cidrs`: address ranges whose reverse names are answered here only (NXDOMAIN
    when unknown); other reverse names are answered when known, else forwarded."""

    def __init__(self, domain: str = "cluster.local", ttl: int = 5, *,
                 dns_service: str = "kube-system/kube-dns",
                 reverse_cidrs: Iterable[str] = ()):
        self.zone = dns.name.from_text(domain)
        self.ttl = ttl
        self.dns_service = dns_service
        self.reverse_cidrs = [ipaddress.ip_network(c) for c in reverse_cidrs]
        self.synced = False
        self.serial = int(time.time())
        self.ns_name = dns.name.from_text("ns.dns", self.zone)
        self._records: dict[Name, dict[int, dict[Any, int]]] = {}
        self._nodes: dict[Name, int] = {}          # names with records at or below them
        self._contributed: dict[str, list[Record]] = {}
        self._services: dict[str, Obj] = {}
        self._slices: dict[str, dict[str, Obj]] = {}    # service key -> slice key -> slice
        self._slice_owner: dict[str, str] = {}          # slice key -> service key
        self._namespaces: set[str] = set()
        self._contribute("static", [
            (dns.name.from_text("dns-version", self.zone), dns.rdatatype.TXT,
             TXT(IN, dns.rdatatype.TXT, [SCHEMA_VERSION.encode()])),
            (self.zone, dns.rdatatype.NS, NS(IN, dns.rdatatype.NS, self.ns_name)),
            (dns.name.from_text("svc", self.zone), None, None),
            (dns.name.from_text("pod", self.zone), None, None),
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
                (dns.name.from_text(f"{label}.svc", self.zone), None, None),
                (dns.name.from_text(f"{label}.pod", self.zone), None, None)])

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
        base = dns.name.from_text(f"{name}.{namespace}.svc".lower(), self.zone)
        records: list[Record] = []
        if spec.get("type") == "ExternalName":
            target = spec.get("externalName") or ""
            if target:
                records.append((base, dns.rdatatype.CNAME,
                                CNAME(IN, dns.rdatatype.CNAME,
                                      dns.name.from_text(target.rstrip(".") + "."))))
            return records
        cluster_ips = service_ips(service)
        endpoints = ready_endpoints(service, slices)
        if cluster_ips:
            for ip in cluster_ips:
                rdata = address_record(ip)
                records.append((base, rdata.rdtype, rdata))
                records.append((dns.reversename.from_address(ip), dns.rdatatype.PTR,
                                PTR(IN, dns.rdatatype.PTR, base)))
                if f"{namespace}/{name}" == self.dns_service:
                    records.append((self.ns_name, rdata.rdtype, rdata))
            for port in spec.get("ports") or []:
                if port.get("name"):
                    records.append((self._srv_name(port, base), dns.rdatatype.SRV,
                                    SRV(IN, dns.rdatatype.SRV, 0, 100, int(port["port"]),
                                        base)))
        else:
            weight = max(1, 100 // max(1, len(endpoints)))
            for ip, host, ports in endpoints:
                rdata = address_record(ip)
                records.append((base, rdata.rdtype, rdata))
                target = dns.name.Name((host,) + base.labels)
                for port in ports:
                    if port.get("name") and port.get("port"):
                        records.append((self._srv_name(port, base), dns.rdatatype.SRV,
                                        SRV(IN, dns.rdatatype.SRV, 0, weight,
                                            int(port["port"]), target)))
        # Every ready endpoint has a name of its own under the service, and its address
        # points back to that name (for ClusterIP services too, as CoreDNS does).
        for ip, host, _ in endpoints:
            rdata = address_record(ip)
            target = dns.name.Name((host,) + base.labels)
            records.append((target, rdata.rdtype, rdata))
            records.append((dns.reversename.from_address(ip), dns.rdatatype.PTR,
                            PTR(IN, dns.rdatatype.PTR, target)))
        return records

    @staticmethod
    def _srv_name(port: Obj, base: Name) -> Name:
        protocol = (port.get("protocol") or "TCP").lower()
        return dns.name.Name((f"_{port['name'].lower()}".encode(),
                              f"_{protocol}".encode()) + base.labels)

    def _contribute(self, source: str, records: list[Record]) -> None:
        """Replace what `source` (a service, a namespace) puts in the index."""
        old = self._contributed.pop(source, [])
        if old == records:
            if records:
                self._contributed[source] = records
            return
        for owner, rdtype, rdata in old:
            self._unfile(owner, rdtype, rdata)
        for owner, rdtype, rdata in records:
            self._file(owner, rdtype, rdata)
        if records:
            self._contributed[source] = records
        self.serial = max(self.serial + 1, int(time.time()))

    def _file(self, owner: Name, rdtype: int | None, rdata: Any) -> None:
        if rdtype is not None:
            by_type = self._records.setdefault(owner, {}).setdefault(rdtype, {})
            by_type[rdata] = by_type.get(rdata, 0) + 1
        name = owner
        while len(name.labels) > 1:
            self._nodes[name] = self._nodes.get(name, 0) + 1
            name = name.parent()

    def _unfile(self, owner: Name, rdtype: int | None, rdata: Any) -> None:
        if rdtype is not None:
            by_name = self._records.get(owner, {})
            by_type = by_name.get(rdtype, {})
            count = by_type.get(rdata, 0) - 1
            if count > 0:
                by_type[rdata] = count
            else:
                by_type.pop(rdata, None)
                if not by_type:
                    by_name.pop(rdtype, None)
                    if not by_name:
                        self._records.pop(owner, None)
        name = owner
        while len(name.labels) > 1:
            count = self._nodes.get(name, 0) - 1
            if count > 0:
                self._nodes[name] = count
            else:
                self._nodes.pop(name, None)
            name = name.parent()

    # --- reading ----------------------------------------------------------------------

    def is_local(self, qname: Name) -> bool:
        """True when this store answers `qname` (never forwarded)."""
        return self._authority_zone(qname) is not None or (
            self._is_reverse(qname) and qname in self._records)

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

    def _rrset(self, owner: Name, rdtype: int, ttl: int | None = None) -> dns.rrset.RRset | None:
        rdatas = self._records.get(owner, {}).get(rdtype)
        if not rdatas:
            return None
        rrset = dns.rrset.RRset(owner, IN, rdtype)
        rrset.update_ttl(VERSION_TTL if rdtype == dns.rdatatype.TXT else
                         self.ttl if ttl is None else ttl)
        for rdata in rdatas:
            rrset.add(rdata)
        return rrset

    def lookup(self, qname: Name, qtype: int) -> Answer | None:
        """The answer to (qname, qtype, IN), or None when the name is not this store's
        (the server forwards it)."""
        zone = self._authority_zone(qname)
        if zone is None:
            if self._is_reverse(qname) and qname in self._records:
                zone = REVERSE_V4 if qname.is_subdomain(REVERSE_V4) else REVERSE_V6
            else:
                return None
        if not self.synced:
            # An empty cache would deny names that exist: fail until the lists are in.
            return Answer(rcode=dns.rcode.SERVFAIL)
        out = Answer()
        pod = self._pod_record(qname)
        if pod is not None:
            if pod is False:
                out.rcode = dns.rcode.NXDOMAIN
            elif qtype in (pod.rdtype, dns.rdatatype.ANY):
                rrset = dns.rrset.RRset(qname, IN, pod.rdtype)
                rrset.update_ttl(self.ttl)
                rrset.add(pod)
                out.answer.append(rrset)
            if not out.answer:
                out.authority.append(self.soa(zone))
            return out
        by_type = self._records.get(qname, {})
        if qname == zone and qtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
            out.answer.append(self.soa(zone))
        if dns.rdatatype.CNAME in by_type and qtype not in (dns.rdatatype.CNAME,
                                                            dns.rdatatype.ANY):
            self._follow_cname(qname, qtype, out)
            return out
        types = list(by_type) if qtype == dns.rdatatype.ANY else [qtype]
        for rdtype in types:
            rrset = self._rrset(qname, rdtype)
            if rrset is not None:
                out.answer.append(rrset)
        if out.answer:
            self._add_additional(out)
        elif qname in self._nodes or qname == zone:
            out.authority.append(self.soa(zone))            # NODATA
        else:
            out.rcode = dns.rcode.NXDOMAIN
            out.authority.append(self.soa(zone))
        return out

    def _follow_cname(self, qname: Name, qtype: int, out: Answer) -> None:
        rrset = self._rrset(qname, dns.rdatatype.CNAME)
        out.answer.append(rrset)
        target = next(iter(rrset)).target
        if target.is_subdomain(self.zone):
            # A name of the cluster: answered here, one step (no chains of ExternalNames).
            for rdtype in ((dns.rdatatype.A, dns.rdatatype.AAAA)
                           if qtype == dns.rdatatype.ANY else (qtype,)):
                found = self._rrset(target, rdtype)
                if found is not None:
                    out.answer.append(found)
        else:
            out.external_target = target

    def _add_additional(self, out: Answer) -> None:
        """Addresses of SRV targets and of the zone's name server."""
        targets: list[Name] = []
        for rrset in out.answer:
            if rrset.rdtype == dns.rdatatype.SRV:
                targets.extend(rdata.target for rdata in rrset)
            elif rrset.rdtype == dns.rdatatype.NS:
                targets.extend(rdata.target for rdata in rrset)
        seen: set[Name] = set()
        for target in targets:
            if target in seen:
                continue
            seen.add(target)
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                found = self._rrset(target, rdtype)
                if found is not None:
                    out.additional.append(found)

    def _pod_record(self, qname: Name):
        """<dashed ip>.<ns>.pod.<zone>: the address rdata, False for NXDOMAIN, None
        when qname is no pod name. Insecure mode (CoreDNS's default): any address, in a
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
        return address_record(ip)

    # --- for tests and metrics ---------------------------------------------------------

    def service_count(self) -> int:
        return len(self._services)
