"""API errors: every failure a client sees is a metav1 Status with upstream's reason and code."""
from __future__ import annotations

from typing import Any

from kubesmith.api.registry import FieldError


class APIError(Exception):
    """Raised anywhere in request handling; the server answers with `status()`."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "message": self.message}
        if self.reason:
            body["reason"] = self.reason
        if self.details is not None:
            # Even empty: clients tell "no such endpoint" (details without a name) from
            # "no such object" by it (kubectl debug, for one, reads details.name).
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(name: str | None, group: str, resource: str, **more) -> dict:
    details: dict[str, Any] = {}
    if name:
        details["name"] = name
    details["group"] = group
    details["kind"] = resource
    details.update(more)
    return details


def _qualified(resource: str, group: str) -> str:
    """Upstream's GroupResource string: "configmaps", "deployments.apps"."""
    return f"{resource}.{group}" if group else resource


def bad_request(message: str) -> APIError:
    return APIError(400, "BadRequest", message)


def unauthorized(message: str = "Unauthorized") -> APIError:
    return APIError(401, "Unauthorized", message)


def forbidden(resource: str, group: str, name: str, reason: str) -> APIError:
    target = _qualified(resource, group) or ""
    if name:
        message = f'{target} "{name}" is forbidden: {reason}'
    elif target:
        message = f"{target} is forbidden: {reason}"
    else:
        message = f"forbidden: {reason}"
    return APIError(403, "Forbidden", message, _details(name, group, resource))


def not_found(resource: str, group: str, name: str) -> APIError:
    return APIError(404, "NotFound", f'{_qualified(resource, group)} "{name}" not found',
                    _details(name, group, resource))


def path_not_found() -> APIError:
    return APIError(404, "NotFound", "the server could not find the requested resource", {})


def method_not_allowed(method: str, what: str) -> APIError:
    return APIError(405, "MethodNotAllowed",
                    f"the server does not allow this method on the requested resource"
                    f" ({method} {what})" if what else
                    "the server does not allow this method on the requested resource")


def already_exists(resource: str, group: str, name: str) -> APIError:
    return APIError(409, "AlreadyExists",
                    f'{_qualified(resource, group)} "{name}" already exists',
                    _details(name, group, resource))


def conflict(resource: str, group: str, name: str, reason: str) -> APIError:
    return APIError(409, "Conflict",
                    f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": '
                    f"{reason}", _details(name, group, resource))


MODIFIED = ("the object has been modified; please apply your changes to the latest version "
            "and try again")


def gone(message: str) -> APIError:
    return APIError(410, "Gone", message)


def expired(message: str) -> APIError:
    return APIError(410, "Expired", message)


def too_large_rv(message: str = "Too large resource version") -> APIError:
    # Upstream: 504 Timeout with a ResourceVersionTooLarge cause; clients retry.
    return APIError(504, "Timeout", message,
                    {"causes": [{"reason": "ResourceVersionTooLarge", "message": message}],
                     "retryAfterSeconds": 1}, {"Retry-After": "1"})


def unsupported_media_type(content_type: str, accepted: list[str]) -> APIError:
    return APIError(415, "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media "
                    f"types include: {', '.join(accepted)}")


def not_acceptable(accepted: list[str]) -> APIError:
    return APIError(406, "NotAcceptable",
                    "only the following media types are accepted: " + ", ".join(accepted))


def invalid(kind: str, group: str, name: str, errors: list[FieldError]) -> APIError:
    causes = [{"reason": e.reason, "message": e.message, "field": e.field} for e in errors]
    summary = ", ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors)
    if len(errors) > 1:
        summary = f"[{summary}]"
    qualified = f"{kind}.{group}" if group else kind
    details = _details(name, group, kind, causes=causes)
    return APIError(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details)


def request_too_large(message: str) -> APIError:
    return APIError(413, "RequestEntityTooLarge", message)


def too_many_requests() -> APIError:
    return APIError(429, "TooManyRequests",
                    "Too many requests, please try again later.",
                    {"retryAfterSeconds": 1}, {"Retry-After": "1"})


def internal(message: str) -> APIError:
    return APIError(500, "InternalError", f"Internal error occurred: {message}",
                    {"causes": [{"message": message}]})


def unavailable(message: str) -> APIError:
    return APIError(503, "ServiceUnavailable", message, {"retryAfterSeconds": 1},
                    {"Retry-After": "1"})


def timeout(message: str) -> APIError:
    return APIError(504, "Timeout", message)
