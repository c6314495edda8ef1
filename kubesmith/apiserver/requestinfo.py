"""What a request asks for, from its path and method: the attributes authorization sees.

Resource paths:
    /api/v1[/watch]/[namespaces/{ns}/]{resource}[/{name}[/{subresource}]]
    /apis/{group}/{version}[/watch]/[namespaces/{ns}/]{resource}[/{name}[/{subresource}]]
Everything else (/api, /apis/{group}, /version, /healthz, ...) is a non-resource request
whose verb is the lowercased HTTP method.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from kubesmith.apiserver import selectors

_METHOD_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update",
                 "PATCH": "patch", "DELETE": "delete"}
# namespaces/{name}/{x}: these are subresources of the namespace, not resources inside it.
_NAMESPACE_SUBRESOURCES = {"status", "finalize"}


@dataclass
class RequestInfo:
    path: str
    verb: str
    is_resource: bool = False
    api_prefix: str = ""
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    parts: tuple[str, ...] = ()
    legacy_watch: bool = False
    # name came from fieldSelector=metadata.name=... (authorization only; still a list)
    name_from_selector: bool = False

    @property
    def combined_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def _truthy(value: str | None) -> bool:
    return value in ("1", "true", "True", "TRUE", "t")


def parse(method: str, path: str, query) -> RequestInfo:
    raw_parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    info = RequestInfo(path=path, verb=method.lower())
    if not raw_parts or raw_parts[0] not in ("api", "apis"):
        return info
    prefix = raw_parts[0]
    parts = raw_parts[1:]
    if prefix == "apis":
        if len(parts) < 3:
            return info
        group, version, parts = parts[0], parts[1], parts[2:]
    else:
        if len(parts) < 2:
            return info
        group, version, parts = "", parts[0], parts[1:]
    verb = _METHOD_VERBS.get(method.upper())
    if verb is None:
        return info
    legacy_watch = False
    if parts and parts[0] == "watch":
        if len(parts) < 2:
            return info
        verb, legacy_watch, parts = "watch", True, parts[1:]
    info.is_resource = True
    info.api_prefix = prefix
    info.group, info.version = group, version
    info.legacy_watch = legacy_watch
    if parts[0] == "namespaces":
        if len(parts) > 1:
            info.namespace = parts[1]
            if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
                parts = parts[2:]
    info.parts = tuple(parts)
    info.resource = parts[0]
    if len(parts) >= 2:
        info.name = parts[1]
    if len(parts) >= 3:
        info.subresource = parts[2]
    info.verb = verb
    if not info.name and verb == "get":
        info.verb = "watch" if _truthy(query.get("watch")) else "list"
    if verb == "watch" or info.verb in ("list", "watch"):
        if not info.name:
            try:
                fields = selectors.parse_field_selector(query.get("fieldSelector"))
            except Exception:
                fields = None
            name = fields.exact_name() if fields is not None else None
            if name:
                info.name = name
                info.name_from_selector = True
    if not info.name and verb == "delete":
        info.verb = "deletecollection"
    return info
