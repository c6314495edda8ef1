"""A fake upstream resolver on a loopback address (UDP and TCP), and free ports."""
from __future__ import annotations

import asyncio
import socket
import struct
from typing import Callable

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

UPSTREAM_ADDRESS = "127.0.0.2"


def free_udp_and_tcp_port(address: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `address` (at the time of asking)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((address, 0))
            number = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((address, number))
                except OSError:
                    continue
                return number
    raise RuntimeError("no free port")


class FakeUpstream:
    """Answers from `records` ({(name, type): [rdata text]}); names not there are
    NXDOMAIN with an SOA whose negative TTL is 300. `silent` drops every query;
    `truncate_udp` answers UDP with TC and no records. Queries seen are counted. `port`
    0 picks a free one."""

    def __init__(self, records: dict[tuple[str, str], list[str]] | None = None, *,
                 ttl: int = 60, address: str = UPSTREAM_ADDRESS, port: int = 0):
        self.records = records or {}
        self.ttl = ttl
        self.address = address
        self.port = port
        self.silent = False
        self.truncate_udp = False
        self.queries: list[tuple[str, str, str]] = []      # (proto, name, type)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None

    async def start(self) -> "FakeUpstream":
        self.port = self.port or free_udp_and_tcp_port(self.address)
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self.handle), local_addr=(self.address, self.port))
        self._tcp = await asyncio.start_server(self._serve_tcp, self.address, self.port)
        return self

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    async def __aenter__(self) -> "FakeUpstream":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def count(self, qname: str) -> int:
        return sum(1 for _, name, _ in self.queries if name.rstrip(".") == qname.rstrip("."))

    def handle(self, wire: bytes, proto: str) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        self.queries.append((proto, question.name.to_text(),
                             dns.rdatatype.to_text(question.rdtype)))
        if self.silent:
            return None
        response = dns.message.make_response(query, recursion_available=True)
        if proto == "udp" and self.truncate_udp:
            response.flags |= dns.flags.TC
            return response.to_wire()
        key = (question.name.to_text().rstrip(".").lower(),
               dns.rdatatype.to_text(question.rdtype))
        if key in self.records:
            response.answer.append(dns.rrset.from_text_list(
                question.name, self.ttl, "IN", key[1], self.records[key]))
        elif not any(name == key[0] for name, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text(
                "example.", 3600, "IN", "SOA", "ns.example. admin.example. 1 2 3 4 300"))
        return response.to_wire()

    async def _serve_tcp(self, reader, writer) -> None:
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                out = self.handle(await reader.readexactly(size), "tcp")
                if out is None:
                    break
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, handle: Callable[[bytes, str], bytes | None]):
        self.handle = handle
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        out = self.handle(data, "udp")
        if out is not None:
            self.transport.sendto(out, addr)
