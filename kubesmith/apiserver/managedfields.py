"""metadata.managedFields: field sets in the FieldsV1 format, and who owns what.

A field set is a Python set of paths; a path is a tuple of FieldsV1 keys:
`f:<field>` (a struct field or map key), `k:{"name":"web"}` (an item of an associative
list, its key fields as compact JSON with sorted keys), `v:"x"` (a value of a set
list), `i:<n>` (an item of any other list). A path is in the set when the field it
names is owned; FieldsV1 writes a member with children as `".": {}` beside them.

As upstream (structured-merge-diff):
  * the fields of an applied configuration are its leaves, every list item, map
    entries and empty or null values (`field_set`);
  * an update owns what it added or changed (`compare`), and takes it from others;
  * struct, map, list and atomic behaviour comes from the schema's list_type /
    list_map_keys / map_type (lists without a list type are atomic).
Server-set metadata (name, uid, resourceVersion, ...) is never owned; status belongs
to the status subresource and everything else to the main resource.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import orjson

from kubesmith.api import schema
from kubesmith.api.registry import ResourceType
from kubesmith.apiserver import objectmeta
from kubesmith.apiserver.strategicpatch import child

Path = tuple[str, ...]
FieldSet = set

APPLY, UPDATE = "Apply", "Update"
FIELDS_TYPE = "FieldsV1"
MAX_MANAGER_LENGTH = 128
SERVER_MANAGER = "kube-apiserver"
BEFORE_FIRST_APPLY = "before-first-apply"

# Fields only the server sets; nobody owns them.
_STRIPPED: tuple[Path, ...] = (
    ("f:apiVersion",), ("f:kind",), ("f:metadata", "f:name"), ("f:metadata", "f:namespace"),
    ("f:metadata", "f:creationTimestamp"), ("f:metadata", "f:selfLink"),
    ("f:metadata", "f:uid"), ("f:metadata", "f:clusterName"), ("f:metadata", "f:generation"),
    ("f:metadata", "f:managedFields"), ("f:metadata", "f:resourceVersion"),
    ("f:metadata", "f:deletionTimestamp"), ("f:metadata", "f:deletionGracePeriodSeconds"),
)
_MISSING = object()
# Defaults of list-map key fields, so items match whether or not they spell them.
_KEY_DEFAULTS = {"protocol": "TCP"}


# --- schema kinds ----------------------------------------------------------------------------

LEAF, STRUCT, MAP, ASSOC, SET = "leaf", "struct", "map", "assoc", "set"


def _shape(node: "schema.Node | None", value: Any) -> str:
    """How a value is walked: a leaf (scalars, atomic values), a struct, a granular map,
    an associative list or a set."""
    if node is None or node.kind == "any" or node.preserve_unknown:
        # Untyped parts: maps are granular, lists atomic (upstream's deduced schema).
        return MAP if isinstance(value, dict) else LEAF
    if node.kind == "object":
        if node.map_type == "atomic":
            return LEAF
        return STRUCT if isinstance(value, dict) or value is _MISSING else LEAF
    if node.kind == "map":
        if node.map_type == "atomic":
            return LEAF
        return MAP if isinstance(value, dict) or value is _MISSING else LEAF
    if node.kind == "array":
        if not isinstance(value, list) and value is not _MISSING:
            return LEAF
        if node.list_type == "map" and node.list_map_keys:
            return ASSOC
        if node.list_type == "set":
            return SET
        return LEAF
    return LEAF


def _compact(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:    # what orjson refuses (integers past 64 bits, say)
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def item_element(node: "schema.Node | None", item: Any, index: int) -> str:
    """The path element of a list item."""
    if node is not None and node.list_type == "map" and node.list_map_keys and \
            isinstance(item, dict):
        key = {}
        for name in node.list_map_keys:
            if name in item and item[name] is not None:
                key[name] = item[name]
            elif name in _KEY_DEFAULTS:
                key[name] = _KEY_DEFAULTS[name]
        if key:
            return "k:" + _compact(key)
    if node is not None and node.list_type == "set":
        return "v:" + _compact(item)
    return f"i:{index}"


def _items(node: "schema.Node | None", value: Any) -> dict[str, Any]:
    """A list's items by path element, first occurrence wins (dict keeps the order)."""
    out: dict[str, Any] = {}
    if isinstance(value, list):
        for index, item in enumerate(value):
            out.setdefault(item_element(node, item, index), item)
    return out


# --- field sets --------------------------------------------------------------------------------

def field_set(node: "schema.Node | None", value: Any, path: Path = ()) -> FieldSet:
    """The fields an applied configuration sets."""
    out: FieldSet = set()
    _to_set(node, value, path, out)
    return out


def _to_set(node, value, path: Path, out: FieldSet) -> None:
    shape = _shape(node, value)
    if shape == LEAF:
        if path:
            out.add(path)
        return
    if shape in (STRUCT, MAP):
        if not value and path:
            out.add(path)
        for key, sub in value.items():
            sub_path = path + ("f:" + str(key),)
            sub_node = child(node, key)
            if sub is None or (isinstance(sub, dict) and not sub) or shape == MAP or \
                    (node is not None and node.kind == "object" and sub_node is None):
                out.add(sub_path)
            if sub is not None:
                _to_set(sub_node, sub, sub_path, out)
        return
    if not value and path:
        out.add(path)
    items = child(node, "*")
    for element, item in _items(node, value).items():
        sub_path = path + (element,)
        out.add(sub_path)
        if shape == ASSOC:
            _to_set(items, item, sub_path, out)


def compare(node: "schema.Node | None", old: Any, new: Any
            ) -> tuple[FieldSet, FieldSet, FieldSet]:
    """(added, modified, removed) from old to new; `_MISSING`-free plain values."""
    added: FieldSet = set()
    modified: FieldSet = set()
    removed: FieldSet = set()
    _compare(node, old, new, (), False, added, modified, removed)
    return added, modified, removed


def _empty(value: Any) -> bool:
    return value is _MISSING or value is None or (isinstance(value, (dict, list))
                                                    and not value)


def _compare(node, old, new, path: Path, in_item: bool, added, modified, removed) -> None:
    """`in_item`: some element of `path` is a list item (k:, v: or i:)."""
    if old is _MISSING:
        # The common case (every create): all of new is added, nothing to compare.
        _added(node, new, path, in_item, added)
        return
    shape = _shape(node, new if new is not _MISSING else old)
    other = _shape(node, old)
    if shape != other or shape == LEAF or (_empty(old) and _empty(new)) or \
            (new is not _MISSING and
             type(old) is not type(new) and not (isinstance(old, (int, float)) and
                                                 isinstance(new, (int, float)))):
        if not path:
            return
        if new is _MISSING:
            removed.add(path)
        elif old != new:
            modified.add(path)
        return
    if shape in (STRUCT, MAP):
        left = old if isinstance(old, dict) else {}
        right = new if isinstance(new, dict) else {}
        for key in list(left) + [k for k in right if k not in left]:
            a, b = left.get(key, _MISSING), right.get(key, _MISSING)
            if a is None:
                a = _MISSING
            if b is None:
                b = _MISSING
            if a is _MISSING and b is _MISSING:
                continue
            _compare(child(node, key), a, b, path + ("f:" + str(key),), in_item, added,
                     modified, removed)
        # Added or removed maps are members themselves (labels: ".": {}); so are structs
        # inside list items. The struct skeleton of a kind (spec, template) is not, as
        # upstream's empty typed object already holds it.
        if path and (shape == MAP or in_item) and new is _MISSING:
            removed.add(path)
        return
    items = child(node, "*")
    left = _items(node, old)
    right = _items(node, new)
    for element in list(left) + [e for e in right if e not in left]:
        a, b = left.get(element, _MISSING), right.get(element, _MISSING)
        sub_path = path + (element,)
        if shape == ASSOC:
            _compare(items, a, b, sub_path, True, added, modified, removed)
        if a is _MISSING:
            added.add(sub_path)
        elif b is _MISSING:
            removed.add(sub_path)
        elif shape == SET and a != b:
            modified.add(sub_path)
    if path and new is _MISSING:
        removed.add(path)


def _added(node, new, path: Path, in_item: bool, added: FieldSet) -> None:
    """`_compare` from nothing to `new`: every field of new is added."""
    shape = _shape(node, new)
    if shape == LEAF or _empty(new):
        if path:
            added.add(path)
        return
    if shape in (STRUCT, MAP):
        for key, value in new.items():
            if value is not None:
                _added(child(node, key), value, path + ("f:" + str(key),), in_item, added)
        if path and (shape == MAP or in_item):
            added.add(path)
        return
    items = child(node, "*")
    for element, item in _items(node, new).items():
        sub_path = path + (element,)
        if shape == ASSOC:
            _added(items, item, sub_path, True, added)
        added.add(sub_path)
    if path:
        added.add(path)


def added_fields_v1(node, value: Any, in_item: bool = False) -> dict | None:
    """FieldsV1 of `_added` from nothing to `value`, built directly: what
    encode(_added(...)) gives, without the path tuples (every create takes this path).
    None when nothing is added."""
    shape = _shape(node, value)
    if shape == LEAF or _empty(value):
        return {}
    children: dict = {}
    if shape in (STRUCT, MAP):
        for key, sub in value.items():
            if sub is not None:
                grown = added_fields_v1(child(node, key), sub, in_item)
                if grown is not None:
                    children["f:" + str(key)] = grown
        member = shape == MAP or in_item
    else:
        items = child(node, "*")
        for element, item in _items(node, value).items():
            grown = added_fields_v1(items, item, True) if shape == ASSOC else None
            children[element] = ({".": {}, **grown} if grown and "." not in grown
                                 else grown or {})
        member = True
    if not children:
        return {} if member else None
    return _rendered(children, member)


def _rendered(children: dict, member: bool) -> dict:
    """A FieldsV1 node: `".": {}` first when a member, then children in upstream's order."""
    keys = sorted(children)
    if keys[0][:1] != keys[-1][:1]:
        keys.sort(key=_element_order)
    out: dict = {".": {}} if member else {}
    for key in keys:
        out[key] = children[key]
    return out


def without(paths: FieldSet, prefixes: Iterable[Path]) -> FieldSet:
    """The paths not under any of the prefixes (upstream's recursive difference)."""
    prefixes = set(prefixes)
    # One set lookup per prefix length rather than one comparison per prefix.
    lengths = sorted({len(x) for x in prefixes})
    out: FieldSet = set()
    for p in paths:
        for n in lengths:
            if p[:n] in prefixes:
                break
        else:
            out.add(p)
    return out


def only_under(paths: FieldSet, prefix: Path) -> FieldSet:
    return {p for p in paths if p[:len(prefix)] == prefix and len(p) > len(prefix)}


def scoped(rt: ResourceType, subresource: str, paths: FieldSet) -> FieldSet:
    """The fields a request to the resource or one of its subresources may own."""
    if subresource == "status":
        return only_under(without(paths, _STRIPPED), ("f:status",))
    if rt.has_status:
        return without(paths, _STRIPPED + (("f:status",),))
    return without(paths, _STRIPPED)


# --- FieldsV1 ---------------------------------------------------------------------------------

_ELEMENT_ORDER = {"f": 0, "k": 1, "v": 2, "i": 3}


def _element_order(element: str) -> tuple[int, str]:
    return (_ELEMENT_ORDER.get(element[:1], 4), element)


def encode(paths: FieldSet) -> dict:
    """A field set as a FieldsV1 object."""
    tree: dict = {}
    for path in paths:
        node = tree
        for element in path:
            node = node.setdefault(element, {})
        node["."] = {}
    return _render(tree)


def _render(node: dict) -> dict:
    if len(node) == 1 and "." in node:
        return {}   # a member without children (most paths end so)
    out: dict = {".": {}} if "." in node else {}
    keys = sorted(k for k in node if k != ".")
    if keys and keys[0][:1] != keys[-1][:1]:
        keys.sort(key=_element_order)   # mixed kinds of element: upstream's order
    for key in keys:
        out[key] = _render(node[key])
    return out


def decode(fields: Any, prefix: Path = ()) -> FieldSet:
    """A FieldsV1 object as a field set (entries that are not objects are skipped)."""
    out: FieldSet = set()
    if not isinstance(fields, dict):
        return out
    for key, value in fields.items():
        if key == ".":
            if prefix:
                out.add(prefix)
            continue
        path = prefix + (key,)
        if not isinstance(value, dict) or not value:
            out.add(path)
        else:
            out |= decode(value, path)
    return out


def path_string(path: Path) -> str:
    """Upstream's rendering: .spec.template.spec.containers[name="web"].image"""
    out = []
    for element in path:
        kind, _, rest = element.partition(":")
        if kind == "f":
            out.append("." + rest)
        elif kind == "k":
            try:
                key = json.loads(rest)
                out.append("[" + ",".join(f"{k}={_compact(v)}" for k, v in key.items()) + "]")
            except ValueError:
                out.append(f"[{rest}]")
        elif kind == "v":
            out.append(f"[={rest}]")
        else:
            out.append(f"[{rest}]")
    return "".join(out)


# --- entries ---------------------------------------------------------------------------------

class Entry:
    """One managedFields entry. Its field set is decoded from FieldsV1 only when asked
    for: an update leaves most entries alone, and those are written back as they were."""

    def __init__(self, manager: str, operation: str, api_version: str,
                 fields: FieldSet | None = None, time: str | None = None,
                 subresource: str = "", fields_v1: dict | None = None):
        self.manager, self.operation, self.api_version = manager, operation, api_version
        self.time, self.subresource = time, subresource
        self._fields = fields if fields is not None or fields_v1 is not None else set()
        self._fields_v1 = fields_v1

    @property
    def fields(self) -> FieldSet:
        if self._fields is None:
            self._fields = decode(self._fields_v1)
        return self._fields

    @fields.setter
    def fields(self, value: FieldSet) -> None:
        self._fields = value

    @property
    def decoded(self) -> bool:
        return self._fields is not None

    def top_level(self) -> set[str]:
        """The first elements of its paths (without decoding the rest)."""
        if self._fields is not None:
            return {p[0] for p in self._fields}
        return {k for k in self._fields_v1 or {} if k != "."}

    def live(self) -> bool:
        return bool(self._fields) if self._fields is not None else bool(self.top_level())

    @property
    def key(self) -> tuple:
        # Updates are kept per API version; an applier has one entry whatever the version.
        version = self.api_version if self.operation == UPDATE else ""
        return (self.manager, self.operation, version, self.subresource)

    def to_json(self) -> dict:
        out: dict = {"manager": self.manager, "operation": self.operation,
                     "apiVersion": self.api_version}
        if self.time:
            out["time"] = self.time
        out["fieldsType"] = FIELDS_TYPE
        out["fieldsV1"] = encode(self._fields) if self._fields is not None \
            else self._fields_v1
        if self.subresource:
            out["subresource"] = self.subresource
        return out


def decode_entries(raw: Any) -> list[Entry]:
    entries: list[Entry] = []
    if not isinstance(raw, list):
        return entries
    for item in raw:
        if not isinstance(item, dict):
            continue
        fields_v1 = item.get("fieldsV1")
        entries.append(Entry(
            manager=str(item.get("manager") or ""),
            operation=str(item.get("operation") or UPDATE),
            api_version=str(item.get("apiVersion") or ""),
            fields=None if isinstance(fields_v1, dict) else set(),
            fields_v1=fields_v1 if isinstance(fields_v1, dict) else None,
            time=item.get("time"),
            subresource=str(item.get("subresource") or "")))
    return entries


def encode_entries(entries: list[Entry]) -> list[dict]:
    """Upstream's order: appliers first, then by time, manager, version, subresource."""
    live = [e for e in entries if e.live()]
    live.sort(key=lambda e: (e.operation, e.time or "", e.manager, e.api_version,
                             e.subresource))
    return [e.to_json() for e in live]


def validate_manager(manager: str) -> list:
    from kubesmith.api import validation
    problems = []
    if len(manager) > MAX_MANAGER_LENGTH:
        problems.append(validation.too_long("fieldManager", MAX_MANAGER_LENGTH))
    for char in manager:
        if not char.isprintable():
            problems.append(validation.invalid("fieldManager", manager,
                                               f"invalid character U+{ord(char):04X}"))
            break
    return problems


def manager_of(ctx) -> str:
    """The fieldManager parameter, else the client's User-Agent up to its first '/'."""
    if ctx is None:
        return SERVER_MANAGER
    manager = ctx.param("fieldManager")
    if manager:
        return manager
    agent = ctx.request.headers.get("User-Agent", "")
    return agent.split("/", 1)[0][:MAX_MANAGER_LENGTH]


def root_of(rt: ResourceType) -> "schema.Node | None":
    try:
        return schema.root(rt)
    except KeyError:
        return None


def _base_entries(old: dict | None, new: dict) -> list[Entry]:
    """Entries to start from: the request's own when it sets any (an explicit empty list
    resets them), else the stored object's. The request's are decoded at once, so what
    a client sent is written back in the canonical form; stored ones already are."""
    given = (new.get("metadata") or {}).get("managedFields", _MISSING)
    if isinstance(given, list) and not given:
        return []
    if isinstance(given, list) and len(given) == 1 and given[0] == {}:
        return []
    stored = ((old or {}).get("metadata") or {}).get("managedFields")
    entries = decode_entries(given) if given is not _MISSING else []
    if entries:
        if given != stored:
            for entry in entries:
                entry.fields   # noqa: B018  (decoded now: re-encoded canonically)
        return entries
    return decode_entries(stored)


def _body(obj: dict | None) -> dict:
    """The object without its managedFields (what ownership is computed on)."""
    if not obj:
        return {}
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = dict(obj, metadata={k: v for k, v in meta.items() if k != "managedFields"})
    return obj


def record_update(rt: ResourceType, manager: str, subresource: str, old: dict | None,
                  new: dict) -> None:
    """Sets new's managedFields for a create (old None) or an update by `manager`."""
    node = root_of(rt)
    if node is None:
        return
    entries = _base_entries(old, new)
    if old is None and not entries and subresource == "":
        _record_create(rt, node, manager, new)
        return
    if subresource == "status" and old is not None:
        # A status write changes nothing else (the stored object with the new status).
        added, modified, removed = _compare_field(node, old, new, "status")
    else:
        added, modified, removed = compare(node, _body(old) or {}, _body(new))
    changed = scoped(rt, subresource, added | modified)
    removed = without(removed, _STRIPPED)
    taken = changed | removed
    touched = {p[0] for p in taken}
    mine = Entry(manager, UPDATE, rt.api_version, subresource=subresource)
    for entry in entries:
        if entry.key == mine.key:
            mine = entry
            if removed and touched & entry.top_level():
                entry.fields -= removed
        elif touched & entry.top_level():
            entry.fields -= taken
    if changed:
        if mine not in entries:
            entries.append(mine)
        mine.fields |= changed
        mine.time = objectmeta.timestamp()
    set_entries(new, entries)


def _compare_field(node, old: dict, new: dict, key: str
                   ) -> tuple[FieldSet, FieldSet, FieldSet]:
    """compare() of two objects that differ at most in their top-level field `key`."""
    added: FieldSet = set()
    modified: FieldSet = set()
    removed: FieldSet = set()
    a, b = old.get(key, _MISSING), new.get(key, _MISSING)
    a = _MISSING if a is None else a
    b = _MISSING if b is None else b
    if not (a is _MISSING and b is _MISSING):
        _compare(child(node, key), a, b, ("f:" + key,), False, added, modified, removed)
    return added, modified, removed


def _record_create(rt: ResourceType, node, manager: str, new: dict) -> None:
    """record_update's result for a create with no managedFields given: the creator's
    one Update entry owning every field it set, built straight as FieldsV1."""
    fields = added_fields_v1(node, _body(new)) or {}
    # The object itself is never a member ("."), whatever its schema.
    fields = {k: v for k, v in fields.items() if k != "." and k not in _TOP_STRIPPED and
              not (k == "f:status" and rt.has_status)}
    meta_fields = fields.get("f:metadata")
    if meta_fields:
        kept = {k: v for k, v in meta_fields.items() if k not in _META_STRIPPED}
        if kept:
            fields["f:metadata"] = kept
        else:
            del fields["f:metadata"]
    meta = objectmeta.meta(new)
    if not fields:
        meta.pop("managedFields", None)
        return
    meta["managedFields"] = [{"manager": manager, "operation": UPDATE,
                              "apiVersion": rt.api_version, "time": objectmeta.timestamp(),
                              "fieldsType": FIELDS_TYPE, "fieldsV1": fields}]


# _STRIPPED as FieldsV1 keys: at the top level and under metadata.
_TOP_STRIPPED = {p[0] for p in _STRIPPED if len(p) == 1}
_META_STRIPPED = {p[1] for p in _STRIPPED if len(p) == 2 and p[0] == "f:metadata"}


def set_entries(obj: dict, entries: list[Entry]) -> None:
    meta = objectmeta.meta(obj)
    encoded = encode_entries(entries)
    if encoded:
        meta["managedFields"] = encoded
    else:
        meta.pop("managedFields", None)
