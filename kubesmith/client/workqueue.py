"""Rate-limited work queues with client-go's semantics, for controllers.

    queue = WorkQueue(name="deployments")
    informer.add_event_handler(on_add=lambda o: queue.add(namespace_key(o)), ...)
    await run_workers(queue, sync_deployment, workers=5)

What the queue promises (client-go's util/workqueue):
  * an item queued twice is processed once (dedup while it waits);
  * an item is never processed by two workers at once: added again while it is being
    processed, it is queued only when the worker calls done(item);
  * add_after(item, seconds) queues it later (the earliest of several requests wins);
  * add_rate_limited(item) queues it after the rate limiter's delay: by default the
    larger of a per-item exponential backoff (5 ms doubling to 1000 s, until forget)
    and an overall token bucket (10 qps, burst 100);
  * after shutdown() nothing more is accepted; get() hands out what is still queued,
    then raises ShutDown.

Items are hashable keys ("namespace/name"), never the objects themselves: the worker
reads the current object from a lister.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from typing import Any, Awaitable, Callable, Hashable

from kubesmith.client.ratelimit import TokenBucket
from kubesmith.client.rest import ApiError

log = logging.getLogger(__name__)


class ShutDown(Exception):
    """The queue is shut down and has nothing left to hand out."""


# --- rate limiters: when(item) -> seconds to wait; forget(item); num_requeues(item) ---

class ItemExponentialBackoff:
    """base * 2^failures per item, at most `maximum`; forget(item) starts it over."""

    def __init__(self, base: float = 0.005, maximum: float = 1000.0):
        self.base, self.maximum = base, maximum
        self._failures: dict[Hashable, int] = {}

    def when(self, item: Hashable) -> float:
        failures = self._failures.get(item, 0)
        self._failures[item] = failures + 1
        if failures > 60:   # 2**60 * base is past any maximum; avoid huge floats
            return self.maximum
        return min(self.base * 2 ** failures, self.maximum)

    def forget(self, item: Hashable) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: Hashable) -> int:
        return self._failures.get(item, 0)


class BucketRateLimiter:
    """One token bucket for all items: bounds the overall retry rate."""

    def __init__(self, qps: float = 10.0, burst: int = 100):
        self.bucket = TokenBucket(qps, burst)

    def when(self, item: Hashable) -> float:
        return self.bucket.reserve()

    def forget(self, item: Hashable) -> None:
        pass

    def num_requeues(self, item: Hashable) -> int:
        return 0


class MaxOfRateLimiter:
    """The longest delay of several limiters."""

    def __init__(self, *limiters):
        self.limiters = limiters

    def when(self, item: Hashable) -> float:
        return max(limiter.when(item) for limiter in self.limiters)

    def forget(self, item: Hashable) -> None:
        for limiter in self.limiters:
            limiter.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return max(limiter.num_requeues(item) for limiter in self.limiters)


def default_rate_limiter() -> MaxOfRateLimiter:
    """client-go's DefaultControllerRateLimiter."""
    return MaxOfRateLimiter(ItemExponentialBackoff(0.005, 1000.0), BucketRateLimiter(10.0, 100))


# --- the queue ------------------------------------------------------------------------

class WorkQueue:
    """A deduplicating, delaying, rate-limited queue of keys (see the module docstring).

    Methods other than get() are plain calls, so informer event handlers can add keys;
    add_after and add_rate_limited need a running event loop."""

    def __init__(self, rate_limiter=None, *, name: str = ""):
        self.name = name
        self.rate_limiter = rate_limiter or default_rate_limiter()
        self._queue: deque[Hashable] = deque()
        self._dirty: set[Hashable] = set()        # queued, or to be queued when done
        self._processing: set[Hashable] = set()
        self._waiting: dict[Hashable, asyncio.TimerHandle] = {}   # add_after timers
        self._getters: deque[asyncio.Future] = deque()
        self._shutting_down = False

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def add(self, item: Hashable) -> None:
        if self._shutting_down or item in self._dirty:
            return
        self._dirty.add(item)
        if item in self._processing:
            return   # queued by done(item)
        self._queue.append(item)
        self._wake_one()

    async def get(self) -> Hashable:
        """The next item; the caller must call done(item) when finished with it."""
        while not self._queue:
            if self._shutting_down:
                raise ShutDown(self.name)
            waiter = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()   # pass the wake-up on to another getter
                else:
                    waiter.cancel()
                raise
        item = self._queue.popleft()
        self._processing.add(item)
        self._dirty.discard(item)
        return item

    def done(self, item: Hashable) -> None:
        self._processing.discard(item)
        if item in self._dirty:
            self._queue.append(item)
            self._wake_one()

    def add_after(self, item: Hashable, delay: float) -> None:
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(item)
            return
        loop = asyncio.get_running_loop()
        ready = loop.time() + delay
        timer = self._waiting.get(item)
        if timer is not None:
            if timer.when() <= ready:
                return
            timer.cancel()
        self._waiting[item] = loop.call_at(ready, self._ready, item)

    def add_rate_limited(self, item: Hashable) -> None:
        self.add_after(item, self.rate_limiter.when(item))

    def forget(self, item: Hashable) -> None:
        """The item succeeded: its backoff starts over."""
        self.rate_limiter.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return self.rate_limiter.num_requeues(item)

    def shutdown(self) -> None:
        """Accept nothing more; waiting getters raise ShutDown once the queue is empty."""
        self._shutting_down = True
        for timer in self._waiting.values():
            timer.cancel()
        self._waiting.clear()
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _ready(self, item: Hashable) -> None:
        self._waiting.pop(item, None)
        self.add(item)

    def _wake_one(self) -> None:
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


Handler = Callable[[Any], Awaitable[Any] | Any]


async def run_workers(queue: WorkQueue, handler: Handler, workers: int = 1) -> None:
    """Process the queue with `workers` concurrent workers until it is shut down.

    `handler(item)` (async or not) succeeding forgets the item's backoff; returning a
    number of seconds > 0 queues the item again after that long (a periodic re-check).
    Raising queues it again rate limited. Cancelling run_workers shuts the queue down
    and cancels the workers."""

    async def worker() -> None:
        while True:
            try:
                item = await queue.get()
            except ShutDown:
                return
            try:
                result = handler(item)
                if inspect.isawaitable(result):
                    result = await result
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, (ApiError, ConnectionError)):
                    log.warning("%s: %r failed, will retry: %s", queue.name, item, exc)
                else:
                    log.exception("%s: %r failed, will retry", queue.name, item)
                queue.add_rate_limited(item)
            else:
                queue.forget(item)
                if isinstance(result, (int, float)) and not isinstance(result, bool) \
                        and result > 0:
                    queue.add_after(item, float(result))
            finally:
                queue.done(item)

    tasks = [asyncio.create_task(worker(), name=f"{queue.name or 'queue'}-worker-{n}")
             for n in range(workers)]
    try:
        await asyncio.gather(*tasks)
    finally:
        queue.shutdown()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
