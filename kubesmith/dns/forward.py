"""Names outside the cluster: forwarded to the host's resolvers, answers cached.

    Forwarder(resolv_conf="/etc/resolv.conf", port=53, timeout=2.0,
              excluded=lambda: {...}).resolve(qname, qtype) -> Message | None

The upstream resolvers are the `nameserver` lines of --upstream-resolv-conf, read again
when the file changes (as CoreDNS's `forward . /etc/resolv.conf`). Each is tried in
order over UDP, bounded to `timeout` seconds a try, and again over TCP when its answer
is truncated; an answer of SERVFAIL or REFUSED moves on to the next one. None answering
is None: the server answers SERVFAIL. Addresses given by `excluded()` (the server's own
listen addresses, the cluster DNS Service's IPs) are never asked: a host whose
resolv.conf names the cluster DNS would otherwise send a query round in a loop.

The cache keeps answers for their TTL (the smallest in the answer, at most 3600 s) and
negative answers (NXDOMAIN, NODATA) for the SOA's negative TTL, at most 30 s, as
CoreDNS's cache plugin does; failures are not cached. Entries are served with their TTLs
counted down. It holds at most `size` answers, the oldest going first.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from typing import Callable

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

log = logging.getLogger("kubesmith-dns.forward")

MAX_POSITIVE_TTL = 3600
MAX_NEGATIVE_TTL = 30
NO_SOA_NEGATIVE_TTL = 5
UPSTREAM_PAYLOAD = 1232     # the EDNS buffer size asked of upstreams (DNS flag day 2020)


def read_nameservers(path: str) -> list[str]:
    """The `nameserver` addresses of a resolv.conf, in order (zone ids dropped)."""
    servers = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split("#", 1)[0].split(";", 1)[0].split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    address = fields[1].split("%", 1)[0]
                    try:
                        servers.append(str(ipaddress.ip_address(address)))
                    except ValueError:
                        log.warning("%s: %r is no address", path, fields[1])
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
    return servers


class Cache:
    """Answers by (name, type, class, DO bit), with their expiry."""

    def __init__(self, size: int = 10000):
        self.size = size
        self._entries: dict[tuple, tuple[bytes, float, float]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(qname: dns.name.Name, qtype: int, qclass: int, dnssec: bool) -> tuple:
        return (qname.to_text().lower(), qtype, qclass, dnssec)

    @staticmethod
    def ttl_of(response: dns.message.Message) -> int | None:
        """How long an answer may be kept; None: not at all."""
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR and response.answer:
            return min(MAX_POSITIVE_TTL, min(rrset.ttl for rrset in response.answer))
        if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            for rrset in response.authority:
                if rrset.rdtype == dns.rdatatype.SOA:
                    soa = next(iter(rrset))
                    return min(MAX_NEGATIVE_TTL, rrset.ttl, soa.minimum)
            return NO_SOA_NEGATIVE_TTL
        return None

    def put(self, key: tuple, response: dns.message.Message) -> None:
        ttl = self.ttl_of(response)
        if not ttl or ttl <= 0:
            return
        self._entries.pop(key, None)
        if len(self._entries) >= self.size:
            del self._entries[next(iter(self._entries))]
        now = time.monotonic()
        self._entries[key] = (response.to_wire(), now, now + ttl)

    def get(self, key: tuple) -> dns.message.Message | None:
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is None or entry[2] <= now:
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        wire, stored, _ = entry
        response = dns.message.from_wire(wire)
        elapsed = int(now - stored)
        for section in (response.answer, response.authority, response.additional):
            for rrset in section:
                rrset.ttl = max(0, rrset.ttl - elapsed)
        return response


class Forwarder:
    """Asks the upstream resolvers (see the module docstring)."""

    def __init__(self, resolv_conf: str = "/etc/resolv.conf", *, port: int = 53,
                 timeout: float = 2.0, excluded: Callable[[], set[str]] = set,
                 cache: Cache | None = None):
        self.resolv_conf = resolv_conf
        self.port = port
        self.timeout = timeout
        self.excluded = excluded
        self.cache = cache if cache is not None else Cache()
        self._servers: list[str] = []
        self._stamp: tuple | None = None
        self.requests = 0           # queries sent upstream
        self.failures = 0           # upstream tries that gave no usable answer

    def nameservers(self) -> list[str]:
        """The resolvers to ask now: resolv.conf's (re-read when it changed), less the
        excluded addresses."""
        try:
            stat = os.stat(self.resolv_conf)
            stamp: tuple | None = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError:
            stamp = None
        if stamp != self._stamp or stamp is None:
            self._stamp = stamp
            self._servers = read_nameservers(self.resolv_conf)
        excluded = self.excluded()
        return [server for server in self._servers if server not in excluded]

    async def resolve(self, qname: dns.name.Name, qtype: int, qclass: int = 1, *,
                      dnssec: bool = False) -> dns.message.Message | None:
        """The answer (from the cache or an upstream), None when no upstream answered."""
        key = self.cache.key(qname, qtype, qclass, dnssec)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        for server in self.nameservers():
            response = await self._ask(server, qname, qtype, qclass, dnssec)
            if response is None:
                continue
            if response.rcode() in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
                self.failures += 1
                continue
            self.cache.put(key, response)
            return response
        return None

    async def _ask(self, server: str, qname: dns.name.Name, qtype: int, qclass: int,
                   dnssec: bool) -> dns.message.Message | None:
        query = dns.message.make_query(qname, qtype, qclass, use_edns=0,
                                       payload=UPSTREAM_PAYLOAD, want_dnssec=dnssec)
        self.requests += 1
        try:
            response = await dns.asyncquery.udp(query, server, timeout=self.timeout,
                                                port=self.port, ignore_unexpected=True)
            if response.flags & dns.flags.TC:
                response = await dns.asyncquery.tcp(query, server, timeout=self.timeout,
                                                    port=self.port)
            return response
        except (dns.exception.DNSException, OSError, asyncio.TimeoutError) as exc:
            self.failures += 1
            log.debug("upstream %s:%d: %s %s: %r", server, self.port, qname,
                      dns.rdatatype.to_text(qtype), exc)
            return None
