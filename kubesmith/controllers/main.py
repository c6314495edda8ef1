"""`kube-controller-manager`: parse upstream-named flags, serve /healthz over HTTPS, and
run the controllers (manager.py) until SIGTERM/SIGINT.

Exit codes: 0 after SIGTERM/SIGINT (the Lease is released first), 1 when leadership is
lost or the manager cannot run, 2 for a bad command line.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
import tempfile

from aiohttp import web

from kubesmith.apiserver.main import setup_logging
from kubesmith.controllers import options as flags

log = logging.getLogger(__name__)


def self_signed_context(host: str) -> ssl.SSLContext:
    """A serving context with a fresh self-signed certificate, as upstream makes one in
    memory when no --tls-cert-file is given (Python's ssl loads keys only from files, so
    they exist on disk just long enough to be loaded)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{host}@{int(now.timestamp())}")])
    alt_names = [x509.DNSName(host), x509.DNSName("localhost"),
                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .sign(key, hashes.SHA256()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="kcm-serving-") as folder:
        cert_file, key_file = os.path.join(folder, "tls.crt"), os.path.join(folder, "tls.key")
        with open(cert_file, "wb") as out:
            out.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        context.load_cert_chain(cert_file, key_file)
    return context


class HealthServer:
    """/healthz, /livez and /readyz on --bind-address:--secure-port (upstream allows
    these paths without authentication); --secure-port=0 serves nothing."""

    def __init__(self, options: flags.Options):
        self.options = options
        self.leader_election = None     # a LeaderElector, when there is one
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        if not self.options.secure_port:
            return
        app = web.Application()
        for path in ("/healthz", "/livez", "/readyz"):
            app.router.add_get(path, self._ok)
            app.router.add_get(path + "/{check}", self._ok)
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

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


async def serve(options: flags.Options) -> int:
    from kubesmith.controllers.manager import run_process
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run_process(options, stop)


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
    setup_logging(options.v)
    from kubesmith.controllers.manager import load_controllers
    from kubesmith.controllers.options import check_controller_names
    problems = check_controller_names(options.controllers, load_controllers())
    if problems:
        print(f"Error: {'; '.join(problems)}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(options))
    except OSError as exc:
        log.error("cannot run: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
