"""events.k8s.io/v1 Event: the same objects as core/v1 events (stored as core/v1 Event under
/registry/events), in the newer shape. `to_core` / `from_core` convert between the two.
"""
from __future__ import annotations

from typing import Any

from kubesmith.api.kinds.core import EVENT_COLUMNS, EVENT_FIELD_SELECTORS
from kubesmith.api.registry import Column, FieldError, ResourceType, register
from kubesmith.api.validation import invalid, not_supported, required, with_meta

# events.k8s.io/v1 field -> core/v1 field (same value, other name).
_RENAMES = {
    "regarding": "involvedObject",
    "note": "message",
    "reportingController": "reportingComponent",
    "deprecatedSource": "source",
    "deprecatedFirstTimestamp": "firstTimestamp",
    "deprecatedLastTimestamp": "lastTimestamp",
    "deprecatedCount": "count",
}
_SAME = ("metadata", "eventTime", "series", "reportingInstance", "action", "reason", "related",
         "type")


def to_core(obj: dict) -> dict:
    core: dict[str, Any] = {"apiVersion": "v1", "kind": "Event"}
    for key in _SAME:
        if key in obj:
            core[key] = obj[key]
    for new, old in _RENAMES.items():
        if key_present(obj, new):
            core[old] = obj[new]
    core.setdefault("involvedObject", {})
    return core


def from_core(core: dict) -> dict:
    obj: dict[str, Any] = {"apiVersion": "events.k8s.io/v1", "kind": "Event"}
    for key in _SAME:
        if key in core:
            obj[key] = core[key]
    for new, old in _RENAMES.items():
        value = core.get(old)
        if value in (None, "", {}, 0) and old != "involvedObject":
            continue
        obj[new] = value
    if obj.get("eventTime") is None and "eventTime" in obj:
        obj.pop("eventTime")
    return obj


def key_present(obj: dict, key: str) -> bool:
    return obj.get(key) is not None


def _core_cell(column: Column):
    return lambda o: column.value(to_core(o))


_COLUMNS = tuple(Column(c.name, c.type, _core_cell(c), c.description, c.format, c.priority)
                 for c in EVENT_COLUMNS)

_FIELD_SELECTORS = {name: (lambda getter: lambda o: getter(to_core(o)))(getter)
                    for name, getter in EVENT_FIELD_SELECTORS.items()}
for _new, _old in (("regarding", "involvedObject"),):
    for _name, _getter in list(EVENT_FIELD_SELECTORS.items()):
        if _name.startswith(_old + "."):
            _FIELD_SELECTORS[_new + _name[len(_old):]] = \
                (lambda getter: lambda o: getter(to_core(o)))(_getter)
_FIELD_SELECTORS["reportingController"] = _FIELD_SELECTORS["reportingComponent"]
_FIELD_SELECTORS["deprecatedSource"] = _FIELD_SELECTORS["source"]


@with_meta(namespaced=True)
def _validate(obj: dict, old: dict | None) -> list[FieldError]:
    errors: list[FieldError] = []
    if old is None:
        for key in ("eventTime", "reportingController", "reportingInstance", "action",
                    "reason"):
            if not obj.get(key):
                errors.append(required(key, ""))
    if obj.get("type") not in ("Normal", "Warning"):
        errors.append(not_supported("type", obj.get("type", ""), ("Normal", "Warning")))
    note = obj.get("note") or ""
    if len(note.encode()) > 1024:
        errors.append(invalid("note", "", "can have at most 1024 characters"))
    for key, limit in (("action", 128), ("reason", 128)):
        if len(obj.get(key) or "") > limit:
            errors.append(invalid(key, "", f"can have at most {limit} characters"))
    return errors


EVENTS_V1 = register(ResourceType(
    group="events.k8s.io", version="v1", kind="Event", plural="events", namespaced=True,
    short_names=("ev",), storage_resource="events", columns=_COLUMNS,
    field_selectors=_FIELD_SELECTORS, validator=_validate,
    to_storage=to_core, from_storage=from_core,
))
