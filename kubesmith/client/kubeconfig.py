"""Load a kubeconfig into what a client needs: server URL, TLS context, bearer token.

Certificates and keys may be embedded (`*-data`, base64) or given as files, as kubectl
allows. Python's ssl module loads client keys only from files, so embedded ones are
written to a private temporary folder just long enough to be loaded.
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
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    server = cluster.get("server")
    if not server:
        raise KubeconfigError(f"{source}: cluster of context {context_name!r} has no server")
    return ClientConfig(server=server.rstrip("/"), ssl_context=tls, token=token,
                        user=ctx.get("user", ""))
