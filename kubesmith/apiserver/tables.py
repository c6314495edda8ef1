"""meta.k8s.io Table and PartialObjectMetadata output (what kubectl get asks for).

Columns come from the registry (`rt.table_columns()`: Name, the kind's columns, Age where
the registry puts it). Each row carries the object as PartialObjectMetadata unless the
client asks for includeObject=Object or None.
"""
from __future__ import annotations

import logging
from typing import Any

from kubesmith.api.registry import ResourceType

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def column_definitions(rt: ResourceType) -> list[dict]:
    return [{"name": c.name, "type": c.type, "format": c.format,
             "description": c.description, "priority": c.priority}
            for c in rt.table_columns()]


def partial_metadata(obj: Obj, version: str = "v1") -> Obj:
    return {"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{version}",
            "metadata": obj.get("metadata") or {}}


def _cells(rt: ResourceType, obj: Obj) -> list[Any]:
    cells = []
    for column in rt.table_columns():
        try:
            value = column.value(obj)
        except Exception:  # a kind's cell function must never fail a whole list
            log.exception("table column %s of %s failed", column.name, rt.kind)
            value = "<error>"
        cells.append(value if value is not None else "")
    return cells


def row(rt: ResourceType, obj: Obj, include: str, version: str) -> Obj:
    out: Obj = {"cells": _cells(rt, obj)}
    if include == "Object":
        out["object"] = obj
    elif include != "None":
        out["object"] = partial_metadata(obj, version)
    return out


def table(rt: ResourceType, objects: list[Obj], list_meta: Obj, include: str,
          version: str = "v1", columns: bool = True) -> Obj:
    return {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}", "metadata": list_meta,
            "columnDefinitions": column_definitions(rt) if columns else None,
            "rows": [row(rt, obj, include, version) for obj in objects]}


def check_include(value: str | None) -> str:
    from kubesmith.apiserver import errors
    include = value or "Metadata"
    if include not in ("None", "Metadata", "Object"):
        raise errors.bad_request(f'includeObject: Unsupported value: "{include}": supported '
                                 'values: "Metadata", "None", "Object"')
    return include
