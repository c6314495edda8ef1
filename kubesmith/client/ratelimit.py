"""Rate limits and backoff shared by the API client, informers and work queues.

`TokenBucket` is upstream's token bucket (golang.org/x/time/rate as client-go uses it):
`burst` requests may go at once, then `qps` per second. Callers reserve a token and
wait out the returned delay, so waiters are served in the order they asked.

`Backoff` is the reflector's exponential backoff: 0.8 s doubling to 30 s with jitter,
back to the start after two quiet minutes.
"""
from __future__ import annotations

import asyncio
import random
import time
from typing import Callable


class TokenBucket:
    """`burst` tokens at most, refilled at `qps` a second; qps <= 0 means no limit."""

    def __init__(self, qps: float, burst: int, *,
                 clock: Callable[[], float] = time.monotonic):
        self.qps = float(qps)
        self.burst = max(int(burst), 1)
        self._clock = clock
        self._tokens = float(self.burst)
        self._last = clock()

    def reserve(self) -> float:
        """Take a token; the seconds until it is really available (0: now).

        Tokens may go below zero: each reservation queues behind the earlier ones."""
        if self.qps <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    async def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


class Backoff:
    """Exponential delays: `initial` doubling up to `maximum`, each stretched by up to
    `jitter` of itself; after `reset_after` seconds without a call it starts over."""

    def __init__(self, initial: float = 0.8, maximum: float = 30.0, *, factor: float = 2.0,
                 jitter: float = 1.0, reset_after: float = 120.0,
                 clock: Callable[[], float] = time.monotonic):
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self.jitter, self.reset_after = jitter, reset_after
        self._clock = clock
        self._next = initial
        self._last_call: float | None = None

    def next(self) -> float:
        now = self._clock()
        if self._last_call is not None and now - self._last_call > self.reset_after:
            self._next = self.initial
        self._last_call = now
        delay = self._next
        self._next = min(self._next * self.factor, self.maximum)
        return delay * (1.0 + random.random() * self.jitter)

    def reset(self) -> None:
        self._next = self.initial
