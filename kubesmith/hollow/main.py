"""`kubesmith-hollow`: N simulated nodes until SIGTERM/SIGINT.

SIGTERM stops every heartbeat and pod handling at once (the Nodes stay and go NotReady,
as when kubelets die); the nodes' objects are left for the node lifecycle controller.
"""
from __future__ import annotations

import argparse
import logging
import sys

from kubesmith import process
from kubesmith.client.rest import ApiClient
from kubesmith.hollow.nodes import HollowConfig, HollowNodes
from kubesmith.hollow.objects import parse_duration, parse_labels, parse_taints

log = logging.getLogger("kubesmith.hollow")


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than zero")
    return seconds


def _labels(text: str) -> dict[str, str]:
    try:
        return parse_labels(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _taints(text: str) -> list[dict]:
    try:
        return parse_taints(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kubesmith-hollow", description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the API server")
    parser.add_argument("--nodes", type=int, default=1, help="how many nodes (1)")
    parser.add_argument("--name-prefix", default="hollow-node-",
                        help="node names are <prefix><index> (hollow-node-)")
    parser.add_argument("--start-index", type=int, default=0,
                        help="first index (0); separate processes take separate ranges")
    parser.add_argument("--cpu", default="4", help="CPU capacity of each node (4)")
    parser.add_argument("--memory", default="16Gi", help="memory capacity (16Gi)")
    parser.add_argument("--pods", default="110", help="pod capacity (110)")
    parser.add_argument("--labels", type=_labels, default={},
                        help="more node labels, k=v,k2=v2")
    parser.add_argument("--register-with-taints", type=_taints, default=[],
                        help="taints the nodes register with, key=value:Effect,...")
    parser.add_argument("--heartbeat", type=_duration, default=10.0,
                        help="lease renewal period (10s)")
    parser.add_argument("--node-status-report-frequency", type=_duration, default=60.0,
                        help="status heartbeat period when nothing changed (1m)")
    parser.add_argument("--workers", type=int, default=32,
                        help="pod status writes in flight (32)")
    parser.add_argument("--kube-api-qps", type=float, default=500.0,
                        help="requests a second to the API server (500)")
    parser.add_argument("--kube-api-burst", type=int, default=1000, help="burst (1000)")
    parser.add_argument("--v", type=int, default=2, help="log verbosity")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.start_index < 0 or args.workers < 1:
        parser.error("--nodes and --workers must be positive, --start-index not negative")
    return args


async def run(args: argparse.Namespace) -> None:
    config = HollowConfig(count=args.nodes, name_prefix=args.name_prefix,
                          start_index=args.start_index, cpu=args.cpu, memory=args.memory,
                          pods=args.pods, labels=args.labels,
                          taints=args.register_with_taints, heartbeat=args.heartbeat,
                          status_interval=args.node_status_report_frequency,
                          workers=args.workers)
    stop = process.stop_on_signals()
    async with ApiClient.from_kubeconfig(args.kubeconfig, component="kubesmith-hollow",
                                         qps=args.kube_api_qps,
                                         burst=args.kube_api_burst) as client:
        nodes = HollowNodes(client, config)
        try:
            if await process.start_unless_stopped(nodes.start(), stop):
                log.info("running %d hollow nodes", args.nodes)
                await stop.wait()
        finally:
            log.info("stopping: %s", nodes.counts)
            await nodes.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    process.klog_logging(args.v)
    return process.run_reporting_failure(run(args), "kubesmith-hollow", log=log)


if __name__ == "__main__":
    sys.exit(main())
