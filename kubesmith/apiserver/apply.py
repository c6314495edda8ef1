"""Server-side apply: PATCH with application/apply-patch+yaml.

The applied configuration is merged into the live object by the schema (structs and
granular maps field by field, associative lists by their keys, sets as unions, atomic
values replaced). The applier then owns exactly the fields of its configuration:
  * fields another manager owns and this apply changes are conflicts (409 Conflict,
    one FieldManagerConflict cause each) unless `force=true`, which takes them over;
  * fields the applier owned before, no longer in its configuration and owned by no one
    else are removed from the object.
A missing object is created from the configuration, as upstream does. Defaults are
applied after the merge, so defaulted fields belong to nobody.
"""
from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

from kubesmith.api import validation
from kubesmith.api.registry import ResourceType
from kubesmith.apiserver import errors, managedfields as mf, objectmeta
from kubesmith.apiserver.managedfields import _MISSING, Entry, FieldSet, Path
from kubesmith.apiserver.strategicpatch import child

if TYPE_CHECKING:
    from kubesmith.apiserver.context import Ctx
    from kubesmith.apiserver.rest import Target
    from kubesmith.apiserver.server import APIServer

Obj = dict[str, Any]


class Conflicts(Exception):
    def __init__(self, conflicts: list[tuple[Entry, Path]]):
        super().__init__("apply conflicts")
        self.conflicts = conflicts


# --- merging -----------------------------------------------------------------------------------

def merge(node, live: Any, config: Any) -> Any:
    """The configuration merged into the live value (neither is changed)."""
    shape = mf._shape(node, config)
    if config is None or shape == mf.LEAF:
        return copy.deepcopy(config)
    if shape in (mf.STRUCT, mf.MAP):
        out = dict(live) if isinstance(live, dict) else {}
        for key, value in config.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(child(node, key), out.get(key, _MISSING), value)
        return out
    return _merge_list(node, live if isinstance(live, list) else [], config)


def _merge_list(node, live: list, config: list) -> list:
    """Upstream's order: live-only items stay where they are, shared and new items
    follow the configuration's order."""
    items = child(node, "*")
    lhs = mf._items(node, live)
    rhs = mf._items(node, config)
    lhs_order, rhs_order = list(lhs), list(rhs)
    shared = [e for e in rhs_order if e in lhs]
    next_shared = shared.pop(0) if shared else None
    out: list = []

    def take(element: str, left: Any, right: Any) -> None:
        if right is _MISSING:
            out.append(copy.deepcopy(left))
        elif mf._shape(node, config) == mf.SET:
            out.append(copy.deepcopy(right))
        else:
            out.append(merge(items, left, right))

    li = ri = 0
    while li < len(lhs_order) or ri < len(rhs_order):
        if li < len(lhs_order) and ri < len(rhs_order):
            element = lhs_order[li]
            if element == rhs_order[ri]:
                take(element, lhs[element], rhs[element])
                li += 1
                ri += 1
                next_shared = shared.pop(0) if shared else None
                continue
            if element in rhs and next_shared is not None and next_shared != element:
                li += 1
                continue
        if li < len(lhs_order):
            element = lhs_order[li]
            if element not in rhs:
                take(element, lhs[element], _MISSING)
                li += 1
                continue
        if ri < len(rhs_order):
            element = rhs_order[ri]
            take(element, lhs.get(element, _MISSING), rhs[element])
            ri += 1
            if next_shared is not None and next_shared == element:
                next_shared = shared.pop(0) if shared else None
    return out


# --- removing fields ---------------------------------------------------------------------------

def remove_paths(node, obj: Obj, paths: FieldSet) -> None:
    """Deletes, in place, the fields at `paths` (deepest first); empty maps and lists
    they leave behind go too."""
    for path in sorted(paths, key=len, reverse=True):
        _remove(node, obj, path)


def _remove(node, value: Any, path: Path) -> bool:
    """Removes path under value; True when value became an empty map/list to drop."""
    if not path:
        return False
    element, rest = path[0], path[1:]
    kind, _, name = element.partition(":")
    if kind == "f" and isinstance(value, dict):
        if name not in value:
            return False
        sub = child(node, name)
        if not rest:
            del value[name]
        elif _remove(sub, value[name], rest):
            del value[name]
        return not value and node is not None and node.kind == "map"
    if isinstance(value, list):
        items = child(node, "*")
        for index, item in enumerate(value):
            if mf.item_element(node, item, index) != element:
                continue
            if not rest:
                del value[index]
            elif _remove(items, item, rest):
                del value[index]
            break
        return not value
    return False


def _key_field(path: Path) -> bool:
    """A key field of a list item (removing it would unmake the item)."""
    if len(path) < 2 or not path[-1].startswith("f:") or not path[-2].startswith("k:"):
        return False
    try:
        return path[-1][2:] in json.loads(path[-2][2:])
    except ValueError:
        return False


def _owned_somewhere(path: Path, owned: FieldSet) -> bool:
    n = len(path)
    return any(p[:n] == path for p in owned)


# --- apply ---------------------------------------------------------------------------------------

def apply_config(rt: ResourceType, live: Obj | None, config: Obj, manager: str, force: bool,
                 subresource: str = "") -> Obj:
    """The object after `manager` applies `config` to `live` (None: nothing yet), with its
    managedFields; raises Conflicts."""
    node = mf.root_of(rt)
    body = mf._body(live) if live else {}
    if live:
        entries = mf.decode_entries((live.get("metadata") or {}).get("managedFields"))
        if not entries:
            # Fields set before anyone applied belong to a placeholder manager.
            existing = mf.scoped(rt, "", mf.field_set(node, body))
            if existing:
                entries = [Entry(mf.BEFORE_FIRST_APPLY, mf.UPDATE, rt.api_version, existing,
                                 objectmeta.timestamp())]
    else:
        entries = []
    config_set = mf.scoped(rt, subresource, mf.field_set(node, config))
    mine = Entry(manager, mf.APPLY, rt.api_version, subresource=subresource)
    others: list[Entry] = []
    for entry in entries:
        if entry.key == mine.key:
            mine = entry
        else:
            others.append(entry)
    previous = set(mine.fields)
    merged = merge(node, body, config)
    # What this applier dropped from its configuration and nobody else holds goes.
    owned = set(config_set)
    for entry in others:
        owned |= entry.fields
    doomed = {p for p in previous - config_set
              if not _owned_somewhere(p, owned) and not _key_field(p)}
    remove_paths(node, merged, doomed)
    added, modified, removed = mf.compare(node, body, mf._body(merged))
    changed = mf.scoped(rt, subresource, added | modified)
    removed = mf.without(removed, mf._STRIPPED)
    conflicts = [(entry, path) for entry in others for path in sorted(entry.fields & changed)]
    if conflicts and not force:
        raise Conflicts(conflicts)
    for entry in others:
        entry.fields -= changed | removed
    object_changed = bool(added or modified or removed)
    fields_changed = mine.fields != config_set or mine.api_version != rt.api_version
    mine.fields = set(config_set)
    mine.api_version = rt.api_version
    if object_changed or fields_changed or not mine.time:
        mine.time = objectmeta.timestamp()
    result = [e for e in others if e.fields]
    if mine.fields:
        result.append(mine)
    mf.set_entries(merged, result)
    return merged


def conflict_error(rt: ResourceType, name: str, conflicts: list[tuple[Entry, Path]]
                   ) -> errors.APIError:
    def who(entry: Entry) -> str:
        text = f'"{entry.manager}"'
        if entry.subresource:
            text += f' with subresource "{entry.subresource}"'
        if entry.operation == mf.UPDATE:
            text += f" using {entry.api_version}"
        return text

    causes = [{"reason": "FieldManagerConflict", "message": f"conflict with {who(e)}",
               "field": mf.path_string(p)} for e, p in conflicts]
    if len(conflicts) == 1:
        entry, path = conflicts[0]
        message = (f"Apply failed with 1 conflict: conflict with {who(entry)}: "
                   f"{mf.path_string(path)}")
    else:
        lines: list[str] = []
        by_manager: dict[str, list[str]] = {}
        for entry, path in conflicts:
            by_manager.setdefault(who(entry), []).append(mf.path_string(path))
        for manager in sorted(by_manager):
            lines.append(f"conflicts with {manager}:")
            lines.extend(f"- {p}" for p in by_manager[manager])
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return errors.APIError(409, "Conflict", message, {"causes": causes})


# --- the request -------------------------------------------------------------------------------

def check_options(ctx: "Ctx", kind: str) -> tuple[str, bool]:
    """fieldManager and force of a PATCH, validated as upstream does (422)."""
    from kubesmith.apiserver import patch as patching
    manager = ctx.param("fieldManager")
    force_text = ctx.query.get("force")
    problems = []
    if kind != patching.APPLY_PATCH:
        if force_text is not None:
            problems.append(validation.forbidden("force",
                                                 "may not be specified for non-apply patch"))
    elif not manager:
        problems.append(validation.required("fieldManager", "is required for apply patch"))
    problems += mf.validate_manager(manager)
    if problems:
        raise errors.invalid("PatchOptions", "meta.k8s.io", "", problems)
    return manager, force_text in ("true", "True", "1")


def _check_config(rt: ResourceType, config: Any, target: "Target") -> Obj:
    if not isinstance(config, dict):
        raise errors.bad_request("error decoding YAML: the apply configuration must be an "
                                 "object")
    api_version, kind = config.get("apiVersion"), config.get("kind")
    if not api_version or not kind:
        raise errors.bad_request(f"invalid object type: {api_version or ''}, "
                                 f"Kind={kind or ''}")
    if api_version != rt.api_version or kind != rt.kind:
        raise errors.bad_request(f"the API version in the data ({api_version}) and kind "
                                 f"({kind}) do not match the expected {rt.api_version}, "
                                 f"Kind={rt.kind}")
    meta = config.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise errors.bad_request("metadata must be an object")
    meta = meta or {}
    if meta.get("managedFields"):
        raise errors.bad_request("metadata.managedFields must be nil")
    name = meta.get("name")
    if name is not None and name != target.name:
        raise errors.bad_request(f"the name of the object ({name}) does not match the name "
                                 f"on the URL ({target.name})")
    namespace = meta.get("namespace")
    if rt.namespaced and namespace and namespace != target.namespace:
        raise errors.bad_request("the namespace of the provided object does not match the "
                                 "namespace sent on the request")
    return config


async def serve(srv: "APIServer", ctx: "Ctx", target: "Target", body: Any, dry: bool):
    """PATCH application/apply-patch+yaml on an object or its status."""
    from kubesmith.apiserver import fieldcheck, rest
    from kubesmith.apiserver.context import respond
    from kubesmith.apiserver import patch as patching
    rt = target.rt
    manager, force = check_options(ctx, patching.APPLY_PATCH)
    config = _check_config(rt, body, target)
    config = fieldcheck.check_object(ctx, rt, copy.deepcopy(config), rest.field_validation(ctx))

    def run(live: Obj | None) -> Obj:
        try:
            return apply_config(rt, live, config, manager, force, target.subresource)
        except Conflicts as exc:
            raise conflict_error(rt, target.name, exc.conflicts) from None

    def mutate(old: Obj) -> Obj:
        result = run(old)
        meta = objectmeta.meta(result)
        # Apply is never a resourceVersion precondition unless the configuration says so.
        wanted = (config.get("metadata") or {}).get("resourceVersion")
        if wanted:
            meta["resourceVersion"] = wanted
        else:
            meta.pop("resourceVersion", None)
        if target.subresource == "status":
            status = rest._status_only(old, result)
            if meta.get("managedFields"):
                objectmeta.meta(status)["managedFields"] = meta["managedFields"]
            else:
                objectmeta.meta(status).pop("managedFields", None)
            return status
        return result

    async def create_missing():
        if target.subresource:
            raise target.not_found()
        fresh = run(None)
        meta = objectmeta.meta(fresh)
        meta["name"] = target.name
        if rt.namespaced:
            meta["namespace"] = target.namespace
        meta.pop("resourceVersion", None)
        return await rest.create_object(srv, ctx, target, fresh, dry, manage_fields=False)

    obj, created = await rest.update_object(srv, ctx, target, mutate, dry,
                                            create_missing=create_missing, manage_fields=False)
    return respond(ctx, obj, 201 if created else 200)
