"""The DNS server's listeners and forwarding, without an API server: a RecordStore fed
by hand, a fake upstream resolver on 127.0.0.2, queries with dns.asyncquery over UDP and
TCP to 127.0.0.1."""
from __future__ import annotations

import asyncio
import contextlib
import os
import time

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype

from kubesmith.dns.forward import Cache, Forwarder, read_nameservers
from kubesmith.dns.records import RecordStore
from kubesmith.dns.server import DnsServer
from tests.dns.fakes import UPSTREAM_ADDRESS, FakeUpstream, free_udp_and_tcp_port

TIMEOUT = 3.0


@contextlib.asynccontextmanager
async def running(tmp_path, upstream: FakeUpstream | None, *, timeout: float = 0.5,
                  servers: list[str] | None = None, excluded=set):
    """A DnsServer on 127.0.0.1 (an empty, synced store) forwarding to `upstream`."""
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("".join(f"nameserver {s}\n" for s in
                                   (servers if servers is not None else [UPSTREAM_ADDRESS])))
    store = RecordStore("cluster.local", 5)
    store.set_namespace({"metadata": {"name": "default"}})
    store.synced = True
    forwarder = Forwarder(str(resolv_conf), port=upstream.port if upstream else 53,
                          timeout=timeout, excluded=excluded)
    server = DnsServer(store, forwarder)
    port = free_udp_and_tcp_port()
    await server.start(["127.0.0.1"], port)
    try:
        yield server, port
    finally:
        await server.stop()


async def udp(port: int, qname: str, qtype: str = "A", **options) -> dns.message.Message:
    query = dns.message.make_query(qname, qtype, **options)
    return await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=TIMEOUT)


async def tcp(port: int, qname: str, qtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(qname, qtype)
    return await dns.asyncquery.tcp(query, "127.0.0.1", port=port, timeout=TIMEOUT)


def addresses(response: dns.message.Message) -> list[str]:
    return sorted(rdata.to_text() for rrset in response.answer for rdata in rrset
                  if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA))


def test_forwards_other_names_and_caches_the_answer(tmp_path):
    async def main():
        async with FakeUpstream({("www.example.com", "A"): ["192.0.2.10"]}) as upstream, \
                running(tmp_path, upstream) as (server, port):
            first = await udp(port, "www.example.com")
            assert first.rcode() == dns.rcode.NOERROR and addresses(first) == ["192.0.2.10"]
            assert first.flags & dns.flags.RA and not first.flags & dns.flags.AA
            again = await tcp(port, "WWW.example.com")
            assert addresses(again) == ["192.0.2.10"]
            assert upstream.count("www.example.com") == 1       # the second from the cache
            assert again.answer[0].ttl <= first.answer[0].ttl <= 60
            assert server.forwarder.cache.hits == 1
            # A negative answer is cached as well.
            missing = await udp(port, "nope.example.com")
            assert missing.rcode() == dns.rcode.NXDOMAIN
            assert (await udp(port, "nope.example.com")).rcode() == dns.rcode.NXDOMAIN
            assert upstream.count("nope.example.com") == 1
    asyncio.run(main())


def test_cache_lifetimes():
    positive = dns.message.make_response(dns.message.make_query("a.example.", "A"))
    positive.answer.append(dns.rrset.from_text("a.example.", 7200, "IN", "A", "192.0.2.1"))
    assert Cache.ttl_of(positive) == 3600
    negative = dns.message.make_response(dns.message.make_query("b.example.", "A"))
    negative.set_rcode(dns.rcode.NXDOMAIN)
    negative.authority.append(dns.rrset.from_text(
        "example.", 3600, "IN", "SOA", "ns.example. admin.example. 1 2 3 4 300"))
    assert Cache.ttl_of(negative) == 30                     # capped
    negative.authority[0] = dns.rrset.from_text(
        "example.", 10, "IN", "SOA", "ns.example. admin.example. 1 2 3 4 300")
    assert Cache.ttl_of(negative) == 10                     # the SOA's own TTL is less
    failed = dns.message.make_response(dns.message.make_query("c.example.", "A"))
    failed.set_rcode(dns.rcode.SERVFAIL)
    assert Cache.ttl_of(failed) is None
    cache = Cache(size=2)
    for index in range(3):
        cache.put((index,), positive)
    assert len(cache) == 2 and cache.get((0,)) is None and cache.get((2,)) is not None


def test_cached_answer_expires(tmp_path, monkeypatch):
    async def main():
        async with FakeUpstream({("short.example.com", "A"): ["192.0.2.11"]},
                                ttl=1) as upstream, \
                running(tmp_path, upstream) as (server, port):
            await udp(port, "short.example.com")
            await udp(port, "short.example.com")
            assert upstream.count("short.example.com") == 1
            await asyncio.sleep(1.1)
            await udp(port, "short.example.com")
            assert upstream.count("short.example.com") == 2
    asyncio.run(main())


def test_silent_upstream_is_servfail_within_the_timeout(tmp_path):
    async def main():
        async with FakeUpstream() as upstream, \
                running(tmp_path, upstream, timeout=0.3) as (server, port):
            upstream.silent = True
            started = time.monotonic()
            answer = await udp(port, "www.example.com")
            assert answer.rcode() == dns.rcode.SERVFAIL
            assert time.monotonic() - started < 2.0
            assert upstream.count("www.example.com") == 1
            # Failures are not cached: the next question asks again.
            upstream.silent = False
            upstream.records[("www.example.com", "A")] = ["192.0.2.12"]
            assert addresses(await udp(port, "www.example.com")) == ["192.0.2.12"]
    asyncio.run(main())


def test_next_upstream_is_tried_when_the_first_is_silent(tmp_path):
    async def main():
        records = {("www.example.com", "A"): ["192.0.2.13"]}
        async with FakeUpstream(records) as upstream, \
                FakeUpstream(records, address="127.0.0.3", port=upstream.port) as silent, \
                running(tmp_path, upstream, timeout=0.3,
                        servers=["127.0.0.3", UPSTREAM_ADDRESS]) as (_, port):
            silent.silent = True
            answer = await udp(port, "www.example.com")
            assert addresses(answer) == ["192.0.2.13"]
            assert silent.count("www.example.com") == 1
            assert upstream.count("www.example.com") == 1
    asyncio.run(main())


def test_truncated_upstream_answer_is_asked_again_over_tcp(tmp_path):
    async def main():
        async with FakeUpstream({("big.example.com", "A"): ["192.0.2.20"]}) as upstream, \
                running(tmp_path, upstream) as (_, port):
            upstream.truncate_udp = True
            answer = await udp(port, "big.example.com")
            assert addresses(answer) == ["192.0.2.20"]
            assert [proto for proto, _, _ in upstream.queries] == ["udp", "tcp"]
    asyncio.run(main())


def test_cluster_names_are_never_forwarded(tmp_path):
    async def main():
        async with FakeUpstream() as upstream, running(tmp_path, upstream) as (_, port):
            answer = await udp(port, "nope.default.svc.cluster.local")
            assert answer.rcode() == dns.rcode.NXDOMAIN and answer.flags & dns.flags.AA
            assert answer.authority[0].rdtype == dns.rdatatype.SOA
            assert upstream.queries == []
    asyncio.run(main())


def test_loop_guard_skips_excluded_upstreams(tmp_path):
    async def main():
        async with FakeUpstream({("www.example.com", "A"): ["192.0.2.14"]}) as upstream, \
                running(tmp_path, upstream, excluded=lambda: {UPSTREAM_ADDRESS}) as (_, port):
            answer = await udp(port, "www.example.com")
            assert answer.rcode() == dns.rcode.SERVFAIL
            assert upstream.queries == []
    asyncio.run(main())


def test_resolv_conf_is_read_again_when_it_changes(tmp_path):
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("# comment\nsearch example.com\nnameserver 192.0.2.53\n"
                           "nameserver fe80::1%eth0\nnameserver bogus\n")
    assert read_nameservers(str(resolv_conf)) == ["192.0.2.53", "fe80::1"]
    forwarder = Forwarder(str(resolv_conf))
    assert forwarder.nameservers() == ["192.0.2.53", "fe80::1"]
    resolv_conf.write_text("nameserver 198.51.100.53\n")
    os.utime(resolv_conf, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    assert forwarder.nameservers() == ["198.51.100.53"]
    assert read_nameservers(str(tmp_path / "missing")) == []


def test_large_answers_are_truncated_over_udp_and_whole_over_tcp(tmp_path):
    async def main():
        async with running(tmp_path, None) as (server, port):
            server.store.set_service({"metadata": {"namespace": "default", "name": "many"},
                                      "spec": {"clusterIP": "None"}})
            server.store.set_slice({
                "metadata": {"namespace": "default", "name": "many-1",
                             "labels": {"kubernetes.io/service-name": "many"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [f"10.244.0.{i}"]} for i in range(1, 61)]})
            small = await udp(port, "many.default.svc.cluster.local")
            assert small.flags & dns.flags.TC and not small.answer
            whole = await tcp(port, "many.default.svc.cluster.local")
            assert len(addresses(whole)) == 60
            # With an EDNS buffer, UDP carries it all (about 1000 bytes) ...
            large = await udp(port, "many.default.svc.cluster.local", use_edns=0,
                              payload=4096)
            assert not large.flags & dns.flags.TC and len(addresses(large)) == 60
            assert large.payload == 1232
            # ... but never more than 1232 bytes, whatever the client offers.
            for i in range(61, 101):
                server.store.set_slice({
                    "metadata": {"namespace": "default", "name": f"many-{i}",
                                 "labels": {"kubernetes.io/service-name": "many"}},
                    "addressType": "IPv4", "endpoints": [{"addresses": [f"10.244.0.{i}"]}]})
            capped = await udp(port, "many.default.svc.cluster.local", use_edns=0,
                               payload=4096)
            assert capped.flags & dns.flags.TC
            assert len(addresses(await tcp(port, "many.default.svc.cluster.local"))) == 100
    asyncio.run(main())


def test_malformed_and_unsupported_queries(tmp_path):
    async def main():
        async with running(tmp_path, None) as (server, port):
            query = dns.message.make_query("web.default.svc.cluster.local", "A")
            wire = query.to_wire()
            garbage = wire[:12] + b"\xff\xff\xff"
            out = await server.answer(garbage)
            assert out is not None
            assert dns.message.from_wire(out).rcode() == dns.rcode.FORMERR
            assert await server.answer(b"\x00\x01") is None
            notify = dns.message.make_query("cluster.local", "SOA")
            notify.set_opcode(dns.opcode.NOTIFY)
            answer = dns.message.from_wire(await server.answer(notify.to_wire()))
            assert answer.rcode() == dns.rcode.NOTIMP
            axfr = await tcp(port, "cluster.local", "AXFR")
            assert axfr.rcode() == dns.rcode.REFUSED
    asyncio.run(main())


def test_external_name_target_is_resolved_upstream(tmp_path):
    async def main():
        async with FakeUpstream({("www.example.com", "A"): ["192.0.2.30"]}) as upstream, \
                running(tmp_path, upstream) as (server, port):
            server.store.set_service({
                "metadata": {"namespace": "default", "name": "ext"},
                "spec": {"type": "ExternalName", "externalName": "www.example.com"}})
            answer = await udp(port, "ext.default.svc.cluster.local")
            assert answer.flags & dns.flags.AA
            assert [rrset.rdtype for rrset in answer.answer] == [dns.rdatatype.CNAME,
                                                                 dns.rdatatype.A]
            assert addresses(answer) == ["192.0.2.30"]
    asyncio.run(main())
