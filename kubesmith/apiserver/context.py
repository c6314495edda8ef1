"""Per-request state shared by the handlers, and the response helpers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kubesmith.apiserver import negotiation
from kubesmith.apiserver.authn import UserInfo
from kubesmith.apiserver.requestinfo import RequestInfo


@dataclass
class Ctx:
    request: web.Request
    info: RequestInfo
    user: UserInfo
    warnings: list[str] = field(default_factory=list)

    @property
    def query(self):
        return self.request.query

    def param(self, name: str, default: str = "") -> str:
        return self.request.query.get(name, default)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


def warning_headers(ctx: Ctx | None) -> list[tuple[str, str]]:
    if ctx is None:
        return []
    out = []
    for message in ctx.warnings:
        text = message.replace("\\", "\\\\").replace('"', '\\"')
        # A header may carry no control characters (field names come from clients).
        text = "".join(c if c >= " " and c != "\x7f" else "?" for c in text)
        out.append(("Warning", f'299 - "{text}"'))
    return out


def respond(ctx: Ctx | None, body: Any, status: int = 200,
            output: negotiation.Output = negotiation.Output(),
            content_type: str | None = None) -> web.Response:
    data, default_type = negotiation.encode(body, output)
    response = web.Response(body=data, status=status)
    response.headers["Content-Type"] = content_type or default_type
    response.headers["Cache-Control"] = "no-cache, private"
    for name, value in warning_headers(ctx):
        response.headers.add(name, value)
    return response
