"""kubesmith.process: the steps every component's process takes, without a component."""
from __future__ import annotations

import asyncio
import logging

import pytest

from kubesmith import process


class FakeInformers:
    def __init__(self, sync_after: float | None):
        self.sync_after = sync_after
        self.started = False

    def start(self) -> None:
        self.started = True

    async def wait_for_sync(self, timeout: float | None = None) -> bool:
        if self.sync_after is None or (timeout is not None and self.sync_after > timeout):
            await asyncio.sleep(timeout or 3600)
            return False
        await asyncio.sleep(self.sync_after)
        return True


def later(event: asyncio.Event, delay: float) -> None:
    asyncio.get_running_loop().call_later(delay, event.set)


def test_stop_on_signals_returns_a_given_event():
    async def scenario():
        given = asyncio.Event()
        assert process.stop_on_signals(given) is given
    asyncio.run(scenario())


def test_synced_informers_go_on():
    async def scenario():
        informers = FakeInformers(sync_after=0)
        assert await process.wait_synced_or_stopped(informers, asyncio.Event(), 1) is None
        assert informers.started
    asyncio.run(scenario())


def test_unsynced_informers_end_with_1(caplog):
    async def scenario():
        return await process.wait_synced_or_stopped(FakeInformers(None), asyncio.Event(),
                                                    0.05, "node informer")
    with caplog.at_level(logging.ERROR):
        assert asyncio.run(scenario()) == 1
    assert "node informer did not sync within 0s" in caplog.text


def test_a_stop_during_the_sync_ends_with_0():
    async def scenario():
        stopping = asyncio.Event()
        later(stopping, 0.01)
        return await process.wait_synced_or_stopped(FakeInformers(None), stopping, 30)
    assert asyncio.run(scenario()) == 0


def test_work_is_cancelled_on_stop():
    async def scenario():
        stopping = asyncio.Event()
        cancelled = []

        async def work():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
        later(stopping, 0.01)
        task = asyncio.create_task(work())
        assert await process.run_until_stopped(task, stopping) is False
        assert cancelled and task.done()
    asyncio.run(scenario())


def test_work_that_ends_by_itself_is_reported(caplog):
    async def scenario():
        async def work():
            raise ValueError("boom")
        return await process.run_when_synced(FakeInformers(0), asyncio.Event(), 1, work,
                                             name="proxier")
    with caplog.at_level(logging.ERROR):
        assert asyncio.run(scenario()) == 1
    assert "proxier ended: ValueError('boom')" in caplog.text


def test_start_unless_stopped():
    async def scenario():
        stopping = asyncio.Event()
        assert await process.start_unless_stopped(asyncio.sleep(0), stopping) is True
        later(stopping, 0.01)
        assert await process.start_unless_stopped(asyncio.sleep(3600), stopping) is False

        async def failing():
            raise RuntimeError("no runtime")
        with pytest.raises(RuntimeError, match="no runtime"):
            await process.start_unless_stopped(failing(), asyncio.Event())
    asyncio.run(scenario())


class UsageError(Exception):
    pass


class Opts:
    v = 0


def test_command_main_usage_error_and_exit_status(capsys):
    def parse(argv):
        if argv:
            raise UsageError(f"unknown flag: {argv[0]}")
        return Opts()

    async def run(options):
        return 3
    kwargs = dict(usage_errors=UsageError, setup_logging=lambda v: None)
    assert process.command_main("kube-thing", parse, run, ["--bogus"], **kwargs) == 2
    err = capsys.readouterr().err
    assert err == "Error: unknown flag: --bogus\nRun 'kube-thing --help' for usage.\n"
    assert process.command_main("kube-thing", parse, run, [], **kwargs) == 3


def test_run_reporting_failure(caplog):
    async def fails():
        raise OSError("address in use")

    async def fine():
        return None
    with caplog.at_level(logging.ERROR):
        assert process.run_reporting_failure(fails(), "kubelet") == 1
    assert "kubelet: address in use" in caplog.text
    assert process.run_reporting_failure(fine(), "kubelet") == 0
