"""Registry credentials for image pulls from a pod's imagePullSecrets, as upstream's
credential provider keyring matches them.

    auths = credentials_for("registry.example.com/team/app:1", secrets)
    # -> [api.AuthConfig(username=..., password=...), ...] to try in order

Secrets of type kubernetes.io/dockerconfigjson (`{"auths": {registry: {...}}}`) and
kubernetes.io/dockercfg (`{registry: {...}}`) are read; an entry matches when its
registry host (scheme and path dropped; index.docker.io and registry-1.docker.io are
docker.io) is the image's, and its path, when it has one, is a prefix of the image's
repository. More specific entries come first, as upstream tries them.
"""
from __future__ import annotations

import base64
import json
from typing import Any

from kubesmith.cri import api

Obj = dict[str, Any]
DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io", DOCKER_HUB}


def _host(name: str) -> str:
    return DOCKER_HUB if name in _DOCKER_HUB_ALIASES else name


def split_image(image: str) -> tuple[str, str]:
    """(registry host, repository path) of an image reference."""
    name = image.split("@", 1)[0]
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = DOCKER_HUB, name if "/" in name else f"library/{name}"
    last = path.rsplit("/", 1)
    if ":" in last[-1]:
        path = path[:path.rindex(":")]
    return _host(host), path


def _entry_key(key: str) -> tuple[str, str]:
    text = key.split("://", 1)[-1].rstrip("/")
    host, _, path = text.partition("/")
    if host in _DOCKER_HUB_ALIASES and path in ("v1", "v2", ""):
        path = ""
    return _host(host), path


def _entries(secret: Obj) -> dict[str, Obj]:
    data = secret.get("data") or {}
    try:
        if secret.get("type") == "kubernetes.io/dockerconfigjson" and ".dockerconfigjson" in data:
            return json.loads(base64.b64decode(data[".dockerconfigjson"])).get("auths") or {}
        if secret.get("type") == "kubernetes.io/dockercfg" and ".dockercfg" in data:
            return json.loads(base64.b64decode(data[".dockercfg"])) or {}
    except (ValueError, TypeError, AttributeError):
        return {}
    return {}


def credentials_for(image: str, secrets: list[Obj]) -> list[Any]:
    """The api.AuthConfigs of `secrets` that fit `image`, most specific first."""
    host, path = split_image(image)
    found: list[tuple[int, Any]] = []
    for secret in secrets:
        for key, entry in _entries(secret).items():
            if not isinstance(entry, dict):
                continue
            entry_host, entry_path = _entry_key(key)
            if entry_host != host:
                continue
            if entry_path and not (path == entry_path or path.startswith(entry_path + "/")):
                continue
            username, password = entry.get("username", ""), entry.get("password", "")
            if entry.get("auth") and not username:
                try:
                    username, _, password = base64.b64decode(entry["auth"]).decode() \
                        .partition(":")
                except (ValueError, UnicodeDecodeError):
                    continue
            auth = api.AuthConfig(username=username, password=password,
                                  identity_token=entry.get("identitytoken", ""),
                                  registry_token=entry.get("registrytoken", ""))
            found.append((len(entry_path), auth))
    found.sort(key=lambda item: item[0], reverse=True)
    return [auth for _, auth in found]
