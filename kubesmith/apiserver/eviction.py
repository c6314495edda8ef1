"""pods/eviction: a delete that honours PodDisruptionBudgets, as upstream's eviction REST.

A pod no budget protects (or one that is pending, finished, or already being deleted)
is deleted with the Eviction's deleteOptions. A pod under exactly one budget takes one
of the budget's status.disruptionsAllowed (recorded in status.disruptedPods, written with
compare-and-swap so concurrent evictions cannot spend the same one) and is then deleted;
with none left the answer is 429 TooManyRequests, which `kubectl drain` retries. More
than one budget is an error, as upstream. Without the policy/v1 kind, just a delete.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kubesmith.api.registry import REGISTRY
from kubesmith.api.validation import selector_matches
from kubesmith.apiserver import admission, errors, negotiation, objectmeta
from kubesmith.apiserver.context import Ctx, respond
from kubesmith.store import ConflictError

if TYPE_CHECKING:
    from kubesmith.apiserver.rest import Target
    from kubesmith.apiserver.server import APIServer

Obj = dict[str, Any]
RETRIES = 8
MAX_DISRUPTED_PODS = 2000
VIOLATION = "Cannot evict pod as it would violate the pod's disruption budget."


def _too_many(cause: str) -> errors.APIError:
    return errors.APIError(429, "TooManyRequests", VIOLATION,
                           {"causes": [{"reason": "DisruptionBudget", "message": cause}]})


def _ready(pod: Obj) -> bool:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def _ignores_budgets(pod: Obj) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return phase in ("Succeeded", "Failed", "Pending") or \
        bool((pod.get("metadata") or {}).get("deletionTimestamp"))


async def _read_body(ctx: Ctx, name: str) -> Obj:
    from kubesmith.apiserver import rest
    raw = await rest.read_body(ctx)
    if not raw.strip():
        raise errors.bad_request("the request body is empty")
    body = negotiation.decode_body(raw, ctx.request.headers.get("Content-Type"))
    if not isinstance(body, dict):
        raise errors.bad_request("the body must be an Eviction object")
    if body.get("kind") not in (None, "Eviction") or body.get("apiVersion") not in (
            None, "policy/v1", "policy/v1beta1"):
        raise errors.bad_request(f"the kind in the data ({body.get('kind')}) does not match "
                                 "the expected kind (Eviction)")
    meta = body.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise errors.bad_request("metadata must be an object")
    if (meta or {}).get("name") and meta["name"] != name:
        raise errors.bad_request("name in URL does not match name in Eviction object")
    options = body.get("deleteOptions")
    if options is not None and not isinstance(options, dict):
        raise errors.bad_request("deleteOptions must be an object")
    return body


async def _take_disruption(srv: "APIServer", pod: Obj, dry: bool) -> None:
    """Spend one of the covering budget's allowed disruptions; 429 when none is left."""
    rt = REGISTRY.get("policy", "v1", "poddisruptionbudgets")
    if rt is None:
        return
    meta = pod.get("metadata") or {}
    namespace = meta.get("namespace", "")
    storage = srv.storage.for_type(rt)
    for _ in range(RETRIES):
        result = await srv.store.range(rt.storage_prefix(namespace))
        budgets = []
        for kv in result.kvs:
            budget = storage.decode_or_fail(kv)
            if selector_matches((budget.get("spec") or {}).get("selector"),
                                meta.get("labels")):
                budgets.append((kv, budget))
        if not budgets:
            return
        if len(budgets) > 1:
            raise errors.internal("This pod has more than one PodDisruptionBudget, which the "
                                  "eviction subresource does not support.")
        kv, budget = budgets[0]
        name = budget["metadata"].get("name", "")
        status = budget.get("status") or {}
        spec = budget.get("spec") or {}
        if not _ready(pod):
            # Unhealthy pods may go when the budget is met anyway (or always, if asked).
            policy = spec.get("unhealthyPodEvictionPolicy") or "IfHealthyBudget"
            healthy, desired = status.get("currentHealthy", 0), status.get("desiredHealthy", 0)
            if policy == "AlwaysAllow" or (desired > 0 and healthy >= desired):
                return
        if status.get("observedGeneration", 0) < budget["metadata"].get("generation", 0):
            raise _too_many(f"The disruption budget {name} is still being processed by the "
                            "server.")
        allowed = status.get("disruptionsAllowed", 0)
        if not isinstance(allowed, int) or allowed < 0:
            raise errors.forbidden("pods/eviction", "", meta.get("name", ""),
                                   "pdb disruptions allowed is negative")
        disrupted = status.get("disruptedPods") or {}
        if len(disrupted) > MAX_DISRUPTED_PODS:
            raise errors.forbidden("pods/eviction", "", meta.get("name", ""),
                                   "DisruptedPods map too big - too many evictions not "
                                   "confirmed by PDB controller")
        if allowed == 0:
            raise _too_many(f"The disruption budget {name} needs "
                            f"{status.get('desiredHealthy', 0)} healthy pods and has "
                            f"{status.get('currentHealthy', 0)} currently")
        if dry:
            return
        updated = copy.deepcopy(budget)
        new_status = updated.setdefault("status", {})
        new_status["disruptionsAllowed"] = allowed - 1
        new_status.setdefault("disruptedPods", {})[meta.get("name", "")] = \
            objectmeta.timestamp()
        if allowed - 1 == 0:
            conditions = [c for c in new_status.get("conditions") or []
                          if isinstance(c, dict) and c.get("type") != "DisruptionAllowed"]
            conditions.append({"type": "DisruptionAllowed", "status": "False",
                               "reason": "InsufficientPods", "message": "",
                               "observedGeneration": status.get("observedGeneration", 0),
                               "lastTransitionTime": objectmeta.timestamp()})
            new_status["conditions"] = conditions
        try:
            await srv.store.update(kv.key, storage.encode(updated), kv.mod_revision)
            return
        except ConflictError:
            continue
    raise errors.conflict("poddisruptionbudgets", "policy", "", errors.MODIFIED)


async def evict(srv: "APIServer", ctx: Ctx, target: "Target", method: str) -> web.Response:
    from kubesmith.apiserver import rest
    if method != "POST":
        raise errors.method_not_allowed(method, "pods/eviction")
    body = await _read_body(ctx, target.name)
    options = copy.deepcopy(body.get("deleteOptions") or {})
    dry = rest.dry_run(ctx, options)
    pod_target = rest.Target(target.rt, target.storage, target.namespace, target.name, "")
    pod, _ = await rest.read_current(srv, pod_target)
    body.setdefault("metadata", {}).setdefault("name", target.name)
    body["metadata"].setdefault("namespace", target.namespace)
    await rest.admit(srv, ctx, admission.CREATE, target, body, None, dry)
    if not _ignores_budgets(pod):
        await _take_disruption(srv, pod, dry)
    # The pod checked is the pod deleted.
    preconditions = options.get("preconditions")
    if not isinstance(preconditions, dict):
        preconditions = options["preconditions"] = {}
    preconditions.setdefault("uid", (pod.get("metadata") or {}).get("uid"))
    try:
        await rest.delete_object(srv, ctx, pod_target, options, dry)
    except errors.APIError as exc:
        if exc.code != 404:
            raise
        raise pod_target.not_found() from None
    return respond(ctx, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                         "status": "Success", "code": 201}, 201)
