"""Generic REST over the registry and etcd: one implementation serves every kind.

get, list, watch, create, update (PUT), patch, delete and deletecollection, plus the
status, scale and finalize subresources, all driven by `ResourceType`. Kind-specific
behaviour lives in the registry (defaults, validation, columns, create/update hooks);
the few true special cases (namespaces, pod bindings, reviews, component statuses) are in
special.py, reviews.py and componentstatus.py.
"""
from __future__ import annotations

import base64
import binascii
import copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson
from aiohttp import web

from kubesmith.api.registry import REGISTRY, ResourceType
from kubesmith.apiserver import (
    admission,
    allocators,
    apply as applying,
    componentstatus,
    errors,
    fieldcheck,
    managedfields,
    negotiation,
    objectmeta,
    patch as patching,
    selectors,
    special,
    tables,
    txn,
    watch as watching,
)
from kubesmith.apiserver.context import Ctx, respond
from kubesmith.apiserver.storage import ResourceStorage, to_storage, to_type
from kubesmith.store import (
    CompactedError,
    ConflictError,
    KeyExistsError,
    KeyNotFoundError,
    prefix_end,
)

if TYPE_CHECKING:
    from kubesmith.apiserver.server import APIServer

log = logging.getLogger(__name__)

Obj = dict[str, Any]

MAX_UPDATE_RETRIES = 8
GENERATE_NAME_RETRIES = 8
# Kinds that may be created by a PUT to a name that does not exist yet.
_CREATE_ON_UPDATE = {("", "endpoints"), ("coordination.k8s.io", "leases")}
_STATUS_SUBRESOURCES = ("status",)


@dataclass
class Target:
    """The resource a request addresses."""
    rt: ResourceType
    storage: ResourceStorage | None
    namespace: str          # "" for cluster-scoped kinds and all-namespace lists
    name: str               # "" for collections
    subresource: str

    @property
    def key(self) -> bytes:
        return self.rt.storage_key(self.namespace or None, self.name)

    @property
    def prefix(self) -> bytes:
        return self.rt.storage_prefix(self.namespace or None)

    @property
    def resource(self) -> str:
        return self.rt.plural

    @property
    def group(self) -> str:
        return self.rt.group

    def not_found(self) -> errors.APIError:
        return errors.not_found(self.rt.plural, self.rt.group, self.name)


# --- entry point -----------------------------------------------------------------------

async def handle(srv: "APIServer", ctx: Ctx) -> web.StreamResponse:
    info = ctx.info
    rt = REGISTRY.get(info.group, info.version, info.resource)
    if rt is None:
        raise errors.path_not_found()
    name = "" if info.name_from_selector else info.name
    if rt.namespaced:
        namespace = info.namespace
        if not namespace and (name or info.verb not in ("list", "watch")):
            raise errors.path_not_found()
    else:
        # /api/v1/namespaces/{name} names a namespace; other cluster-scoped kinds take
        # no namespace segment.
        if info.namespace and not (rt.group == "" and rt.plural == "namespaces"):
            raise errors.path_not_found()
        namespace = ""
    subresource = info.subresource
    if subresource and subresource not in rt.subresources:
        raise errors.path_not_found()
    target = Target(rt, None if rt.create_only else srv.storage.for_type(rt), namespace,
                    name, subresource)
    method = ctx.request.method
    if rt.create_only:
        if method != "POST" or name:
            raise errors.method_not_allowed(method, rt.plural)
        return await special.create_only(srv, ctx, target)
    if subresource:
        return await _subresource(srv, ctx, target, method)
    verb = info.verb
    if verb not in rt.verbs:
        raise errors.method_not_allowed(method, rt.plural)
    computed = componentstatus.HANDLERS.get((rt.group, rt.plural))
    if computed is not None:
        # Read-only kinds computed per request (get and list are all their verbs).
        return await computed(srv, ctx, target)
    if method in ("GET", "HEAD"):
        # A named path watches only through the legacy /watch/ prefix (verb "watch");
        # ?watch=1 on a named path is a plain get, as upstream serves it.
        if verb == "watch":
            return await watching.serve(srv, ctx, target, name)
        if name:
            return await get(srv, ctx, target)
        return await list_(srv, ctx, target)
    if method == "POST":
        if name:
            raise errors.method_not_allowed(method, rt.plural)
        return await create(srv, ctx, target)
    if method == "PUT" and name:
        return await update(srv, ctx, target)
    if method == "PATCH" and name:
        return await patch(srv, ctx, target)
    if method == "DELETE":
        if name:
            return await delete(srv, ctx, target)
        return await delete_collection(srv, ctx, target)
    raise errors.method_not_allowed(method, rt.plural)


async def _subresource(srv: "APIServer", ctx: Ctx, target: Target, method: str):
    sub = target.subresource
    if sub in _STATUS_SUBRESOURCES:
        if method == "GET":
            return await get(srv, ctx, target)
        if method == "PUT":
            return await update(srv, ctx, target)
        if method == "PATCH":
            return await patch(srv, ctx, target)
        raise errors.method_not_allowed(method, f"{target.resource}/{sub}")
    handler = special.SUBRESOURCES.get(sub)
    if handler is None:
        raise errors.APIError(404, "NotFound",
                              f"the server does not serve {target.resource}/{sub} yet", {})
    return await handler(srv, ctx, target, method)


# --- reads -----------------------------------------------------------------------------

def _output(ctx: Ctx) -> negotiation.Output:
    return negotiation.negotiate(ctx.request.headers.get("Accept"), allow_transform=True)


def render_one(ctx: Ctx, rt: ResourceType, obj: Obj, output: negotiation.Output,
               status: int = 200) -> web.Response:
    if output.transform == "Table":
        include = tables.check_include(ctx.param("includeObject"))
        rv = (obj.get("metadata") or {}).get("resourceVersion", "")
        body = tables.table(rt, [obj], {"resourceVersion": rv}, include, output.version)
        return respond(ctx, body, status, output)
    if output.transform == "PartialObjectMetadata":
        return respond(ctx, tables.partial_metadata(obj, output.version), status, output)
    if output.transform == "PartialObjectMetadataList":
        raise errors.not_acceptable(["application/json"])
    return respond(ctx, obj, status, output)


def render_list(ctx: Ctx, rt: ResourceType, items: list[Obj], list_meta: Obj,
                output: negotiation.Output) -> web.Response:
    if output.transform == "Table":
        include = tables.check_include(ctx.param("includeObject"))
        return respond(ctx, tables.table(rt, items, list_meta, include, output.version),
                       200, output)
    if output.transform == "PartialObjectMetadataList":
        body = {"kind": "PartialObjectMetadataList",
                "apiVersion": f"meta.k8s.io/{output.version}", "metadata": list_meta,
                "items": [tables.partial_metadata(i, output.version) for i in items]}
        return respond(ctx, body, 200, output)
    if output.transform == "PartialObjectMetadata":
        raise errors.not_acceptable(["application/json"])
    body = {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": list_meta,
            "items": items}
    return respond(ctx, body, 200, output)


def parse_rv(value: str, what: str = "resourceVersion") -> int:
    try:
        rv = int(value)
        if rv < 0:
            raise ValueError
        return rv
    except ValueError:
        raise errors.bad_request(f'{what}: Invalid value: "{value}": must be a '
                                 "non-negative integer") from None


async def read_current(srv: "APIServer", target: Target) -> tuple[Obj, int]:
    """The stored object (in storage shape) and its mod_revision; 404 when absent."""
    kv = await srv.store.get(target.key)
    if kv is None:
        raise target.not_found()
    return target.storage.decode_or_fail(kv), kv.mod_revision


async def get(srv: "APIServer", ctx: Ctx, target: Target) -> web.Response:
    output = _output(ctx)
    rv = ctx.param("resourceVersion")
    obj = None
    if rv == "0":
        cache = await srv.ready_cache(target.rt)
        if cache is not None:
            obj = cache.get(target.key)
            if obj is None:
                raise target.not_found()
    if obj is None:
        obj, _ = await read_current(srv, target)
    # GET .../status answers with the whole object, as upstream does.
    obj = to_type(target.rt, target.storage, obj)
    return render_one(ctx, target.rt, obj, output)


class ListSelectors:
    def __init__(self, rt: ResourceType, ctx: Ctx, name: str = ""):
        self.rt = rt
        self.labels = selectors.parse_label_selector(ctx.param("labelSelector"))
        self.fields = selectors.parse_field_selector(ctx.param("fieldSelector"))
        if name:
            self.fields.requirements.append(selectors.FieldRequirement("metadata.name", name,
                                                                       False))
        supported = {"metadata.name", *rt.field_selectors}
        if rt.namespaced:
            supported.add("metadata.namespace")
        for req in self.fields.requirements:
            if req.field not in supported:
                raise errors.bad_request(f"field label not supported: {req.field}")

    @property
    def empty(self) -> bool:
        return self.labels.empty and self.fields.empty

    def matches(self, obj: Obj) -> bool:
        """obj is in the resource type's shape."""
        if not self.labels.empty and not self.labels.matches(
                (obj.get("metadata") or {}).get("labels")):
            return False
        if not self.fields.empty:
            rt = self.rt

            def value_of(name: str) -> str | None:
                if name == "metadata.namespace":
                    return (obj.get("metadata") or {}).get("namespace", "")
                try:
                    return rt.field_value(obj, name)
                except Exception:
                    return None
            return self.fields.matches(value_of)
        return True


def _encode_continue(rev: int, start_rel: bytes) -> str:
    token = orjson.dumps({"v": "meta.k8s.io/v1", "rv": rev,
                          "start": start_rel.decode("utf-8", errors="surrogateescape")})
    return base64.urlsafe_b64encode(token).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, bytes]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
        rev = int(data["rv"])
        start = str(data["start"])
        if data.get("v") != "meta.k8s.io/v1" or rev <= 0 or ".." in start.split("/"):
            raise ValueError
        return rev, start.encode("utf-8", errors="surrogateescape")
    except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise errors.bad_request("continue key is not valid: the provided continue "
                                 "parameter is malformed") from None


_CONTINUE_EXPIRED = ("The provided continue parameter is too old to display a consistent list "
                     "result. You can start a new list without the continue parameter.")


async def list_(srv: "APIServer", ctx: Ctx, target: Target) -> web.Response:
    output = _output(ctx)
    rt = target.rt
    sel = ListSelectors(rt, ctx)
    limit_text = ctx.param("limit")
    limit = 0
    if limit_text:
        try:
            limit = max(int(limit_text), 0)
        except ValueError:
            raise errors.bad_request(f'limit: Invalid value: "{limit_text}": must be an '
                                     "integer") from None
    token = ctx.param("continue")
    rv_text = ctx.param("resourceVersion")
    match = ctx.param("resourceVersionMatch")
    if match and match not in ("Exact", "NotOlderThan"):
        raise errors.bad_request(f'resourceVersionMatch: Unsupported value: "{match}": '
                                 'supported values: "Exact", "NotOlderThan"')
    if match and not rv_text:
        raise errors.bad_request("resourceVersionMatch: Forbidden: resourceVersionMatch is "
                                 "forbidden unless resourceVersion is provided")
    if token and rv_text and rv_text != "0":
        raise errors.bad_request("specifying resource version is not allowed when using "
                                 "continue")
    if match == "Exact" and rv_text == "0":
        raise errors.bad_request('resourceVersionMatch: Forbidden: resourceVersionMatch "exact" '
                                 'is forbidden for resourceVersion "0"')
    prefix = target.prefix
    if not token and rv_text == "0" and match != "Exact":
        cache = await srv.ready_cache(rt)
        if cache is not None:
            # Served from memory, whole (upstream's cache ignores limit here too).
            items = [to_type(rt, target.storage, o) for o in cache.snapshot(prefix)]
            if not sel.empty:
                items = [o for o in items if sel.matches(o)]
            return render_list(ctx, rt, items, {"resourceVersion": str(cache.revision)},
                               output)
    revision = 0
    start = prefix
    min_rv = 0
    if token:
        revision, start_rel = _decode_continue(token)
        start = prefix + start_rel
    elif rv_text and rv_text != "0":
        wanted = parse_rv(rv_text)
        if match == "Exact":
            revision = wanted
        else:
            min_rv = wanted
    # A plain JSON list of every item can carry the stored bytes as they are.
    splice = sel.empty and output == negotiation.Output()
    items, list_meta = await _range_list(srv, target, sel, start, prefix, revision, limit,
                                         min_rv, splice)
    return render_list(ctx, rt, items, list_meta, output)


async def _range_list(srv: "APIServer", target: Target, sel: ListSelectors, start: bytes,
                      prefix: bytes, revision: int, limit: int, min_rv: int,
                      splice: bool = False) -> tuple[list[Obj], Obj]:
    """Objects from etcd in key order, at one revision, up to `limit` matching ones.

    With `splice`, items are their stored JSON (orjson.Fragment) where it can be used as
    it is: decoding thousands of objects only to encode them again is most of a LIST."""
    rt, storage = target.rt, target.storage
    head = storage.list_head(rt) if splice else None
    end = prefix_end(prefix)
    items: list[Obj] = []
    more = False
    next_start = b""
    remaining: int | None = None
    while True:
        want = limit - len(items) if limit else 0
        # With a selector, read ahead a little: many keys may not match.
        fetch = want if not limit or sel.empty else max(want, 100)
        try:
            result = await srv.store.range(start, end, limit=fetch, revision=revision)
        except CompactedError:
            if start != prefix:
                raise errors.expired(_CONTINUE_EXPIRED) from None
            raise errors.expired(f"too old resource version: {revision}") from None
        revision = result.revision
        if min_rv and revision < min_rv:
            raise errors.too_large_rv(f"Too large resource version: {min_rv}, current: "
                                      f"{revision}")
        stop_index = None
        for index, kv in enumerate(result.kvs):
            obj = storage.spliced(kv, head) if head is not None else None
            if obj is None:
                obj = to_type(rt, storage, storage.decode_or_fail(kv))
            if sel.empty or sel.matches(obj):
                items.append(obj)
                if limit and len(items) >= limit:
                    stop_index = index
                    break
        if stop_index is not None:
            last = result.kvs[stop_index].key
            more = stop_index + 1 < len(result.kvs) or result.more
            next_start = last + b"\0"
            if sel.empty:
                remaining = result.count - (stop_index + 1)
            break
        if not result.more or not result.kvs:
            break
        start = result.kvs[-1].key + b"\0"
    list_meta: Obj = {"resourceVersion": str(revision)}
    if more:
        list_meta["continue"] = _encode_continue(revision, next_start[len(prefix):])
        if remaining:
            list_meta["remainingItemCount"] = remaining
    return items, list_meta


# --- writes ----------------------------------------------------------------------------

def dry_run(ctx: Ctx, options: Obj | None = None) -> bool:
    values = list(ctx.query.getall("dryRun", []))
    if options and isinstance(options.get("dryRun"), list):
        values += options["dryRun"]
    for value in values:
        if value != "All":
            raise errors.bad_request(f'dryRun: Unsupported value: "{value}": supported '
                                     'values: "All"')
    return bool(values)


def field_validation(ctx: Ctx) -> str:
    value = ctx.param("fieldValidation") or "Warn"
    aliases = {"strict": "Strict", "warn": "Warn", "ignore": "Ignore"}
    value = aliases.get(value.lower(), value)
    if value not in ("Strict", "Warn", "Ignore"):
        raise errors.bad_request(f'fieldValidation: Unsupported value: "{value}": supported '
                                 'values: "Ignore", "Strict", "Warn"')
    return value


async def read_body(ctx: Ctx) -> bytes:
    try:
        return await ctx.request.read()
    except web.HTTPRequestEntityTooLarge:
        raise errors.request_too_large("the request body is too large") from None


async def decode_object(ctx: Ctx, rt: ResourceType, *, check_fields: bool = True) -> Obj:
    """The request body as an object of the URL's kind; strict field checks on request."""
    raw = await read_body(ctx)
    if not raw.strip():
        raise errors.bad_request("the request body is empty")
    content_type = ctx.request.headers.get("Content-Type")
    obj = negotiation.decode_body(raw, content_type)
    if not isinstance(obj, dict):
        raise errors.bad_request(f"{rt.kind} in version \"{rt.version}\" cannot be handled as "
                                 f"a {rt.kind}: the body must be a JSON object")
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if api_version and api_version != rt.api_version:
        raise errors.bad_request(f"the API version in the data ({api_version}) does not match "
                                 f"the expected API version ({rt.api_version})")
    if kind and kind != rt.kind:
        raise errors.bad_request(f"the kind in the data ({kind}) does not match the expected "
                                 f"kind ({rt.kind})")
    if not isinstance(obj.get("metadata", {}), dict):
        raise errors.bad_request(f"{rt.kind} in version \"{rt.version}\" cannot be handled as "
                                 f"a {rt.kind}: metadata must be an object")
    # apiVersion and kind first, as upstream's encoder writes them.
    obj = {"apiVersion": rt.api_version, "kind": rt.kind,
           **{k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}}
    obj.setdefault("metadata", {})
    if check_fields:
        obj = fieldcheck.check(ctx, rt, raw, content_type, obj, field_validation(ctx))
    return obj


async def admit(srv: "APIServer", ctx: Ctx | None, operation: str, target: Target,
                obj: Obj | None, old: Obj | None, dry: bool) -> None:
    if ctx is None:
        return  # the server's own bootstrap writes
    name = target.name or ((obj or {}).get("metadata") or {}).get("name", "")
    request = admission.Request(operation, target.rt, target.subresource, target.namespace,
                                name, obj, old, ctx.user, dry)
    await srv.admission.run(request)
    return getattr(request, "extra", None)   # keys a plugin writes with the object


def validate(target: Target, obj: Obj, old: Obj | None) -> None:
    try:
        problems = target.rt.validate(obj, old)
    except Exception as exc:
        # A validator tripping over a malformed field is the client's problem, not a 500.
        log.debug("validator of %s raised", target.rt.kind, exc_info=True)
        raise errors.bad_request(f"{target.rt.kind} in version \"{target.rt.version}\" cannot "
                                 f"be handled as a {target.rt.kind}: {exc}") from None
    if problems:
        name = (obj.get("metadata") or {}).get("name", "") or target.name
        raise errors.invalid(target.rt.kind, target.rt.group, name, problems)


def _safe(fn, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:
        log.debug("hook %s raised", getattr(fn, "__name__", fn), exc_info=True)
        raise errors.bad_request(f"invalid object: {exc}") from None


async def create(srv: "APIServer", ctx: Ctx, target: Target) -> web.Response:
    rt = target.rt
    obj = await decode_object(ctx, rt)
    dry = dry_run(ctx)
    created = await create_object(srv, ctx, target, obj, dry)
    return respond(ctx, created, 201)


async def create_object(srv: "APIServer", ctx: Ctx | None, target: Target, obj: Obj,
                        dry: bool, *, run_admission: bool = True,
                        manage_fields: bool = True) -> Obj:
    """The create path shared by POST, create-on-PUT and the bootstrap."""
    rt = target.rt
    meta = objectmeta.meta(obj)
    body_namespace = meta.get("namespace")
    if rt.namespaced:
        if body_namespace and target.namespace and body_namespace != target.namespace:
            raise errors.bad_request("the namespace of the provided object does not match the "
                                     "namespace sent on the request")
        meta["namespace"] = target.namespace or body_namespace
    elif body_namespace:
        meta.pop("namespace", None)
    if meta.get("resourceVersion"):
        raise errors.bad_request("resourceVersion should not be set on objects to be created")
    if target.name and meta.get("name") and meta["name"] != target.name:
        raise errors.bad_request(f"the name of the object ({meta['name']}) does not match the "
                                 f"name on the URL ({target.name})")
    if rt.has_status and not (rt.group == "" and rt.plural == "nodes"):
        # A client sets status through the subresource; Nodes are the exception upstream
        # (a kubelet registers its Node with its status).
        obj["status"] = {}
    _safe(rt.apply_defaults, obj)
    if manage_fields:
        # Defaults count as the creator's fields, as upstream decodes them in.
        managedfields.record_update(rt, managedfields.manager_of(ctx), "", None, obj)
    objectmeta.fill_create(rt, obj)
    generate = not meta.get("name") and meta.get("generateName")
    attempts = GENERATE_NAME_RETRIES if generate else 1
    special.prepare_create(rt, obj)
    attempt = retries = 0
    while attempt < attempts:
        if generate and isinstance(meta.get("generateName"), str):
            meta["name"] = objectmeta.generate_name(meta["generateName"])
            _safe(rt.apply_defaults, obj)   # defaults that derive from the name
        _safe(rt.prepare_for_create, obj)
        named = Target(rt, target.storage, meta.get("namespace") or "", meta.get("name") or "",
                       "")
        admitted = None
        if run_admission and ctx is not None:
            admitted = await admit(srv, ctx, admission.CREATE, named, obj, None, dry)
        validate(named, obj, None)
        extra = txn.combine(admitted, await allocators.on_create(srv, rt, obj, dry))
        if dry:
            return obj
        data = target.storage.encode(to_storage(rt, target.storage, obj))
        try:
            revision = await txn.create(srv.store, named.key, data, extra)
        except KeyExistsError:
            attempt += 1
            if generate and attempt < attempts:
                continue
            raise errors.already_exists(rt.plural, rt.group, named.name) from None
        except txn.Retry:
            extra.rollback()
            retries = await txn.backoff(retries)
            continue
        meta["resourceVersion"] = str(revision)
        return obj
    raise AssertionError("unreachable")


Mutation = Callable[[Obj], Awaitable[Obj] | Obj]


async def update_object(srv: "APIServer", ctx: Ctx | None, target: Target, mutate: Mutation,
                        dry: bool, *, create_missing: Callable[[], Awaitable[Obj]] | None = None,
                        manage_fields: bool = True) -> tuple[Obj, bool]:
    """Read, change and write back with optimistic concurrency; (object, created).

    `mutate` gets a private copy of the current object (in the type's shape) and returns
    the desired one. A resourceVersion in it is a precondition (409 when stale); without
    one the read-modify-write is retried on conflicts, as upstream does.
    """
    rt, storage = target.rt, target.storage
    for attempt in range(MAX_UPDATE_RETRIES):
        kv = await srv.store.get(target.key)
        if kv is None:
            if create_missing is not None:
                return await create_missing(), True
            raise target.not_found()
        stored = storage.decode_or_fail(kv)
        old = to_type(rt, storage, stored)
        result = mutate(copy.deepcopy(old))
        new = await result if hasattr(result, "__await__") else result
        meta = objectmeta.meta(new)
        wanted_rv = meta.get("resourceVersion") or ""
        if wanted_rv and wanted_rv != str(kv.mod_revision):
            raise errors.conflict(rt.plural, rt.group, target.name, errors.MODIFIED)
        if meta.get("name") and meta["name"] != target.name:
            raise errors.bad_request(f"the name of the object ({meta['name']}) does not match "
                                     f"the name on the URL ({target.name})")
        namespace = meta.get("namespace")
        if rt.namespaced and namespace and namespace != target.namespace:
            raise errors.bad_request("the namespace of the provided object does not match the "
                                     "namespace sent on the request")
        old_meta = old.get("metadata") or {}
        uid = meta.get("uid")
        if uid and uid != old_meta.get("uid"):
            raise errors.conflict(rt.plural, rt.group, target.name,
                                  f"Precondition failed: UID in precondition: {uid}, UID in "
                                  f"object meta: {old_meta.get('uid')}")
        meta["name"] = target.name
        if rt.namespaced:
            meta["namespace"] = target.namespace
        else:
            meta.pop("namespace", None)
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        if target.subresource == "" and rt.has_status:
            # The main resource ignores status; only .../status writes it.
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        requested_spec = copy.deepcopy(new.get("spec")) if special.keeps_request(rt) else None
        _safe(rt.apply_defaults, new)
        if manage_fields:
            managedfields.record_update(rt, managedfields.manager_of(ctx), target.subresource,
                                        old, new)
        special.prepare_update(rt, target.subresource, new, old, requested_spec)
        objectmeta.keep_system_fields(rt, new, old)
        _safe(rt.prepare_for_update, new, old)
        admitted = await admit(srv, ctx, admission.UPDATE, target, new, old, dry)
        if target.subresource != "binding":
            # A binding sets spec.nodeName, which no pod update may change.
            validate(target, new, old)
        extra = txn.combine(admitted, await allocators.on_update(srv, rt, new, old, dry))
        meta["resourceVersion"] = str(kv.mod_revision)
        if objectmeta.same_object(new, old):
            return old, False
        if special.should_delete_on_update(rt, new):
            if not dry:
                try:
                    await txn.delete(srv.store, target.key, kv.mod_revision,
                                     allocators.on_delete(rt, old))
                except KeyNotFoundError:
                    raise target.not_found() from None
                except (ConflictError, txn.Retry):
                    if wanted_rv:
                        raise errors.conflict(rt.plural, rt.group, target.name,
                                              errors.MODIFIED) from None
                    continue
            return new, False
        if dry:
            return new, False
        data = storage.encode(to_storage(rt, storage, new))
        try:
            revision = await txn.update(srv.store, target.key, data, kv.mod_revision, extra)
        except KeyNotFoundError:
            raise target.not_found() from None
        except ConflictError:
            if wanted_rv:
                raise errors.conflict(rt.plural, rt.group, target.name, errors.MODIFIED) from None
            continue
        except txn.Retry:
            continue
        meta["resourceVersion"] = str(revision)
        return new, False
    raise errors.conflict(target.rt.plural, target.rt.group, target.name, errors.MODIFIED)


def _status_only(old: Obj, new: Obj) -> Obj:
    """A status write: the stored object with the new status (and the caller's rv)."""
    result = copy.deepcopy(old)
    if "status" in new:
        result["status"] = new["status"]
    else:
        result.pop("status", None)
    rv = (new.get("metadata") or {}).get("resourceVersion")
    meta = objectmeta.meta(result)
    if rv:
        meta["resourceVersion"] = rv
    else:
        meta.pop("resourceVersion", None)
    uid = (new.get("metadata") or {}).get("uid")
    if uid:
        meta["uid"] = uid
    return result


async def update(srv: "APIServer", ctx: Ctx, target: Target) -> web.Response:
    rt = target.rt
    body = await decode_object(ctx, rt)
    dry = dry_run(ctx)
    body_meta = objectmeta.meta(body)
    if body_meta.get("name") and body_meta["name"] != target.name:
        raise errors.bad_request(f"the name of the object ({body_meta['name']}) does not match "
                                 f"the name on the URL ({target.name})")

    def mutate(old: Obj) -> Obj:
        if target.subresource == "status":
            return _status_only(old, body)
        return copy.deepcopy(body)

    async def create_missing():
        fresh = copy.deepcopy(body)
        objectmeta.meta(fresh).pop("resourceVersion", None)
        objectmeta.meta(fresh)["name"] = target.name
        return await create_object(srv, ctx, target, fresh, dry)

    allow_create = (rt.group, rt.plural) in _CREATE_ON_UPDATE and not target.subresource
    obj, created = await update_object(srv, ctx, target, mutate, dry,
                                       create_missing=create_missing if allow_create else None)
    return respond(ctx, obj, 201 if created else 200)


async def read_patch(ctx: Ctx) -> tuple[str, Any]:
    content_type = negotiation.body_media_type(ctx.request.headers.get("Content-Type"))
    if content_type not in patching.SUPPORTED:
        raise errors.unsupported_media_type(content_type, list(patching.SUPPORTED))
    raw = await read_body(ctx)
    try:
        return content_type, orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if content_type == patching.APPLY_PATCH:
            return content_type, patching.load_yaml(raw)
        raise errors.bad_request(f"error decoding patch: {exc}") from None


def apply_patch_to(kind: str, body: Any, doc: Obj, rt: ResourceType | None = None) -> Obj:
    try:
        if kind == patching.JSON_PATCH:
            result = patching.json_patch(doc, body)
        elif kind == patching.STRATEGIC_MERGE_PATCH:
            result = patching.strategic_patch(doc, body, rt)
        else:
            if not isinstance(body, dict):
                raise patching.PatchError("merge patch must be a JSON object", invalid=False)
            result = patching.merge_patch(doc, body)
    except patching.PatchError as exc:
        if exc.invalid:
            raise errors.APIError(422, "Invalid", str(exc)) from None
        raise errors.bad_request(str(exc)) from None
    if not isinstance(result, dict):
        raise errors.bad_request("the patch result is not an object")
    return result


def apply_patch(rt: ResourceType, kind: str, body: Any, old: Obj) -> Obj:
    result = apply_patch_to(kind, body, old, rt)
    if result.get("apiVersion", rt.api_version) != rt.api_version or \
            result.get("kind", rt.kind) != rt.kind:
        raise errors.bad_request("the patch may not change apiVersion or kind")
    if not isinstance(result.get("metadata", {}), dict):
        raise errors.bad_request("metadata must be an object")
    return result


async def patch(srv: "APIServer", ctx: Ctx, target: Target) -> web.Response:
    kind, body = await read_patch(ctx)
    dry = dry_run(ctx)
    validation = field_validation(ctx)
    rt = target.rt
    if kind == patching.APPLY_PATCH:
        return await applying.serve(srv, ctx, target, body, dry)
    applying.check_options(ctx, kind)

    def mutate(old: Obj) -> Obj:
        # Patches see the stored rv (a JSON patch may test it); it is a precondition only
        # when the patch changes it.
        stored_rv = objectmeta.meta(old).get("resourceVersion")
        result = apply_patch(rt, kind, body, copy.deepcopy(old))
        if isinstance(result.get("metadata"), dict) and \
                result["metadata"].get("resourceVersion") == stored_rv:
            result["metadata"].pop("resourceVersion", None)
        result = fieldcheck.check_object(ctx, rt, result, validation)
        if target.subresource == "status":
            return _status_only(old, result)
        return result

    obj, _ = await update_object(srv, ctx, target, mutate, dry)
    return respond(ctx, obj)


# --- deletes ---------------------------------------------------------------------------

async def delete_options(ctx: Ctx) -> Obj:
    options: Obj = {}
    raw = await read_body(ctx)
    if raw.strip():
        body = negotiation.decode_body(raw, ctx.request.headers.get("Content-Type"))
        if not isinstance(body, dict):
            raise errors.bad_request("DeleteOptions must be a JSON object")
        options = body
    query = ctx.query
    if "gracePeriodSeconds" in query:
        try:
            options["gracePeriodSeconds"] = int(query["gracePeriodSeconds"])
        except ValueError:
            raise errors.bad_request("gracePeriodSeconds must be an integer") from None
    if "propagationPolicy" in query:
        options["propagationPolicy"] = query["propagationPolicy"]
    if "orphanDependents" in query:
        options["orphanDependents"] = query["orphanDependents"] in ("true", "1")
    policy = options.get("propagationPolicy")
    if policy is not None and policy not in ("Orphan", "Background", "Foreground"):
        raise errors.APIError(422, "Invalid", f'propagationPolicy: Unsupported value: "{policy}":'
                                              ' supported values: "Foreground", "Background", '
                                              '"Orphan", "nil"')
    if policy is not None and options.get("orphanDependents") is not None:
        raise errors.APIError(422, "Invalid", "propagationPolicy: Invalid value: "
                                              "orphanDependents and propagationPolicy cannot be "
                                              "both set")
    grace = options.get("gracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool)):
        raise errors.bad_request("gracePeriodSeconds must be an integer")
    return options


def _policy(options: Obj) -> str | None:
    if options.get("propagationPolicy"):
        return options["propagationPolicy"]
    orphan = options.get("orphanDependents")
    if orphan is True:
        return "Orphan"
    if orphan is False:
        return "Background"
    return None


def _gc_finalizers(finalizers: list[str], policy: str | None) -> list[str]:
    """The finalizers the garbage collector acts on, as the propagation policy asks."""
    result = [f for f in finalizers]
    if policy == "Orphan":
        result = [f for f in result if f != "foregroundDeletion"]
        if "orphan" not in result:
            result.append("orphan")
    elif policy == "Foreground":
        result = [f for f in result if f != "orphan"]
        if "foregroundDeletion" not in result:
            result.append("foregroundDeletion")
    elif policy == "Background":
        result = [f for f in result if f not in ("orphan", "foregroundDeletion")]
    return result


def _check_preconditions(target: Target, options: Obj, obj: Obj, revision: int) -> None:
    pre = options.get("preconditions") or {}
    if not isinstance(pre, dict):
        raise errors.bad_request("preconditions must be an object")
    meta = obj.get("metadata") or {}
    uid, rv = pre.get("uid"), pre.get("resourceVersion")
    if uid and uid != meta.get("uid"):
        raise errors.conflict(target.resource, target.group, target.name,
                              f"Precondition failed: UID in precondition: {uid}, UID in object "
                              f"meta: {meta.get('uid')}")
    if rv and rv != str(revision):
        raise errors.conflict(target.resource, target.group, target.name,
                              f"Precondition failed: ResourceVersion in precondition: {rv}, "
                              f"ResourceVersion in object meta: {revision}")


def _success(target: Target, obj: Obj) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": target.name, "group": target.group, "kind": target.resource,
                        "uid": (obj.get("metadata") or {}).get("uid", "")}}


async def delete_object(srv: "APIServer", ctx: Ctx, target: Target, options: Obj, dry: bool
                        ) -> tuple[Obj, bool]:
    """Delete, or mark for deletion while finalizers or a grace period remain.

    Returns (object or Status, removed). The object comes back when it stays (marked).
    """
    rt, storage = target.rt, target.storage
    policy = _policy(options)
    for attempt in range(MAX_UPDATE_RETRIES):
        kv = await srv.store.get(target.key)
        if kv is None:
            raise target.not_found()
        obj = to_type(rt, storage, storage.decode_or_fail(kv))
        _check_preconditions(target, options, obj, kv.mod_revision)
        await admit(srv, ctx, admission.DELETE, target, None, obj, dry)
        marked = copy.deepcopy(obj)
        meta = objectmeta.meta(marked)
        outcome = special.before_delete(rt, marked, options)
        finalizers = _gc_finalizers(list(meta.get("finalizers") or []), policy)
        if finalizers != list(meta.get("finalizers") or []):
            meta["finalizers"] = finalizers
        grace = special.grace_period(rt, marked, options)
        keep = bool(finalizers) or outcome == special.KEEP or bool(grace)
        if not keep:
            if dry:
                return _success(target, obj), True
            try:
                await txn.delete(srv.store, target.key, kv.mod_revision,
                                 allocators.on_delete(rt, obj))
            except KeyNotFoundError:
                raise target.not_found() from None
            except (ConflictError, txn.Retry):
                continue
            return _success(target, obj), True
        if not meta.get("deletionTimestamp"):
            meta["deletionTimestamp"] = objectmeta.later(grace or 0)
            meta["deletionGracePeriodSeconds"] = grace or 0
        elif grace is not None and grace < (meta.get("deletionGracePeriodSeconds") or 0):
            # A shorter grace period may replace a longer one, never the reverse.
            meta["deletionTimestamp"] = objectmeta.later(grace)
            meta["deletionGracePeriodSeconds"] = grace
        if objectmeta.same_object(marked, obj):
            return obj, False
        if dry:
            return marked, False
        meta.pop("resourceVersion", None)
        try:
            revision = await srv.store.update(target.key,
                                              storage.encode(to_storage(rt, storage, marked)),
                                              kv.mod_revision)
        except KeyNotFoundError:
            raise target.not_found() from None
        except ConflictError:
            continue
        meta["resourceVersion"] = str(revision)
        return marked, False
    raise errors.conflict(rt.plural, rt.group, target.name, errors.MODIFIED)


async def delete(srv: "APIServer", ctx: Ctx, target: Target) -> web.Response:
    options = await delete_options(ctx)
    dry = dry_run(ctx, options)
    result, removed = await delete_object(srv, ctx, target, options, dry)
    return respond(ctx, result, 200)


async def delete_collection(srv: "APIServer", ctx: Ctx, target: Target) -> web.Response:
    options = await delete_options(ctx)
    dry = dry_run(ctx, options)
    sel = ListSelectors(target.rt, ctx)
    items, list_meta = await _range_list(srv, target, sel, target.prefix, target.prefix, 0, 0, 0)
    done = []
    for item in items:
        meta = item.get("metadata") or {}
        one = Target(target.rt, target.storage, meta.get("namespace") or "",
                     meta.get("name") or "", "")
        try:
            result, removed = await delete_object(srv, ctx, one, options, dry)
        except errors.APIError as exc:
            if exc.code == 404:
                continue
            raise
        done.append(item if removed else result)
    return render_list(ctx, target.rt, done, {"resourceVersion": list_meta["resourceVersion"]},
                       negotiation.Output())
