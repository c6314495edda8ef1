"""The scheduling queue (upstream's PriorityQueue, kept to its essentials).

    active         pods ready to be tried: highest spec.priority first, then oldest
    backoff        pods that failed recently, waiting out their backoff (1 s doubling
                   per attempt to 10 s) before they go back to active
    unschedulable  pods no node fitted; they stay until a cluster event that may help
                   (a node added or changed, a pod deleted or moved) or until they have
                   waited `unschedulable_timeout` (60 s), then go to backoff or active

A cluster event seen while a pod is being tried may already be the one that helps, so
such a pod goes to backoff rather than unschedulable (upstream's moveRequestCycle).
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Callable

from kubesmith.scheduler.cache import PodInfo

INITIAL_BACKOFF = 1.0
MAX_BACKOFF = 10.0
UNSCHEDULABLE_TIMEOUT = 60.0
FLUSH_BACKOFF_EVERY = 0.2
FLUSH_UNSCHEDULABLE_EVERY = 30.0


class QueuedPod:
    __slots__ = ("info", "attempts", "added", "last_failure", "cycle")

    def __init__(self, info: PodInfo, now: float):
        self.info = info
        self.attempts = 0
        self.added = now
        self.last_failure = 0.0
        self.cycle = 0          # the scheduling cycle it was last popped in

    @property
    def key(self) -> str:
        return self.info.key

    def __repr__(self) -> str:
        return f"<QueuedPod {self.key} attempts={self.attempts}>"


class SchedulingQueue:
    def __init__(self, *, initial_backoff: float = INITIAL_BACKOFF,
                 max_backoff: float = MAX_BACKOFF,
                 unschedulable_timeout: float = UNSCHEDULABLE_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic):
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.unschedulable_timeout = unschedulable_timeout
        self.clock = clock
        self._heap: list[tuple[int, str, int, str]] = []
        self._active: dict[str, tuple[int, QueuedPod]] = {}   # key -> (heap seq, entry)
        self._backoff: dict[str, QueuedPod] = {}
        self._unschedulable: dict[str, QueuedPod] = {}
        self._in_flight: dict[str, QueuedPod] = {}
        self._seq = itertools.count()
        self._ready = asyncio.Event()
        self.scheduling_cycle = 0
        self._move_request_cycle = -1
        self._closed = False

    # --- sizes, for logs and tests ----------------------------------------------------

    def counts(self) -> dict[str, int]:
        return {"active": len(self._active), "backoff": len(self._backoff),
                "unschedulable": len(self._unschedulable), "in_flight": len(self._in_flight)}

    def __contains__(self, key: str) -> bool:
        return (key in self._active or key in self._backoff or key in self._unschedulable
                or key in self._in_flight)

    # --- pods coming and going --------------------------------------------------------

    def add(self, info: PodInfo) -> None:
        """A new pod to schedule (or one changed in a way that may make it fit)."""
        key = info.key
        if key in self._in_flight:
            self._in_flight[key].info = info
            return
        entry = (self._active.get(key, (0, None))[1] or self._backoff.pop(key, None)
                 or self._unschedulable.pop(key, None) or QueuedPod(info, self.clock()))
        entry.info = info
        self._push_active(entry)

    def update(self, info: PodInfo, spec_changed: bool) -> None:
        """The pod changed. Only a change of what scheduling reads (not its status)
        gives an unschedulable pod another try."""
        key = info.key
        if key in self._in_flight:
            self._in_flight[key].info = info
        elif key in self._active:
            self._push_active(self._active[key][1], info)
        elif key in self._backoff:
            self._backoff[key].info = info
        elif key in self._unschedulable:
            entry = self._unschedulable[key]
            entry.info = info
            if spec_changed:
                del self._unschedulable[key]
                self._to_backoff_or_active(entry)
        else:
            self.add(info)

    def delete(self, key: str) -> None:
        self._active.pop(key, None)
        self._backoff.pop(key, None)
        self._unschedulable.pop(key, None)
        self._in_flight.pop(key, None)

    # --- the scheduling loop's side ---------------------------------------------------

    async def pop(self) -> QueuedPod:
        """The next pod to try (waits for one). The caller reports the outcome with
        done(), add_unschedulable() or add_backoff()."""
        while True:
            while self._heap:
                _, _, seq, key = heapq.heappop(self._heap)
                current = self._active.get(key)
                if current is None or current[0] != seq:
                    continue    # a stale heap entry
                del self._active[key]
                entry = current[1]
                self.scheduling_cycle += 1
                entry.cycle = self.scheduling_cycle
                entry.attempts += 1
                self._in_flight[key] = entry
                return entry
            self._ready.clear()
            await self._ready.wait()

    def done(self, key: str) -> None:
        """The pod was scheduled (assumed); it is no longer the queue's."""
        self._in_flight.pop(key, None)

    def add_unschedulable(self, entry: QueuedPod) -> None:
        if self._in_flight.pop(entry.key, None) is None:
            return      # deleted (or bound by someone else) meanwhile
        entry.last_failure = self.clock()
        if self._move_request_cycle >= entry.cycle:
            self._backoff[entry.key] = entry
        else:
            self._unschedulable[entry.key] = entry

    def add_backoff(self, entry: QueuedPod) -> None:
        """An error that was not the pod's fault (the API server failed, the binding
        was refused): try again after the backoff. Also after done(): a failed bind."""
        self._in_flight.pop(entry.key, None)
        if entry.key in self._active or entry.key in self._unschedulable:
            return
        entry.last_failure = self.clock()
        self._backoff[entry.key] = entry

    def backoff_duration(self, entry: QueuedPod) -> float:
        if entry.attempts <= 0:
            return 0.0
        return min(self.initial_backoff * 2 ** min(entry.attempts - 1, 30), self.max_backoff)

    # --- cluster events and time ------------------------------------------------------

    def move_all_to_active_or_backoff(self) -> None:
        """Something changed that may let unschedulable pods fit."""
        for entry in list(self._unschedulable.values()):
            del self._unschedulable[entry.key]
            self._to_backoff_or_active(entry)
        self._move_request_cycle = self.scheduling_cycle

    def flush_backoff(self) -> None:
        now = self.clock()
        for entry in list(self._backoff.values()):
            if now >= entry.last_failure + self.backoff_duration(entry):
                del self._backoff[entry.key]
                self._push_active(entry)

    def flush_unschedulable(self) -> None:
        now = self.clock()
        for entry in list(self._unschedulable.values()):
            if now - entry.last_failure >= self.unschedulable_timeout:
                del self._unschedulable[entry.key]
                self._to_backoff_or_active(entry)

    async def run(self) -> None:
        """Move pods on as time passes (until cancelled)."""
        last_unschedulable_flush = self.clock()
        while True:
            await asyncio.sleep(FLUSH_BACKOFF_EVERY)
            self.flush_backoff()
            if self.clock() - last_unschedulable_flush >= FLUSH_UNSCHEDULABLE_EVERY:
                last_unschedulable_flush = self.clock()
                self.flush_unschedulable()

    # --- internals --------------------------------------------------------------------

    def _to_backoff_or_active(self, entry: QueuedPod) -> None:
        if self.clock() < entry.last_failure + self.backoff_duration(entry):
            self._backoff[entry.key] = entry
        else:
            self._push_active(entry)

    def _push_active(self, entry: QueuedPod, info: PodInfo | None = None) -> None:
        if info is not None:
            entry.info = info
        seq = next(self._seq)
        self._active[entry.key] = (seq, entry)
        heapq.heappush(self._heap, (-entry.info.priority, entry.info.created, seq, entry.key))
        self._ready.set()
