"""pods/{name}/ephemeralcontainers: how `kubectl debug` adds a container to a running pod.

As upstream serves it: GET answers the pod; PUT (a Pod) and PATCH (of the Pod) may only
add entries to spec.ephemeralContainers. Everything else in the body is ignored (the
stored pod is kept as it is, only the ephemeral container list is taken from the
request), and the update is refused when an existing ephemeral container would be
removed or changed (checked in special.prepare_update, after defaulting, so that an
entry echoed back by a client compares equal to the stored one).
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kubesmith.api import validation
from kubesmith.apiserver import errors, objectmeta
from kubesmith.apiserver import patch as patching
from kubesmith.apiserver.context import Ctx, respond

if TYPE_CHECKING:
    from kubesmith.apiserver.rest import Target
    from kubesmith.apiserver.server import APIServer

Obj = dict[str, Any]
SUBRESOURCE = "ephemeralcontainers"


def only_ephemeral_changes(old: Obj, wanted: Obj) -> Obj:
    """The stored pod with the requested ephemeral containers, and nothing else changed
    (upstream keeps name, namespace, resourceVersion and uid from the request)."""
    new = copy.deepcopy(old)
    meta = objectmeta.meta(new)
    wanted_meta = wanted.get("metadata") if isinstance(wanted.get("metadata"), dict) else {}
    for key in ("name", "namespace", "uid"):
        if wanted_meta.get(key):
            meta[key] = wanted_meta[key]
    if wanted_meta.get("resourceVersion"):
        meta["resourceVersion"] = wanted_meta["resourceVersion"]
    else:
        meta.pop("resourceVersion", None)
    wanted_spec = wanted.get("spec") if isinstance(wanted.get("spec"), dict) else {}
    spec = new.setdefault("spec", {})
    containers = wanted_spec.get("ephemeralContainers")
    if containers:
        spec["ephemeralContainers"] = copy.deepcopy(containers)
    else:
        spec.pop("ephemeralContainers", None)
    return new


def check_update(new: Obj, old: Obj) -> None:
    """Existing ephemeral containers may be neither removed nor changed (422)."""
    problems = []
    path = "spec.ephemeralContainers"
    new_items = {c.get("name"): c for c in (new.get("spec") or {}).get(
        "ephemeralContainers") or [] if isinstance(c, dict)}
    for existing in (old.get("spec") or {}).get("ephemeralContainers") or []:
        name = existing.get("name")
        if name not in new_items:
            problems.append(validation.forbidden(
                path, f'existing ephemeral containers "{name}" may not be removed\n'))
        elif new_items[name] != existing:
            problems.append(validation.forbidden(
                path, f'existing ephemeral containers "{name}" may not be changed\n'))
    if problems:
        meta = new.get("metadata") or {}
        raise errors.invalid("Pod", "", meta.get("name", ""), problems)


async def serve(srv: "APIServer", ctx: Ctx, target: "Target", method: str) -> web.Response:
    from kubesmith.apiserver import rest
    if method == "GET":
        return await rest.get(srv, ctx, target)
    if method not in ("PUT", "PATCH"):
        raise errors.method_not_allowed(method, f"{target.resource}/{SUBRESOURCE}")
    if method == "PUT":
        body = await rest.decode_object(ctx, target.rt)
        patch_kind = None
    else:
        patch_kind, body = await rest.read_patch(ctx)
        if patch_kind == patching.APPLY_PATCH:
            raise errors.unsupported_media_type(
                patch_kind, [k for k in patching.SUPPORTED if k != patching.APPLY_PATCH])
    dry = rest.dry_run(ctx)

    def mutate(old: Obj) -> Obj:
        if patch_kind is None:
            wanted = body
        else:
            stored_rv = objectmeta.meta(old).get("resourceVersion")
            wanted = rest.apply_patch(target.rt, patch_kind, body, copy.deepcopy(old))
            if (wanted.get("metadata") or {}).get("resourceVersion") == stored_rv:
                wanted["metadata"].pop("resourceVersion", None)
        return only_ephemeral_changes(old, wanted)

    obj, _ = await rest.update_object(srv, ctx, target, mutate, dry)
    return respond(ctx, obj)
