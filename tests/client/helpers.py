"""Helpers for tests written as coroutines."""
from __future__ import annotations

import asyncio
import time


async def eventually(check, timeout: float = 5.0, interval: float = 0.02):
    """Poll `check()` (plain or async) until it is truthy; its value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true after {timeout}s: {check}")
        await asyncio.sleep(interval)
