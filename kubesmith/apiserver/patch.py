"""PATCH bodies: JSON Patch (RFC 6902), JSON Merge Patch (RFC 7386), strategic merge
patch (strategicpatch.py) and server-side apply configurations (apply.py)."""
from __future__ import annotations

import copy
from typing import Any

import yaml

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
# Upstream's order in its 415 answer.
SUPPORTED = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)


class PatchError(ValueError):
    """The patch cannot be applied (malformed, or a failed test/path): a 422 or 400."""

    def __init__(self, message: str, invalid: bool = True):
        super().__init__(message)
        self.invalid = invalid


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f'invalid JSON pointer "{path}"', invalid=False)
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list, token: str, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"invalid array index {token!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not allow_end):
        raise PatchError(f"array index {index} out of bounds")
    return index


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for token in parts[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"doc is missing path: \"{path}\": missing value")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, False)]
        else:
            raise PatchError(f"doc is missing path: \"{path}\": missing value")
    return node


def _get(doc: Any, path: str) -> Any:
    node = doc
    for token in _pointer(path):
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"doc is missing path: \"{path}\": missing value")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, False)]
        else:
            raise PatchError(f"doc is missing path: \"{path}\": missing value")
    return node


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    token = parts[-1]
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, token, True), value)
    else:
        raise PatchError(f"doc is missing path: \"{path}\": missing value")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    parts = _pointer(path)
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, parts, path)
    token = parts[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise PatchError(f"Unable to remove nonexistent key: {token}: missing value")
        return doc, parent.pop(token)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, token, False))
    raise PatchError(f"doc is missing path: \"{path}\": missing value")


def json_patch(target: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise PatchError("json patch must be a list of operations", invalid=False)
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op:
            raise PatchError("json patch operation must be an object with an \"op\"",
                             invalid=False)
        kind = op["op"]
        path = op.get("path")
        if not isinstance(path, str):
            raise PatchError(f"json patch {kind} operation needs a \"path\"", invalid=False)
        if kind == "add":
            if "value" not in op:
                raise PatchError("add operation does not apply: doc is missing value")
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            if "value" not in op:
                raise PatchError("replace operation does not apply: doc is missing value")
            parts = _pointer(path)
            if not parts:
                doc = copy.deepcopy(op["value"])
                continue
            _get(doc, path)  # must exist
            doc, _ = _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise PatchError(f"{kind} operation needs a \"from\"", invalid=False)
            if kind == "move":
                doc, value = _remove(doc, source)
            else:
                value = copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise PatchError(f"testing value {path} failed: test failed")
        else:
            raise PatchError(f"Unexpected kind: {kind}", invalid=False)
    return doc


def strategic_patch(target: Any, patch: Any, rt=None) -> Any:
    """A strategic merge patch, by the kind's schema (lists replace where it is unknown)."""
    from kubesmith.apiserver import managedfields, strategicpatch
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch must be a JSON object", invalid=False)
    node = managedfields.root_of(rt) if rt is not None else None
    try:
        return strategicpatch.apply(target, patch, node)
    except strategicpatch.StrategicPatchError as exc:
        raise PatchError(str(exc)) from None


def load_yaml(raw: bytes) -> Any:
    """An apply configuration (YAML, or JSON, which YAML reads too)."""
    from kubesmith.apiserver import errors
    try:
        return yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise errors.bad_request(f"error decoding YAML: {exc}") from None
