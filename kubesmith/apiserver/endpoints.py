"""Non-resource endpoints: discovery, /version, health checks, /metrics, /openapi."""
from __future__ import annotations

import asyncio
import platform
import re
import sys
from typing import Awaitable, Callable

import orjson
from aiohttp import web

from kubesmith import __version__
from kubesmith.api import discovery, openapi, openapi_pb
from kubesmith.apiserver import errors, negotiation
from kubesmith.apiserver.context import Ctx, respond

# The Kubernetes API this server implements (kubesmith/api's OpenAPI documents say which).
KUBE_VERSION = openapi.API_VERSION.lstrip("v")
_MAJOR, _MINOR = KUBE_VERSION.split(".")[:2]
# kubesmith's own version as semver build metadata: [0-9A-Za-z-] identifiers only.
_BUILD = re.sub(r"[^0-9A-Za-z.-]", "-", __version__)


def version_info() -> dict:
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {
        "major": _MAJOR, "minor": _MINOR,
        "emulationMajor": _MAJOR, "emulationMinor": _MINOR,
        "minCompatibilityMajor": _MAJOR, "minCompatibilityMinor": str(int(_MINOR) - 1),
        # Build metadata (+...) keeps semver comparisons on the Kubernetes version.
        "gitVersion": f"v{KUBE_VERSION}+kubesmith.{_BUILD}",
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": f"python{sys.version_info.major}.{sys.version_info.minor}",
        "compiler": "cpython", "platform": f"linux/{machine}",
    }


# --- discovery -------------------------------------------------------------------------

_AGGREGATED_VERSIONS = {"v2": discovery.AGGREGATED_CONTENT_TYPE,
                        "v2beta1": discovery.AGGREGATED_V2BETA1_CONTENT_TYPE}


def _aggregated_version(accept: str | None) -> str | None:
    """The apidiscovery version the client asks for first, if it asks for aggregation."""
    for media in negotiation.parse_media_types(accept):
        if media.type in (negotiation.JSON, "*/*", "application/*") and not media.as_:
            return None
        if media.as_ == "APIGroupDiscoveryList" and \
                media.params.get("g") == "apidiscovery.k8s.io" and \
                media.params.get("v") in _AGGREGATED_VERSIONS:
            return media.params["v"]
    return None


class Discovery:
    """Documents built once from the registry (it does not change while running)."""

    def __init__(self, server_address: str):
        self.server_address = server_address
        self._aggregated: dict[tuple[bool, str], bytes] = {}

    def aggregated(self, legacy: bool, version: str) -> bytes:
        key = (legacy, version)
        if key not in self._aggregated:
            doc = discovery.aggregated_discovery(legacy)
            doc["apiVersion"] = f"apidiscovery.k8s.io/{version}"
            self._aggregated[key] = orjson.dumps(doc)
        return self._aggregated[key]

    def handle(self, ctx: Ctx, path: str) -> web.Response | None:
        parts = [p for p in path.split("/") if p]
        accept = ctx.request.headers.get("Accept")
        if parts == ["api"] or parts == ["apis"]:
            version = _aggregated_version(accept)
            legacy = parts == ["api"]
            if version:
                response = web.Response(body=self.aggregated(legacy, version))
                response.headers["Content-Type"] = _AGGREGATED_VERSIONS[version]
                response.headers["Vary"] = "Accept"
                return response
            body = discovery.api_versions(self.server_address) if legacy \
                else discovery.api_group_list()
            response = respond(ctx, body)
            response.headers["Vary"] = "Accept"
            return response
        if len(parts) == 2 and parts[0] == "api":
            body = discovery.api_resource_list("", parts[1])
        elif len(parts) == 2 and parts[0] == "apis":
            body = discovery.api_group(parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            body = discovery.api_resource_list(parts[1], parts[2])
        else:
            return None
        if body is None:
            raise errors.path_not_found()
        return respond(ctx, body)


# --- health ----------------------------------------------------------------------------

Check = Callable[[], Awaitable[str | None]]   # None when healthy, else the reason


class Health:
    def __init__(self) -> None:
        self.checks: dict[str, dict[str, Check]] = {"healthz": {}, "livez": {}, "readyz": {}}

    def add(self, name: str, check: Check, *, live: bool = True, ready: bool = True) -> None:
        self.checks["readyz"][name] = check
        self.checks["healthz"][name] = check
        if live:
            self.checks["livez"][name] = check
        if not ready:
            del self.checks["readyz"][name]

    async def handle(self, ctx: Ctx, path: str) -> web.Response | None:
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] not in self.checks:
            return None
        kind = parts[0]
        checks = self.checks[kind]
        if len(parts) == 2:
            check = checks.get(parts[1])
            if check is None:
                raise errors.path_not_found()
            reason = await _run(check)
            if reason is None:
                return web.Response(text="ok", content_type="text/plain")
            return web.Response(text=f"internal server error: {reason}\n", status=500,
                                content_type="text/plain")
        if len(parts) > 2:
            raise errors.path_not_found()
        excluded = set(ctx.query.getall("exclude", []))
        names = list(checks)
        results = await asyncio.gather(*(_run(checks[n]) for n in names if n not in excluded))
        failed = False
        lines = []
        outcomes = iter(results)
        for name in names:
            if name in excluded:
                lines.append(f"[+]{name} excluded: ok")
                continue
            reason = next(outcomes)
            if reason is None:
                lines.append(f"[+]{name} ok")
            else:
                failed = True
                lines.append(f"[-]{name} failed: reason withheld")
        verbose = "verbose" in ctx.query
        if failed:
            text = "\n".join(lines) + f"\n{kind} check failed\n"
            return web.Response(text=text, status=500, content_type="text/plain")
        if verbose:
            return web.Response(text="\n".join(lines) + f"\n{kind} check passed\n",
                                content_type="text/plain")
        return web.Response(text="ok", content_type="text/plain")


async def _run(check: Check) -> str | None:
    try:
        return await asyncio.wait_for(check(), 5.0)
    except asyncio.TimeoutError:
        return "timed out"
    except Exception as exc:  # a failing check is unhealthy, never a 500 of its own
        return str(exc) or type(exc).__name__


# --- openapi ---------------------------------------------------------------------------

_PROTOBUF_OPENAPI = "application/com.github.proto-openapi.spec.v2"
_PROTOBUF_OPENAPI_RESPONSE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _document_response(ctx: Ctx, doc, immutable: bool,
                       content_type: str = "application/json") -> web.Response:
    etag = f'"{doc.etag}"'
    if ctx.request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    response = web.Response(body=doc.body, headers={"Content-Type": content_type})
    response.headers["ETag"] = etag
    response.headers["Vary"] = "Accept"
    response.headers["Cache-Control"] = "public, immutable" if immutable \
        else "no-cache, private"
    return response


def openapi_response(ctx: Ctx, path: str) -> web.Response | None:
    parts = [p for p in path.split("/") if p]
    if parts[:1] != ["openapi"] or len(parts) < 2:
        return None
    if parts[1] == "v2" and len(parts) == 2:
        accept = ctx.request.headers.get("Accept") or ""
        wants_json = any(m.type in (negotiation.JSON, "*/*", "application/*")
                         for m in negotiation.parse_media_types(accept)) or not accept
        if not wants_json and _PROTOBUF_OPENAPI in accept:
            # kubectl up to 1.29 reads the v2 document only in its protobuf form.
            return _document_response(ctx, openapi_pb.v2_protobuf(), False,
                                      _PROTOBUF_OPENAPI_RESPONSE)
        return _document_response(ctx, openapi.v2_document(), False)
    if parts[1] == "v3":
        if len(parts) == 2:
            response = web.Response(body=openapi.v3_index_body(),
                                    content_type="application/json")
            response.headers["Cache-Control"] = "no-cache, private"
            return response
        doc = openapi.v3_document("/".join(parts[2:]))
        if doc is None:
            raise errors.path_not_found()
        return _document_response(ctx, doc, ctx.query.get("hash") == doc.etag)
    return None
