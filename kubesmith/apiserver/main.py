"""`kube-apiserver`: parse upstream-named flags and serve until SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import gc
import logging
import sys

from kubesmith import process
from kubesmith.apiserver import options as flags


def setup_logging(verbosity: int) -> None:
    """klog-style lines (kubesmith/process.py); one line per request from --v=3 on, as
    upstream's HTTP trace."""
    process.klog_logging(verbosity)
    logging.getLogger("kubesmith.apiserver.http").setLevel(
        logging.INFO if verbosity >= 3 else logging.WARNING)


async def serve(options: flags.Options) -> None:
    from kubesmith.apiserver.server import APIServer
    server = APIServer(options)
    stop = process.stop_on_signals()
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
