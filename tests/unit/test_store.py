"""The etcd client against a real etcd (Debian's etcd-server) with client-certificate TLS."""
from __future__ import annotations

import asyncio
import functools
import time

import pytest

from kubesmith.store import (
    CompactedError,
    ConflictError,
    DeleteResult,
    EtcdStore,
    EventType,
    FutureRevisionError,
    KeyExistsError,
    KeyNotFoundError,
    LeaseNotFoundError,
    RequestTooLargeError,
    StoreUnavailableError,
    prefix_end,
)
from kubesmith.store.testing import LocalEtcd, TestPKI, etcd_available, free_port

pytestmark = pytest.mark.skipif(not etcd_available(), reason="needs /usr/bin/etcd (etcd-server)")


def async_test(fn):
    """Run an async test in its own event loop, bounded in time."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 20))
    return wrapper


@pytest.fixture(scope="module")
def etcd():
    # Frequent progress notifications, so a test can wait for one.
    with LocalEtcd(progress_notify_interval="300ms") as server:
        yield server


@pytest.fixture
def prefix(request) -> bytes:
    """A key prefix of the test's own, so tests sharing the etcd do not see each other."""
    return f"/test/{request.node.name}/".encode()


async def next_events(watch, count: int) -> list:
    """The next `count` events of a watch, skipping progress notifications."""
    events = []
    while len(events) < count:
        batch = await anext(watch)
        events.extend(batch.events)
    return events


async def wait_for_metric(etcd: LocalEtcd, name: str, want: float, within: float = 3.0) -> float:
    deadline = time.monotonic() + within
    while (value := etcd.metric(name)) != want and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return value


class Relay:
    """A TCP relay on 127.0.0.1 to a local port, whose connections can be cut at once."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _relay(self, client_reader, client_writer):
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_writer, server_writer]

        async def pipe(reader, writer):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer),
                             return_exceptions=True)

    def cut(self) -> None:
        """Stop accepting and drop every relayed connection."""
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()


def test_prefix_end():
    assert prefix_end(b"/registry/pods/") == b"/registry/pods0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"a\xff\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"
    assert prefix_end(b"") == b"\0"


def test_endpoints_are_parsed_and_checked():
    store = EtcdStore("http://127.0.0.1:1, http://[::1]:2,http://localhost")
    assert [e.target for e in store._endpoints] == ["127.0.0.1:1", "[::1]:2", "localhost:2379"]
    with pytest.raises(ValueError):
        EtcdStore("ftp://127.0.0.1:2379")
    with pytest.raises(ValueError):
        EtcdStore("")
    with pytest.raises(ValueError):
        EtcdStore("https://127.0.0.1:2379", "ca.crt", cert_file="client.crt")


@async_test
async def test_create_get_update_delete(etcd, prefix):
    key = prefix + b"a"
    async with etcd.store() as store:
        assert await store.get(key) is None
        created = await store.create(key, b"v1")
        kv = await store.get(key)
        assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == \
            (key, b"v1", created, created, 1, 0)

        with pytest.raises(KeyExistsError) as exists:
            await store.create(key, b"other")
        assert exists.value.current == kv

        updated = await store.update(key, b"v2", created)
        assert updated > created
        kv = await store.get(key)
        assert (kv.value, kv.mod_revision, kv.create_revision, kv.version) == \
            (b"v2", updated, created, 2)

        with pytest.raises(ConflictError) as conflict:
            await store.update(key, b"stale", created)
        assert conflict.value.current == kv and conflict.value.expected_mod_revision == created
        with pytest.raises(ConflictError) as conflict:
            await store.delete(key, expected_mod_revision=created)
        assert conflict.value.current == kv
        assert (await store.get(key)).value == b"v2"

        deleted = await store.delete(key, expected_mod_revision=updated)
        assert isinstance(deleted, DeleteResult)
        assert deleted.kv == kv and deleted.revision > updated
        assert await store.get(key) is None
        # The old state is still there at its revision.
        assert (await store.get(key, revision=updated)).value == b"v2"

        with pytest.raises(KeyNotFoundError):
            await store.delete(key)
        with pytest.raises(KeyNotFoundError) as missing:
            await store.update(key, b"v3", updated)
        assert isinstance(missing.value, ConflictError) and missing.value.current is None

        # Unconditional put and delete.
        put = await store.put(key, b"v4")
        deleted = await store.delete(key)
        assert deleted.kv.value == b"v4" and deleted.kv.mod_revision == put
        assert deleted.revision == put + 1


@async_test
async def test_range(etcd, prefix):
    async with etcd.store() as store:
        revisions = {}
        for name in ("a", "b", "c", "d", "e"):
            revisions[name] = await store.create(prefix + name.encode(), name.encode() * 3)
        await store.put(prefix[:-1], b"the prefix without its slash")   # outside the range
        await store.put(prefix[:-1] + b"0x", b"just past the range")     # == prefix_end
        before_update = await store.update(prefix + b"a", b"new", revisions["a"])

        everything = await store.range(prefix)
        assert [kv.key for kv in everything.kvs] == [
            prefix + n for n in (b"a", b"b", b"c", b"d", b"e")]
        assert everything.kvs[0].value == b"new"
        assert (everything.revision, everything.more, everything.count) == (before_update, False, 5)

        page = await store.range(prefix, limit=2)
        assert [kv.key for kv in page.kvs] == [prefix + b"a", prefix + b"b"]
        assert page.more and page.count == 5
        # The next page: from just after the last key to the end of the prefix, same revision.
        rest = await store.range(page.kvs[-1].key + b"\0", prefix_end(prefix),
                                 limit=2, revision=page.revision)
        assert [kv.key for kv in rest.kvs] == [prefix + b"c", prefix + b"d"]
        assert rest.more and rest.count == 3

        counted = await store.range(prefix, count_only=True)
        assert counted.kvs == [] and counted.count == 5
        keys = await store.range(prefix, keys_only=True)
        assert len(keys.kvs) == 5 and all(kv.value == b"" for kv in keys.kvs)
        assert keys.kvs[1].mod_revision == revisions["b"]

        older = await store.range(prefix, revision=revisions["c"])
        assert [kv.key for kv in older.kvs] == [prefix + n for n in (b"a", b"b", b"c")]
        assert older.kvs[0].value == b"aaa" and older.count == 3
        assert older.revision == before_update  # the header says the store's current revision

        with pytest.raises(FutureRevisionError):
            await store.range(prefix, revision=before_update + 1000)

        deleted, revision = await store.delete_range(prefix)
        assert deleted == 5 and revision == before_update + 1
        assert (await store.range(prefix)).count == 0
        assert await store.get(prefix[:-1]) is not None   # outside the prefix, still there


@async_test
async def test_compaction(etcd, prefix):
    key = prefix + b"k"
    async with etcd.store() as store:
        first = await store.put(key, b"1")
        second = await store.put(key, b"2")
        await store.compact(second, physical=True)
        with pytest.raises(CompactedError):
            await store.get(key, revision=first)
        assert (await store.get(key, revision=second)).value == b"2"
        with pytest.raises(CompactedError):
            await store.compact(first)


@async_test
async def test_watch_from_a_revision_delivers_history_in_order_with_prev_kv(etcd, prefix):
    a, b = prefix + b"a", prefix + b"b"
    async with etcd.store() as store:
        r1 = await store.create(a, b"a1")
        r2 = await store.create(b, b"b1")
        r3 = await store.update(a, b"a2", r1)
        r4 = (await store.delete(b)).revision
        await store.put(prefix[:-1] + b"0", b"outside the prefix")
        r5 = await store.put(a, b"a3")

        async with store.watch(prefix, r1) as watch:
            events = await next_events(watch, 5)
            assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
                (EventType.PUT, a, r1), (EventType.PUT, b, r2), (EventType.PUT, a, r3),
                (EventType.DELETE, b, r4), (EventType.PUT, a, r5)]
            assert [e.kv.value for e in events] == [b"a1", b"b1", b"a2", b"", b"a3"]
            assert events[0].prev_kv is None and events[1].prev_kv is None
            assert events[2].prev_kv.value == b"a1" and events[2].prev_kv.mod_revision == r1
            assert events[3].prev_kv.value == b"b1" and events[3].prev_kv.mod_revision == r2
            assert events[4].prev_kv.value == b"a2"
            assert watch.next_revision == r5 + 1

            # Then live changes, and progress notifications once it is quiet.
            r6 = (await store.delete(a, expected_mod_revision=r5)).revision
            (event,) = await next_events(watch, 1)
            assert (event.type, event.kv.key, event.kv.mod_revision) == (EventType.DELETE, a, r6)
            assert event.prev_kv.value == b"a3"
            batch = await anext(watch)
            while not batch.is_progress:
                batch = await anext(watch)
            assert batch.revision >= r6


@async_test
async def test_watch_from_now_sees_only_later_changes(etcd, prefix):
    async with etcd.store() as store:
        await store.put(prefix + b"old", b"x")
        async with store.watch(prefix, prev_kv=False, progress_notify=False) as watch:
            later = asyncio.create_task(store.put(prefix + b"new", b"y"))
            (event,) = await next_events(watch, 1)
            assert event.kv.key == prefix + b"new" and event.kv.mod_revision == await later
            assert event.prev_kv is None

            # No periodic progress notifications were asked for, but one on request.
            elsewhere = await store.put(prefix[:-1] + b"-elsewhere", b"z")
            await watch.request_progress()
            batch = await anext(watch)
            assert batch.is_progress and batch.revision == elsewhere
            assert watch.next_revision == elsewhere + 1


@async_test
async def test_closing_the_store_ends_its_watches(etcd, prefix):
    store = etcd.store()
    async with store.watch(prefix) as watch:
        reading = asyncio.create_task(anext(watch))
        await asyncio.sleep(0.1)
        await store.close()
        with pytest.raises(StoreUnavailableError):
            await reading
        with pytest.raises(StopAsyncIteration):
            await anext(watch)


@async_test
async def test_watch_of_a_compacted_revision_raises(etcd, prefix):
    async with etcd.store() as store:
        first = await store.put(prefix + b"k", b"1")
        second = await store.put(prefix + b"k", b"2")
        await store.compact(second)
        with pytest.raises(CompactedError) as compacted:
            async with store.watch(prefix, first) as watch:
                await anext(watch)
        assert compacted.value.compact_revision == second
        # From the compaction revision on, history is there.
        async with store.watch(prefix, second) as watch:
            (event,) = await next_events(watch, 1)
            assert event.kv.mod_revision == second


@async_test
async def test_stopping_a_watch_cancels_it_on_the_server(etcd, prefix):
    watchers = "etcd_debugging_mvcc_watcher_total"
    async with etcd.store() as store:
        assert await wait_for_metric(etcd, watchers, 0) == 0
        async with store.watch(prefix) as watch:
            await store.put(prefix + b"k", b"v")
            await next_events(watch, 1)
            assert etcd.metric(watchers) == 1
        # aclose() waits for the server's confirmation.
        assert etcd.metric(watchers) == 0

        # A consumer that just stops iterating and drops the watch.
        revision = await store.put(prefix + b"k", b"w")
        async for batch in store.watch(prefix, revision):
            break
        assert await wait_for_metric(etcd, watchers, 0) == 0


@async_test
async def test_concurrent_creates_of_one_key_have_one_winner(etcd, prefix):
    key = prefix + b"contested"
    async with etcd.store() as store:
        results = await asyncio.gather(
            *(store.create(key, b"writer-%d" % i) for i in range(20)), return_exceptions=True)
        winners = [(i, r) for i, r in enumerate(results) if isinstance(r, int)]
        assert len(winners) == 1, results
        assert all(isinstance(r, KeyExistsError) for r in results if not isinstance(r, int))
        (i, revision), = winners
        kv = await store.get(key)
        assert kv.value == b"writer-%d" % i and kv.mod_revision == revision


@async_test
async def test_leases(etcd, prefix):
    key = prefix + b"leased"
    async with etcd.store() as store:
        lease = await store.lease_grant(30)
        assert lease.id > 0 and lease.ttl == 30
        await store.create(key, b"v", lease=lease.id)
        assert (await store.get(key)).lease == lease.id
        assert 0 < await store.lease_keep_alive(lease.id) <= 30
        await store.lease_revoke(lease.id)
        assert await store.get(key) is None
        with pytest.raises(LeaseNotFoundError):
            await store.lease_keep_alive(lease.id)
        with pytest.raises(LeaseNotFoundError):
            await store.lease_revoke(lease.id)


@async_test
async def test_oversized_value_is_refused(etcd, prefix):
    async with etcd.store() as store:
        with pytest.raises(RequestTooLargeError):
            await store.put(prefix + b"big", b"x" * (2 << 20))  # etcd's default limit: 1.5 MiB


@async_test
async def test_status(etcd):
    async with etcd.store() as store:
        status = await store.connect()
        assert status.version.startswith("3.") and status.leader == status.member_id
        assert status.revision >= 1


@async_test
async def test_clients_without_a_trusted_certificate_are_refused(etcd, tmp_path):
    no_cert = EtcdStore(etcd.endpoint, etcd.pki.ca_file)
    other_ca = TestPKI(tmp_path / "other")
    wrong_ca = EtcdStore(etcd.endpoint, etcd.pki.ca_file, other_ca.client_cert, other_ca.client_key)
    for store in (no_cert, wrong_ca):
        async with store:
            with pytest.raises(StoreUnavailableError):
                await store.get(b"/anything")
            with pytest.raises(StoreUnavailableError):
                await store.put(b"/anything", b"x")
    # Nor does a client accept a server its CA did not sign.
    async with EtcdStore(etcd.endpoint, other_ca.ca_file, etcd.pki.client_cert,
                         etcd.pki.client_key) as store:
        with pytest.raises(StoreUnavailableError):
            await store.get(b"/anything")
    async with etcd.store() as store:
        assert await store.get(b"/anything") is None


@async_test
async def test_a_dead_endpoint_is_skipped(etcd, prefix):
    dead = f"https://127.0.0.1:{free_port()}"
    async with EtcdStore(f"{dead},{etcd.endpoint}", etcd.pki.ca_file, etcd.pki.client_cert,
                         etcd.pki.client_key) as store:
        # A write to the dead endpoint never left this process, so it moves on too.
        revision = await store.create(prefix + b"k", b"v")
        assert (await store.get(prefix + b"k")).mod_revision == revision
        async with store.watch(prefix, revision) as watch:
            (event,) = await next_events(watch, 1)
            assert event.kv.mod_revision == revision


@async_test
async def test_a_broken_watch_resumes_on_the_next_endpoint(etcd, prefix):
    relay = await Relay(etcd.client_port).start()
    key = prefix + b"k"
    async with EtcdStore(f"https://127.0.0.1:{relay.port},{etcd.endpoint}", etcd.pki.ca_file,
                         etcd.pki.client_cert, etcd.pki.client_key) as store:
        first = await store.put(key, b"1")
        async with store.watch(prefix, first) as watch:
            (event,) = await next_events(watch, 1)
            assert event.kv.mod_revision == first

            relay.cut()   # the watch stream and the relay endpoint are gone
            async with etcd.store() as writer:
                second = await writer.put(key, b"2")
                third = await writer.put(key, b"3")
            # Nothing lost, nothing repeated.
            events = await next_events(watch, 2)
            assert [(e.kv.mod_revision, e.kv.value, e.prev_kv.value) for e in events] == [
                (second, b"2", b"1"), (third, b"3", b"2")]


@async_test
async def test_unavailable_while_etcd_is_down_and_back_after(prefix):
    async def eventually(operation, within=10.0):
        deadline = time.monotonic() + within
        while True:
            try:
                return await operation()
            except StoreUnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    with LocalEtcd() as etcd:
        async with etcd.store(timeout=3) as store:
            revision = await store.put(prefix + b"k", b"v")
            watch = store.watch(prefix, revision + 1)
            reading = asyncio.create_task(anext(watch))
            await asyncio.sleep(0.2)   # the watch is open on the server

            etcd.stop()
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                await store.get(prefix + b"k")
            with pytest.raises(StoreUnavailableError):
                await store.create(prefix + b"other", b"v")
            with pytest.raises(StoreUnavailableError):
                await reading
            assert time.monotonic() - started < 3, "failures are reported at once"

            etcd.start()
            kv = await eventually(lambda: store.get(prefix + b"k"))
            assert kv.mod_revision == revision

    with pytest.raises(StoreUnavailableError) as never_up:
        async with EtcdStore(f"https://127.0.0.1:{free_port()}", connect_timeout=1) as store:
            await store.connect()
    assert "did not answer" in str(never_up.value)
