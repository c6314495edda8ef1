"""The namespace controller: a namespace being deleted (deletionTimestamp set, phase
Terminating) has every namespaced object deleted, then its "kubernetes" finalizer
removed through PUT .../namespaces/{name}/finalize, after which the API server deletes
it (upstream's NamespaceController and namespacedResourcesDeleter).

Resource types come from the registry kubesmith's API server serves (upstream asks
discovery; the list is the same). The status conditions are upstream's:
NamespaceDeletionDiscoveryFailure, NamespaceDeletionGroupVersionParsingFailure,
NamespaceDeletionContentFailure, NamespaceContentRemaining and
NamespaceFinalizersRemaining.
"""
from __future__ import annotations

import logging
from typing import Any

from kubesmith.api.times import rfc3339
from kubesmith.api import REGISTRY, ResourceType
from kubesmith.client.informers import DeletedFinalStateUnknown
from kubesmith.client.rest import ApiError, is_conflict, is_not_found
from kubesmith.client.workqueue import WorkQueue, run_workers
from kubesmith.controllers import register
from kubesmith.controllers.context import ControllerContext

log = logging.getLogger(__name__)

Obj = dict[str, Any]
FINALIZER = "kubernetes"


def namespaced_resources() -> list[ResourceType]:
    """One resource type per stored kind that can be listed and deleted in a namespace
    (events.k8s.io events are the core events, stored once)."""
    seen: set[str] = set()
    result = []
    for rt in REGISTRY:
        if not rt.namespaced or "list" not in rt.verbs or "delete" not in rt.verbs:
            continue
        if rt.storage_resource in seen:
            continue
        seen.add(rt.storage_resource)
        result.append(rt)
    return result


def _condition(kind: str, failed: bool, reason: str, message: str) -> Obj:
    return {"type": kind, "status": "True" if failed else "False",
            "lastTransitionTime": rfc3339(), "reason": reason, "message": message}


# Upstream's condition reasons and messages when all is well.
_HEALTHY = {
    "NamespaceDeletionDiscoveryFailure": ("ResourcesDiscovered",
                                          "All resources successfully discovered"),
    "NamespaceDeletionGroupVersionParsingFailure": ("ParsedGroupVersions",
                                                    "All legacy kube types successfully "
                                                    "parsed"),
    "NamespaceDeletionContentFailure": ("ContentDeleted", "All content successfully deleted, "
                                                          "may be waiting on finalization"),
    "NamespaceContentRemaining": ("ContentRemoved", "All content successfully removed"),
    "NamespaceFinalizersRemaining": ("ContentHasNoFinalizers",
                                     "All content-preserving finalizers finished"),
}


def merge_conditions(old: list[Obj], new: list[Obj]) -> list[Obj]:
    """New conditions, keeping lastTransitionTime where a status did not change."""
    previous = {c.get("type"): c for c in old or []}
    merged = []
    for condition in new:
        before = previous.get(condition["type"])
        if before and before.get("status") == condition["status"] and \
                before.get("reason") == condition["reason"] and \
                before.get("message") == condition["message"]:
            merged.append(before)
        else:
            merged.append(condition)
    kinds = {c["type"] for c in new}
    return merged + [c for c in old or [] if c.get("type") not in kinds]


def pod_termination_estimate(pods: list[Obj]) -> int:
    """Seconds the remaining pods may still take (upstream's estimate)."""
    estimate = 0
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds") or 0
        deletion = (pod.get("metadata") or {}).get("deletionGracePeriodSeconds")
        if deletion is not None:
            grace = deletion
        estimate = max(estimate, int(grace))
    return estimate


@register("namespace")
class NamespaceController:
    def __init__(self, ctx: ControllerContext):
        self.client = ctx.client
        self.namespaces = ctx.informers.informer("v1 namespaces")
        self.queue = WorkQueue(name="namespace")
        self.namespaces.add_event_handler(
            on_add=self._namespace, on_update=lambda old, new: self._namespace(new))
        self.resources = namespaced_resources()

    def _namespace(self, namespace: Obj | DeletedFinalStateUnknown) -> None:
        if isinstance(namespace, DeletedFinalStateUnknown):
            return
        meta = namespace.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            self.queue.add(meta.get("name", ""))

    async def run(self, workers: int) -> None:
        await run_workers(self.queue, self.sync, workers)

    async def sync(self, name: str) -> float | None:
        """Empty and finalize one namespace; seconds to check again, when content stays."""
        try:
            namespace = await self.client.get("v1 namespaces", name)
        except ApiError as exc:
            if is_not_found(exc):
                return None
            raise
        meta = namespace.get("metadata") or {}
        if not meta.get("deletionTimestamp"):
            return None
        if FINALIZER not in ((namespace.get("spec") or {}).get("finalizers") or []):
            return None
        namespace = await self._set_status(namespace, None)
        remaining, finalizers, estimate, failures = await self._delete_content(name)
        conditions = self._conditions(remaining, finalizers, failures)
        namespace = await self._set_status(namespace, conditions)
        if failures:
            raise RuntimeError(f"namespace {name}: content deletion failed: "
                               f"{'; '.join(failures)}")
        if remaining:
            log.info("namespace %s: waiting for %s", name,
                     ", ".join(f"{n} {r}" for r, n in sorted(remaining.items())))
            # Upstream checks again after half the pods' grace period plus a second.
            return estimate / 2 + 1 if estimate else 1.0
        await self._finalize(namespace)
        log.info("namespace %s: content deleted and finalized", name)
        return None

    async def _delete_content(self, name: str
                              ) -> tuple[dict[str, int], dict[str, int], int, list[str]]:
        remaining: dict[str, int] = {}
        finalizers: dict[str, int] = {}
        failures: list[str] = []
        estimate = 0
        for rt in self.resources:
            label = rt.plural if not rt.group else f"{rt.plural}.{rt.group}"
            try:
                listed = await self.client.list_all(rt, name)
                items = listed.get("items") or []
                if not items:
                    continue
                if "deletecollection" in rt.verbs:
                    await self.client.delete_collection(rt, name,
                                                        propagation_policy="Background")
                else:
                    for item in items:
                        try:
                            await self.client.delete(rt, item["metadata"]["name"], name,
                                                     propagation_policy="Background")
                        except ApiError as exc:
                            if not is_not_found(exc):
                                raise
                items = (await self.client.list_all(rt, name)).get("items") or []
            except (ApiError, ConnectionError) as exc:
                failures.append(f"{label}: {exc}")
                continue
            if not items:
                continue
            remaining[label] = len(items)
            for item in items:
                for finalizer in (item.get("metadata") or {}).get("finalizers") or []:
                    finalizers[finalizer] = finalizers.get(finalizer, 0) + 1
            if rt.group == "" and rt.plural == "pods":
                estimate = max(estimate, pod_termination_estimate(items))
        return remaining, finalizers, estimate, failures

    @staticmethod
    def _conditions(remaining: dict[str, int], finalizers: dict[str, int],
                    failures: list[str]) -> list[Obj]:
        conditions = []
        for kind in ("NamespaceDeletionDiscoveryFailure",
                     "NamespaceDeletionGroupVersionParsingFailure"):
            conditions.append(_condition(kind, False, *_HEALTHY[kind]))
        kind = "NamespaceDeletionContentFailure"
        conditions.append(_condition(kind, True, "ContentDeletionFailed",
                                     "Failed to delete all resource types, "
                                     f"{len(failures)} remaining: {', '.join(failures)}")
                          if failures else _condition(kind, False, *_HEALTHY[kind]))
        kind = "NamespaceContentRemaining"
        conditions.append(_condition(
            kind, True, "SomeResourcesRemain", "Some resources are remaining: " + ", ".join(
                f"{r} has {n} resource instances" for r, n in sorted(remaining.items())))
            if remaining else _condition(kind, False, *_HEALTHY[kind]))
        kind = "NamespaceFinalizersRemaining"
        conditions.append(_condition(
            kind, True, "SomeFinalizersRemain",
            "Some content in the namespace has finalizers remaining: " + ", ".join(
                f"{f} in {n} resource instances" for f, n in sorted(finalizers.items())))
            if finalizers else _condition(kind, False, *_HEALTHY[kind]))
        return conditions

    async def _set_status(self, namespace: Obj, conditions: list[Obj] | None) -> Obj:
        """Phase Terminating (and the conditions, when given), if not so already."""
        for _ in range(5):
            status = dict(namespace.get("status") or {}, phase="Terminating")
            if conditions is not None:
                status["conditions"] = merge_conditions(
                    (namespace.get("status") or {}).get("conditions") or [], conditions)
            if status == namespace.get("status"):
                return namespace
            try:
                return await self.client.update_status("v1 namespaces",
                                                       dict(namespace, status=status))
            except ApiError as exc:
                if not is_conflict(exc):
                    raise
            namespace = await self.client.get("v1 namespaces",
                                              namespace["metadata"]["name"])
        raise RuntimeError(f"namespace {namespace['metadata']['name']}: status keeps "
                           "conflicting")

    async def _finalize(self, namespace: Obj) -> None:
        for _ in range(5):
            spec = namespace.get("spec") or {}
            left = [f for f in spec.get("finalizers") or [] if f != FINALIZER]
            try:
                await self.client.update("v1 namespaces",
                                         dict(namespace, spec=dict(spec, finalizers=left)),
                                         subresource="finalize")
                return
            except ApiError as exc:
                if is_not_found(exc):
                    return
                if not is_conflict(exc):
                    raise
            namespace = await self.client.get("v1 namespaces",
                                              namespace["metadata"]["name"])
