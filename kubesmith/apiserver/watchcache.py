"""The watch cache: one etcd watch per storage prefix, fanned out to every API watcher.

Each cache lists its prefix once, then follows one etcd watch. It keeps the current
objects (for resourceVersion=0 reads and for the authorizer and admission, which need
fast lookups) and a bounded window of recent events, so that a watch from a recent
resourceVersion replays the window and then follows live events. A watch from before
the window is served straight from etcd by the caller (see watch.py), which answers 410
Expired once etcd has compacted that far.

If the cache's own etcd watch falls behind a compaction (or etcd is unreachable for
long), it lists again; its watchers are then ended, and clients resume from their last
resourceVersion as upstream clients do.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from kubesmith.apiserver.storage import DecodeError, ResourceStorage
from kubesmith.store import CompactedError, EventType, StoreError, prefix_end
from kubesmith.store import Event as StoreEvent

log = logging.getLogger(__name__)

Obj = dict[str, Any]

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"

# Events a slow watcher may have pending before it is ended (the client re-watches).
WATCHER_BUFFER = 10_000
LIST_PAGE = 5_000


class CacheEvent:
    """One change: the object after it (for DELETED: its last state at the delete's rv)."""
    __slots__ = ("type", "key", "obj", "prev", "rv", "memo")

    def __init__(self, type_: str, key: bytes, obj: Obj, prev: Obj | None, rv: int):
        self.type = type_
        self.key = key
        self.obj = obj
        self.prev = prev
        self.rv = rv
        self.memo: dict = {}   # encodings shared by watchers asking for the same output


def decode_event(storage: ResourceStorage, event: StoreEvent,
                 known: Obj | None = None) -> CacheEvent | None:
    """A store event as a CacheEvent; None when the value cannot be decoded (logged).

    `known` stands in for the previous state when etcd no longer has it (compacted).
    """
    kv = event.kv
    try:
        prev = storage.decode(event.prev_kv) if event.prev_kv is not None else known
        if event.type is EventType.DELETE:
            if prev is None:
                return None
            obj = dict(prev, metadata=dict(prev.get("metadata") or {},
                                           resourceVersion=str(kv.mod_revision)))
            return CacheEvent(DELETED, kv.key, obj, prev, kv.mod_revision)
        obj = storage.decode(kv)
    except DecodeError as exc:
        log.error("watch on %s: %s", storage.name, exc)
        return None
    created = kv.create_revision == kv.mod_revision or prev is None
    return CacheEvent(ADDED if created else MODIFIED, kv.key, obj, prev, kv.mod_revision)


class CacheWatcher:
    """One consumer of a cache: pending events in order, ended when it falls too far behind."""

    def __init__(self, cache: "WatchCache", key_prefix: bytes):
        self.cache = cache
        self.key_prefix = key_prefix
        self.pending: deque[CacheEvent] = deque()
        self.wake = asyncio.Event()
        self.terminated = False

    def push(self, event: CacheEvent) -> None:
        if self.terminated:
            return
        if len(self.pending) >= WATCHER_BUFFER:
            log.warning("watcher of %s fell %d events behind; ending it",
                        self.cache.storage.name, len(self.pending))
            self.terminate()
            return
        self.pending.append(event)
        self.wake.set()

    def terminate(self) -> None:
        self.terminated = True
        self.wake.set()

    def close(self) -> None:
        self.terminated = True
        self.cache.watchers.discard(self)

    @property
    def safe_revision(self) -> int:
        """Every event up to this revision has been handed to this watcher's consumer."""
        return self.cache.revision if not self.pending else self.pending[0].rv - 1


class TooOld(Exception):
    def __init__(self, oldest: int):
        super().__init__(oldest)
        self.oldest = oldest


class WatchCache:
    def __init__(self, storage: ResourceStorage, window: int):
        self.storage = storage
        self.prefix = storage.prefix
        self.window: deque[CacheEvent] = deque()
        self.window_size = max(window, 0)
        self.window_start = 0          # a watch from rv >= this can be replayed
        self.objects: dict[bytes, Obj] = {}
        self.revision = 0              # every event up to here is applied
        self.watchers: set[CacheWatcher] = set()
        self.ready = asyncio.Event()
        self.generation = 0            # bumps on every change (authorizer memo)
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._watch = None
        self._lists = 0

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"watch-cache {self.storage.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        for watcher in list(self.watchers):
            watcher.terminate()

    async def wait_ready(self, timeout: float) -> bool:
        self.start()
        if self.ready.is_set():
            return True
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _run(self) -> None:
        backoff = 0.2
        store = self.storage.store
        while True:
            try:
                revision = await self._list()
                backoff = 0.2
                # The cache holds every key's state at the revision before each event
                # (listed, then every change applied in order), so etcd need not read
                # and send the previous values.
                async with store.watch(self.prefix, revision + 1, prev_kv=False) as watch:
                    self._watch = watch
                    self.ready.set()
                    async for batch in watch:
                        self._apply(batch.events, batch.revision)
            except asyncio.CancelledError:
                raise
            except CompactedError as exc:
                log.warning("watch cache %s: etcd compacted past its position (%s); "
                            "listing again", self.storage.name, exc)
            except StoreError as exc:
                log.warning("watch cache %s: %s; retrying in %.1fs", self.storage.name, exc,
                            backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("watch cache %s failed; listing again", self.storage.name)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self._watch = None

    async def _list(self) -> int:
        """Read the whole prefix at one revision (in pages) and replace the cached state."""
        store = self.storage.store
        end = prefix_end(self.prefix)
        start, revision, kvs = self.prefix, 0, []
        while True:
            result = await store.range(start, end, limit=LIST_PAGE, revision=revision)
            revision = result.revision
            kvs.extend(result.kvs)
            if not result.more or not result.kvs:
                break
            start = result.kvs[-1].key + b"\0"
        objects = {}
        for kv in kvs:
            try:
                objects[kv.key] = self.storage.decode(kv)
            except DecodeError as exc:
                log.error("watch cache %s: %s", self.storage.name, exc)
        relist = self._lists > 0
        self._lists += 1
        self.objects = objects
        self.window.clear()
        self.window_start = revision
        self._advance(revision)
        self.generation += 1
        if relist:
            # Watchers cannot be told what they missed: end them, as upstream does.
            for watcher in list(self.watchers):
                watcher.terminate()
        return revision

    def _apply(self, events: list[StoreEvent], revision: int) -> None:
        for store_event in events:
            event = decode_event(self.storage, store_event,
                                 self.objects.get(store_event.kv.key))
            if event is None:
                if store_event.type is EventType.DELETE:
                    self.objects.pop(store_event.kv.key, None)
                continue
            if event.type == DELETED:
                self.objects.pop(event.key, None)
            else:
                self.objects[event.key] = event.obj
            self.window.append(event)
            while len(self.window) > self.window_size:
                self.window_start = self.window.popleft().rv
            for watcher in self.watchers:
                if event.key.startswith(watcher.key_prefix):
                    watcher.push(event)
        if events:
            self.generation += 1
        self._advance(revision)

    def _advance(self, revision: int) -> None:
        if revision > self.revision:
            self.revision = revision
        if self._waiters:
            still = []
            for wanted, future in self._waiters:
                if self.revision >= wanted:
                    if not future.done():
                        future.set_result(True)
                else:
                    still.append((wanted, future))
            self._waiters = still
        if revision and self.ready.is_set():
            for watcher in self.watchers:
                if not watcher.pending:
                    watcher.wake.set()   # lets a waiting watcher send a bookmark

    # --- reads ---------------------------------------------------------------------

    async def wait_fresh(self, revision: int, timeout: float = 3.0) -> bool:
        """Wait until every event up to `revision` is applied; False on timeout."""
        if not await self.wait_ready(timeout):
            return False
        if self.revision >= revision:
            return True
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, future))
        watch = self._watch
        if watch is not None:
            # etcd answers with the revision the watch has reached, even when idle.
            await watch.request_progress()
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._waiters = [(r, f) for r, f in self._waiters if f is not future]

    def snapshot(self, key_prefix: bytes) -> list[Obj]:
        """Current objects under key_prefix, in key order."""
        if key_prefix == self.prefix:
            keys = sorted(self.objects)
        else:
            keys = sorted(k for k in self.objects if k.startswith(key_prefix))
        return [self.objects[k] for k in keys]

    def get(self, key: bytes) -> Obj | None:
        return self.objects.get(key)

    # --- watches -------------------------------------------------------------------

    def watch(self, key_prefix: bytes, since: int | None) -> tuple[CacheWatcher, list[CacheEvent]]:
        """A watcher from `since` (the window's events after it are returned to replay),
        or from now when since is None. Raises TooOld when the window does not reach back.

        Runs without awaiting, so nothing can happen between the replay and the first
        live event.
        """
        replay: list[CacheEvent] = []
        if since is not None:
            if since < self.window_start:
                raise TooOld(self.window_start)
            for event in self.window:
                if event.rv > since and event.key.startswith(key_prefix):
                    replay.append(event)
        watcher = CacheWatcher(self, key_prefix)
        self.watchers.add(watcher)
        return watcher, replay
