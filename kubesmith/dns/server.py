"""The DNS listeners: UDP (an asyncio DatagramProtocol) and TCP (an asyncio server,
2-byte length framing as RFC 1035 4.2.2), one of each per listen address, and the
answer to one query message.

A query for a name of the cluster (see records.py) is answered from the RecordStore
with the AA bit; any other name goes to the Forwarder (forward.py), SERVFAIL when no
upstream answers. Every answer offers recursion (RA), as CoreDNS's do. A UDP answer
larger than the client's buffer (512 bytes, or its EDNS size) goes out empty with TC
set, so the client asks again over TCP (UDP answers are kept to 1232 bytes at most,
unfragmented on any usual MTU). Unparsable messages get FORMERR when their
header can be read (nothing otherwise), opcodes other than QUERY get NOTIMP, and zone
transfers REFUSED.

Metrics keep CoreDNS's names, so its dashboards and alerts work unchanged:
coredns_dns_requests_total, coredns_dns_responses_total,
coredns_dns_request_duration_seconds, coredns_cache_entries, coredns_cache_hits_total,
coredns_cache_misses_total, coredns_forward_requests_total.
"""
from __future__ import annotations

import asyncio
import logging
import struct
import time

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from kubesmith.dns.forward import Forwarder
from kubesmith.dns.records import RecordStore

log = logging.getLogger("kubesmith-dns.server")

OUR_PAYLOAD = 1232          # EDNS buffer size offered to clients (DNS flag day 2020)
MAX_IN_FLIGHT = 2000        # UDP queries being answered at once; more are dropped
TCP_IDLE_TIMEOUT = 10.0     # seconds a TCP connection may wait for its next query
MAX_TCP_CONNECTIONS = 256
DURATION_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064,
                    0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192)


class Metrics:
    """The DNS server's Prometheus metrics, in a registry of its own."""

    def __init__(self, forwarder: Forwarder, server_label: str):
        self.registry = CollectorRegistry()
        self.server_label = server_label
        registry = self.registry
        self.requests = Counter("coredns_dns_requests", "DNS requests.",
                                ["server", "zone", "proto", "family", "type"],
                                registry=registry)
        self.responses = Counter("coredns_dns_responses", "DNS responses by rcode.",
                                 ["server", "zone", "rcode"], registry=registry)
        self.duration = Histogram("coredns_dns_request_duration_seconds",
                                  "Time to answer a request.", ["server", "zone", "type"],
                                  buckets=DURATION_BUCKETS, registry=registry)
        registry.register(_ForwardCollector(forwarder, server_label))

    def observe(self, zone: str, proto: str, family: str, qtype: str, rcode: str,
                seconds: float) -> None:
        self.requests.labels(self.server_label, zone, proto, family, qtype).inc()
        self.responses.labels(self.server_label, zone, rcode).inc()
        self.duration.labels(self.server_label, zone, qtype).observe(seconds)


class _ForwardCollector:
    """The cache's and forwarder's counts (plain integers there), read at scrape time."""

    def __init__(self, forwarder: Forwarder, server_label: str):
        self.forwarder = forwarder
        self.server_label = server_label

    def collect(self):
        cache = self.forwarder.cache
        entries = GaugeMetricFamily("coredns_cache_entries", "Answers in the forwarding "
                                    "cache.", labels=["server", "type"])
        entries.add_metric([self.server_label, "denial_and_success"], len(cache))
        hits = CounterMetricFamily("coredns_cache_hits", "Answers served from the cache.",
                                   labels=["server"])
        hits.add_metric([self.server_label], cache.hits)
        misses = CounterMetricFamily("coredns_cache_misses", "Questions not in the cache.",
                                     labels=["server"])
        misses.add_metric([self.server_label], cache.misses)
        forwards = CounterMetricFamily("coredns_forward_requests", "Queries sent upstream.")
        forwards.add_metric([], self.forwarder.requests)
        return [entries, hits, misses, forwards]


def _formerr(wire: bytes) -> bytes | None:
    """FORMERR for a message whose header (at least) can be read."""
    if len(wire) < 12:
        return None
    ident, flags = struct.unpack("!HH", wire[:4])
    if flags & dns.flags.QR:
        return None
    flags = dns.flags.QR | (flags & dns.flags.RD) | dns.flags.RA | dns.rcode.FORMERR
    return struct.pack("!HHHHHH", ident, flags, 0, 0, 0, 0)


class DnsServer:
    """Answers queries from `store` and `forwarder` on UDP and TCP listeners."""

    def __init__(self, store: RecordStore, forwarder: Forwarder, *,
                 metrics: Metrics | None = None):
        self.store = store
        self.forwarder = forwarder
        self.metrics = metrics or Metrics(forwarder, "dns://")
        self._transports: list[asyncio.DatagramTransport] = []
        self._tcp_servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task] = set()
        self._tcp_connections = 0

    # --- listeners --------------------------------------------------------------------

    async def start(self, addresses: list[str], port: int) -> None:
        """Listen on UDP and TCP `port` of every address."""
        loop = asyncio.get_running_loop()
        try:
            for address in addresses:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), local_addr=(address, port))
                self._transports.append(transport)
                self._tcp_servers.append(await asyncio.start_server(
                    self._serve_tcp, address, port, reuse_address=True))
                log.info("serving DNS on %s port %d (UDP and TCP)", address, port)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        for server in self._tcp_servers:
            server.close()
        # Open TCP connections and queries in flight end now (wait_closed waits for
        # the connections to be gone).
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._tcp_servers:
            await server.wait_closed()
        self._tcp_servers.clear()

    def _spawn(self, coro) -> bool:
        if len(self._tasks) >= MAX_IN_FLIGHT:
            coro.close()
            return False
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername") or ("", 0)
        self._tcp_connections += 1
        try:
            if self._tcp_connections > MAX_TCP_CONNECTIONS:
                return
            while True:
                try:
                    size = struct.unpack("!H", await asyncio.wait_for(
                        reader.readexactly(2), TCP_IDLE_TIMEOUT))[0]
                    wire = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_TIMEOUT)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                out = await self.answer(wire, "tcp", peer[0])
                if out is None:
                    return
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self._tcp_connections -= 1
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    # --- answering --------------------------------------------------------------------

    async def answer(self, wire: bytes, proto: str = "udp", client: str = "") -> bytes | None:
        """The wire answer to one query message (None: send nothing)."""
        started = time.monotonic()
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return _formerr(wire)
        if query.flags & dns.flags.QR:
            return None
        response = dns.message.make_response(query, recursion_available=True,
                                             our_payload=OUR_PAYLOAD)
        zone, qtype_text = ".", "other"
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
        else:
            question = query.question[0]
            qtype_text = dns.rdatatype.to_text(question.rdtype)
            if self.store.is_local(question.name):
                zone = self.store.zone.to_text()
            await self._resolve(query, response)
        if proto == "tcp":
            limit = 65535
        else:
            # The smaller of the client's buffer and ours (RFC 6891), never below 512.
            limit = max(512, min(query.payload, OUR_PAYLOAD)) if query.edns >= 0 else 512
        try:
            out = response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer, response.authority, response.additional = [], [], []
            response.flags |= dns.flags.TC
            out = response.to_wire(max_size=limit)
        self.metrics.observe(zone, proto, "2" if ":" in client else "1", qtype_text,
                             dns.rcode.to_text(response.rcode()),
                             time.monotonic() - started)
        return out

    async def _resolve(self, query: dns.message.Message,
                       response: dns.message.Message) -> None:
        question = query.question[0]
        qname, qtype, qclass = question.name, question.rdtype, question.rdclass
        if qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            response.set_rcode(dns.rcode.REFUSED)
            return
        if self.store.is_local(qname):
            if qclass not in (dns.rdataclass.IN, dns.rdataclass.ANY):
                response.set_rcode(dns.rcode.REFUSED)
                return
            local = self.store.lookup(qname, qtype)
            if local is not None:
                response.flags |= dns.flags.AA
                response.set_rcode(local.rcode)
                response.answer = list(local.answer)
                response.authority = list(local.authority)
                response.additional = list(local.additional)
                if local.external_target is not None:
                    # An ExternalName: the target's own records follow the CNAME.
                    upstream = await self.forwarder.resolve(local.external_target, qtype)
                    if upstream is not None:
                        response.answer.extend(upstream.answer)
                return
        upstream = await self.forwarder.resolve(qname, qtype, qclass,
                                                dnssec=query.want_dnssec())
        if upstream is None:
            response.set_rcode(dns.rcode.SERVFAIL)
            return
        response.set_rcode(upstream.rcode())
        response.flags |= upstream.flags & dns.flags.AD
        response.answer = list(upstream.answer)
        response.authority = list(upstream.authority)
        response.additional = list(upstream.additional)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer):
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.server._spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr) -> None:
        out = await self.server.answer(data, "udp", addr[0])
        if out is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP: %s", exc)
