"""OpenAPI documents of the built-in API, as upstream serves them.

    v3_index() -> dict
        GET /openapi/v3: {"paths": {"api/v1": {"serverRelativeURL":
        "/openapi/v3/api/v1?hash=<etag>"}, "apis/apps/v1": {...}, ...}}
    v3_document(path) -> Document | None
        GET /openapi/v3/<path> (path "api/v1", "apis/apps/v1", ...): the group version's
        document; None for an unknown path.
    v2_document() -> Document
        GET /openapi/v2 (JSON; see the note below).

A `Document` has `.body` (the JSON bytes), `.etag` (a hash of them, also the `hash=`
query value of the v3 index) and `.data` (the decoded dict, read-only). Documents are
built once per process (the registry is static) and cached.

How the server should answer (what kubectl and client-go expect):
  * Content-Type "application/json" for /openapi/v3 and its documents; the ETag header
    `"<etag>"` (quoted); 304 on a matching If-None-Match.
  * A document fetched with `?hash=<etag>` matching its etag may be cached for good:
    "Cache-Control: public, immutable"; with another hash, upstream redirects (302) to
    the current `serverRelativeURL` — answering the current document also works.
  * /openapi/v2: client-go asks for the protobuf form ("Accept:
    application/com.github.proto-openapi.spec.v2@v1.0+protobuf"); kubectl 1.27+ uses it
    only as a fallback (kubectl explain --output plaintext-openapiv2, client-side apply
    when v3 is missing). This module serves the JSON form; a server without a protobuf
    encoder should answer the protobuf Accept with 406 Not Acceptable (kubectl then
    continues without v2) and JSON requests with `v2_document().body`.

What kubectl needs from these documents, and is here:
  * kubectl explain (v3): a path /api[s]/<gv>/[namespaces/{namespace}/]<plural>[/{name}]
    whose operation carries x-kubernetes-group-version-kind, and a component schema with
    that GVK in its x-kubernetes-group-version-kind list; fields found through
    `properties`, `$ref` (#/components/schemas/...), `allOf` with one ref, `items` and
    `additionalProperties`; `required` marks -required-.
  * kubectl's fieldValidation support check (--validate=strict, the default): a PATCH
    operation with the kind's x-kubernetes-group-version-kind that lists the query
    parameter `fieldValidation`.
  * kubectl apply / diff (v3 patch metadata): the kind's schema with
    x-kubernetes-patch-strategy / x-kubernetes-patch-merge-key on list fields.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

from kubesmith.api.registry import REGISTRY, ResourceType
from kubesmith.api.schema import (
    DELETE_OPTIONS, EVICTION, SCALE, STATUS, TOKEN_REQUEST, WATCH_EVENT, definitions,
)

API_VERSION = "v1.33.0"
PATCH = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
V3_PREFIX = "#/components/schemas/"
V2_PREFIX = "#/definitions/"

_READ_TYPES = ("application/json", "application/yaml", "application/vnd.kubernetes.protobuf")
_WATCH_TYPES = ("application/json;stream=watch", "application/vnd.kubernetes.protobuf;stream=watch")
_PATCH_TYPES = ("application/apply-patch+yaml", "application/json-patch+json",
                "application/merge-patch+json", "application/strategic-merge-patch+json",
                "application/apply-patch+cbor")


@dataclass(frozen=True)
class Document:
    data: dict
    body: bytes
    etag: str


def _document(data: dict) -> Document:
    body = json.dumps(data, separators=(",", ":"), sort_keys=False).encode()
    etag = hashlib.sha512(body).hexdigest().upper()
    return Document(data, body, etag)


def gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _op_prefix(group: str, version: str) -> str:
    if not group:
        return f"Core{version.capitalize()}"
    name = group.replace(".k8s.io", "")
    return "".join(part.capitalize() for part in name.split(".")) + version.capitalize()


def _tag(group: str, version: str) -> str:
    if not group:
        return f"core_{version}"
    parts = group.replace(".k8s.io", "").split(".")
    return parts[0] + "".join(p.capitalize() for p in parts[1:]) + f"_{version}"


def _gvk(group: str, version: str, kind: str) -> dict:
    return {"group": group, "kind": kind, "version": version}


# --- parameters ---------------------------------------------------------------------------

def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "description": description,
            "schema": dict(schema, uniqueItems=True)}


_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_INT = {"type": "integer"}

PRETTY = _query("pretty", _STR, "If 'true', the output is pretty printed.")
DRY_RUN = _query("dryRun", _STR, "When present, modifications are not persisted. Valid "
                 "value: All.")
FIELD_MANAGER = _query("fieldManager", _STR, "Name of the actor making the change, "
                       "recorded in managedFields.")
FIELD_VALIDATION = _query("fieldValidation", _STR, "How the server treats unknown or "
                          "duplicate fields: Ignore, Warn or Strict.")
FORCE = _query("force", _BOOL, "Take ownership of conflicting fields (apply patches only).")
LIST_PARAMS = [
    _query("allowWatchBookmarks", _BOOL, "Ask for BOOKMARK events in a watch."),
    _query("continue", _STR, "The continue token of a previous, paginated list."),
    _query("fieldSelector", _STR, "Select objects by field values."),
    _query("labelSelector", _STR, "Select objects by labels."),
    _query("limit", _INT, "Return at most this many objects; continue with the token."),
    _query("resourceVersion", _STR, "Read at (or after, see resourceVersionMatch) this "
           "version."),
    _query("resourceVersionMatch", _STR, "How resourceVersion applies: Exact or NotOlderThan."),
    _query("sendInitialEvents", _BOOL, "Start a watch with the current objects as events."),
    _query("timeoutSeconds", _INT, "End the list or watch after this many seconds."),
    _query("watch", _BOOL, "Watch for changes instead of listing."),
]
DELETE_PARAMS = [
    DRY_RUN,
    _query("gracePeriodSeconds", _INT, "Seconds before the object is deleted; 0 is now."),
    _query("ignoreStoreReadErrorWithClusterBreakingPotential", _BOOL,
           "Delete an object that cannot be read from storage."),
    _query("orphanDependents", _BOOL, "Deprecated: use propagationPolicy."),
    _query("propagationPolicy", _STR, "Garbage collection of dependents: Orphan, "
           "Background or Foreground."),
]


def _path_param(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "description": description, "required": True,
            "schema": {"type": "string", "uniqueItems": True}}


NAME_PARAM = _path_param("name", "name of the object")
NAMESPACE_PARAM = _path_param("namespace", "object name and auth scope, such as for teams "
                              "and projects")


# --- operations ---------------------------------------------------------------------------

def _ref(name: str, prefix: str) -> dict:
    return {"$ref": prefix + name}


def _content(name: str | None, types: Iterable[str], prefix: str) -> dict:
    schema = _ref(name, prefix) if name else {"type": "string"}
    return {t: {"schema": schema} for t in types}


def _responses(codes: dict[str, str | None], prefix: str, types=_READ_TYPES) -> dict:
    responses = {}
    for code, name in codes.items():
        responses[code] = {"description": {"200": "OK", "201": "Created",
                                           "202": "Accepted"}[code],
                           "content": _content(name, types, prefix)}
    responses["401"] = {"description": "Unauthorized"}
    return responses


def _op(action: str, op_id: str, tag: str, gvk: dict, params: list[dict],
        responses: dict, body: dict | None = None, description: str = "") -> dict:
    op: dict[str, Any] = {"tags": [tag], "description": description, "operationId": op_id}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    op["responses"] = responses
    op["x-kubernetes-action"] = action
    op["x-kubernetes-group-version-kind"] = gvk
    return op


def _body(name: str, prefix: str, types=("*/*",)) -> dict:
    return {"content": {t: {"schema": _ref(name, prefix)} for t in types}, "required": True}


def _resource_paths(rt: ResourceType, prefix: str) -> dict[str, dict]:
    """Every path of one resource, with upstream's operations."""
    base = f"/{gv_path(rt.group, rt.version)}"
    ns = "Namespaced" if rt.namespaced else ""
    kind = rt.kind
    op = _op_prefix(rt.group, rt.version)
    tag = _tag(rt.group, rt.version)
    gvk = _gvk(rt.group, rt.version, kind)
    schema = rt.schema_name
    list_schema = schema + "List"
    collection = f"{base}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced \
        else f"{base}/{rt.plural}"
    scope_params = [NAMESPACE_PARAM] if rt.namespaced else []
    verbs = set(rt.verbs)
    paths: dict[str, dict] = {}

    write_params = [DRY_RUN, FIELD_MANAGER, FIELD_VALIDATION]
    if rt.create_only:
        paths[collection] = {
            "post": _op("post", f"create{op}{ns}{kind}", tag, gvk, write_params,
                        _responses({"200": schema, "201": schema, "202": schema}, prefix),
                        _body(schema, prefix), f"create a {kind}"),
            "parameters": scope_params + [PRETTY],
        }
        return paths

    item = {}
    coll = {}
    if "list" in verbs:
        coll["get"] = _op("list", f"list{op}{ns}{kind}", tag, gvk, LIST_PARAMS,
                          _responses({"200": list_schema}, prefix,
                                     _READ_TYPES + _WATCH_TYPES),
                          description=f"list or watch objects of kind {kind}")
    if "create" in verbs:
        coll["post"] = _op("post", f"create{op}{ns}{kind}", tag, gvk, write_params,
                           _responses({"200": schema, "201": schema, "202": schema}, prefix),
                           _body(schema, prefix), f"create a {kind}")
    if "deletecollection" in verbs:
        coll["delete"] = _op("deletecollection", f"deletecollection{op}{ns}{kind}", tag, gvk,
                             [p for p in LIST_PARAMS if p["name"] != "watch"
                              and p["name"] != "allowWatchBookmarks"] + DELETE_PARAMS,
                             _responses({"200": STATUS}, prefix),
                             _body(DELETE_OPTIONS, prefix),
                             f"delete collection of {kind}")
    if coll:
        coll["parameters"] = scope_params + [PRETTY]
        paths[collection] = coll
    if "get" in verbs:
        item["get"] = _op("get", f"read{op}{ns}{kind}", tag, gvk, [],
                          _responses({"200": schema}, prefix),
                          description=f"read the specified {kind}")
    if "update" in verbs:
        item["put"] = _op("put", f"replace{op}{ns}{kind}", tag, gvk, write_params,
                          _responses({"200": schema, "201": schema}, prefix),
                          _body(schema, prefix), f"replace the specified {kind}")
    if "delete" in verbs:
        item["delete"] = _op("delete", f"delete{op}{ns}{kind}", tag, gvk, DELETE_PARAMS,
                             _responses({"200": schema, "202": schema}, prefix),
                             _body(DELETE_OPTIONS, prefix), f"delete a {kind}")
    if "patch" in verbs:
        item["patch"] = _op("patch", f"patch{op}{ns}{kind}", tag, gvk,
                            write_params + [FORCE],
                            _responses({"200": schema, "201": schema}, prefix),
                            _body(PATCH, prefix, _PATCH_TYPES),
                            f"partially update the specified {kind}")
    if item:
        item["parameters"] = [NAME_PARAM] + scope_params + [PRETTY]
        paths[f"{collection}/{{name}}"] = item
    if rt.namespaced and "list" in verbs:
        paths[f"{base}/{rt.plural}"] = {
            "get": _op("list", f"list{op}{kind}ForAllNamespaces", tag, gvk, LIST_PARAMS,
                       _responses({"200": list_schema}, prefix, _READ_TYPES + _WATCH_TYPES),
                       description=f"list or watch objects of kind {kind}"),
            "parameters": [PRETTY],
        }

    for sub in rt.subresource_details():
        sub_path = f"{collection}/{{name}}/{sub.name}"
        sub_gvk = _gvk(sub.group, sub.version, sub.kind)
        sub_name = sub.name.capitalize() if sub.name != "portforward" else "Portforward"
        title = f"{ns}{kind}{sub_name}"
        params = [NAME_PARAM] + scope_params
        entry: dict[str, Any] = {}
        if sub.name in ("status", "scale", "ephemeralcontainers", "resize"):
            target = SCALE if sub.name == "scale" else schema
            entry["get"] = _op("get", f"read{op}{title}", tag, sub_gvk, [],
                               _responses({"200": target}, prefix))
            entry["put"] = _op("put", f"replace{op}{title}", tag, sub_gvk, write_params,
                               _responses({"200": target, "201": target}, prefix),
                               _body(target, prefix))
            entry["patch"] = _op("patch", f"patch{op}{title}", tag, sub_gvk,
                                 write_params + [FORCE],
                                 _responses({"200": target, "201": target}, prefix),
                                 _body(PATCH, prefix, _PATCH_TYPES))
            params.append(PRETTY)
        elif sub.name == "finalize":
            entry["put"] = _op("put", f"replace{op}{title}", tag, sub_gvk, write_params,
                               _responses({"200": schema, "201": schema}, prefix),
                               _body(schema, prefix))
            params.append(PRETTY)
        elif sub.name in ("binding", "eviction", "token"):
            target = {"binding": "io.k8s.api.core.v1.Binding", "eviction": EVICTION,
                      "token": TOKEN_REQUEST}[sub.name]
            entry["post"] = _op("post", f"create{op}{title}", tag, sub_gvk, write_params,
                                _responses({"200": target, "201": target, "202": target},
                                           prefix), _body(target, prefix))
            params.append(PRETTY)
        elif sub.name == "log":
            entry["get"] = _op("get", f"read{op}{title}", tag, gvk, [
                _query(n, s, d) for n, s, d in (
                    ("container", _STR, "The container to stream logs of."),
                    ("follow", _BOOL, "Keep streaming."),
                    ("insecureSkipTLSVerifyBackend", _BOOL, "Skip TLS verification of the "
                     "kubelet."),
                    ("limitBytes", _INT, "Stop after this many bytes."),
                    ("previous", _BOOL, "Logs of the previous container instance."),
                    ("sinceSeconds", _INT, "Only logs newer than this many seconds."),
                    ("stream", _STR, "All, Stdout or Stderr."),
                    ("tailLines", _INT, "Only this many lines from the end."),
                    ("timestamps", _BOOL, "Prefix lines with timestamps."))],
                _responses({"200": None}, prefix, ("text/plain", "application/json",
                                                   "application/yaml")))
            params.append(PRETTY)
        else:  # exec, attach, portforward, proxy: connect
            methods = ("get", "post") if sub.name != "proxy" else \
                ("get", "put", "post", "delete", "options", "head", "patch")
            for method in methods:
                entry[method] = _op("connect", f"connect{op}{method.capitalize()}{title}",
                                    tag, sub_gvk, [],
                                    {"200": {"description": "OK", "content": {
                                        "*/*": {"schema": {"type": "string"}}}},
                                     "401": {"description": "Unauthorized"}})
        entry["parameters"] = params
        paths[sub_path] = entry
        if sub.name == "proxy":
            proxy = {k: v for k, v in entry.items() if k != "parameters"}
            paths[f"{sub_path}/{{path}}"] = dict(
                proxy, parameters=params + [_path_param("path", "path to the resource")])
    return paths


# --- schemas ------------------------------------------------------------------------------

_PATCH_SCHEMA = {"type": "object"}


def _convert(schema: Any, prefix: str, v3: bool) -> Any:
    """Bare $refs -> document refs; a $ref with siblings -> allOf (OpenAPI 3 ignores
    siblings of $ref)."""
    if isinstance(schema, list):
        return [_convert(item, prefix, v3) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _convert(value, prefix, v3) for key, value in schema.items()
           if key not in ("$ref",) and key not in ("properties", "additionalProperties",
                                                    "items")}
    for key in ("properties",):
        if key in schema:
            out[key] = {name: _convert(value, prefix, v3)
                        for name, value in schema[key].items()}
    for key in ("additionalProperties", "items"):
        if key in schema:
            out[key] = _convert(schema[key], prefix, v3)
    if "$ref" in schema:
        ref = prefix + schema["$ref"]
        if v3 and out:
            return {"allOf": [{"$ref": ref}], **out}
        if not v3 and out:
            return {"$ref": ref, **out}
        return {"$ref": ref}
    return out


def _v2_schema(schema: dict) -> dict:
    """OpenAPI 2 has no oneOf: IntOrString and Quantity become string formats."""
    if "oneOf" in schema:
        result = {k: v for k, v in schema.items() if k != "oneOf"}
        result["type"] = "string"
        return result
    return schema


def _refs(schema: Any, found: set[str]) -> None:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            found.add(ref)
        for value in schema.values():
            _refs(value, found)
    elif isinstance(schema, list):
        for value in schema:
            _refs(value, found)


def reachable(names: Iterable[str]) -> list[str]:
    defs = definitions()
    todo = list(names)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        found: set[str] = set()
        _refs(defs[name], found)
        todo.extend(found - seen)
    return sorted(seen)


def _components(names: Iterable[str], prefix: str, v3: bool) -> dict:
    defs = definitions()
    out = {}
    for name in reachable(names):
        schema = _convert(defs[name], prefix, v3)
        out[name] = schema if v3 else _v2_schema(schema)
    out[PATCH] = dict(_PATCH_SCHEMA)
    return dict(sorted(out.items()))


def _used_schemas(paths: dict) -> set[str]:
    found: set[str] = set()
    _refs(paths, found)
    return {ref.split("/")[-1] for ref in found}


_SECURITY = {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication",
                             "name": "authorization", "in": "header"}}


@lru_cache(maxsize=None)
def _v3_documents() -> dict[str, Document]:
    docs = {}
    for group, versions in REGISTRY.group_versions().items():
        for version in versions:
            paths: dict[str, dict] = {}
            for rt in REGISTRY.resources_in(group, version):
                paths.update(_resource_paths(rt, V3_PREFIX))
            names = _used_schemas(paths) | {STATUS, DELETE_OPTIONS, WATCH_EVENT}
            names.discard(PATCH)
            data = {
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": API_VERSION},
                "paths": dict(sorted(paths.items())),
                "components": {"schemas": _components(names, V3_PREFIX, True),
                               "securitySchemes": _SECURITY},
                "security": [{"BearerToken": []}],
            }
            docs[gv_path(group, version)] = _document(data)
    return docs


def v3_document(path: str) -> Document | None:
    """The v3 document of a group version path ("api/v1", "apis/apps/v1")."""
    return _v3_documents().get(path.strip("/"))


@lru_cache(maxsize=1)
def v3_index() -> dict:
    return {"paths": {path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={doc.etag}"}
                      for path, doc in _v3_documents().items()}}


def v3_index_body() -> bytes:
    return json.dumps(v3_index(), separators=(",", ":")).encode()


@lru_cache(maxsize=1)
def v2_document() -> Document:
    paths: dict[str, dict] = {}
    for rt in REGISTRY:
        for path, item in _resource_paths(rt, V2_PREFIX).items():
            paths[path] = _v2_path_item(item)
    names = _used_schemas(paths) | {STATUS, DELETE_OPTIONS, WATCH_EVENT}
    names.discard(PATCH)
    data = {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": API_VERSION},
        "paths": dict(sorted(paths.items())),
        "definitions": _components(names, V2_PREFIX, False),
        "securityDefinitions": _SECURITY,
        "security": [{"BearerToken": []}],
    }
    return _document(data)


def _v2_param(param: dict) -> dict:
    out = {k: v for k, v in param.items() if k != "schema"}
    out.update({k: v for k, v in param.get("schema", {}).items() if k != "uniqueItems"})
    if param.get("in") == "path" or param.get("schema", {}).get("uniqueItems"):
        out["uniqueItems"] = True
    return out


def _v2_path_item(item: dict) -> dict:
    out: dict[str, Any] = {}
    for method, op in item.items():
        if method == "parameters":
            out["parameters"] = [_v2_param(p) for p in op]
            continue
        new = {k: v for k, v in op.items() if k not in ("requestBody", "responses",
                                                        "parameters")}
        params = [_v2_param(p) for p in op.get("parameters", [])]
        body = op.get("requestBody")
        if body:
            schema = next(iter(body["content"].values()))["schema"]
            params.insert(0, {"name": "body", "in": "body", "required": True,
                              "schema": schema})
            new["consumes"] = list(body["content"].keys())
        if params:
            new["parameters"] = params
        responses = {}
        produces: list[str] = []
        for code, response in op["responses"].items():
            entry = {"description": response["description"]}
            content = response.get("content") or {}
            if content:
                entry["schema"] = next(iter(content.values()))["schema"]
                produces.extend(t for t in content if t not in produces)
            responses[code] = entry
        new["responses"] = responses
        if produces:
            new["produces"] = produces
        new["schemes"] = ["https"]
        out[method] = new
    return out


