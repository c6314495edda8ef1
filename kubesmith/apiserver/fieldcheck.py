"""fieldValidation: unknown and duplicate fields, and values of the wrong JSON type.

Strict (kubectl's default) refuses the request with 400 BadRequest; Warn drops unknown
fields and answers with `Warning: 299 - "unknown field ..."` headers; Ignore drops them
silently, as upstream (whose decoder cannot keep fields its types lack). Wrong JSON
types are always a 400. Schemas come from kubesmith/api/schema.py; a kind without a
schema is taken as it is.
"""
from __future__ import annotations

import logging
from typing import Any

from kubesmith.api import schema
from kubesmith.api.registry import ResourceType
from kubesmith.apiserver import errors, negotiation

log = logging.getLogger(__name__)


def _cannot_handle(rt: ResourceType, detail: str) -> errors.APIError:
    return errors.bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a '
                              f"{rt.kind}: {detail}")


def _root(rt: ResourceType):
    try:
        return schema.root(rt)
    except KeyError:
        return None


def check(ctx, rt: ResourceType, raw: bytes, content_type: str | None, obj: Any,
          mode: str) -> Any:
    """A decoded request body (duplicates looked for in the raw bytes); the object to use."""
    duplicates = negotiation.duplicate_fields(raw, content_type) if mode != "Ignore" else []
    return _report(ctx, rt, obj, mode, duplicates)


def check_object(ctx, rt: ResourceType, obj: Any, mode: str) -> Any:
    """An object built by the server (a patch result): unknown fields and types only."""
    return _report(ctx, rt, obj, mode, [])


def _report(ctx, rt: ResourceType, obj: Any, mode: str, duplicates: list[str]) -> Any:
    root = _root(rt)
    if root is None:
        return obj
    if schema.clean(rt, obj):
        # Nothing unknown and nothing mistyped (most requests): only duplicates to report.
        unknown: list[str] = []
    else:
        unknown = _problems(rt, obj)
    if mode == "Strict":
        messages = [f'unknown field "{p}"' for p in unknown] + \
                   [f'duplicate field "{p}"' for p in duplicates]
        if messages:
            raise _cannot_handle(rt, "strict decoding error: " + ", ".join(messages))
        return obj
    if mode == "Warn":
        for path in unknown:
            ctx.warn(f'unknown field "{path}"')
        for path in duplicates:
            ctx.warn(f'duplicate field "{path}"')
    if unknown:
        _prune(root, obj)
    return obj


def _problems(rt: ResourceType, obj: Any) -> list[str]:
    """The unknown fields of obj; a 400 for the first value of the wrong type."""
    type_errors = schema.type_errors(rt, obj)
    if type_errors:
        raise _cannot_handle(rt, type_errors[0])
    return schema.unknown_fields(rt, obj)


def _prune(node, value: Any) -> None:
    """Drop, in place, every field the schema does not know (what Go's decoder does)."""
    if node is None or node.preserve_unknown or node.kind in ("any", "int-or-string",
                                                                "quantity"):
        return
    if node.kind == "object" and isinstance(value, dict):
        for key in list(value):
            child = node.field(key)
            if child is None:
                del value[key]
            else:
                _prune(child, value[key])
    elif node.kind == "map" and isinstance(value, dict) and node.values is not None:
        for item in value.values():
            _prune(node.values, item)
    elif node.kind == "array" and isinstance(value, list) and node.items is not None:
        for item in value:
            _prune(node.items, item)
