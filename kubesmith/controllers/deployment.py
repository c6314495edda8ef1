"""Deployment: one ReplicaSet per pod template, rolled from the old ones to the new one.

As upstream's pkg/controller/deployment:
  * the new ReplicaSet is the one whose template equals the Deployment's, the
    pod-template-hash label aside; it is made as "<deployment>-<hash>" with the hash in
    its selector, template labels and name (common.compute_hash, collisionCount mixed in
    when a name is taken by another template);
  * RollingUpdate scales the new set up by at most maxSurge over spec.replicas (rounded
    up) and the old ones down so that no fewer than replicas - maxUnavailable (rounded
    down) are available; Recreate scales the old sets to 0, waits for their pods to be
    gone, then scales the new one up;
  * annotations: deployment.kubernetes.io/revision on the sets and the Deployment (the
    new set gets the highest revision + 1, also when an old template comes back, as
    `kubectl rollout undo` does by patching the template), desired-replicas and
    max-replicas on the sets, the Deployment's own annotations copied to the sets (so
    kubernetes.io/change-cause shows in `kubectl rollout history`);
  * old sets scaled to 0 beyond revisionHistoryLimit are deleted once a rollout is done;
  * spec.paused, or spec.replicas changed mid-rollout: no rollout step, the active sets
    are scaled in proportion to their sizes (upstream's sync()/scale());
  * status counts and the Progressing / Available conditions with upstream's reasons,
    and a re-check when progressDeadlineSeconds would run out.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

from kubesmith.client.informers import namespace_key, split_key
from kubesmith.client.rest import ApiError, is_already_exists, is_not_found
from kubesmith.controllers import register
from kubesmith.controllers.common import (
    Obj,
    QueueController,
    claim,
    compute_hash,
    controller_key,
    controller_of,
    get_condition,
    is_controlled_by,
    is_terminating,
    label_match,
    meta,
    now_rfc3339,
    owner_reference,
    parse_time,
    pod_phase,
    resolve_int_or_percent,
    set_condition,
    unwrap,
    write_status,
)
from kubesmith.controllers.context import ControllerContext

log = logging.getLogger(__name__)

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
# Annotations of the Deployment that are not copied to its ReplicaSets.
NOT_COPIED = {"kubectl.kubernetes.io/last-applied-configuration", REVISION, REVISION_HISTORY,
              DESIRED_REPLICAS, MAX_REPLICAS, "deprecated.deployment.rollback.to"}

RS = "apps/v1 replicasets"
DEPLOYMENTS = "apps/v1 deployments"


# --- pure helpers ---------------------------------------------------------------------

def revision_of(obj: Obj) -> int:
    try:
        return int((meta(obj).get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _without_nulls(value: Any) -> Any:
    # A null is the zero value upstream's typed objects compare as absent
    # (kubectl sends templates with "creationTimestamp": null).
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _without_hash(template: Obj | None) -> Obj:
    template = _without_nulls(template or {})
    labels = (template.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
    return template


def equal_ignore_hash(a: Obj | None, b: Obj | None) -> bool:
    return _without_hash(a) == _without_hash(b)


def replicas_of(rs: Obj | None) -> int:
    return ((rs or {}).get("spec") or {}).get("replicas", 0) or 0


def _status(rs: Obj | None, field: str) -> int:
    return ((rs or {}).get("status") or {}).get(field, 0) or 0


def _available(rs: Obj | None) -> int:
    """Available pods of a set that it keeps: a set just scaled down reports pods it
    is deleting until its controller looks again, and those must not count."""
    return min(_status(rs, "availableReplicas"), replicas_of(rs))


def _negate_time(rs: Obj) -> float:
    """Newer first when sorted ascending."""
    return -(parse_time(meta(rs).get("creationTimestamp")) or 0)


def fenceposts(d: Obj) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) of a RollingUpdate Deployment: surge rounds up,
    unavailable down, and both 0 would block, so unavailable is then 1."""
    spec = d.get("spec") or {}
    replicas = spec.get("replicas", 1)
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    surge = resolve_int_or_percent(rolling.get("maxSurge", "25%"), replicas, True)
    unavailable = resolve_int_or_percent(rolling.get("maxUnavailable", "25%"), replicas, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def is_rolling(d: Obj) -> bool:
    return ((d.get("spec") or {}).get("strategy") or {}).get("type", "RollingUpdate") \
        == "RollingUpdate"


def max_unavailable(d: Obj) -> int:
    replicas = (d.get("spec") or {}).get("replicas", 1)
    if not is_rolling(d) or replicas == 0:
        return 0
    return min(fenceposts(d)[1], replicas)


def new_rs_replicas(d: Obj, all_rss: list[Obj], new_rs: Obj | None) -> int:
    """How many replicas the new set may have now (upstream's NewRSNewReplicas)."""
    replicas = (d.get("spec") or {}).get("replicas", 1)
    current_new = replicas_of(new_rs)
    if not is_rolling(d):
        return replicas
    surge, _ = fenceposts(d)
    current = sum(replicas_of(rs) for rs in all_rss)
    max_total = replicas + surge
    if current >= max_total:
        return current_new
    scale_up = min(max_total - current, replicas - current_new)
    return current_new + max(scale_up, 0)


def deployment_complete(d: Obj, status: Obj) -> bool:
    replicas = (d.get("spec") or {}).get("replicas", 1)
    return (status.get("updatedReplicas", 0) == replicas
            and status.get("replicas", 0) == replicas
            and status.get("availableReplicas", 0) == replicas
            and status.get("observedGeneration", 0) >= meta(d).get("generation", 0))


def deployment_progressing(d: Obj, status: Obj) -> bool:
    old = d.get("status") or {}
    old_olds = old.get("replicas", 0) - old.get("updatedReplicas", 0)
    new_olds = status.get("replicas", 0) - status.get("updatedReplicas", 0)
    return (status.get("updatedReplicas", 0) > old.get("updatedReplicas", 0)
            or new_olds < old_olds
            or status.get("readyReplicas", 0) > old.get("readyReplicas", 0)
            or status.get("availableReplicas", 0) > old.get("availableReplicas", 0))


def deployment_timed_out(d: Obj, status: Obj, now: float) -> bool:
    deadline = (d.get("spec") or {}).get("progressDeadlineSeconds")
    condition = get_condition(status, "Progressing")
    if deadline is None or condition is None:
        return False
    if condition.get("reason") == "NewReplicaSetAvailable":
        return False
    if condition.get("reason") == "ProgressDeadlineExceeded":
        return True
    since = parse_time(condition.get("lastUpdateTime"))
    return since is not None and since + deadline < now


def condition(kind: str, status: str, reason: str, message: str) -> Obj:
    now = now_rfc3339()
    return {"type": kind, "status": status, "lastUpdateTime": now, "lastTransitionTime": now,
            "reason": reason, "message": message}


# --- the controller -------------------------------------------------------------------

@register("deployment")
class DeploymentController(QueueController):
    queue_name = "deployment"

    def __init__(self, ctx: ControllerContext):
        super().__init__()
        self.client = ctx.client
        self.recorder = ctx.recorder("deployment-controller")
        self.deployments = ctx.informers.informer(DEPLOYMENTS)
        self.sets = ctx.informers.informer(RS)
        self.pods = ctx.informers.informer("v1 pods")
        self.deployments.add_event_handler(on_add=self.enqueue,
                                           on_update=lambda old, new: self.enqueue(new),
                                           on_delete=self.enqueue)
        self.sets.add_event_handler(on_add=self._rs_changed,
                                    on_update=lambda old, new: (self._rs_changed(old),
                                                                self._rs_changed(new)),
                                    on_delete=lambda obj: self._rs_changed(unwrap(obj)))
        self.pods.add_event_handler(on_delete=self._pod_deleted)

    # --- event handlers ---------------------------------------------------------------

    def _rs_changed(self, rs: Obj) -> None:
        key = controller_key(rs, "Deployment")
        if key is not None:
            self.queue.add(key)
            return
        if controller_of(rs) is None:
            for d in self.deployments.lister.list(meta(rs).get("namespace")):
                if label_match((d.get("spec") or {}).get("selector"), rs):
                    self.queue.add(namespace_key(d))

    def _pod_deleted(self, obj) -> None:
        # Recreate waits for the old pods to be gone.
        pod = unwrap(obj)
        rs_key = controller_key(pod, "ReplicaSet")
        if rs_key is None:
            return
        namespace, name = split_key(rs_key)
        rs = self.sets.lister.get(name, namespace)
        if rs is not None:
            key = controller_key(rs, "Deployment")
            if key is not None:
                self.queue.add(key)

    # --- sync -------------------------------------------------------------------------

    async def sync(self, key: str) -> float | None:
        namespace, name = split_key(key)
        cached = self.deployments.lister.get(name, namespace)
        if cached is None:
            return None
        d = copy.deepcopy(cached)
        spec = d.get("spec") or {}
        selector = spec.get("selector")
        if not label_match(selector, {"metadata": {"labels": (
                (spec.get("template") or {}).get("metadata") or {}).get("labels") or {}}}):
            # An empty selector would select everything: upstream refuses to act.
            self.recorder.emit(d, "Warning", "SelectingAll",
                               "This deployment is selecting all pods. A non-empty selector "
                               "is required.")
            return None
        candidates = self.sets.lister.list(namespace)
        rss = await claim(self.client, RS, d, selector, candidates)
        if is_terminating(d):
            await self._sync_status(d, rss, None)
            return None
        if spec.get("paused") or self._is_scaling_event(d, rss):
            return await self._sync_scale(d, rss)
        if is_rolling(d):
            return await self._rolling(d, rss)
        return await self._recreate(d, rss)

    # --- replica sets -----------------------------------------------------------------

    def _split(self, d: Obj, rss: list[Obj]) -> tuple[Obj | None, list[Obj]]:
        template = (d.get("spec") or {}).get("template")
        ordered = sorted(rss, key=lambda rs: (meta(rs).get("creationTimestamp") or "",
                                              meta(rs).get("name")))
        new_rs = next((rs for rs in ordered
                       if equal_ignore_hash((rs.get("spec") or {}).get("template"), template)),
                      None)
        return new_rs, [rs for rs in ordered if rs is not new_rs]

    def _rs_annotations(self, d: Obj, rs: Obj, revision: int) -> dict[str, Any]:
        """The annotation changes the set needs (an empty dict: none)."""
        wanted: dict[str, Any] = {}
        current = meta(rs).get("annotations") or {}
        for k, v in (meta(d).get("annotations") or {}).items():
            if k not in NOT_COPIED and current.get(k) != v:
                wanted[k] = v
        old_revision = revision_of(rs)
        if old_revision < revision:
            wanted[REVISION] = str(revision)
            if old_revision:
                history = [h for h in (current.get(REVISION_HISTORY) or "").split(",") if h]
                wanted[REVISION_HISTORY] = ",".join(history + [str(old_revision)])
        return wanted

    def _replica_annotations(self, d: Obj) -> dict[str, str]:
        replicas = (d.get("spec") or {}).get("replicas", 1)
        surge = fenceposts(d)[0] if is_rolling(d) else 0
        return {DESIRED_REPLICAS: str(replicas), MAX_REPLICAS: str(replicas + surge)}

    async def _get_all(self, d: Obj, rss: list[Obj], create: bool
                       ) -> tuple[Obj | None, list[Obj]]:
        """(new set, old sets), the new one made when `create` and missing, revisions
        synced (upstream's getAllReplicaSetsAndSyncRevision)."""
        new_rs, old_rss = self._split(d, rss)
        revision = max((revision_of(rs) for rs in old_rss), default=0) + 1
        if new_rs is not None:
            changes = self._rs_annotations(d, new_rs, revision)
            if changes:
                new_rs = await self.client.patch(RS, meta(new_rs)["name"], {"metadata": {
                    "annotations": changes,
                    "resourceVersion": meta(new_rs)["resourceVersion"]}},
                    meta(new_rs)["namespace"])
            await self._set_revision(d, revision_of(new_rs))
            return new_rs, old_rss
        if not create:
            return None, old_rss
        new_rs = await self._create_rs(d, rss, old_rss, revision)
        await self._set_revision(d, revision)
        return new_rs, old_rss

    async def _set_revision(self, d: Obj, revision: int) -> None:
        if revision_of(d) == revision or not revision:
            return
        # An update, not a patch: what upstream's deployment-controller role allows.
        annotations = dict(meta(d).get("annotations") or {}, **{REVISION: str(revision)})
        body = dict(d, metadata=dict(d["metadata"], annotations=annotations))
        updated = await self.client.update(DEPLOYMENTS, body, meta(d)["namespace"])
        d["metadata"] = updated.get("metadata", d["metadata"])

    async def _create_rs(self, d: Obj, rss: list[Obj], old_rss: list[Obj],
                         revision: int) -> Obj | None:
        spec = d.get("spec") or {}
        status = d.get("status") or {}
        collisions = status.get("collisionCount")
        pod_hash = compute_hash(_without_nulls(spec.get("template") or {}), collisions)
        template = copy.deepcopy(spec.get("template") or {})
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = pod_hash
        selector = copy.deepcopy(spec.get("selector") or {})
        selector.setdefault("matchLabels", {})[HASH_LABEL] = pod_hash
        annotations = {k: v for k, v in (meta(d).get("annotations") or {}).items()
                       if k not in NOT_COPIED}
        annotations[REVISION] = str(revision)
        annotations.update(self._replica_annotations(d))
        replicas = new_rs_replicas(d, old_rss, None)
        name = f"{meta(d)['name']}-{pod_hash}"
        body = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": name, "namespace": meta(d)["namespace"],
                             "labels": dict(template["metadata"]["labels"]),
                             "annotations": annotations,
                             "ownerReferences": [owner_reference(d)]},
                "spec": {"replicas": replicas, "minReadySeconds": spec.get("minReadySeconds", 0),
                         "selector": selector, "template": template}}
        try:
            created = await self.client.create(RS, body, meta(d)["namespace"])
        except ApiError as exc:
            if not is_already_exists(exc):
                # A quota, say: upstream's ReplicaSetCreateError, until a sync succeeds.
                message = f'Failed to create new replica set "{name}": {exc.message or exc}'
                self.recorder.emit(d, "Warning", "FailedCreate", message)
                status = dict(d.get("status") or {})
                set_condition(status, condition("Progressing", "False",
                                                "ReplicaSetCreateError", message))
                await write_status(self.client, DEPLOYMENTS, d,
                                   {"conditions": status["conditions"]})
                raise
            existing = await self.client.get(RS, name, meta(d)["namespace"])
            if is_controlled_by(existing, d) and equal_ignore_hash(
                    (existing.get("spec") or {}).get("template"), spec.get("template")):
                return existing    # made by an earlier sync the cache has not shown yet
            # Another template has this hash: count the collision and try another name.
            await write_status(self.client, DEPLOYMENTS, d,
                               {"collisionCount": (collisions or 0) + 1})
            raise
        if replicas > 0:
            self.recorder.emit(d, "Normal", "ScalingReplicaSet",
                               f"Scaled up replica set {name} from 0 to {replicas}")
        set_condition(d.setdefault("status", {}), condition(
            "Progressing", "True", "NewReplicaSetCreated", f'Created new replica set "{name}"'))
        return created

    async def _scale(self, d: Obj, rs: Obj, replicas: int) -> tuple[bool, Obj]:
        """Set a set's replicas (and replica annotations); (scaled, the set now)."""
        annotations = self._replica_annotations(d)
        current = meta(rs).get("annotations") or {}
        size_changed = replicas_of(rs) != replicas
        if not size_changed and all(current.get(k) == v for k, v in annotations.items()):
            return False, rs
        updated = await self.client.patch(
            # The resourceVersion makes a write from a stale cache fail (409) and retry.
            RS, meta(rs)["name"], {"metadata": {"annotations": annotations,
                                                "resourceVersion": meta(rs)["resourceVersion"]},
                                   "spec": {"replicas": replicas}}, meta(rs)["namespace"])
        if size_changed:
            before = replicas_of(rs)
            direction = "up" if replicas > before else "down"
            self.recorder.emit(d, "Normal", "ScalingReplicaSet",
                               f"Scaled {direction} replica set {meta(rs)['name']} from "
                               f"{before} to {replicas}")
        return size_changed, updated

    # --- strategies -------------------------------------------------------------------

    async def _rolling(self, d: Obj, rss: list[Obj]) -> float | None:
        new_rs, old_rss = await self._get_all(d, rss, create=True)
        all_rss = old_rss + ([new_rs] if new_rs else [])
        replicas = d["spec"].get("replicas", 1)
        # Scale the new set up (or down to spec.replicas).
        if new_rs is not None:
            if replicas_of(new_rs) > replicas:
                target = replicas
            else:
                target = new_rs_replicas(d, all_rss, new_rs)
            scaled, new_rs = await self._scale(d, new_rs, target)
            if scaled:
                return await self._sync_status(d, old_rss + [new_rs], new_rs)
        all_rss = old_rss + ([new_rs] if new_rs else [])
        if await self._scale_down_old(d, all_rss, old_rss, new_rs):
            return await self._sync_status(d, old_rss + ([new_rs] if new_rs else []), new_rs)
        status = self._calculate_status(d, all_rss, new_rs)
        if deployment_complete(d, status):
            await self._cleanup(d, old_rss)
        return await self._sync_status(d, all_rss, new_rs)

    async def _scale_down_old(self, d: Obj, all_rss: list[Obj], old_rss: list[Obj],
                              new_rs: Obj | None) -> bool:
        """Upstream's reconcileOldReplicaSets; old_rss is updated in place."""
        if sum(replicas_of(rs) for rs in old_rss) == 0:
            return False
        replicas = d["spec"].get("replicas", 1)
        min_available = replicas - max_unavailable(d)
        all_pods = sum(replicas_of(rs) for rs in all_rss)
        new_unavailable = replicas_of(new_rs) - _available(new_rs)
        budget = all_pods - min_available - new_unavailable
        if budget <= 0:
            return False
        scaled = False
        # First the old sets' pods that are not available: removing them costs nothing.
        old_rss.sort(key=lambda rs: (meta(rs).get("creationTimestamp") or "", meta(rs)["name"]))
        cleaned = 0
        for i, rs in enumerate(old_rss):
            if cleaned >= budget:
                break
            if replicas_of(rs) == 0:
                continue
            unhealthy = replicas_of(rs) - _available(rs)
            if unhealthy <= 0:
                continue
            down = min(budget - cleaned, unhealthy)
            changed, old_rss[i] = await self._scale(d, rs, replicas_of(rs) - down)
            cleaned += down
            scaled = scaled or changed
        # Then available ones, down to replicas - maxUnavailable available in all.
        all_rss = old_rss + ([new_rs] if new_rs else [])
        available = sum(_available(rs) for rs in all_rss)
        if available > min_available:
            total = available - min_available
            done = 0
            for i, rs in enumerate(old_rss):
                if done >= total:
                    break
                if replicas_of(rs) == 0:
                    continue
                down = min(replicas_of(rs), total - done)
                changed, old_rss[i] = await self._scale(d, rs, replicas_of(rs) - down)
                done += down
                scaled = scaled or changed
        return scaled

    async def _recreate(self, d: Obj, rss: list[Obj]) -> float | None:
        new_rs, old_rss = await self._get_all(d, rss, create=False)
        scaled = False
        for i, rs in enumerate(old_rss):
            if replicas_of(rs) > 0:
                changed, old_rss[i] = await self._scale(d, rs, 0)
                scaled = scaled or changed
        all_rss = old_rss + ([new_rs] if new_rs else [])
        if scaled:
            return await self._sync_status(d, all_rss, new_rs)
        if self._old_pods_running(new_rs, old_rss):
            return await self._sync_status(d, all_rss, new_rs)
        if new_rs is None:
            new_rs, old_rss = await self._get_all(d, rss, create=True)
        if new_rs is not None:
            scaled, new_rs = await self._scale(d, new_rs, d["spec"].get("replicas", 1))
        all_rss = old_rss + ([new_rs] if new_rs else [])
        if not scaled and deployment_complete(d, self._calculate_status(d, all_rss, new_rs)):
            await self._cleanup(d, old_rss)
        return await self._sync_status(d, all_rss, new_rs)

    def _old_pods_running(self, new_rs: Obj | None, old_rss: list[Obj]) -> bool:
        if any(_status(rs, "replicas") > 0 for rs in old_rss):
            return True
        old_uids = {meta(rs)["uid"] for rs in old_rss}
        for pod in self.pods.lister.list(meta(new_rs or old_rss[0])["namespace"]
                                         if (new_rs or old_rss) else None):
            ref = controller_of(pod)
            if ref is not None and ref.get("uid") in old_uids \
                    and pod_phase(pod) not in ("Failed", "Succeeded"):
                return True
        return False

    @staticmethod
    def _is_scaling_event(d: Obj, rss: list[Obj]) -> bool:
        """spec.replicas changed since the active sets were last scaled for it."""
        wanted = str((d.get("spec") or {}).get("replicas", 1))
        return any((meta(rs).get("annotations") or {}).get(DESIRED_REPLICAS, wanted) != wanted
                   for rs in rss if replicas_of(rs) > 0)

    async def _sync_scale(self, d: Obj, rss: list[Obj]) -> float | None:
        """Upstream's sync(): a paused Deployment, or a new spec.replicas mid-rollout,
        is only scaled — proportionally over its active sets — never rolled."""
        new_rs, old_rss = await self._get_all(d, rss, create=False)
        scaled = await self._scale_proportionally(d, new_rs, old_rss)
        new_rs, old_rss = self._split(d, [scaled.get(meta(rs)["uid"], rs) for rs in rss])
        all_rss = old_rss + ([new_rs] if new_rs else [])
        if (d.get("spec") or {}).get("paused"):
            await self._cleanup(d, old_rss)
        return await self._sync_status(d, all_rss, new_rs)

    async def _scale_proportionally(self, d: Obj, new_rs: Obj | None,
                                    old_rss: list[Obj]) -> dict[str, Obj]:
        """Upstream's scale(): one active set takes spec.replicas; otherwise the
        replicas to add or take away are shared out in proportion to the sets' sizes.
        The sets scaled, by uid, as they are now."""
        scaled: dict[str, Obj] = {}
        replicas = (d.get("spec") or {}).get("replicas", 1)
        everything = old_rss + ([new_rs] if new_rs else [])
        active = [rs for rs in everything if replicas_of(rs) > 0]
        target: Obj | None = None
        if len(active) == 1:
            target = active[0]
        elif not active:
            target = new_rs or (max(old_rss, key=lambda rs: meta(rs).get("creationTimestamp")
                                    or "") if old_rss else None)
        if target is not None or not active:
            if target is not None and replicas_of(target) != replicas:
                _, scaled[meta(target)["uid"]] = await self._scale(d, target, replicas)
            return scaled
        if new_rs is not None and replicas_of(new_rs) == replicas \
                and _status(new_rs, "availableReplicas") == replicas:
            for rs in old_rss:     # the new set is saturated: the old ones go
                if replicas_of(rs) > 0:
                    _, scaled[meta(rs)["uid"]] = await self._scale(d, rs, 0)
            return scaled
        if not is_rolling(d):
            return scaled
        surge = fenceposts(d)[0]
        allowed = replicas + surge if replicas > 0 else 0
        to_add = allowed - sum(replicas_of(rs) for rs in active)
        if to_add == 0:
            return scaled
        # Largest first; among equals the newest when adding, the oldest when removing.
        active.sort(key=lambda rs: (-replicas_of(rs),
                                    _negate_time(rs) if to_add > 0 else -_negate_time(rs)))
        sizes: dict[str, int] = {}
        added = 0
        for rs in active:
            share = self._proportion(d, rs, to_add, added, surge)
            sizes[meta(rs)["uid"]] = replicas_of(rs) + share
            added += share
        if active:
            first = meta(active[0])["uid"]
            sizes[first] += to_add - added
        for rs in active:
            size = max(sizes[meta(rs)["uid"]], 0)
            if size != replicas_of(rs):
                _, scaled[meta(rs)["uid"]] = await self._scale(d, rs, size)
        return scaled

    @staticmethod
    def _proportion(d: Obj, rs: Obj, to_add: int, added: int, surge: int) -> int:
        """Upstream's getProportion / getReplicaSetFraction."""
        if replicas_of(rs) == 0 or to_add == 0 or to_add == added:
            return 0
        replicas = (d.get("spec") or {}).get("replicas", 1)
        if replicas == 0:
            fraction = -replicas_of(rs)
        else:
            try:
                annotated = int((meta(rs).get("annotations") or {}).get(MAX_REPLICAS, ""))
            except ValueError:
                annotated = (d.get("status") or {}).get("replicas", 0) or 0
            if annotated <= 0:
                annotated = max((d.get("status") or {}).get("replicas", 0) or 0, 1)
            size = replicas_of(rs) * (replicas + surge) / annotated
            fraction = int(math.floor(size + 0.5)) - replicas_of(rs)   # Go's math.Round
        allowed = to_add - added
        return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)

    async def _cleanup(self, d: Obj, old_rss: list[Obj]) -> None:
        """Delete the oldest sets scaled to 0 beyond revisionHistoryLimit."""
        limit = (d.get("spec") or {}).get("revisionHistoryLimit")
        if limit is None:
            return
        idle = [rs for rs in old_rss if replicas_of(rs) == 0 and _status(rs, "replicas") == 0
                and not is_terminating(rs)]
        extra = len(idle) - limit
        if extra <= 0:
            return
        idle.sort(key=lambda rs: (revision_of(rs), meta(rs).get("creationTimestamp") or ""))
        for rs in idle[:extra]:
            try:
                await self.client.delete(RS, meta(rs)["name"], meta(rs)["namespace"],
                                         preconditions={"uid": meta(rs)["uid"]})
            except ApiError as exc:
                if not is_not_found(exc) and exc.code != 409:
                    raise

    # --- status -----------------------------------------------------------------------

    def _calculate_status(self, d: Obj, all_rss: list[Obj], new_rs: Obj | None) -> Obj:
        replicas = (d.get("spec") or {}).get("replicas", 1)
        available = sum(_status(rs, "availableReplicas") for rs in all_rss)
        status = {
            "observedGeneration": meta(d).get("generation", 0),
            "replicas": sum(_status(rs, "replicas") for rs in all_rss),
            "updatedReplicas": _status(new_rs, "replicas"),
            "readyReplicas": sum(_status(rs, "readyReplicas") for rs in all_rss),
            "availableReplicas": available,
            "unavailableReplicas": max(replicas - available, 0),
            "collisionCount": (d.get("status") or {}).get("collisionCount"),
            "conditions": list((d.get("status") or {}).get("conditions") or []),
        }
        if available >= replicas - max_unavailable(d):
            set_condition(status, condition("Available", "True", "MinimumReplicasAvailable",
                                            "Deployment has minimum availability."))
        else:
            set_condition(status, condition("Available", "False", "MinimumReplicasUnavailable",
                                            "Deployment does not have minimum availability."))
        return status

    async def _sync_status(self, d: Obj, all_rss: list[Obj], new_rs: Obj | None
                           ) -> float | None:
        """Upstream's syncRolloutStatus; the seconds until the progress deadline is
        worth a look again."""
        spec = d.get("spec") or {}
        status = self._calculate_status(d, all_rss, new_rs)
        deadline = spec.get("progressDeadlineSeconds")
        now = time.time()
        current = get_condition(status, "Progressing")
        rs_name = meta(new_rs)["name"] if new_rs else None
        if spec.get("paused"):
            if current is None or current.get("reason") != "DeploymentPaused":
                set_condition(status, condition("Progressing", "Unknown", "DeploymentPaused",
                                                "Deployment is paused"))
        elif deadline is None:
            status["conditions"] = [c for c in status["conditions"]
                                    if c.get("type") != "Progressing"]
        elif not (status["replicas"] == status["updatedReplicas"] and current is not None
                  and current.get("reason") == "NewReplicaSetAvailable"):
            if deployment_complete(d, status):
                set_condition(status, condition(
                    "Progressing", "True", "NewReplicaSetAvailable",
                    f'ReplicaSet "{rs_name}" has successfully progressed.'))
            elif deployment_progressing(d, status) or (
                    current is not None and current.get("reason") == "DeploymentPaused"):
                message = (f'ReplicaSet "{rs_name}" is progressing.' if rs_name
                           else f'Deployment "{meta(d)["name"]}" is progressing.')
                set_condition(status, condition("Progressing", "True", "ReplicaSetUpdated",
                                                message))
            elif deployment_timed_out(d, status, now):
                message = (f'ReplicaSet "{rs_name}" has timed out progressing.' if rs_name
                           else f'Deployment "{meta(d)["name"]}" has timed out progressing.')
                set_condition(status, condition("Progressing", "False",
                                                "ProgressDeadlineExceeded", message))
        old = d.get("status") or {}
        if _comparable(old) != _comparable(status):
            await write_status(self.client, DEPLOYMENTS, d, status)
        if deadline is not None and not spec.get("paused") \
                and not deployment_complete(d, status):
            progressing = get_condition(status, "Progressing")
            if progressing is not None and progressing.get("reason") not in (
                    "NewReplicaSetAvailable", "ProgressDeadlineExceeded"):
                since = parse_time(progressing.get("lastUpdateTime")) or now
                return max(since + deadline - now, 1.0)
        return None


def _comparable(status: Obj) -> Obj:
    """A status without timestamps and zero values, to tell whether it changed."""
    out = {k: v for k, v in status.items() if v not in (0, None, [], {}) and k != "conditions"}
    out["conditions"] = sorted(
        (c.get("type"), c.get("status"), c.get("reason"), c.get("message"))
        for c in status.get("conditions") or [])
    return out
