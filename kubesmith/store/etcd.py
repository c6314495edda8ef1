"""The etcd v3 client: one long-lived gRPC channel per endpoint, asyncio throughout.

Requests go to one endpoint at a time (the active one) and move on to the next
when it becomes unreachable. Reads are retried on the next endpoint; writes only
when gRPC says the request never left this process, since a write that reached a
member may have been applied.
"""
from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import grpc
import grpc.aio

from kubesmith import __version__
from kubesmith.store.errors import (
    CompactedError,
    ConflictError,
    FutureRevisionError,
    KeyExistsError,
    KeyNotFoundError,
    LeaseNotFoundError,
    RequestTooLargeError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from kubesmith.store.model import (
    DeleteResult,
    Event,
    EventType,
    KeyValue,
    Lease,
    RangeResult,
    Status,
    WatchBatch,
    prefix_end,
)
from kubesmith.store.proto import kv_pb2
from kubesmith.store.proto import rpc_pb2 as pb
from kubesmith.store.proto import rpc_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_PORT = 2379
DEFAULT_TIMEOUT = 15.0          # seconds for one request to one endpoint
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds connect() waits for a first answer

_CHANNEL_OPTIONS = (
    # Large lists and watch batches can pass gRPC's 4 MiB default; etcd bounds requests itself.
    ("grpc.max_receive_message_length", 2**31 - 1),
    # Detect dead connections under long-lived watches. etcd refuses pings more often than
    # every 5 s and pings while no call is open, hence the interval and no idle pings.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC's default backoff grows to two minutes; a restarted member should be used again soon.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 3_000),
    ("grpc.primary_user_agent", f"kubesmith/{__version__}"),
)

# Watches ask the member to end the stream when it loses its leader, so that a
# partitioned member cannot keep a watch silently stale (resumed elsewhere instead).
_REQUIRE_LEADER = (("hasleader", "true"),)

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_TRANSIENT_FAILURE = grpc.ChannelConnectivity.TRANSIENT_FAILURE

# What gRPC reports when it could not connect at all: the request was never sent.
_NOT_SENT = "failed to connect to all addresses"

_RANGE = operator.attrgetter("kv.Range")
_PUT = operator.attrgetter("kv.Put")
_DELETE = operator.attrgetter("kv.DeleteRange")
_TXN = operator.attrgetter("kv.Txn")
_COMPACT = operator.attrgetter("kv.Compact")
_LEASE_GRANT = operator.attrgetter("lease.LeaseGrant")
_LEASE_REVOKE = operator.attrgetter("lease.LeaseRevoke")
_STATUS = operator.attrgetter("maintenance.Status")

_EQUAL = pb.Compare.EQUAL
_CREATE = pb.Compare.CREATE
_MOD = pb.Compare.MOD
_EVENT_TYPES = (EventType.PUT, EventType.DELETE)


def _transport_failed(err: grpc.aio.AioRpcError) -> bool:
    """The connection failed or dropped (not an answer from etcd)."""
    code = err.code()
    # A member shutting down resets open streams, which gRPC reports as INTERNAL.
    return code is _UNAVAILABLE or (code is grpc.StatusCode.INTERNAL
                                    and "Stream removed" in (err.details() or ""))


def _kv(m: kv_pb2.KeyValue) -> KeyValue:
    return KeyValue(m.key, m.value, m.create_revision, m.mod_revision, m.version, m.lease)


def _first_kv(kvs) -> KeyValue | None:
    return _kv(kvs[0]) if kvs else None


class _Endpoint:
    __slots__ = ("url", "target", "secure", "channel", "kv", "watch", "lease", "maintenance")

    def __init__(self, url: str):
        parts = urlsplit(url if "://" in url else f"https://{url}")
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"etcd endpoint {url!r}: expected https://HOST[:PORT]")
        host = parts.hostname
        host = f"[{host}]" if ":" in host else host
        self.url = url
        self.target = f"{host}:{parts.port or DEFAULT_PORT}"
        self.secure = parts.scheme == "https"
        self.channel: grpc.aio.Channel | None = None

    def open(self, credentials: grpc.ChannelCredentials | None) -> None:
        if self.secure:
            channel = grpc.aio.secure_channel(self.target, credentials, _CHANNEL_OPTIONS)
        else:
            channel = grpc.aio.insecure_channel(self.target, _CHANNEL_OPTIONS)
        self.channel = channel
        self.kv = pb_grpc.KVStub(channel)
        self.watch = pb_grpc.WatchStub(channel)
        self.lease = pb_grpc.LeaseStub(channel)
        self.maintenance = pb_grpc.MaintenanceStub(channel)

    def failing(self) -> bool:
        return self.channel is not None and self.channel.get_state() is _TRANSIENT_FAILURE


def _translate(err: grpc.aio.AioRpcError, endpoint: _Endpoint) -> StoreError:
    code, details = err.code(), err.details() or ""
    if _transport_failed(err) or code is grpc.StatusCode.CANCELLED:
        hint = ""
        if any(sign in details for sign in ("TSI_", "SSL", "andshake", "ertificate")):
            # gRPC's TLS errors are cryptic; say what usually causes them.
            hint = " (TLS handshake failed: does the CA sign the member's certificate, " \
                   "and does the member accept this client's certificate?)"
        return StoreUnavailableError(f"etcd at {endpoint.url} unavailable: {details}{hint}")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return StoreTimeoutError(f"etcd at {endpoint.url} did not answer in time: {details}")
    if code is grpc.StatusCode.OUT_OF_RANGE:
        if "compacted" in details:
            return CompactedError(0, details)
        if "future" in details:
            return FutureRevisionError(details)
    if code is grpc.StatusCode.NOT_FOUND and "lease" in details:
        return LeaseNotFoundError(details)
    if "too large" in details or (code is grpc.StatusCode.RESOURCE_EXHAUSTED
                                   and "space" not in details):
        return RequestTooLargeError(details)
    return StoreError(f"etcd at {endpoint.url}: {code.name}: {details}")


class EtcdStore:
    """Async client of an etcd v3 cluster.

    endpoints: "https://host:2379,https://other:2379" or a list of URLs; http:// is
    plaintext and meant for tests. ca_file verifies the members' certificates;
    cert_file and key_file authenticate this client. Keys and values are bytes.
    """

    def __init__(self, endpoints: str | Sequence[str], ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT):
        urls = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
        self._endpoints = [_Endpoint(u.strip()) for u in urls if u.strip()]
        if not self._endpoints:
            raise ValueError("no etcd endpoint given")
        if (cert_file is None) != (key_file is None):
            raise ValueError("cert_file and key_file go together")
        self._credentials = None
        if any(e.secure for e in self._endpoints):
            # Read once, up front: a missing or unreadable file fails here, not per request.
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(ca_file),
                private_key=_read(key_file),
                certificate_chain=_read(cert_file),
            )
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._active = 0
        self._closed = False

    @property
    def endpoints(self) -> list[str]:
        return [e.url for e in self._endpoints]

    async def __aenter__(self) -> EtcdStore:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every channel; open watches and calls end with StoreUnavailableError."""
        self._closed = True
        for endpoint in self._endpoints:
            channel, endpoint.channel = endpoint.channel, None
            if channel is not None:
                await channel.close()

    # --- endpoint selection -------------------------------------------------

    def _pick(self) -> _Endpoint:
        """The active endpoint, or the next one whose connection is not failing."""
        if self._closed:
            raise StoreError("the store is closed")
        endpoints = self._endpoints
        endpoint = endpoints[self._active]
        if endpoint.channel is None:
            endpoint.open(self._credentials)
        elif len(endpoints) > 1 and endpoint.failing():
            for step in range(1, len(endpoints)):
                index = (self._active + step) % len(endpoints)
                candidate = endpoints[index]
                if candidate.channel is None:
                    candidate.open(self._credentials)
                if not candidate.failing():
                    log.info("etcd: switching from %s to %s", endpoint.url, candidate.url)
                    self._active = index
                    return candidate
        return endpoint

    def _failed(self, endpoint: _Endpoint) -> None:
        # Concurrent failures of the same endpoint move on only once.
        if len(self._endpoints) > 1 and self._endpoints[self._active] is endpoint:
            self._active = (self._active + 1) % len(self._endpoints)
            log.info("etcd: %s unavailable, trying %s next",
                     endpoint.url, self._endpoints[self._active].url)

    async def _call(self, method, request, idempotent: bool, timeout: float | None = None):
        tries = len(self._endpoints) + (1 if idempotent else 0)
        for attempt in range(tries):
            endpoint = self._pick()
            try:
                return await method(endpoint)(request, timeout=timeout or self._timeout)
            except asyncio.CancelledError:
                if self._closed_under_us():
                    raise StoreUnavailableError("the store was closed during the request") from None
                raise
            except grpc.aio.AioRpcError as err:
                if not _transport_failed(err):
                    raise _translate(err, endpoint) from None
                self._failed(endpoint)
                retry = idempotent or _NOT_SENT in (err.details() or "")
                if not retry or attempt + 1 == tries:
                    raise self._unavailable(err, endpoint) from None

    def _closed_under_us(self) -> bool:
        """A CancelledError came from close() cancelling the call, not from our task."""
        if not self._closed:
            return False
        task = asyncio.current_task()
        return task is None or not getattr(task, "cancelling", lambda: 0)()

    def _unavailable(self, err: grpc.aio.AioRpcError, endpoint: _Endpoint) -> StoreError:
        if len(self._endpoints) == 1:
            return _translate(err, endpoint)
        return StoreUnavailableError(
            f"no etcd endpoint answered ({', '.join(self.endpoints)}); "
            f"the last one said: {_translate(err, endpoint)}")

    async def connect(self, timeout: float | None = None) -> Status:
        """Wait until some endpoint answers (etcd may still be starting); its status.

        Raises StoreUnavailableError naming the last connection error.
        """
        timeout = timeout or self._connect_timeout
        share = max(timeout / len(self._endpoints), 1.0)
        last: Exception | None = None
        for _ in range(len(self._endpoints)):
            endpoint = self._pick()
            try:
                reply = await endpoint.maintenance.Status(
                    pb.StatusRequest(), timeout=share, wait_for_ready=True)
                return _status(reply)
            except grpc.aio.AioRpcError as err:
                last = err
                if err.code() not in (_UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise _translate(err, endpoint) from None
                self._failed(endpoint)
        # A failed wait only says "deadline exceeded"; a fail-fast call says why.
        try:
            return await self.status()
        except StoreError as err:
            raise StoreUnavailableError(
                f"etcd did not answer within {timeout:g}s: {err}") from last

    # --- KV -----------------------------------------------------------------

    async def get(self, key: bytes, *, revision: int = 0) -> KeyValue | None:
        """The key at the newest (or the given) revision, None if it does not exist."""
        reply = await self._call(_RANGE, pb.RangeRequest(key=key, revision=revision), True)
        return _first_kv(reply.kvs)

    async def range(self, key: bytes, range_end: bytes | None = None, *, limit: int = 0,
                    revision: int = 0, keys_only: bool = False, count_only: bool = False,
                    serializable: bool = False) -> RangeResult:
        """Keys in [key, range_end) in key order; every key starting with `key` if no range_end.

        limit 0 is no limit; revision 0 is the newest. `count` is the number of keys in
        the whole range whatever the limit; count_only returns no kvs.
        """
        if range_end is None:
            range_end = prefix_end(key)
        request = pb.RangeRequest(key=key or b"\0", range_end=range_end, limit=limit,
                                  revision=revision, keys_only=keys_only,
                                  count_only=count_only, serializable=serializable)
        reply = await self._call(_RANGE, request, True)
        return RangeResult([_kv(m) for m in reply.kvs], reply.header.revision,
                           reply.more, reply.count)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write the key unconditionally; the revision of the write."""
        reply = await self._call(_PUT, pb.PutRequest(key=key, value=value, lease=lease), False)
        return reply.header.revision

    async def create(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write the key only if it does not exist; its revision (create = mod revision).

        Raises KeyExistsError (with the stored kv) if it exists.
        """
        request = pb.TxnRequest(
            compare=(pb.Compare(key=key, target=_CREATE, result=_EQUAL, create_revision=0),),
            success=(pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease)),),
            failure=(pb.RequestOp(request_range=pb.RangeRequest(key=key)),),
        )
        reply = await self._call(_TXN, request, False)
        if not reply.succeeded:
            raise KeyExistsError(key, _first_kv(reply.responses[0].response_range.kvs))
        return reply.header.revision

    async def update(self, key: bytes, value: bytes, expected_mod_revision: int, *,
                     lease: int = 0) -> int:
        """Write the key only if its mod_revision is still the expected one; the new one.

        Raises ConflictError carrying the stored kv, KeyNotFoundError if it is gone.
        """
        request = pb.TxnRequest(
            compare=(pb.Compare(key=key, target=_MOD, result=_EQUAL,
                                mod_revision=expected_mod_revision),),
            success=(pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease)),),
            failure=(pb.RequestOp(request_range=pb.RangeRequest(key=key)),),
        )
        reply = await self._call(_TXN, request, False)
        if not reply.succeeded:
            raise _conflict(key, expected_mod_revision, reply)
        return reply.header.revision

    async def delete(self, key: bytes, expected_mod_revision: int | None = None) -> DeleteResult:
        """Delete the key (only at the expected mod_revision, if given).

        Returns the kv as it was and the delete's revision. Raises KeyNotFoundError if
        there is no such key, ConflictError if its mod_revision differs.
        """
        delete = pb.DeleteRangeRequest(key=key, prev_kv=True)
        if expected_mod_revision is None:
            reply = await self._call(_DELETE, delete, False)
            if not reply.prev_kvs:
                raise KeyNotFoundError(key)
            return DeleteResult(_kv(reply.prev_kvs[0]), reply.header.revision)
        request = pb.TxnRequest(
            compare=(pb.Compare(key=key, target=_MOD, result=_EQUAL,
                                mod_revision=expected_mod_revision),),
            success=(pb.RequestOp(request_delete_range=delete),),
            failure=(pb.RequestOp(request_range=pb.RangeRequest(key=key)),),
        )
        reply = await self._call(_TXN, request, False)
        if not reply.succeeded:
            raise _conflict(key, expected_mod_revision, reply)
        prev_kvs = reply.responses[0].response_delete_range.prev_kvs
        if not prev_kvs:  # only when expected_mod_revision was 0 and there was no key
            raise KeyNotFoundError(key, expected_mod_revision)
        return DeleteResult(_kv(prev_kvs[0]), reply.header.revision)

    async def delete_range(self, key: bytes, range_end: bytes | None = None) -> tuple[int, int]:
        """Delete [key, range_end), or every key starting with `key`; (deleted, revision)."""
        if range_end is None:
            range_end = prefix_end(key)
        request = pb.DeleteRangeRequest(key=key or b"\0", range_end=range_end)
        reply = await self._call(_DELETE, request, False)
        return reply.deleted, reply.header.revision

    async def txn(self, compare, success, failure=()) -> pb.TxnResponse:
        """One etcd transaction of etcd's own Compare and RequestOp messages; the raw reply."""
        request = pb.TxnRequest(compare=compare, success=success, failure=failure)
        return await self._call(_TXN, request, False)

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        """Drop history older than revision (the newest version of each key stays).

        physical waits until the backend has released the space. Raises
        CompactedError if the store was already compacted at or past revision.
        """
        request = pb.CompactionRequest(revision=revision, physical=physical)
        await self._call(_COMPACT, request, False)

    # --- watch --------------------------------------------------------------

    def watch(self, key: bytes, start_revision: int = 0, *, range_end: bytes | None = None,
              prev_kv: bool = True, progress_notify: bool = True) -> Watch:
        """Changes to every key starting with `key` (or in [key, range_end)).

        start_revision is inclusive (0: from now on), so a Kubernetes watch from
        resourceVersion N starts at N + 1. Use as `async with store.watch(...) as w:
        async for batch in w:`; leaving the block (or dropping the iterator) cancels
        the watch on the server. Raises CompactedError when start_revision (or, for a
        watch that fell behind, its position) has been compacted. range_end=b"" watches
        just the one key.
        """
        return Watch(self, key or b"\0", prefix_end(key) if range_end is None else range_end,
                     start_revision, prev_kv, progress_notify)

    # --- leases and status --------------------------------------------------

    async def lease_grant(self, ttl: int, lease_id: int = 0) -> Lease:
        """A lease of ttl seconds; keys written with it go when it expires or is revoked."""
        reply = await self._call(_LEASE_GRANT, pb.LeaseGrantRequest(TTL=ttl, ID=lease_id), False)
        if reply.error:
            raise StoreError(f"lease grant failed: {reply.error}")
        return Lease(reply.ID, reply.TTL)

    async def lease_revoke(self, lease_id: int) -> int:
        """Revoke the lease, deleting its keys; the revision of the revoke."""
        reply = await self._call(_LEASE_REVOKE, pb.LeaseRevokeRequest(ID=lease_id), False)
        return reply.header.revision

    async def lease_keep_alive(self, lease_id: int) -> int:
        """Renew the lease once; its new TTL. Raises LeaseNotFoundError if it expired."""
        endpoint = self._pick()
        call = endpoint.lease.LeaseKeepAlive(timeout=self._timeout)
        try:
            await call.write(pb.LeaseKeepAliveRequest(ID=lease_id))
            reply = await call.read()
        except grpc.aio.AioRpcError as err:
            if _transport_failed(err):
                self._failed(endpoint)
            raise _translate(err, endpoint) from None
        finally:
            call.cancel()
        if reply is grpc.aio.EOF:
            raise StoreUnavailableError(f"etcd at {endpoint.url} closed the keep-alive stream")
        if reply.TTL <= 0:
            raise LeaseNotFoundError(f"lease {lease_id:x} has expired or does not exist")
        return reply.TTL

    async def status(self) -> Status:
        """The active member's status (version, leader, revision, database size)."""
        return _status(await self._call(_STATUS, pb.StatusRequest(), True))


class Watch:
    """Async iterator of WatchBatch over one server-side watch; see EtcdStore.watch.

    If the stream breaks (member down, lost its leader), the watch resumes on the
    next endpoint just after the last delivered revision, so no event is lost or
    repeated; StoreUnavailableError once no endpoint takes it.
    """

    def __init__(self, store: EtcdStore, key: bytes, range_end: bytes, start_revision: int,
                 prev_kv: bool, progress_notify: bool):
        self._store = store
        self._key = key
        self._range_end = range_end
        self._prev_kv = prev_kv
        self._progress_notify = progress_notify
        self._next_revision = start_revision   # where a (re)opened stream starts
        self._call: grpc.aio.StreamStreamCall | None = None
        self._endpoint: _Endpoint | None = None
        self._watch_id: int | None = None
        self._breaks = 0        # stream breaks in a row, each soon after its stream opened
        self._opened_at = 0.0
        self._closed = False

    @property
    def next_revision(self) -> int:
        """The revision the next delivered event will have at least."""
        return self._next_revision

    def __aiter__(self) -> Watch:
        return self

    async def __aenter__(self) -> Watch:
        # Create the watch on the server now: a watch "from now on" then covers every
        # change made inside the block.
        if self._call is None and not self._closed:
            await self._open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def __anext__(self) -> WatchBatch:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._call is None:
                await self._open()
            try:
                reply = await self._call.read()
            except asyncio.CancelledError:
                if self._store._closed_under_us():
                    self._closed = True
                    self._abandon()
                    raise StoreUnavailableError("the store was closed under the watch") from None
                raise
            except grpc.aio.AioRpcError as err:
                await self._broken(err)
                continue
            if reply is grpc.aio.EOF:
                await self._broken(None)
                continue
            batch = self._batch(reply)
            if batch is not None:
                return batch

    def _batch(self, reply: pb.WatchResponse) -> WatchBatch | None:
        if reply.compact_revision:
            self._abandon()
            raise CompactedError(reply.compact_revision)
        if reply.canceled:
            self._abandon()
            reason = reply.cancel_reason or "canceled by the server"
            if "leader" in reason:
                raise StoreUnavailableError(f"watch on {self._key!r}: {reason}")
            raise StoreError(f"watch on {self._key!r}: {reason}")
        if reply.created:
            return None
        events = [Event(_EVENT_TYPES[e.type], _kv(e.kv),
                        _kv(e.prev_kv) if e.HasField("prev_kv") else None)
                  for e in reply.events]
        if events:
            revision = events[-1].kv.mod_revision
        else:
            # Progress notification: the header revision is how far the watch has got.
            revision = reply.header.revision
            if revision < self._next_revision - 1:
                return None
        self._next_revision = revision + 1
        return WatchBatch(revision, events)

    async def _open(self) -> None:
        store = self._store
        tries = len(store._endpoints)
        for attempt in range(tries):
            endpoint = store._pick()
            call = endpoint.watch.Watch(metadata=_REQUIRE_LEADER)
            create = pb.WatchCreateRequest(
                key=self._key, range_end=self._range_end, start_revision=self._next_revision,
                progress_notify=self._progress_notify, prev_kv=self._prev_kv)
            try:
                await call.write(pb.WatchRequest(create_request=create))
                reply = await asyncio.wait_for(call.read(), store._timeout)
            except (grpc.aio.AioRpcError, asyncio.TimeoutError) as err:
                call.cancel()
                if isinstance(err, grpc.aio.AioRpcError) and not _transport_failed(err):
                    raise _translate(err, endpoint) from None
                store._failed(endpoint)
                if attempt + 1 == tries:
                    if isinstance(err, asyncio.TimeoutError):
                        raise StoreTimeoutError(
                            f"etcd at {endpoint.url} did not create the watch in time") from None
                    raise store._unavailable(err, endpoint) from None
                continue
            if reply is grpc.aio.EOF:
                call.cancel()
                raise StoreUnavailableError(f"etcd at {endpoint.url} closed the watch stream")
            self._call, self._endpoint = call, endpoint
            self._watch_id = reply.watch_id
            self._opened_at = time.monotonic()
            if reply.canceled or reply.compact_revision:
                self._batch(reply)  # raises
            if not reply.created:
                self._abandon()
                raise StoreError(f"etcd at {endpoint.url} answered a watch create with {reply}")
            if self._next_revision <= 0:
                # "From now on": pin it, so a resumed stream misses nothing in between.
                self._next_revision = reply.header.revision + 1
            return

    async def _broken(self, err: grpc.aio.AioRpcError | None) -> None:
        """The stream ended under us: reopen it elsewhere, or raise why not."""
        endpoint = self._endpoint
        self._abandon()
        if err is not None and not _transport_failed(err):
            self._closed = True
            raise _translate(err, endpoint) from None
        if self._store._closed:
            self._closed = True
            raise StoreUnavailableError("the store was closed under the watch")
        # Streams that lived a while broke for unrelated reasons; only quick breaks add up.
        self._breaks = self._breaks + 1 if time.monotonic() - self._opened_at < 10 else 1
        if self._breaks > len(self._store._endpoints):
            # Streams that open and break again at once: give up rather than spin.
            self._closed = True
            raise StoreUnavailableError(
                f"etcd watch streams keep breaking (last on {endpoint.url})")
        log.warning("etcd: watch stream on %s broke (%s); resuming at revision %d",
                    endpoint.url, err.details() if err else "closed", self._next_revision)
        self._store._failed(endpoint)

    def _abandon(self) -> None:
        call, self._call, self._watch_id = self._call, None, None
        if call is not None:
            call.cancel()

    async def request_progress(self) -> None:
        """Ask for a progress notification (a batch without events) as soon as possible.

        It tells how far the watch has got even while nothing changes, e.g. to serve a
        consistent read from a cache fed by this watch.
        """
        if self._closed:
            return
        if self._call is None:
            await self._open()
        try:
            await self._call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            # The stream is breaking; reading from the watch resumes or reports it.
            pass

    async def aclose(self) -> None:
        """Cancel the watch on the server and end the stream."""
        if self._closed:
            return
        self._closed = True
        call, watch_id = self._call, self._watch_id
        if call is None or call.done():
            self._abandon()
            return
        try:
            # Ask for the cancel and wait (briefly) for the server's confirmation, so
            # the watcher is gone on the server once this returns.
            await asyncio.wait_for(_cancel(call, watch_id), 1.0)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError, asyncio.InvalidStateError):
            pass
        finally:
            self._abandon()

    def __del__(self) -> None:
        # Dropped without aclose() (a consumer that broke out of `async for`): end the
        # stream, which makes etcd drop its watcher.
        call = getattr(self, "_call", None)
        if call is not None:
            try:
                call.cancel()
            except Exception:  # the event loop may already be gone
                pass


async def _cancel(call: grpc.aio.StreamStreamCall, watch_id: int | None) -> None:
    """Cancel the stream's watch and read up to the server's confirmation."""
    await call.write(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch_id)))
    await call.done_writing()
    while True:
        reply = await call.read()
        if reply is grpc.aio.EOF or (reply.canceled and reply.watch_id == watch_id):
            return


def _conflict(key: bytes, expected: int, reply: pb.TxnResponse) -> ConflictError:
    current = _first_kv(reply.responses[0].response_range.kvs)
    if current is None:
        return KeyNotFoundError(key, expected)
    return ConflictError(key, expected, current)


def _status(reply: pb.StatusResponse) -> Status:
    return Status(reply.version, reply.dbSize, reply.leader, reply.header.member_id,
                  reply.raftIndex, reply.raftTerm, reply.header.revision)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()
