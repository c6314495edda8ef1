"""`kube-scheduler`: the command line upstream's kube-scheduler (and kubeadm) uses.

    kube-scheduler --kubeconfig=/etc/kubernetes/scheduler.conf \
        --authentication-kubeconfig=... --authorization-kubeconfig=... \
        --bind-address=127.0.0.1 --leader-elect=true

Informers start at once (a standby keeps its cache warm); only the holder of the
kube-system/kube-scheduler Lease schedules. Losing the lease ends the process with
status 1, as upstream, for the service manager to restart it. SIGTERM releases the
lease (upstream's ReleaseOnCancel) and exits 0. With --secure-port != 0, /healthz,
/livez, /readyz and /metrics are served over HTTPS with a self-signed certificate made
at start, as upstream does when given none.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import sys
import uuid
from dataclasses import dataclass

from aiohttp import web

from kubesmith import process
from kubesmith.client.events import EventRecorder
from kubesmith.client.informers import InformerFactory
from kubesmith.client.leaderelection import JITTER, LeaderElector
from kubesmith.client.rest import ApiClient
from kubesmith.flags import FlagParser, ip, parse_duration, port_or_zero
from kubesmith.scheduler.metrics import Metrics
from kubesmith.scheduler.scheduler import Scheduler
from kubesmith.serving import self_signed_context

log = logging.getLogger("kube-scheduler")

COMPONENT = "default-scheduler"
SYNC_TIMEOUT = 60.0


@dataclass
class Options:
    kubeconfig: str
    authentication_kubeconfig: str = ""
    authorization_kubeconfig: str = ""
    bind_address: str = "0.0.0.0"
    secure_port: int = 10259
    leader_elect: bool = True
    leader_elect_lease_duration: float = 15.0
    leader_elect_renew_deadline: float = 10.0
    leader_elect_retry_period: float = 2.0
    leader_elect_resource_namespace: str = "kube-system"
    leader_elect_resource_name: str = "kube-scheduler"
    # Upstream's defaults, which protect the API server; scheduling 200+ pods a second
    # (binds and events) needs more: --kube-api-qps/--kube-api-burst.
    kube_api_qps: float = 50.0
    kube_api_burst: int = 100
    v: int = 0


class UsageError(Exception):
    pass


def _parser() -> FlagParser:
    parser = FlagParser("kube-scheduler", "kubesmith's Kubernetes scheduler")
    flag = parser.flag
    flag("--kubeconfig", help_="kubeconfig of the API server (required)")
    flag("--authentication-kubeconfig", help_="accepted for compatibility")
    flag("--authorization-kubeconfig", help_="accepted for compatibility")
    flag("--bind-address", ip, "address /healthz is served on (default 0.0.0.0)")
    flag("--secure-port", port_or_zero, "HTTPS port of /healthz (default 10259; 0 disables)")
    flag("--leader-elect", boolean=True, help_="elect a leader before scheduling "
         "(default true)")
    flag("--leader-elect-lease-duration", parse_duration, "default 15s")
    flag("--leader-elect-renew-deadline", parse_duration, "default 10s")
    flag("--leader-elect-retry-period", parse_duration, "default 2s")
    flag("--leader-elect-resource-namespace", help_="default kube-system")
    flag("--leader-elect-resource-name", help_="default kube-scheduler")
    flag("--kube-api-qps", float, "requests per second to the API server (default 50)")
    flag("--kube-api-burst", int, "burst of requests to the API server (default 100)")
    parser.verbosity_flag()
    return parser


def parse(argv: list[str]) -> Options:
    parser = _parser()
    known, unknown = parser.parse_known_args(argv)
    if unknown:
        raise UsageError(f"unknown flag: {unknown[0].split('=')[0]}")
    values = vars(known)
    if not values.get("kubeconfig"):
        raise UsageError("--kubeconfig is required")
    options = Options(**values)
    if options.leader_elect:
        # Upstream's checks, in its words.
        if options.leader_elect_lease_duration <= options.leader_elect_renew_deadline:
            raise UsageError("leaseDuration must be greater than renewDeadline")
        if options.leader_elect_renew_deadline <= JITTER * options.leader_elect_retry_period:
            raise UsageError("renewDeadline must be greater than retryPeriod*JitterFactor")
    return options


# --- /healthz over HTTPS --------------------------------------------------------------

def health_app(scheduler: Scheduler, elector: LeaderElector | None) -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    metrics = Metrics(scheduler, lambda: elector is None or elector.is_leader())

    async def serve_metrics(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(),
                            headers={"Content-Type": metrics.content_type})

    app = web.Application()
    for path in ("/healthz", "/livez", "/readyz"):
        app.router.add_get(path, ok)
    app.router.add_get("/metrics", serve_metrics)
    return app


# --- running --------------------------------------------------------------------------

async def run(options: Options) -> int:
    client = ApiClient.from_kubeconfig(options.kubeconfig, component="kube-scheduler",
                                       qps=options.kube_api_qps, burst=options.kube_api_burst)
    hostname = socket.gethostname()
    informers = InformerFactory(client)
    recorder = EventRecorder(client, COMPONENT)
    scheduler = Scheduler(client, informers, recorder)
    lost = asyncio.Event()

    elector = None
    if options.leader_elect:
        elector = LeaderElector(
            client, name=options.leader_elect_resource_name,
            namespace=options.leader_elect_resource_namespace,
            identity=f"{hostname}_{uuid.uuid4()}", on_started_leading=scheduler.run,
            on_stopped_leading=lost.set,
            on_new_leader=lambda who: log.info("new leader elected: %s", who),
            lease_duration=options.leader_elect_lease_duration,
            renew_deadline=options.leader_elect_renew_deadline,
            retry_period=options.leader_elect_retry_period)

    runner = None
    if options.secure_port:
        runner = web.AppRunner(health_app(scheduler, elector), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, options.bind_address, options.secure_port,
                           ssl_context=self_signed_context(hostname))
        await site.start()
        log.info("serving /healthz on https://%s:%d", options.bind_address,
                 options.secure_port)

    stopping = process.stop_on_signals()
    status = 0
    try:
        ended = await process.wait_synced_or_stopped(informers, stopping, SYNC_TIMEOUT,
                                                     log=log)
        if ended is not None:
            return ended
        work = asyncio.create_task(elector.run() if elector else scheduler.run(),
                                   name="kube-scheduler")
        # Cancelling the work releases the lease.
        if await process.run_until_stopped(work, stopping):
            log.error("leaderelection lost" if lost.is_set() else
                      f"scheduler ended: {process.task_error(work)!r}")
            status = 1
        else:
            log.info("stopped")
        await scheduler.drain()
    finally:
        await informers.shutdown()
        if runner is not None:
            await runner.cleanup()
        await client.close()
    return status


def setup_logging(verbosity: int) -> None:
    """The components' log lines; below --v=0 only warnings, and aiohttp's access log
    only from --v=4."""
    process.basic_logging(verbosity, level=logging.WARNING if verbosity < 0 else None)
    if verbosity < 4:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    return process.command_main("kube-scheduler", parse, run, argv, usage_errors=UsageError,
                                setup_logging=setup_logging)


if __name__ == "__main__":
    sys.exit(main())
