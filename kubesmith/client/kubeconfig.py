"""Load a kubeconfig into what a client needs: server URL, TLS context, bearer token.

Certificates and keys may be embedded (`*-data`, base64) or given as files, as kubectl
allows. Python's ssl module loads client keys only from files, so embedded ones are
written to a private temporary folder just long enough to be loaded.

`in_cluster()` is the same for a process running in a pod: the service account's token
and CA from /var/run/secrets/kubernetes.io/serviceaccount and the API server's address
from KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT.
"""
from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml


class KubeconfigError(ValueError):
    pass


@dataclass(frozen=True)
class ClientConfig:
    server: str
    ssl_context: ssl.SSLContext
    token: str | None = None
    user: str = ""
    # Where the token came from: projected service-account tokens are rotated, so
    # clients read this file again from time to time.
    token_file: str | None = None
    # The PEM of the certificate authorities the server is verified with, if given.
    ca_data: bytes | None = None

    def with_token(self, token: str) -> "ClientConfig":
        """The same server and server verification, authenticating by `token` alone.

        No client certificate is offered: the API server's x509 authenticator runs
        before token authentication, so a certificate would decide who the client is.
        """
        source = self.ssl_context
        # Trust exactly what the original context trusts, no more.
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.verify_flags = source.verify_flags
        if authorities := source.get_ca_certs(binary_form=True):
            tls.load_verify_locations(cadata=b"".join(authorities))
        if self.ca_data:
            tls.load_verify_locations(cadata=self.ca_data.decode())
        tls.check_hostname = source.check_hostname
        tls.verify_mode = source.verify_mode
        tls.minimum_version = source.minimum_version
        return ClientConfig(server=self.server, ssl_context=tls, token=token,
                            user=self.user, ca_data=self.ca_data)


def _named(items: list[dict] | None, name: str, what: str, source: Path) -> dict:
    for item in items or []:
        if item.get("name") == name:
            return item.get(what) or {}
    raise KubeconfigError(f"{source}: no {what} named {name!r}")


def _pem(entry: dict, key: str, base: Path) -> bytes | None:
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    if entry.get(key):
        path = Path(entry[key])
        return (path if path.is_absolute() else base / path).read_bytes()
    return None


def load(path: str | os.PathLike, context: str | None = None) -> ClientConfig:
    source = Path(path)
    try:
        config = yaml.safe_load(source.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise KubeconfigError(f"cannot read kubeconfig {source}: {exc}") from None
    context_name = context or config.get("current-context")
    if not context_name:
        raise KubeconfigError(f"{source}: no current-context")
    ctx = _named(config.get("contexts"), context_name, "context", source)
    cluster = _named(config.get("clusters"), ctx.get("cluster", ""), "cluster", source)
    user = _named(config.get("users"), ctx.get("user", ""), "user", source)
    base = source.parent

    tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca = _pem(cluster, "certificate-authority", base)
    if ca:
        tls.load_verify_locations(cadata=ca.decode())
    if cluster.get("insecure-skip-tls-verify"):
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    cert, key = _pem(user, "client-certificate", base), _pem(user, "client-key", base)
    if cert and key:
        with tempfile.TemporaryDirectory(prefix="kubeconfig-") as private:
            cert_file, key_file = Path(private, "tls.crt"), Path(private, "tls.key")
            for file, data in ((cert_file, cert), (key_file, key)):
                fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
            tls.load_cert_chain(cert_file, key_file)
    token = user.get("token")
    token_file = None
    if not token and user.get("tokenFile"):
        token_file = user["tokenFile"]
        token = Path(token_file).read_text().strip()
    server = cluster.get("server")
    if not server:
        raise KubeconfigError(f"{source}: cluster of context {context_name!r} has no server")
    return ClientConfig(server=server.rstrip("/"), ssl_context=tls, token=token,
                        user=ctx.get("user", ""), token_file=token_file, ca_data=ca)


SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def in_cluster(directory: str | os.PathLike = SERVICE_ACCOUNT_DIR,
               environ: dict[str, str] | None = None) -> ClientConfig:
    """The config of a process running in a pod (client-go's rest.InClusterConfig)."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeconfigError("not running in a cluster: KUBERNETES_SERVICE_HOST and "
                              "KUBERNETES_SERVICE_PORT must be set")
    if ":" in host:   # an IPv6 address
        host = f"[{host}]"
    folder = Path(directory)
    token_file = folder / "token"
    try:
        token = token_file.read_text().strip()
        ca = (folder / "ca.crt").read_bytes()
        tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca.decode())
    except OSError as exc:
        raise KubeconfigError(f"cannot read the service account in {folder}: {exc}") from None
    return ClientConfig(server=f"https://{host}:{port}", ssl_context=tls, token=token,
                        user="serviceaccount", token_file=str(token_file), ca_data=ca)


def in_cluster_namespace(directory: str | os.PathLike = SERVICE_ACCOUNT_DIR) -> str:
    """The namespace of the pod this process runs in ("default" when unknown)."""
    try:
        return Path(directory, "namespace").read_text().strip() or "default"
    except OSError:
        return "default"
