"""`kube-controller-manager`: parse upstream-named flags, serve /healthz over HTTPS, and
run the controllers (manager.py) until SIGTERM/SIGINT.

Exit codes: 0 after SIGTERM/SIGINT (the Lease is released first), 1 when leadership is
lost or the manager cannot run, 2 for a bad command line.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import sys

from aiohttp import web

from kubesmith import process
from kubesmith.client.kubeconfig import KubeconfigError
from kubesmith.controllers import options as flags
from kubesmith.serving import self_signed_context

log = logging.getLogger(__name__)


class HealthServer:
    """/healthz, /livez, /readyz and /metrics on --bind-address:--secure-port (upstream
    allows the health paths without authentication); --secure-port=0 serves nothing.
    Without --tls-cert-file the certificate is self-signed, made at start."""

    def __init__(self, options: flags.Options):
        self.options = options
        self.leader_election = None     # a LeaderElector, when there is one
        self.manager = None             # the ControllerManager, for /metrics
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        if not self.options.secure_port:
            return
        app = web.Application()
        for path in ("/healthz", "/livez", "/readyz"):
            app.router.add_get(path, self._ok)
            app.router.add_get(path + "/{check}", self._ok)
        app.router.add_get("/metrics", self._metrics)
        if self.options.tls_cert_file and self.options.tls_private_key_file:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.options.tls_cert_file, self.options.tls_private_key_file)
        else:
            context = self_signed_context(socket.gethostname())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.bind_address, self.options.secure_port,
                           ssl_context=context)
        await site.start()
        self.port = self.options.secure_port
        log.info("serving /healthz on https://%s:%d", self.options.bind_address, self.port)

    async def _ok(self, request: web.Request) -> web.Response:
        check = request.match_info.get("check")
        if check not in (None, "ping", "leaderElection"):
            return web.Response(status=404, text="404 page not found\n")
        return web.Response(text="ok", content_type="text/plain")

    async def _metrics(self, request: web.Request) -> web.Response:
        elector = self.leader_election
        leading = 1 if elector is None or elector.is_leader() else 0
        lines = ["# TYPE leader_election_master_status gauge",
                 f'leader_election_master_status{{name="kube-controller-manager"}} {leading}']
        manager = self.manager
        if manager is not None:
            lines.append("# TYPE workqueue_depth gauge")
            for controller in manager.controllers.values():
                queue = getattr(controller, "queue", None)
                if queue is not None and getattr(queue, "name", ""):
                    lines.append(f'workqueue_depth{{name="{queue.name}"}} {len(queue)}')
            lines.append("# TYPE kubesmith_controller_restarts_total counter")
            for name, count in sorted(manager.restarts.items()):
                lines.append(f'kubesmith_controller_restarts_total{{controller="{name}"}} '
                             f"{count}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain",
                            charset="utf-8")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


async def serve(options: flags.Options) -> int:
    from kubesmith.controllers.manager import run_process
    return await run_process(options, process.stop_on_signals())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(flags.usage())
        return 0
    try:
        options = flags.parse(argv)
    except flags.OptionsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        print("Run 'kube-controller-manager --help' for the flags.", file=sys.stderr)
        return 2
    process.klog_logging(options.v)
    from kubesmith.controllers.manager import load_controllers
    from kubesmith.controllers.options import check_controller_names
    problems = check_controller_names(options.controllers, load_controllers())
    if problems:
        print(f"Error: {'; '.join(problems)}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(options))
    except (OSError, KubeconfigError) as exc:
        log.error("cannot run: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
