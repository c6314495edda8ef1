"""StatefulSet: pods with stable names "<set>-0" ... "<set>-<replicas-1>" (upstream's
pkg/controller/statefulset).

Each pod gets hostname = its name and subdomain = spec.serviceName, the labels
statefulset.kubernetes.io/pod-name, apps.kubernetes.io/pod-index and
controller-revision-hash (the set's ControllerRevisions hold its templates), and, for
each volumeClaimTemplate, a PersistentVolumeClaim "<claim>-<pod>" made if missing and
mounted as a volume of the claim's name (claims are never deleted here: the
persistentVolumeClaimRetentionPolicy is not done).

OrderedReady (the default) creates pod N only once pods 0..N-1 are Running and Ready,
and removes surplus pods from the highest ordinal, one at a time, while the others are
healthy; Parallel creates and deletes without waiting. Failed pods are deleted and made
again. RollingUpdate replaces out-of-date pods from the highest ordinal down to
`partition`, one at a time, each once the others are Running and Ready; OnDelete leaves
that to the user.
"""
from __future__ import annotations

import copy
import logging
import re

from kubesmith.client.informers import split_key
from kubesmith.client.rest import ApiError, is_already_exists, is_not_found
from kubesmith.controllers import register
from kubesmith.controllers.common import (
    REVISION_HASH_LABEL,
    REVISIONS,
    Obj,
    QueueController,
    claim,
    controller_key,
    ensure_revision,
    truncate_history,
    is_pod_available,
    is_pod_ready,
    is_terminating,
    meta,
    owned_revisions,
    pod_from_template,
    pod_phase,
    write_status,
    template_patch,
    unwrap,
)
from kubesmith.controllers.context import ControllerContext

log = logging.getLogger(__name__)

STATEFULSETS = "apps/v1 statefulsets"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"


def ordinal_of(set_name: str, pod: Obj) -> int | None:
    match = re.fullmatch(re.escape(set_name) + r"-(\d+)", meta(pod).get("name", ""))
    return int(match.group(1)) if match else None


def running_and_ready(pod: Obj) -> bool:
    return pod_phase(pod) == "Running" and is_pod_ready(pod) and not is_terminating(pod)


@register("statefulset")
class StatefulSetController(QueueController):
    queue_name = "statefulset"

    def __init__(self, ctx: ControllerContext):
        super().__init__()
        self.client = ctx.client
        self.recorder = ctx.recorder("statefulset-controller")
        self.sets = ctx.informers.informer(STATEFULSETS)
        self.pods = ctx.informers.informer("v1 pods")
        self.revisions = ctx.informers.informer(REVISIONS)
        self.sets.add_event_handler(on_add=self.enqueue,
                                    on_update=lambda old, new: self.enqueue(new))
        self.pods.add_event_handler(on_add=self._pod_changed,
                                    on_update=lambda old, new: self._pod_changed(new),
                                    on_delete=lambda obj: self._pod_changed(unwrap(obj)))

    def _pod_changed(self, pod: Obj) -> None:
        key = controller_key(pod, "StatefulSet")
        if key is not None:
            self.queue.add(key)

    async def sync(self, key: str) -> float | None:
        namespace, name = split_key(key)
        cached = self.sets.lister.get(name, namespace)
        if cached is None:
            return None
        sts = copy.deepcopy(cached)
        spec = sts.get("spec") or {}
        template = spec.get("template") or {}
        revisions = owned_revisions(self.revisions.lister, sts)
        update_hash, _ = await ensure_revision(self.client, sts, revisions,
                                               template_patch(template))
        # Only pods named as its members are the set's to adopt (upstream's isMemberOf).
        members = [p for p in self.pods.lister.list(namespace)
                   if ordinal_of(name, p) is not None]
        pods = await claim(self.client, "v1 pods", sts, spec.get("selector"), members)
        by_ordinal: dict[int, Obj] = {}
        for pod in pods:
            ordinal = ordinal_of(name, pod)
            if ordinal is not None:
                by_ordinal[ordinal] = pod
        if not is_terminating(sts):
            await self._update_replicas(sts, update_hash, by_ordinal)
        await self._update_status(sts, update_hash, by_ordinal)
        current = ((sts.get("status") or {}).get("currentRevision") or "").removeprefix(
            f"{name}-")
        live = {update_hash, current} | {(meta(p).get("labels") or {}).get(
            REVISION_HASH_LABEL, "") for p in pods}
        await truncate_history(self.client, sts, revisions, live)
        return None

    async def _update_replicas(self, sts: Obj, update_hash: str,
                               by_ordinal: dict[int, Obj]) -> None:
        spec = sts.get("spec") or {}
        replicas = spec.get("replicas", 1)
        start = ((spec.get("ordinals") or {}).get("start")) or 0
        ordered = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        wanted = range(start, start + replicas)
        name = meta(sts)["name"]
        # Failed pods are deleted first; they come back on a later sync.
        for ordinal, pod in sorted(by_ordinal.items()):
            if pod_phase(pod) == "Failed" and not is_terminating(pod):
                await self._delete(sts, pod)
                if ordered:
                    return
        for ordinal in wanted:
            pod = by_ordinal.get(ordinal)
            if pod is None:
                await self._create(sts, ordinal, update_hash)
                if ordered:
                    return
                continue
            if ordered and not running_and_ready(pod):
                return      # wait for it before going on
        # Surplus pods, highest ordinal first.
        condemned = sorted((o for o in by_ordinal if o not in wanted), reverse=True)
        for ordinal in condemned:
            pod = by_ordinal[ordinal]
            if is_terminating(pod):
                if ordered:
                    return
                continue
            if ordered and not all(running_and_ready(by_ordinal[o]) for o in wanted
                                   if o in by_ordinal):
                return
            await self._delete(sts, pod)
            if ordered:
                return
        # Rolling update from the highest ordinal down to the partition.
        strategy = spec.get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            return
        partition = (strategy.get("rollingUpdate") or {}).get("partition") or 0
        if not all(o in by_ordinal and running_and_ready(by_ordinal[o]) for o in wanted):
            return
        for ordinal in sorted(wanted, reverse=True):
            if ordinal - start < partition:
                break
            pod = by_ordinal[ordinal]
            if (meta(pod).get("labels") or {}).get(REVISION_HASH_LABEL) != update_hash:
                self.recorder.emit(sts, "Normal", "SuccessfulDelete",
                                   f"delete Pod {meta(pod)['name']} in StatefulSet {name} "
                                   "successful")
                await self._delete(sts, pod, event=False)
                return

    async def _create(self, sts: Obj, ordinal: int, revision_hash: str) -> None:
        spec = sts.get("spec") or {}
        set_name = meta(sts)["name"]
        pod_name = f"{set_name}-{ordinal}"
        template = copy.deepcopy(spec.get("template") or {})
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        labels.update({REVISION_HASH_LABEL: revision_hash, POD_NAME_LABEL: pod_name,
                       POD_INDEX_LABEL: str(ordinal)})
        pod = pod_from_template(template, sts, name=pod_name)
        pod["spec"]["hostname"] = pod_name
        if spec.get("serviceName"):
            pod["spec"]["subdomain"] = spec["serviceName"]
        await self._claims(sts, pod, pod_name)
        try:
            await self.client.create("v1 pods", pod, meta(sts)["namespace"])
        except ApiError as exc:
            if is_already_exists(exc):
                return   # the cache is behind
            self.recorder.emit(sts, "Warning", "FailedCreate",
                               f"create Pod {pod_name} in StatefulSet {set_name} failed "
                               f"error: {exc.message}")
            raise
        self.recorder.emit(sts, "Normal", "SuccessfulCreate",
                           f"create Pod {pod_name} in StatefulSet {set_name} successful")

    async def _claims(self, sts: Obj, pod: Obj, pod_name: str) -> None:
        spec = sts.get("spec") or {}
        volumes = pod["spec"].setdefault("volumes", [])
        selector_labels = (spec.get("selector") or {}).get("matchLabels") or {}
        for template in spec.get("volumeClaimTemplates") or []:
            claim_name = f"{meta(template)['name']}-{pod_name}"
            body = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim_name,
                                 "labels": dict((meta(template).get("labels") or {}),
                                                **selector_labels)},
                    "spec": copy.deepcopy(template.get("spec") or {})}
            try:
                await self.client.create("v1 persistentvolumeclaims", body,
                                         meta(sts)["namespace"])
                self.recorder.emit(sts, "Normal", "SuccessfulCreate",
                                   f"create Claim {claim_name} Pod {pod_name} in StatefulSet "
                                   f"{meta(sts)['name']} success")
            except ApiError as exc:
                if not is_already_exists(exc):
                    raise
            if not any(v.get("name") == meta(template)["name"] for v in volumes):
                volumes.append({"name": meta(template)["name"],
                                "persistentVolumeClaim": {"claimName": claim_name}})
        if not volumes:
            pod["spec"].pop("volumes")

    async def _delete(self, sts: Obj, pod: Obj, event: bool = True) -> None:
        try:
            await self.client.delete("v1 pods", meta(pod)["name"], meta(pod)["namespace"],
                                     preconditions={"uid": meta(pod)["uid"]})
        except ApiError as exc:
            if is_not_found(exc) or exc.code == 409:
                return
            raise
        if event:
            self.recorder.emit(sts, "Normal", "SuccessfulDelete",
                               f"delete Pod {meta(pod)['name']} in StatefulSet "
                               f"{meta(sts)['name']} successful")

    async def _update_status(self, sts: Obj, update_hash: str,
                             by_ordinal: dict[int, Obj]) -> None:
        spec = sts.get("spec") or {}
        min_ready = spec.get("minReadySeconds") or 0
        old = sts.get("status") or {}
        name = meta(sts)["name"]
        current_hash = (old.get("currentRevision") or "").removeprefix(f"{name}-") or update_hash
        pods = [p for p in by_ordinal.values() if not is_terminating(p)]
        updated = sum(1 for p in pods
                      if (meta(p).get("labels") or {}).get(REVISION_HASH_LABEL) == update_hash)
        current = sum(1 for p in pods
                      if (meta(p).get("labels") or {}).get(REVISION_HASH_LABEL) == current_hash)
        replicas = spec.get("replicas", 1)
        if updated == replicas and len(pods) == replicas:
            # The rollout is done: the update revision is the current one.
            current_hash, current = update_hash, updated
        status = {"observedGeneration": meta(sts).get("generation", 0),
                  "replicas": len(pods),
                  "readyReplicas": sum(1 for p in pods if is_pod_ready(p)),
                  "currentReplicas": current, "updatedReplicas": updated,
                  "availableReplicas": sum(1 for p in pods if is_pod_available(p, min_ready)),
                  "currentRevision": f"{name}-{current_hash}",
                  "updateRevision": f"{name}-{update_hash}",
                  "collisionCount": old.get("collisionCount") or 0}
        if all((old.get(k) or 0) == (v or 0) for k, v in status.items()):
            return
        try:
            await write_status(self.client, STATEFULSETS, sts, status,
                               required=("replicas", "availableReplicas"))
        except ApiError as exc:
            if not is_not_found(exc):
                raise
