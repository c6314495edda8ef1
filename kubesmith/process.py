"""A component process's life, written once for every command: SIGTERM/SIGINT as an
event, the wait for the informers' first sync, running the work until it is told to
stop, and the `main(argv)` around it (usage errors, logging, asyncio.run).

What a component does differently on purpose (its messages when the work ends, what
it leaves behind on the way out) stays in the component; these are only the steps.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine, TypeVar

if TYPE_CHECKING:
    from kubesmith.client.informers import InformerFactory

OptionsT = TypeVar("OptionsT")

log = logging.getLogger(__name__)

BASIC_FORMAT = "%(asctime)s %(levelname).1s %(name)s] %(message)s"


# --- stopping -------------------------------------------------------------------------

def stop_on_signals(stopping: asyncio.Event | None = None) -> asyncio.Event:
    """The event SIGTERM and SIGINT set (handlers on the running loop). A `stopping`
    event passed by the caller (tests stop a component that way) is returned as it is,
    with no handler installed."""
    if stopping is not None:
        return stopping
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    return stopping


async def _until_done_or_stopped(task: asyncio.Task, stopping: asyncio.Event) -> bool:
    """Wait for `task` to end or `stopping` to be set; True when stopping is set."""
    stop = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        await asyncio.gather(stop, return_exceptions=True)
    return stopping.is_set()


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def wait_synced_or_stopped(informers: InformerFactory, stopping: asyncio.Event,
                                 timeout: float, what: str = "informers", *,
                                 log: logging.Logger = log) -> int | None:
    """Start the `informers` and wait until they have synced or `stopping` is set. None
    once they synced (go on); otherwise the exit status to end with: 0 when stopping
    came first, 1 (logged as "<what> did not sync within <timeout>s") when they did not
    sync in time."""
    informers.start()
    synced = asyncio.create_task(informers.wait_for_sync(timeout))
    try:
        if await _until_done_or_stopped(synced, stopping):
            return 0
    finally:
        if not synced.done():
            await _cancel(synced)
    if not synced.result():
        log.error("%s did not sync within %.0fs", what, timeout)
        return 1
    return None


async def run_until_stopped(work: asyncio.Task, stopping: asyncio.Event) -> bool:
    """Run `work` (a task that should never end by itself) until `stopping` is set, then
    cancel it and wait for it. True when the work ended first: the caller says why
    (`task_error(work)`) and exits 1."""
    try:
        stopped = await _until_done_or_stopped(work, stopping)
    finally:
        await _cancel(work)
    return not stopped


async def run_when_synced(informers: InformerFactory, stopping: asyncio.Event,
                          timeout: float, work: Callable[[], Coroutine[Any, Any, Any]], *,
                          name: str, task_name: str | None = None,
                          what: str = "informers", log: logging.Logger = log) -> int:
    """wait_synced_or_stopped, then `work()` as a task (`task_name`, else `name`) under
    run_until_stopped. The exit status: 0 when stopping was set, 1 when the informers
    did not sync in time or the work ended by itself ("<name> ended: <its error>")."""
    ended = await wait_synced_or_stopped(informers, stopping, timeout, what, log=log)
    if ended is not None:
        return ended
    task = asyncio.create_task(work(), name=task_name or name)
    if await run_until_stopped(task, stopping):
        log.error("%s ended: %r", name, task_error(task))
        return 1
    return 0


def task_error(task: asyncio.Task) -> BaseException | None:
    """The exception a finished task ended with; None when it returned or was
    cancelled."""
    return task.exception() if not task.cancelled() else None


async def start_unless_stopped(start: Awaitable[Any], stopping: asyncio.Event) -> bool:
    """Run `start` until it completes or `stopping` is set. True once it completed (a
    start that failed raises its exception here); False when stopping came first (the
    start is cancelled and waited for)."""
    starting = asyncio.ensure_future(start)
    try:
        await _until_done_or_stopped(starting, stopping)
        if starting.done():
            starting.result()
            return True
        return False
    finally:
        if not starting.done():
            await _cancel(starting)


# --- logging --------------------------------------------------------------------------

def basic_logging(verbosity: int, *, level: int | None = None) -> None:
    """`<time> <level letter> <logger>] message` on stderr (logging.basicConfig); debug
    from --v=4, else info, unless `level` is given."""
    if level is None:
        level = logging.DEBUG if verbosity >= 4 else logging.INFO
    logging.basicConfig(level=level, format=BASIC_FORMAT)


class KlogFormatter(logging.Formatter):
    """klog's line header: I1122 15:04:05.123456   1234 module.py:42] message."""

    _LEVELS = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W",
               logging.ERROR: "E", logging.CRITICAL: "F"}

    def format(self, record: logging.LogRecord) -> str:
        moment = time.localtime(record.created)
        stamp = time.strftime("%m%d %H:%M:%S", moment) + f".{int(record.msecs * 1000):06d}"
        head = (f"{self._LEVELS.get(record.levelno, 'I')}{stamp} {os.getpid():7d} "
                f"{record.filename}:{record.lineno}] ")
        text = head + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def klog_logging(verbosity: int) -> None:
    """klog-style lines (KlogFormatter) on stderr, replacing the root logger's handlers;
    debug from --v=5; aiohttp's access log, grpc and asyncio only from warnings up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KlogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 5 else logging.INFO)
    for noisy in ("aiohttp.access", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --- the command ----------------------------------------------------------------------

def command_main(prog: str, parse: Callable[[list[str]], OptionsT],
                 run: Callable[[OptionsT], Awaitable[int]], argv: list[str] | None = None,
                 *, usage_errors: type[Exception] | tuple[type[Exception], ...],
                 setup_logging: Callable[[int], None] = basic_logging) -> int:
    """A component's `main(argv)`: `parse(argv)` (sys.argv[1:] when None); one of
    `usage_errors` prints "Error: ..." and "Run '<prog> --help' for usage." on stderr
    and returns 2. Then `setup_logging(options.v)`, and `run(options)` under
    asyncio.run for the exit status (0 on KeyboardInterrupt)."""
    try:
        options = parse(sys.argv[1:] if argv is None else argv)
    except usage_errors as exc:
        print(f"Error: {exc}", file=sys.stderr)
        print(f"Run '{prog} --help' for usage.", file=sys.stderr)
        return 2
    setup_logging(options.v)
    try:
        return asyncio.run(run(options))
    except KeyboardInterrupt:
        return 0


def run_reporting_failure(main: Coroutine[Any, Any, Any], prog: str, *,
                          log: logging.Logger = log, traceback: bool = False) -> int:
    """asyncio.run(main) as an exit status: 0 when it returns, 130 on KeyboardInterrupt,
    1 when it raises (a start that failed), said in one line "<prog>: <error>" (with the
    traceback when `traceback`)."""
    try:
        asyncio.run(main)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.error("%s: %s", prog, exc, exc_info=traceback)
        return 1
    return 0
