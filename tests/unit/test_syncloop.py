"""kubesmith.syncloop.BoundedFrequencyRunner with fake sync functions: the first sync is
full, requests sync, a burst within min_interval gives one sync, period gives a full
sync, a failing sync does not stop the loop, cancel does."""
from __future__ import annotations

import asyncio
import logging
import time

import pytest

from kubesmith.syncloop import BoundedFrequencyRunner


class Recorder:
    """A sync function that remembers (monotonic start, full) per call; can fail."""

    def __init__(self, fail_first: int = 0):
        self.calls: list[tuple[float, bool]] = []
        self.fail_first = fail_first

    async def __call__(self, full: bool) -> None:
        self.calls.append((time.monotonic(), full))
        if len(self.calls) <= self.fail_first:
            raise RuntimeError("sync broke")

    @property
    def fulls(self) -> list[bool]:
        return [full for _, full in self.calls]


async def until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def scenario(body) -> None:
    asyncio.run(asyncio.wait_for(body(), 20))


async def running(runner: BoundedFrequencyRunner):
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0)
    return task


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_first_sync_is_full_then_requests_sync():
    async def body():
        sync = Recorder()
        runner = BoundedFrequencyRunner(sync, period=30.0, min_interval=0.0, name="test")
        task = await running(runner)
        try:
            await until(lambda: len(sync.calls) == 1)
            assert sync.fulls == [True]
            runner.request()
            await until(lambda: len(sync.calls) == 2)
            runner.request()
            await until(lambda: len(sync.calls) == 3)
            assert sync.fulls == [True, False, False]
        finally:
            await stop(task)
    scenario(body)


def test_a_request_before_run_is_kept_and_a_quiet_runner_stays_quiet():
    async def body():
        sync = Recorder()
        runner = BoundedFrequencyRunner(sync, period=30.0, min_interval=0.0, name="test")
        runner.request()
        task = await running(runner)
        try:
            await until(lambda: len(sync.calls) == 1)
            await asyncio.sleep(0.1)
            # The first (full) sync answered the request made before it.
            assert sync.fulls == [True]
        finally:
            await stop(task)
    scenario(body)


def test_a_burst_within_min_interval_gives_one_sync_spaced_from_the_last_start():
    async def body():
        sync = Recorder()
        runner = BoundedFrequencyRunner(sync, period=30.0, min_interval=0.5, name="test")
        task = await running(runner)
        try:
            await until(lambda: len(sync.calls) == 1)
            runner.request()
            await asyncio.sleep(0.05)
            runner.request()
            await until(lambda: len(sync.calls) == 2)
            await asyncio.sleep(0.6)
            assert sync.fulls == [True, False]
            assert sync.calls[1][0] - sync.calls[0][0] >= 0.5
            # After a quiet spell longer than min_interval a request syncs at once (not
            # min_interval later).
            asked = time.monotonic()
            runner.request()
            await until(lambda: len(sync.calls) == 3)
            assert sync.calls[2][0] - asked < 0.4
        finally:
            await stop(task)
    scenario(body)


def test_a_full_sync_every_period():
    async def body():
        sync = Recorder()
        runner = BoundedFrequencyRunner(sync, period=0.05, min_interval=0.0, name="test")
        task = await running(runner)
        try:
            await until(lambda: len(sync.calls) >= 3)
            assert sync.fulls[:3] == [True, True, True]
            assert sync.calls[1][0] - sync.calls[0][0] >= 0.05
        finally:
            await stop(task)
    scenario(body)


def test_a_failing_sync_is_logged_and_the_loop_goes_on(caplog):
    async def body():
        sync = Recorder(fail_first=2)
        runner = BoundedFrequencyRunner(sync, period=30.0, min_interval=0.0, name="things")
        task = await running(runner)
        try:
            await until(lambda: len(sync.calls) == 1)
            runner.request()
            await until(lambda: len(sync.calls) == 2)
            runner.request()
            await until(lambda: len(sync.calls) == 3)
            assert not task.done()
        finally:
            await stop(task)
    with caplog.at_level(logging.ERROR, logger="kubesmith.syncloop"):
        scenario(body)
    failures = [r for r in caplog.records if r.name == "kubesmith.syncloop"]
    assert len(failures) == 2
    assert all("things" in r.getMessage() and r.exc_info for r in failures)


def test_cancel_stops_the_loop_even_inside_a_sync():
    async def body():
        started = asyncio.Event()

        async def slow(full: bool) -> None:
            started.set()
            await asyncio.sleep(3600)

        runner = BoundedFrequencyRunner(slow, period=30.0, min_interval=0.0, name="test")
        task = await running(runner)
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Idle in the wait for requests, too.
        sync = Recorder()
        runner = BoundedFrequencyRunner(sync, period=30.0, min_interval=0.0, name="test")
        task = await running(runner)
        await until(lambda: len(sync.calls) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        runner.request()
        await asyncio.sleep(0.05)
        assert len(sync.calls) == 1
    scenario(body)
