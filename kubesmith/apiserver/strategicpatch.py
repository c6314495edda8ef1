"""Strategic merge patch (application/strategic-merge-patch+json), as upstream applies it.

The schema's patch metadata (kubesmith.api.schema) says how each list merges:

  * strategy "merge" with a merge key: items are matched by that key and merged; new
    items are added; `{"<key>": v, "$patch": "delete"}` removes the matching item and an
    item `{"$patch": "replace"}` makes the rest of the patch list replace the list;
  * strategy "merge" without a key (primitives such as finalizers): a set-like union,
    with `$deleteFromPrimitiveList/<field>: [...]` removing values;
  * anything else: the patch list replaces the list.

Maps merge key by key; null deletes a key; `$patch: replace` in a map replaces it,
`$patch: delete` empties it; `$retainKeys: [...]` clears the keys it does not name;
`$setElementOrder/<field>: [...]` fixes the order of a merged list. Values of different
JSON types replace each other. Without a schema (an unknown field) every list replaces.

Ordering of merged lists follows upstream: items named by the patch keep the patch's
order, items only on the server keep theirs, and the two are interleaved by the
server's order where both are known.
"""
from __future__ import annotations

import copy
from typing import Any

from kubesmith.api import schema

DIRECTIVE = "$patch"
RETAIN_KEYS = "$retainKeys"
DELETE_PRIMITIVE = "$deleteFromPrimitiveList"
SET_ORDER = "$setElementOrder"
REPLACE, DELETE, MERGE = "replace", "delete", "merge"


class StrategicPatchError(ValueError):
    """A malformed strategic merge patch (upstream answers 422 or 400)."""


# --- schema walking (memoised: Node.field() re-serialises its schema per call) ---------

_CHILDREN: dict[tuple[int, str], tuple[Any, Any]] = {}


def child(node: "schema.Node | None", key: Any) -> "schema.Node | None":
    """The schema of a field, map value or list item under `node` (None when unknown)."""
    if node is None:
        return None
    cache_key = (id(node), key if node.kind == "object" else "*")
    hit = _CHILDREN.get(cache_key)
    if hit is not None and hit[0] is node:
        return hit[1]
    if node.kind == "object":
        found = node.field(str(key))
    elif node.kind == "map":
        found = node.values
    elif node.kind == "array":
        found = node.items
    else:
        found = None
    if len(_CHILDREN) > 20000:
        _CHILDREN.clear()
    _CHILDREN[cache_key] = (node, found)
    return found


def _list_strategy(node: "schema.Node | None") -> tuple[str, str | None]:
    """("merge" | "replace", merge key) for a list field."""
    if node is None:
        return REPLACE, None
    strategies = node.patch_strategies
    if MERGE in strategies:
        return MERGE, node.merge_key
    return REPLACE, None


def _map_replaces(node: "schema.Node | None") -> bool:
    return node is not None and REPLACE in node.patch_strategies


# --- applying ------------------------------------------------------------------------------

def apply(original: Any, patch: Any, node: "schema.Node | None") -> Any:
    """The patched document (a new object; neither argument is changed)."""
    if not isinstance(patch, dict):
        raise StrategicPatchError("strategic merge patch must be a JSON object")
    base = copy.deepcopy(original) if isinstance(original, dict) else {}
    return _merge_map(base, copy.deepcopy(patch), node)


def _category(value: Any) -> str:
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list):
        return "list"
    return "scalar"


def _merge_map(original: dict, patch: dict, node: "schema.Node | None") -> dict:
    if DIRECTIVE in patch:
        directive = patch.pop(DIRECTIVE)
        if directive == REPLACE:
            return _strip(patch, node)
        if directive == DELETE:
            return {}
        raise StrategicPatchError(f"Unknown patch type: {directive} in map: {patch}")
    _retain_keys(original, patch)
    _set_element_orders(original, patch, node)
    # Deletions from primitive lists first; they never overlap the additions.
    for key in sorted(patch, key=lambda k: not k.startswith(DELETE_PRIMITIVE + "/")):
        value = patch[key]
        if key.startswith(DELETE_PRIMITIVE):
            field = _directive_field(key, DELETE_PRIMITIVE)
            if not isinstance(value, list):
                raise StrategicPatchError("invalid patch: $deleteFromPrimitiveList must be a "
                                          "list")
            if isinstance(original.get(field), list):
                doomed = value
                original[field] = [v for v in original[field] if v not in doomed]
            continue
        if value is None:
            original.pop(key, None)
            continue
        sub = child(node, key)
        if key not in original:
            original[key] = _strip(value, sub)
            continue
        current = original[key]
        if _category(current) != _category(value) or not isinstance(value, (dict, list)):
            original[key] = _strip(value, sub)
        elif isinstance(value, dict):
            original[key] = _strip(value, sub) if _map_replaces(sub) else \
                _merge_map(current, value, sub)
        else:
            original[key] = _merge_list_field(current, value, sub)
    return original


def _directive_field(key: str, prefix: str) -> str:
    head, _, field = key.partition("/")
    if head != prefix or not field:
        raise StrategicPatchError(f"invalid patch: malformed directive key {key!r}")
    return field


def _retain_keys(original: dict, patch: dict) -> None:
    if RETAIN_KEYS not in patch:
        return
    keys = patch.pop(RETAIN_KEYS)
    if not isinstance(keys, list):
        raise StrategicPatchError("invalid patch: $retainKeys must be a list")
    for key, value in patch.items():
        if value is None or key.startswith(DELETE_PRIMITIVE) or key.startswith(SET_ORDER):
            continue
        if key not in keys:
            raise StrategicPatchError("invalid patch: the $retainKeys list must name every "
                                      f"field of the patch (missing {key!r})")
    for key in list(original):
        if key not in keys:
            del original[key]


def _merge_list_field(original: list, patch: list, node: "schema.Node | None") -> list:
    strategy, merge_key = _list_strategy(node)
    if strategy != MERGE:
        return _strip(patch, node)
    return _merge_list(original, patch, node, merge_key)


def _is_map_list(*lists: list) -> bool:
    kinds = {_category(v) for items in lists for v in items}
    if "list" in kinds:
        raise StrategicPatchError("invalid patch: lists of lists cannot be merged")
    if len(kinds) > 1:
        raise StrategicPatchError("invalid patch: list element types are not identical")
    return kinds == {"map"}


def _merge_list(original: list, patch: list, node: "schema.Node | None",
                merge_key: str | None) -> list:
    if not original and not patch:
        return original
    items = child(node, "*")
    if not _is_map_list(original, patch):
        merged = list(original)
        for value in patch:
            if value not in merged:
                merged.append(value)
        return _normalize(merged, patch, original, None)
    if not merge_key:
        raise StrategicPatchError("cannot merge lists without merge key")
    original = list(original)
    plain: list = []
    replace = False
    for item in patch:
        directive = item.get(DIRECTIVE)
        if directive is None:
            plain.append(item)
        elif directive == DELETE:
            if merge_key not in item:
                raise StrategicPatchError(f"map: {item} does not contain declared merge key: "
                                          f"{merge_key}")
            original = [o for o in original if o.get(merge_key) != item[merge_key]]
        elif directive == REPLACE:
            replace = True
        elif directive == MERGE:
            raise StrategicPatchError("merging lists cannot yet be specified in the patch")
        else:
            raise StrategicPatchError(f"Unknown patch type: {directive} in map: {item}")
    if replace:
        return [_strip(item, items) for item in plain]
    server_order = list(original)
    merged = original
    for item in plain:
        if merge_key not in item:
            raise StrategicPatchError(f"map: {item} does not contain declared merge key: "
                                      f"{merge_key}")
        for index, current in enumerate(merged):
            if isinstance(current, dict) and current.get(merge_key) == item[merge_key]:
                merged[index] = _merge_map(current, item, items)
                break
        else:
            merged.append(_strip(item, items))
    return _normalize(merged, plain, server_order, merge_key)


def _identity(item: Any, merge_key: str | None) -> Any:
    return item.get(merge_key) if merge_key and isinstance(item, dict) else item


def _position(order: list, item: Any, merge_key: str | None) -> int:
    wanted = _identity(item, merge_key)
    for index, value in enumerate(order):
        if _identity(value, merge_key) == wanted:
            return index
    return -1


def _normalize(merged: list, patch_order: list, server_order: list,
               merge_key: str | None) -> list:
    """Upstream's order: patch items in patch order, server-only items in server order,
    interleaved where the server's order knows both."""
    wanted = {repr(_identity(p, merge_key)) for p in patch_order}
    from_patch = [m for m in merged if repr(_identity(m, merge_key)) in wanted]
    server_only = [m for m in merged if repr(_identity(m, merge_key)) not in wanted]
    from_patch = _sort_by(from_patch, patch_order, merge_key)
    server_only = _sort_by(server_only, server_order, merge_key)
    return _interleave(server_only, from_patch, server_order, merge_key)


def _sort_by(items: list, order: list, merge_key: str | None) -> list:
    known = [(p, n, v) for n, v in enumerate(items)
             if (p := _position(order, v, merge_key)) >= 0]
    unknown = [v for v in items if _position(order, v, merge_key) < 0]
    return unknown + [v for _, _, v in sorted(known, key=lambda t: (t[0], t[1]))]


def _set_element_orders(original: dict, patch: dict, node: "schema.Node | None") -> None:
    for key in [k for k in patch if k.startswith(SET_ORDER)]:
        order = patch.pop(key)
        field = _directive_field(key, SET_ORDER)
        if not isinstance(order, list):
            raise StrategicPatchError("invalid patch: $setElementOrder must be a list")
        sub = child(node, field)
        strategy, merge_key = _list_strategy(sub)
        in_original = isinstance(original.get(field), list)
        in_patch = isinstance(patch.get(field), list)
        if in_original and in_patch:
            if strategy == MERGE:
                merged = _merge_list(original[field], patch[field], sub, merge_key)
            else:
                merged = _strip(patch[field], sub)
        elif in_original:
            merged = original[field]
        elif in_patch:
            merged = _strip(patch[field], sub)
        else:
            continue
        patch.pop(field, None)
        if merged and _is_map_list(merged) and not merge_key:
            raise StrategicPatchError("cannot merge lists without merge key")
        base = original[field] if in_original else []
        listed = {repr(_identity(o, merge_key)) for o in order}
        from_patch = [m for m in merged if repr(_identity(m, merge_key)) in listed]
        server_only = [m for m in merged if repr(_identity(m, merge_key)) not in listed]
        from_patch = _sort_by(from_patch, order, merge_key)
        server_only = _sort_by(server_only, base, merge_key)
        original[field] = _interleave(server_only, from_patch, base, merge_key)


def _interleave(server_only: list, from_patch: list, server_order: list,
                merge_key: str | None) -> list:
    out: list = []
    i = j = 0
    while i < len(server_only) or j < len(from_patch):
        if i >= len(server_only):
            out.append(from_patch[j])
            j += 1
        elif j >= len(from_patch):
            out.append(server_only[i])
            i += 1
        else:
            left = _position(server_order, server_only[i], merge_key)
            right = _position(server_order, from_patch[j], merge_key)
            if left >= 0 and right >= 0 and left < right:
                out.append(server_only[i])
                i += 1
            else:
                out.append(from_patch[j])
                j += 1
    return out


def _strip(value: Any, node: "schema.Node | None") -> Any:
    """A patch value taken as it is, without directives or nulls (nothing to merge into)."""
    if isinstance(value, dict):
        if DIRECTIVE in value or RETAIN_KEYS in value or any(
                k.startswith((SET_ORDER, DELETE_PRIMITIVE)) for k in value):
            return _merge_map({}, value, node)
        return {k: _strip(v, child(node, k)) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        items = child(node, "*")
        out = []
        for item in value:
            if isinstance(item, dict) and item.get(DIRECTIVE) == DELETE:
                continue
            if isinstance(item, dict) and item.get(DIRECTIVE) == REPLACE and len(item) == 1:
                continue
            out.append(_strip(item, items))
        return out
    return value
