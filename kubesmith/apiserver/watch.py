"""WATCH over HTTP: one JSON event per line, streamed with chunked encoding.

Where a watch starts (upstream's semantics):
  * no resourceVersion: the current state (consistent with etcd) as ADDED events, then
    changes; resourceVersion=0: the same from the cache as it is;
  * resourceVersion=N: changes after N. Recent ones are replayed from the watch cache's
    window; older ones come from etcd, and once etcd has compacted past N the watch
    ends with an ERROR event carrying a 410 Expired Status;
  * sendInitialEvents=true: the state as ADDED events, then a BOOKMARK annotated
    k8s.io/initial-events-end, then changes.
Selectors apply to each event: an object leaving the selection is sent as DELETED, one
entering it as ADDED. With allowWatchBookmarks, BOOKMARK events tell the client how far
it is (every minute, and shortly before the watch times out).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from kubesmith.apiserver import errors, negotiation, tables
from kubesmith.apiserver.storage import to_type
from kubesmith.apiserver.watchcache import (
    ADDED,
    DELETED,
    MODIFIED,
    CacheEvent,
    TooOld,
    decode_event,
)
from kubesmith.store import CompactedError, StoreError, prefix_end

if TYPE_CHECKING:
    from kubesmith.apiserver.context import Ctx
    from kubesmith.apiserver.rest import Target
    from kubesmith.apiserver.server import APIServer

log = logging.getLogger(__name__)

Obj = dict[str, Any]

BOOKMARK_INTERVAL = 60.0
LIVENESS_CHECK = 5.0
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
WRITE_BATCH = 1 << 20    # bytes of events sent in one write at most (a backlog)


class _Expired(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


async def _wait(wake: asyncio.Event, timeout: float) -> None:
    """Until `wake` is set or `timeout` passes. A timer instead of asyncio.wait_for, which
    makes a task per call: this runs for every watcher on every event."""
    timer = asyncio.get_running_loop().call_later(max(timeout, 0.0), wake.set)
    try:
        await wake.wait()
    finally:
        timer.cancel()


class _CacheSource:
    def __init__(self, watcher):
        self.watcher = watcher

    async def next(self, timeout: float) -> list[CacheEvent] | None:
        watcher = self.watcher
        if not watcher.pending and not watcher.terminated:
            watcher.wake.clear()
            await _wait(watcher.wake, timeout)
        if watcher.pending:
            events = list(watcher.pending)
            watcher.pending.clear()
            return events
        return None if watcher.terminated else []

    @property
    def safe_revision(self) -> int:
        return self.watcher.safe_revision

    def close(self) -> None:
        self.watcher.close()


class _EtcdSource:
    """A watch straight on etcd, for a start before the watch cache's window."""

    def __init__(self, storage, prefix: bytes, start: int):
        self.storage = storage
        self.pending: deque[CacheEvent] = deque()
        self.wake = asyncio.Event()
        self.revision = start - 1
        self.error: Exception | None = None
        self.done = False
        self._task = asyncio.get_running_loop().create_task(self._run(prefix, start))

    async def _run(self, prefix: bytes, start: int) -> None:
        try:
            async with self.storage.store.watch(prefix, start, range_end=prefix_end(prefix)) as w:
                async for batch in w:
                    for store_event in batch.events:
                        event = decode_event(self.storage, store_event)
                        if event is not None:
                            self.pending.append(event)
                    self.revision = max(self.revision, batch.revision)
                    self.wake.set()
        except asyncio.CancelledError:
            raise
        except CompactedError as exc:
            self.error = exc
        except StoreError as exc:
            log.warning("watch on %s ended: %s", self.storage.name, exc)
        finally:
            self.done = True
            self.wake.set()

    async def next(self, timeout: float) -> list[CacheEvent] | None:
        if not self.pending and not self.done:
            self.wake.clear()
            await _wait(self.wake, timeout)
        if self.pending:
            events = list(self.pending)
            self.pending.clear()
            return events
        if self.error is not None:
            raise _Expired("The resourceVersion for the provided watch is too old.")
        return None if self.done else []

    @property
    def safe_revision(self) -> int:
        return self.revision if not self.pending else self.pending[0].rv - 1

    def close(self) -> None:
        self._task.cancel()


def _truthy(value: str) -> bool:
    return value in ("1", "true", "True")


def _timeout(srv: "APIServer", ctx: "Ctx") -> float:
    text = ctx.param("timeoutSeconds")
    if text:
        try:
            value = int(text)
        except ValueError:
            raise errors.bad_request(f'timeoutSeconds: Invalid value: "{text}"') from None
        if value > 0:
            return float(value)
    low = srv.options.min_request_timeout
    return float(random.uniform(low, 2 * low)) if low > 0 else 1800.0


async def serve(srv: "APIServer", ctx: "Ctx", target: "Target", name: str
                ) -> web.StreamResponse:
    from kubesmith.apiserver import rest
    rt, storage = target.rt, target.storage
    sel = rest.ListSelectors(rt, ctx, name=name)
    output = negotiation.negotiate(ctx.request.headers.get("Accept"), allow_transform=True)
    include = tables.check_include(ctx.param("includeObject"))
    rv_text = ctx.param("resourceVersion")
    match = ctx.param("resourceVersionMatch")
    bookmarks = _truthy(ctx.param("allowWatchBookmarks"))
    send_initial_text = ctx.param("sendInitialEvents")
    send_initial = _truthy(send_initial_text)
    if send_initial_text and (match != "NotOlderThan" or not bookmarks):
        raise errors.APIError(422, "Invalid", "sendInitialEvents: Forbidden: sendInitialEvents "
                                              "requires setting resourceVersionMatch to "
                                              "NotOlderThan and allowWatchBookmarks to true")
    if match and not send_initial_text:
        raise errors.APIError(422, "Invalid", "resourceVersionMatch: Forbidden: "
                                              "resourceVersionMatch is forbidden for watch "
                                              "unless sendInitialEvents is provided")
    timeout = _timeout(srv, ctx)
    prefix = target.prefix
    since: int | None = None
    initial: list[Obj] = []
    snapshot_rv = 0
    source = None
    cache = await srv.ready_cache(rt)
    requested = rest.parse_rv(rv_text) if rv_text and rv_text != "0" else None
    from_state = send_initial or not rv_text or rv_text == "0"

    if cache is not None:
        if from_state:
            if requested is not None:
                wanted = requested
            elif rv_text == "0":
                wanted = 0
            else:
                wanted = await srv.current_revision(prefix)
            if wanted and not await cache.wait_fresh(wanted):
                raise errors.too_large_rv()
            # Snapshot and registration happen without a pause: nothing falls between.
            initial = cache.snapshot(prefix)
            snapshot_rv = cache.revision
            watcher, _ = cache.watch(prefix, None)
            source, since = _CacheSource(watcher), snapshot_rv
        else:
            if not await cache.wait_fresh(requested):
                raise errors.too_large_rv()
            try:
                watcher, replay = cache.watch(prefix, requested)
                watcher.pending.extendleft(reversed(replay))
                source, since = _CacheSource(watcher), requested
            except TooOld:
                since = requested
    else:
        if from_state:
            since, initial = await _list_all(srv, storage, prefix, requested or 0)
            snapshot_rv = since
        else:
            since = requested
    if source is None:
        source = _EtcdSource(storage, prefix, since + 1)

    response = web.StreamResponse(status=200)
    response.headers["Content-Type"] = negotiation.JSON
    response.headers["Cache-Control"] = "no-cache, private"
    response.enable_chunked_encoding()
    srv.metrics.watchers.labels(rt.group, rt.version, rt.plural).inc()
    first_table = [True]

    def encode(event_type: str, obj: Obj) -> bytes:
        if output.transform == "Table":
            rv = (obj.get("metadata") or {}).get("resourceVersion", "")
            body = tables.table(rt, [obj], {"resourceVersion": rv}, include, output.version,
                                columns=first_table[0])
            first_table[0] = False
        elif output.transform.startswith("PartialObjectMetadata"):
            body = tables.partial_metadata(obj, output.version)
        else:
            body = obj
        return orjson.dumps({"type": event_type, "object": body}) + b"\n"

    plain = not output.transform
    memo_key = (rt.group, rt.version, rt.plural)

    def event_lines(event: CacheEvent, out: list[bytes]) -> None:
        """The line(s) an event makes for this watch, appended to `out`."""
        if sel.empty:
            event_type, obj = event.type, event.obj
            if plain:
                key = memo_key + (event_type,)
                data = event.memo.get(key)
                if data is None:
                    data = encode(event_type, to_type(rt, storage, obj))
                    event.memo[key] = data
                out.append(data)
                return
            out.append(encode(event_type, to_type(rt, storage, obj)))
            return
        current = to_type(rt, storage, event.obj)
        now_in = event.type != DELETED and sel.matches(current)
        prev = to_type(rt, storage, event.prev) if event.prev is not None else None
        was_in = prev is not None and sel.matches(prev) if event.type != ADDED else False
        if event.type == DELETED:
            if sel.matches(current):
                out.append(encode(DELETED, current))
            return
        if now_in and was_in:
            out.append(encode(MODIFIED, current))
        elif now_in:
            out.append(encode(ADDED, current))
        elif was_in:
            gone = dict(prev, metadata=dict(prev.get("metadata") or {},
                                            resourceVersion=str(event.rv)))
            out.append(encode(DELETED, gone))

    def bookmark(rv: int, initial_end: bool = False) -> bytes:
        meta: Obj = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {INITIAL_EVENTS_END: "true"}
        if output.transform == "Table":
            body: Obj = {"kind": "Table", "apiVersion": f"meta.k8s.io/{output.version}",
                         "metadata": meta, "columnDefinitions": None, "rows": []}
        else:
            body = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}
        return orjson.dumps({"type": "BOOKMARK", "object": body}) + b"\n"

    started = time.monotonic()
    deadline = started + timeout
    next_bookmark = started + min(BOOKMARK_INTERVAL, max(timeout - 2.0, 1.0))
    last_bookmark = since or 0
    try:
        await response.prepare(ctx.request)
        lines, size = [], 0
        for obj in initial:
            typed = to_type(rt, storage, obj)
            if sel.empty or sel.matches(typed):
                lines.append(encode(ADDED, typed))
                size += len(lines[-1])
                if size >= WRITE_BATCH:
                    await response.write(b"".join(lines))
                    lines, size = [], 0
        if lines:
            await response.write(b"".join(lines))
        if send_initial:
            await response.write(bookmark(snapshot_rv, True))
            last_bookmark = snapshot_rv
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            wait = min(deadline - now, LIVENESS_CHECK)
            if bookmarks:
                wait = min(wait, max(next_bookmark - now, 0.0))
            try:
                events = await source.next(wait)
            except _Expired as exc:
                status = errors.expired(exc.message).status()
                await response.write(orjson.dumps({"type": "ERROR", "object": status}) + b"\n")
                break
            if events is None:
                break
            # Every event of one wake-up in one write: one TLS record and one send, not
            # one per event, when a watcher has several pending.
            lines: list[bytes] = []
            size = 0
            for event in events:
                if since is not None and event.rv <= since:
                    continue
                count = len(lines)
                event_lines(event, lines)
                size += sum(len(line) for line in lines[count:])
                if size >= WRITE_BATCH:
                    await response.write(b"".join(lines))
                    lines, size = [], 0
            if lines:
                await response.write(lines[0] if len(lines) == 1 else b"".join(lines))
            if bookmarks and time.monotonic() >= next_bookmark:
                rv = source.safe_revision
                if rv >= last_bookmark:
                    await response.write(bookmark(rv))
                    last_bookmark = rv
                next_bookmark = time.monotonic() + BOOKMARK_INTERVAL
            transport = ctx.request.transport
            if transport is None or transport.is_closing():
                break
    except ConnectionError:
        pass  # the client went away
    finally:
        source.close()
        srv.metrics.watchers.labels(rt.group, rt.version, rt.plural).dec()
    try:
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass
    return response


async def _list_all(srv: "APIServer", storage, prefix: bytes, min_rv: int
                    ) -> tuple[int, list[Obj]]:
    """Every object under prefix at one revision (the watch cache is off)."""
    end = prefix_end(prefix)
    start, revision, objects = prefix, 0, []
    while True:
        result = await srv.store.range(start, end, limit=5000, revision=revision)
        revision = result.revision
        objects.extend(storage.decode_or_fail(kv) for kv in result.kvs)
        if not result.more or not result.kvs:
            break
        start = result.kvs[-1].key + b"\0"
    if min_rv and revision < min_rv:
        raise errors.too_large_rv()
    return revision, objects
