"""The sync loop of the node agents that keep host state written from informers
(kube-proxy's rules, the pod-network agent's routes): upstream's BoundedFrequencyRunner,
in one place for both.

    runner = BoundedFrequencyRunner(sync, period=30.0, min_interval=1.0, name="proxy rules")
    handler -> runner.request()           # from the informers' event handlers; cheap
    await runner.run()                    # syncs until cancelled

`sync(full)` runs at once (full=True), then when a change was requested, and every
`period` anyway (full=True: the owner re-checks and repairs everything). Syncs start at
least `min_interval` apart, as upstream's minInterval: a burst of requests gives one sync,
a request after a quiet spell syncs at once. An exception from sync is logged with the
runner's name and the loop goes on (the next request or period retries); what a failure
means beyond that (health flags, state to rewrite) is the owner's, in its sync.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

log = logging.getLogger(__name__)


class BoundedFrequencyRunner:
    def __init__(self, sync: Callable[[bool], Awaitable[object]], *, period: float,
                 min_interval: float, name: str):
        self.sync = sync
        self.period = period
        self.min_interval = min_interval
        self.name = name
        self.last_start = 0.0         # time.monotonic() when the last sync began
        self._requested = asyncio.Event()

    def request(self) -> None:
        """Ask for a sync (cheap; safe from informer handlers)."""
        self._requested.set()

    async def run(self) -> None:
        """Sync now, then after requests (at least min_interval apart) and every period,
        until cancelled."""
        next_full = 0.0
        while True:
            now = time.monotonic()
            if now < next_full:
                try:
                    await asyncio.wait_for(self._requested.wait(), next_full - now)
                except asyncio.TimeoutError:
                    pass
                wait = self.last_start + self.min_interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)       # requests meanwhile join this sync
            full = time.monotonic() >= next_full
            self._requested.clear()
            self.last_start = time.monotonic()
            try:
                await self.sync(full)
            except Exception:
                log.exception("sync of %s failed", self.name)
            if full:
                next_full = time.monotonic() + self.period
