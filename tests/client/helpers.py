"""Helpers for tests written as coroutines."""
from __future__ import annotations

import asyncio
import time


async def eventually(check, timeout: float = 5.0, interval: float = 0.02, *,
                     in_thread: bool = False):
    """Poll `check()` (plain or async) until it is truthy; its value, or AssertionError.

    With `in_thread`, a plain `check` that blocks (runs a command, reads a socket) is
    called in a worker thread, so the tasks on the event loop go on meanwhile. Modules
    whose conditions take longer bind their own defaults with functools.partial."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check) if in_thread else check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true after {timeout}s: {check}")
        await asyncio.sleep(interval)
