"""ReplicaSet and ReplicationController: keep `spec.replicas` pods of the template running.

One implementation serves both kinds, as upstream's (the RC manager is the RS manager
with a map selector). Per sync of one set:
  * claim pods: adopt active orphans the selector matches, release owned pods it no
    longer matches (common.claim);
  * when expectations are met, create the missing pods in slow-start batches
    (1, 2, 4, ...; at most 500 a sync) or delete the surplus, the pods upstream's
    ActivePods order puts first (unscheduled, pending, not ready, newest);
  * write status: replicas, fullyLabeledReplicas, readyReplicas, availableReplicas
    (ready for minReadySeconds), observedGeneration, and the ReplicaFailure condition
    while pods cannot be created or deleted (a quota, say).
Pods carry what the template says and nothing more: pod-template-hash comes from the
Deployment controller through the template.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from kubesmith.client.informers import namespace_key, split_key
from kubesmith.client.rest import ApiError, is_not_found
from kubesmith.controllers import register
from kubesmith.controllers.common import (
    Expectations,
    Obj,
    QueueController,
    claim,
    controller_of,
    deletion_rank,
    get_condition,
    is_pod_active,
    is_pod_available,
    is_pod_ready,
    is_terminating,
    label_match,
    meta,
    now_rfc3339,
    pod_from_template,
    slow_start_batches,
    unwrap,
    write_status,
)
from kubesmith.controllers.context import ControllerContext

log = logging.getLogger(__name__)

BURST_REPLICAS = 500    # upstream's BurstReplicas: creations or deletions in one sync


class ReplicaManager(QueueController):
    resource = "apps/v1 replicasets"
    kind = "ReplicaSet"
    component = "replicaset-controller"

    def __init__(self, ctx: ControllerContext):
        self.queue_name = self.component
        super().__init__()
        self.client = ctx.client
        self.recorder = ctx.recorder(self.component)
        self.expectations = Expectations()
        self.sets = ctx.informers.informer(self.resource)
        self.pods = ctx.informers.informer("v1 pods")
        self.sets.add_event_handler(on_add=self.enqueue,
                                    on_update=lambda old, new: self.enqueue(new),
                                    on_delete=self._set_deleted)
        self.pods.add_event_handler(on_add=self._pod_added, on_update=self._pod_updated,
                                    on_delete=self._pod_deleted)

    # --- selectors of the two kinds ---------------------------------------------------

    def selector_of(self, obj: Obj) -> Any:
        return (obj.get("spec") or {}).get("selector")

    # --- event handlers ---------------------------------------------------------------

    def _set_deleted(self, obj) -> None:
        key = namespace_key(obj)
        self.expectations.forget(key)
        self.queue.add(key)

    def _owner_key(self, pod: Obj) -> str | None:
        ref = controller_of(pod)
        if ref is None or ref.get("kind") != self.kind:
            return None
        owner = self.sets.lister.get(ref.get("name", ""), meta(pod).get("namespace"))
        if owner is None or meta(owner).get("uid") != ref.get("uid"):
            return None
        return namespace_key(owner)

    def _enqueue_matching(self, pod: Obj) -> None:
        for owner in self.sets.lister.list(meta(pod).get("namespace")):
            if label_match(self.selector_of(owner), pod):
                self.queue.add(namespace_key(owner))

    def _pod_added(self, pod: Obj) -> None:
        if is_terminating(pod):
            self._pod_deleted(pod)
            return
        key = self._owner_key(pod)
        if key is not None:
            self.expectations.creation_observed(key)
            self.queue.add(key)
        elif controller_of(pod) is None:
            self._enqueue_matching(pod)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        if meta(old).get("resourceVersion") == meta(new).get("resourceVersion"):
            return
        if is_terminating(new) and not is_terminating(old):
            self._pod_deleted(new)
        old_key, new_key = self._owner_key(old), self._owner_key(new)
        if old_key and old_key != new_key:
            self.queue.add(old_key)
        if new_key:
            self.queue.add(new_key)
            minimum = (self._spec_of(new_key) or {}).get("minReadySeconds") or 0
            if minimum and is_pod_ready(new) and not is_pod_ready(old):
                # Available only later: look again once minReadySeconds have passed.
                self.queue.add_after(new_key, float(minimum) + 1)
        elif controller_of(new) is None:
            self._enqueue_matching(new)
            if meta(old).get("labels") != meta(new).get("labels"):
                self._enqueue_matching(old)

    def _pod_deleted(self, obj) -> None:
        pod = unwrap(obj)
        key = self._owner_key(pod)
        if key is not None:
            self.expectations.deletion_observed(key, meta(pod).get("uid"))
            self.queue.add(key)

    def _spec_of(self, key: str) -> Obj | None:
        namespace, name = split_key(key)
        owner = self.sets.lister.get(name, namespace)
        return (owner or {}).get("spec")

    # --- sync -------------------------------------------------------------------------

    async def sync(self, key: str) -> float | None:
        namespace, name = split_key(key)
        owner = self.sets.lister.get(name, namespace)
        if owner is None:
            self.expectations.forget(key)
            return None
        needs_sync = self.expectations.satisfied(key)
        selector = self.selector_of(owner)
        active = [pod for pod in self.pods.lister.list(namespace) if is_pod_active(pod)]
        pods = await claim(self.client, "v1 pods", owner, selector, active)
        error: Exception | None = None
        if needs_sync and not is_terminating(owner):
            try:
                deleted = await self._manage(key, owner, pods)
                pods = [p for p in pods if p not in deleted]
            except (ApiError, ConnectionError) as exc:
                error = exc
        await self._update_status(owner, pods, error)
        if error is not None:
            raise error
        spec = owner.get("spec") or {}
        minimum = spec.get("minReadySeconds") or 0
        if minimum and any(is_pod_ready(p) and not is_pod_available(p, minimum) for p in pods):
            return float(minimum)
        return None

    async def _manage(self, key: str, owner: Obj, pods: list[Obj]) -> list[Obj]:
        """Create or delete pods; the pods deleted (gone from the status counts)."""
        spec = owner.get("spec") or {}
        wanted = spec.get("replicas", 1)
        diff = len(pods) - wanted
        if diff < 0:
            count = min(-diff, BURST_REPLICAS)
            self.expectations.expect(key, adds=count)
            await self._create(key, owner, count)
        elif diff > 0:
            count = min(diff, BURST_REPLICAS)
            doomed = sorted(pods, key=deletion_rank)[:count]
            self.expectations.expect(key, deletes=count,
                                     uids=[meta(p)["uid"] for p in doomed])
            await self._delete(key, owner, doomed)
            return doomed
        return []

    async def _create(self, key: str, owner: Obj, count: int) -> None:
        template = (owner.get("spec") or {}).get("template") or {}
        namespace = meta(owner)["namespace"]
        attempted = 0
        for batch in slow_start_batches(count):
            attempted += batch
            results = await asyncio.gather(*(
                self.client.create("v1 pods", pod_from_template(template, owner), namespace)
                for _ in range(batch)), return_exceptions=True)
            failure: BaseException | None = None
            for result in results:
                if isinstance(result, BaseException):
                    self.expectations.creation_failed(key)
                    failure = failure or result
                    self.recorder.emit(owner, "Warning", "FailedCreate",
                                       f"Error creating: {result}")
                else:
                    self.recorder.emit(owner, "Normal", "SuccessfulCreate",
                                       f"Created pod: {meta(result)['name']}")
            if failure is not None:
                # The batches never tried will not be seen either.
                for _ in range(count - attempted):
                    self.expectations.creation_failed(key)
                raise failure

    async def _delete(self, key: str, owner: Obj, pods: list[Obj]) -> None:
        async def delete(pod: Obj) -> None:
            try:
                await self.client.delete("v1 pods", meta(pod)["name"], meta(pod)["namespace"],
                                         preconditions={"uid": meta(pod)["uid"]})
            except ApiError as exc:
                self.expectations.deletion_observed(key, meta(pod)["uid"])
                if is_not_found(exc) or exc.code == 409:
                    return
                self.recorder.emit(owner, "Warning", "FailedDelete",
                                   f"Error deleting: {exc}")
                raise
            self.recorder.emit(owner, "Normal", "SuccessfulDelete",
                               f"Deleted pod: {meta(pod)['name']}")

        results = await asyncio.gather(*(delete(p) for p in pods), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _update_status(self, owner: Obj, pods: list[Obj],
                             error: Exception | None = None) -> None:
        spec = owner.get("spec") or {}
        minimum = spec.get("minReadySeconds") or 0
        template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        status = dict(owner.get("status") or {})
        new = {
            "replicas": len(pods),
            "fullyLabeledReplicas": sum(
                1 for p in pods if all((meta(p).get("labels") or {}).get(k) == v
                                       for k, v in template_labels.items())),
            "readyReplicas": sum(1 for p in pods if is_pod_ready(p)),
            "availableReplicas": sum(1 for p in pods if is_pod_available(p, minimum)),
            "observedGeneration": meta(owner).get("generation", 0),
        }
        # Upstream's ReplicaFailure condition: pods could not be made (or deleted).
        conditions = [c for c in status.get("conditions") or []
                      if c.get("type") != "ReplicaFailure"]
        if error is not None:
            reason = "FailedCreate" if len(pods) < spec.get("replicas", 1) else "FailedDelete"
            failure = get_condition(status, "ReplicaFailure")
            conditions.append({
                "type": "ReplicaFailure", "status": "True", "reason": reason,
                "message": getattr(error, "message", "") or str(error),
                "lastTransitionTime": (failure or {}).get("lastTransitionTime")
                or now_rfc3339()})
        new["conditions"] = conditions
        if all((status.get(k) or 0) == v for k, v in new.items() if k != "conditions") \
                and (status.get("conditions") or []) == conditions:
            return
        try:
            await write_status(self.client, self.resource, owner, new, required=("replicas",))
        except ApiError as exc:
            if not is_not_found(exc):
                raise


@register("replicaset")
class ReplicaSetController(ReplicaManager):
    pass


@register("replicationcontroller")
class ReplicationControllerController(ReplicaManager):
    resource = "v1 replicationcontrollers"
    kind = "ReplicationController"
    component = "replication-controller"

    def selector_of(self, obj: Obj) -> Any:
        selector = (obj.get("spec") or {}).get("selector") or {}
        return {"matchLabels": selector}
