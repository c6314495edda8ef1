"""Rendering and reading of kubeconfig files with embedded credentials.

Only the pure text side lives here: which certificates go into which kubeconfig,
and where the files are written, is decided by `provision.pki.ensure_kubeconfigs`.

The output mirrors what kubeadm and kubectl write (keys sorted, one cluster, one
user, one context named "<user>@<cluster>"), and is byte-for-byte deterministic for
the same inputs, so re-rendering an unchanged kubeconfig never shows up as a change
during a deploy.
"""
from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass

import yaml


class KubeconfigError(ValueError):
    """A kubeconfig could not be parsed or lacks the expected fields."""


def server_url(host: str, port: int) -> str:
    """https URL for an API server endpoint; IPv6 literals are bracketed."""
    host = host.strip("[]")
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a DNS name
    return f"https://{host}:{port}"


def context_name(user: str, cluster_name: str) -> str:
    return f"{user}@{cluster_name}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def render(
    *,
    cluster_name: str,
    server: str,
    ca_pem: bytes,
    user: str,
    client_cert_pem: bytes,
    client_key_pem: bytes,
) -> str:
    """Kubeconfig text for one user of one cluster, credentials embedded."""
    context = context_name(user, cluster_name)
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {
                    "certificate-authority-data": _b64(ca_pem),
                    "server": server,
                },
            }
        ],
        "contexts": [
            {"name": context, "context": {"cluster": cluster_name, "user": user}}
        ],
        "current-context": context,
        "preferences": {},
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client_cert_pem),
                    "client-key-data": _b64(client_key_pem),
                },
            }
        ],
    }
    # sort_keys gives the same key order kubectl uses; the unbounded width keeps
    # the long base64 strings on one line.
    return yaml.safe_dump(
        document, default_flow_style=False, sort_keys=True, width=float("inf")
    )


@dataclass(frozen=True)
class EmbeddedUser:
    """A user entry of a kubeconfig whose client certificate is embedded."""

    name: str
    client_cert_pem: bytes
    client_key_pem: bytes | None


def parse(text: str) -> dict:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"not valid YAML: {exc}") from exc
    if not isinstance(document, dict) or document.get("kind") != "Config":
        raise KubeconfigError("not a kubeconfig (kind: Config missing)")
    return document


def embedded_users(text: str) -> list[EmbeddedUser]:
    """Users of a kubeconfig that carry an embedded client certificate.

    Users authenticating by token, exec plugin or certificate file path are skipped.
    """
    users = []
    for entry in parse(text).get("users") or []:
        credentials = (entry or {}).get("user") or {}
        cert_data = credentials.get("client-certificate-data")
        if not cert_data:
            continue
        key_data = credentials.get("client-key-data")
        try:
            users.append(
                EmbeddedUser(
                    name=str(entry.get("name", "")),
                    client_cert_pem=base64.b64decode(cert_data, validate=True),
                    client_key_pem=(
                        base64.b64decode(key_data, validate=True) if key_data else None
                    ),
                )
            )
        except ValueError as exc:
            raise KubeconfigError(f"bad base64 in user {entry.get('name')!r}") from exc
    return users
