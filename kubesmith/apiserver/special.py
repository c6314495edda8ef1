"""The few kinds whose REST behaviour is not generic, as upstream has them.

  * namespaces: deleting one marks it Terminating while spec.finalizers remain (the
    namespace controller empties it and calls .../finalize); spec.finalizers change
    only through finalize; the status phase is Active on create.
  * pods: graceful deletion (deletionTimestamp in the future; the kubelet removes the
    pod), pods/binding (the scheduler's assignment to a node) and
    pods/ephemeralcontainers (ephemeral.py: the only way to add a debug container).
  * scale: the autoscaling/v1 Scale view of any kind with a scale subresource.
  * create-only kinds: access and token reviews (reviews.py), bindings.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kubesmith.api import validation
from kubesmith.api.registry import ResourceType
from kubesmith.apiserver import (ephemeral, errors, eviction, kubeletproxy, negotiation,
                                 objectmeta, reviews, serviceaccount)
from kubesmith.apiserver.context import Ctx, respond

if TYPE_CHECKING:
    from kubesmith.apiserver.rest import Target
    from kubesmith.apiserver.server import APIServer

Obj = dict[str, Any]
KEEP = "keep"


def _is(rt: ResourceType, group: str, plural: str) -> bool:
    return rt.group == group and rt.plural == plural


# --- hooks called by the generic code ---------------------------------------------------

def prepare_create(rt: ResourceType, obj: Obj) -> None:
    if _is(rt, "", "namespaces"):
        obj.setdefault("status", {})["phase"] = "Active"


def keeps_request(rt: ResourceType) -> bool:
    """prepare_update needs the requested spec as it was before defaulting."""
    return _is(rt, "", "namespaces")


def prepare_update(rt: ResourceType, subresource: str, new: Obj, old: Obj,
                   requested_spec: Any) -> None:
    """After defaulting, before validation."""
    if _is(rt, "", "services") and not subresource:
        from kubesmith.apiserver import allocators
        allocators.drop_type_dependent_fields(new, old)
    if _is(rt, "", "pods"):
        _prepare_pod_update(subresource, new, old)
    if _is(rt, "", "namespaces"):
        # spec.finalizers change only through .../finalize.
        source = requested_spec if subresource == "finalize" else old.get("spec")
        finalizers = (source or {}).get("finalizers") if isinstance(source, dict) else None
        spec = new.get("spec")
        if not isinstance(spec, dict):
            spec = new["spec"] = {}
        if finalizers:
            spec["finalizers"] = copy.deepcopy(finalizers)
        else:
            spec.pop("finalizers", None)


def _prepare_pod_update(subresource: str, new: Obj, old: Obj) -> None:
    """Ephemeral containers are added only through pods/ephemeralcontainers, and there
    only added: an existing one is neither removed nor changed."""
    if subresource == ephemeral.SUBRESOURCE:
        ephemeral.check_update(new, old)
        return
    if subresource:
        return
    new_items = (new.get("spec") or {}).get("ephemeralContainers") or []
    if new_items != ((old.get("spec") or {}).get("ephemeralContainers") or []):
        raise errors.invalid("Pod", "", (new.get("metadata") or {}).get("name", ""), [
            validation.forbidden("spec", "pod updates may not change fields other than "
                                 "`spec.containers[*].image`, `spec.initContainers[*].image`, "
                                 "`spec.activeDeadlineSeconds`, `spec.tolerations` (only "
                                 "additions to existing tolerations), "
                                 "`spec.terminationGracePeriodSeconds`; changed: "
                                 "spec.ephemeralContainers")])


def should_delete_on_update(rt: ResourceType, obj: Obj) -> bool:
    """An update that leaves a deleted object with nothing to wait for removes it."""
    meta = obj.get("metadata") or {}
    if not meta.get("deletionTimestamp") or meta.get("finalizers"):
        return False
    if _is(rt, "", "namespaces") and (obj.get("spec") or {}).get("finalizers"):
        return False
    return not meta.get("deletionGracePeriodSeconds")


def before_delete(rt: ResourceType, obj: Obj, options: Obj) -> str | None:
    """Kind-specific marking on delete; KEEP when the object must stay for now."""
    if _is(rt, "", "namespaces"):
        if (obj.get("spec") or {}).get("finalizers"):
            obj.setdefault("status", {})["phase"] = "Terminating"
            return KEEP
    return None


def grace_period(rt: ResourceType, obj: Obj, options: Obj) -> int | None:
    """Seconds the object may take to go away (pods only); None or 0: at once."""
    if not _is(rt, "", "pods"):
        return None
    grace = options.get("gracePeriodSeconds")
    spec = obj.get("spec") or {}
    if grace is None:
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if not isinstance(grace, int) or isinstance(grace, bool):
            grace = 30
    # A pod no kubelet runs, or one that has finished, goes at once.
    phase = (obj.get("status") or {}).get("phase")
    if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
        return 0
    return max(grace, 0) or 0


# --- subresources ------------------------------------------------------------------------

def _selector_string(selector: Any) -> str:
    if not isinstance(selector, dict):
        return ""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        # replicationcontrollers: a plain map
        return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(sorted(values))})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(sorted(values))})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def to_scale(obj: Obj) -> Obj:
    meta = obj.get("metadata") or {}
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    scale_meta = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                       "creationTimestamp") if k in meta}
    return {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": scale_meta,
            "spec": {"replicas": spec.get("replicas", 0)},
            "status": {"replicas": status.get("replicas", 0),
                       "selector": _selector_string(spec.get("selector"))}}


async def scale(srv: "APIServer", ctx: Ctx, target: "Target", method: str) -> web.Response:
    from kubesmith.apiserver import rest
    if method == "GET":
        obj, _ = await rest.read_current(srv, target)
        return respond(ctx, to_scale(obj))
    if method not in ("PUT", "PATCH"):
        raise errors.method_not_allowed(method, f"{target.resource}/scale")
    if method == "PUT":
        raw = await rest.read_body(ctx)
        body = negotiation.decode_body(raw, ctx.request.headers.get("Content-Type"))
        patch_kind = None
    else:
        patch_kind, body = await rest.read_patch(ctx)
    if not isinstance(body, (dict, list)):
        raise errors.bad_request("the body must be a JSON object")
    dry = rest.dry_run(ctx)

    def mutate(old: Obj) -> Obj:
        current = to_scale(old)
        if patch_kind is None:
            wanted = body
        else:
            base = copy.deepcopy(current)
            base["metadata"].pop("resourceVersion", None)
            wanted = rest.apply_patch_to(patch_kind, body, base)
        replicas = (wanted.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.invalid("Scale", "autoscaling", target.name, [
                validation.invalid("spec.replicas", replicas,
                                   "must be greater than or equal to 0")])
        new = copy.deepcopy(old)
        new.setdefault("spec", {})["replicas"] = replicas
        rv = (wanted.get("metadata") or {}).get("resourceVersion")
        if rv:
            objectmeta.meta(new)["resourceVersion"] = rv
        else:
            objectmeta.meta(new).pop("resourceVersion", None)
        return new

    main = rest.Target(target.rt, target.storage, target.namespace, target.name, "")
    obj, _ = await rest.update_object(srv, ctx, main, mutate, dry)
    return respond(ctx, to_scale(obj))


async def finalize(srv: "APIServer", ctx: Ctx, target: "Target", method: str) -> web.Response:
    """PUT namespaces/{name}/finalize: only spec.finalizers changes."""
    from kubesmith.apiserver import rest
    if method != "PUT":
        raise errors.method_not_allowed(method, f"{target.resource}/finalize")
    body = await rest.decode_object(ctx, target.rt, check_fields=False)
    dry = rest.dry_run(ctx)

    def mutate(old: Obj) -> Obj:
        new = copy.deepcopy(old)
        finalizers = (body.get("spec") or {}).get("finalizers")
        spec = new.setdefault("spec", {})
        if finalizers:
            spec["finalizers"] = finalizers
        else:
            spec.pop("finalizers", None)
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv:
            objectmeta.meta(new)["resourceVersion"] = rv
        else:
            objectmeta.meta(new).pop("resourceVersion", None)
        return new

    obj, _ = await rest.update_object(srv, ctx, target, mutate, dry)
    return respond(ctx, obj)


async def bind(srv: "APIServer", ctx: Ctx, namespace: str, binding: Obj) -> web.Response:
    """Assign a pod to a node (pods/{name}/binding, or a Binding posted to bindings)."""
    from kubesmith.api.registry import REGISTRY
    from kubesmith.apiserver import rest
    pods = REGISTRY.get("", "v1", "pods")
    meta = binding.get("metadata") or {}
    name = meta.get("name") or ""
    target_node = (binding.get("target") or {}).get("name")
    if not name or not target_node:
        raise errors.APIError(422, "Invalid", "a binding needs metadata.name and target.name")
    pod_target = rest.Target(pods, srv.storage.for_type(pods), namespace, name, "")
    dry = rest.dry_run(ctx)

    def mutate(old: Obj) -> Obj:
        pod_meta = old.get("metadata") or {}
        if meta.get("uid") and meta["uid"] != pod_meta.get("uid"):
            raise errors.conflict("pods/binding", "", name,
                                  f"Precondition failed: UID in precondition: {meta['uid']}, "
                                  f"UID in object meta: {pod_meta.get('uid')}")
        if pod_meta.get("deletionTimestamp"):
            raise errors.conflict("pods/binding", "", name,
                                  f"pod {name} is being deleted, cannot be assigned to a host")
        current = (old.get("spec") or {}).get("nodeName")
        if current:
            raise errors.conflict("pods/binding", "", name,
                                  f'pod {name} is already assigned to node "{current}"')
        new = copy.deepcopy(old)
        new.setdefault("spec", {})["nodeName"] = target_node
        if meta.get("annotations"):
            annotations = new["metadata"].setdefault("annotations", {})
            annotations.update(meta["annotations"])
        conditions = new.setdefault("status", {}).setdefault("conditions", [])
        conditions[:] = [c for c in conditions if c.get("type") != "PodScheduled"]
        conditions.append({"type": "PodScheduled", "status": "True",
                           "lastProbeTime": None,
                           "lastTransitionTime": objectmeta.timestamp()})
        new["metadata"].pop("resourceVersion", None)
        return new

    # The binding writes spec and status together, as upstream's binding storage does.
    pod_target.subresource = "binding"
    await rest.update_object(srv, ctx, pod_target, mutate, dry)
    return respond(ctx, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                         "status": "Success", "code": 201}, 201)


async def pod_binding(srv: "APIServer", ctx: Ctx, target: "Target", method: str):
    from kubesmith.api.registry import REGISTRY
    from kubesmith.apiserver import rest
    if method != "POST":
        raise errors.method_not_allowed(method, "pods/binding")
    bindings = REGISTRY.get("", "v1", "bindings")
    body = await rest.decode_object(ctx, bindings) if bindings else \
        negotiation.decode_body(await rest.read_body(ctx),
                                ctx.request.headers.get("Content-Type"))
    meta = objectmeta.meta(body)
    if meta.get("name") and meta["name"] != target.name:
        raise errors.bad_request(f"the name of the object ({meta['name']}) does not match the "
                                 f"name on the URL ({target.name})")
    meta["name"] = target.name
    return await bind(srv, ctx, target.namespace, body)


SUBRESOURCES = {
    "scale": scale,
    "finalize": finalize,
    "binding": pod_binding,
    "eviction": eviction.evict,
    **kubeletproxy.SUBRESOURCES,
    "token": serviceaccount.token_request,
    ephemeral.SUBRESOURCE: ephemeral.serve,
}


async def create_only(srv: "APIServer", ctx: Ctx, target: "Target") -> web.Response:
    """POST to a kind that is never stored: reviews answer a question, bindings bind."""
    from kubesmith.apiserver import rest
    rt = target.rt
    obj = await rest.decode_object(ctx, rt)
    meta = objectmeta.meta(obj)
    if rt.namespaced:
        if meta.get("namespace") and meta["namespace"] != target.namespace:
            raise errors.bad_request("the namespace of the provided object does not match the "
                                     "namespace sent on the request")
        meta["namespace"] = target.namespace
    if _is(rt, "", "bindings"):
        rest.validate(target, obj, None)
        return await bind(srv, ctx, target.namespace, obj)
    handler = reviews.HANDLERS.get((rt.group, rt.plural))
    rest.validate(target, obj, None)
    if handler is not None:
        await handler(srv, ctx, obj)
    return respond(ctx, obj, 201)
