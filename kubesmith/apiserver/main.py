"""`kube-apiserver`: parse upstream-named flags and serve until SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time

from kubesmith.apiserver import options as flags


class _KlogFormatter(logging.Formatter):
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


def setup_logging(verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KlogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 5 else logging.INFO)
    # One line per request from --v=3 on, as upstream's HTTP trace.
    logging.getLogger("kubesmith.apiserver.http").setLevel(
        logging.INFO if verbosity >= 3 else logging.WARNING)
    for noisy in ("aiohttp.access", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


async def serve(options: flags.Options) -> None:
    from kubesmith.apiserver.server import APIServer
    server = APIServer(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        logging.getLogger(__name__).info("shutting down")
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        options = flags.parse(argv)
    except flags.OptionsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        print("Run 'kube-apiserver --help' for the flags.", file=sys.stderr)
        return 1
    setup_logging(options.v)
    # The watch caches keep many thousands of decoded objects alive, which the default
    # collector thresholds would rescan on every burst of allocations (a LIST decodes a
    # few dicts per item); startup objects are frozen out of the scans altogether.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    try:
        asyncio.run(serve(options))
    except OSError as exc:
        logging.getLogger(__name__).error("cannot serve: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
