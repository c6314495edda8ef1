"""DaemonSet: one pod of the template on every node that may run it (upstream's
pkg/controller/daemon).

A node is eligible when the template's nodeSelector and required node affinity match it
and its NoSchedule/NoExecute taints are tolerated — with the tolerations upstream adds to
every daemon pod (not-ready and unreachable NoExecute; disk-, memory-, pid-pressure and
unschedulable NoSchedule; network-unavailable for hostNetwork pods). Each pod is pinned
to its node with required node affinity on matchFields metadata.name (the scheduler
binds it), and labelled controller-revision-hash from the set's ControllerRevision.
Pods on nodes no longer eligible, extra pods on a node and failed pods are deleted.
RollingUpdate replaces out-of-date pods, no more than maxUnavailable unavailable at a
time, or with maxSurge starts the new pod beside the old one and deletes the old once
the new is available; OnDelete replaces only pods deleted by someone else.
"""
from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

from kubesmith.client.informers import namespace_key, split_key
from kubesmith.client.rest import ApiError, is_not_found
from kubesmith.controllers import register
from kubesmith.controllers.common import (
    REVISION_HASH_LABEL,
    REVISIONS,
    Expectations,
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
    resolve_int_or_percent,
    slow_start_batches,
    write_status,
    template_patch,
    unwrap,
)
from kubesmith.controllers.context import ControllerContext

log = logging.getLogger(__name__)

DAEMONSETS = "apps/v1 daemonsets"
DEFAULT_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]
NETWORK_UNAVAILABLE = {"key": "node.kubernetes.io/network-unavailable", "operator": "Exists",
                       "effect": "NoSchedule"}


# --- eligibility ----------------------------------------------------------------------

def daemon_tolerations(pod_spec: Obj) -> list[Obj]:
    tolerations = list(pod_spec.get("tolerations") or [])
    extra = list(DEFAULT_TOLERATIONS)
    if pod_spec.get("hostNetwork"):
        extra.append(NETWORK_UNAVAILABLE)
    for toleration in extra:
        if not any(t.get("key") == toleration["key"] and t.get("effect") == toleration["effect"]
                   for t in tolerations):
            tolerations.append(toleration)
    return tolerations


def tolerates(tolerations: list[Obj], taint: Obj) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        operator = t.get("operator", "Equal")
        if not t.get("key") and operator == "Exists":
            return True
        if t.get("key") != taint.get("key"):
            continue
        if operator == "Exists" or t.get("value", "") == taint.get("value", ""):
            return True
    return False


def _requirement_matches(req: Obj, values_of) -> bool:
    operator = req.get("operator")
    present, value = values_of(req.get("key"))
    values = req.get("values") or []
    if operator == "In":
        return present and value in values
    if operator == "NotIn":
        return not present or value not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt") and present:
        try:
            a, b = int(value), int(values[0])
        except (ValueError, IndexError):
            return False
        return a > b if operator == "Gt" else a < b
    return False


def node_selector_terms_match(terms: list[Obj], node: Obj) -> bool:
    labels = meta(node).get("labels") or {}
    fields = {"metadata.name": meta(node).get("name")}
    for term in terms:
        exprs = term.get("matchExpressions") or []
        field_exprs = term.get("matchFields") or []
        if not exprs and not field_exprs:
            continue
        if all(_requirement_matches(r, lambda k: (k in labels, labels.get(k))) for r in exprs) \
                and all(_requirement_matches(r, lambda k: (k in fields, fields.get(k)))
                        for r in field_exprs):
            return True
    return False


def node_should_run(pod_spec: Obj, node: Obj) -> bool:
    labels = meta(node).get("labels") or {}
    if any(labels.get(k) != v for k, v in (pod_spec.get("nodeSelector") or {}).items()):
        return False
    required = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms")
    if terms is not None and not node_selector_terms_match(terms, node):
        return False
    tolerations = daemon_tolerations(pod_spec)
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations,
                                                                                 taint):
            return False
    return True


def pin_to_node(pod_spec: Obj, node_name: str) -> None:
    """Upstream's ReplaceDaemonSetPodNodeNameNodeAffinity."""
    affinity = pod_spec.setdefault("affinity", {})
    node_affinity = affinity.setdefault("nodeAffinity", {})
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]}]}


def pod_node(pod: Obj) -> str | None:
    """The node a daemon pod is for: its nodeName, or the node its affinity pins."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return spec["nodeName"]
    terms = ((((spec.get("affinity") or {}).get("nodeAffinity") or {})
              .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
             .get("nodeSelectorTerms") or [])
    for term in terms:
        for field in term.get("matchFields") or []:
            if field.get("key") == "metadata.name" and field.get("operator") == "In" \
                    and len(field.get("values") or []) == 1:
                return field["values"][0]
    return None


# --- the controller -------------------------------------------------------------------

@register("daemonset")
class DaemonSetController(QueueController):
    queue_name = "daemonset"

    def __init__(self, ctx: ControllerContext):
        super().__init__()
        self.client = ctx.client
        self.recorder = ctx.recorder("daemonset-controller")
        self.expectations = Expectations()
        self.sets = ctx.informers.informer(DAEMONSETS)
        self.pods = ctx.informers.informer("v1 pods")
        self.nodes = ctx.informers.informer("v1 nodes")
        self.revisions = ctx.informers.informer(REVISIONS)
        self.sets.add_event_handler(on_add=self.enqueue,
                                    on_update=lambda old, new: self.enqueue(new),
                                    on_delete=lambda obj: self.expectations.forget(
                                        namespace_key(obj)))
        self.pods.add_event_handler(on_add=self._pod_added,
                                    on_update=lambda old, new: self._pod_changed(new),
                                    on_delete=self._pod_deleted)
        self.nodes.add_event_handler(on_add=self._all, on_update=self._node_updated,
                                     on_delete=self._all)

    def _all(self, *_: Any) -> None:
        for ds in self.sets.lister.list():
            self.queue.add(namespace_key(ds))

    def _node_updated(self, old: Obj, new: Obj) -> None:
        if meta(old).get("labels") != meta(new).get("labels") or \
                (old.get("spec") or {}).get("taints") != (new.get("spec") or {}).get("taints"):
            self._all()

    def _owner_key(self, pod: Obj) -> str | None:
        return controller_key(pod, "DaemonSet")

    def _pod_added(self, pod: Obj) -> None:
        key = self._owner_key(pod)
        if key is not None:
            self.expectations.creation_observed(key)
            self.queue.add(key)

    def _pod_changed(self, pod: Obj) -> None:
        key = self._owner_key(pod)
        if key is not None:
            if is_terminating(pod):
                self.expectations.deletion_observed(key, meta(pod).get("uid"))
            self.queue.add(key)

    def _pod_deleted(self, obj) -> None:
        pod = unwrap(obj)
        key = self._owner_key(pod)
        if key is not None:
            self.expectations.deletion_observed(key, meta(pod).get("uid"))
            self.queue.add(key)

    async def sync(self, key: str) -> float | None:
        namespace, name = split_key(key)
        cached = self.sets.lister.get(name, namespace)
        if cached is None:
            return None
        ds = copy.deepcopy(cached)
        spec = ds.get("spec") or {}
        template = spec.get("template") or {}
        revisions = owned_revisions(self.revisions.lister, ds)
        digest, _ = await ensure_revision(self.client, ds, revisions, template_patch(template))
        candidates = [p for p in self.pods.lister.list(namespace)]
        pods = await claim(self.client, "v1 pods", ds, spec.get("selector"), candidates)
        by_node: dict[str, list[Obj]] = {}
        for pod in pods:
            node = pod_node(pod)
            if node:
                by_node.setdefault(node, []).append(pod)
        nodes = self.nodes.lister.list()
        pod_spec = template.get("spec") or {}
        eligible = {meta(n)["name"] for n in nodes if node_should_run(pod_spec, n)}
        surge = self._max_surge(ds, len(eligible))
        if not is_terminating(ds) and self.expectations.satisfied(key):
            to_create: list[str] = []
            to_delete: list[Obj] = []
            for node in sorted(eligible):
                mine = [p for p in by_node.get(node, []) if not is_terminating(p)]
                failed = [p for p in mine if pod_phase(p) == "Failed"]
                to_delete.extend(failed)
                mine = [p for p in mine if p not in failed]
                if not mine and not any(is_terminating(p) for p in by_node.get(node, [])):
                    if not failed:
                        to_create.append(node)
                elif len(mine) > 1:
                    to_delete.extend(self._extra_pods(mine, digest, surge > 0))
            for node, mine in by_node.items():
                if node not in eligible:
                    to_delete.extend(p for p in mine if not is_terminating(p))
            if not to_create and not to_delete:
                if surge > 0:
                    to_create, to_delete = self._surge(ds, digest, by_node, eligible, surge)
                else:
                    to_delete = self._rolling_victims(ds, digest, by_node, eligible)
            await self._apply(key, ds, digest, to_create, to_delete)
        await self._update_status(ds, digest, by_node, eligible)
        live = {digest} | {(meta(p).get("labels") or {}).get(REVISION_HASH_LABEL, "")
                           for p in pods}
        await truncate_history(self.client, ds, revisions, live)
        return None

    @staticmethod
    def _max_surge(ds: Obj, nodes: int) -> int:
        strategy = (ds.get("spec") or {}).get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            return 0
        return resolve_int_or_percent((strategy.get("rollingUpdate") or {}).get("maxSurge", 0),
                                      nodes, True)

    @staticmethod
    def _extra_pods(pods: list[Obj], digest: str, surging: bool) -> list[Obj]:
        """The pods of one node beyond the one it should run — beyond an old and a new
        one while a surge rollout replaces the old (upstream's podsShouldBeOnNode)."""
        pods = sorted(pods, key=lambda p: meta(p).get("creationTimestamp") or "")
        if not surging:
            return pods[1:]
        new = [p for p in pods if (meta(p).get("labels") or {}).get(REVISION_HASH_LABEL)
               == digest]
        old = [p for p in pods if p not in new]
        keep = new[:1] + old[:1]
        return [p for p in pods if p not in keep]

    def _surge(self, ds: Obj, digest: str, by_node: dict[str, list[Obj]],
               eligible: set[str], surge: int) -> tuple[list[str], list[Obj]]:
        """RollingUpdate with maxSurge (upstream's surge branch of rollingUpdate): a new
        pod starts beside the old one — at once when the old one is not available, else
        while fewer than maxSurge new pods are still becoming available — and the old
        pod goes once the new one is available. (nodes to create on, pods to delete)"""
        min_ready = (ds.get("spec") or {}).get("minReadySeconds") or 0
        now_create: list[str] = []
        candidates: list[str] = []
        delete: list[Obj] = []
        surging = 0
        for node in sorted(eligible):
            mine = [p for p in by_node.get(node, []) if not is_terminating(p)]
            new = next((p for p in mine if (meta(p).get("labels") or {}).get(
                REVISION_HASH_LABEL) == digest), None)
            old = next((p for p in mine if p is not new), None)
            if old is None:
                continue
            if new is None:
                if is_pod_available(old, min_ready):
                    candidates.append(node)
                else:
                    now_create.append(node)
            elif is_pod_available(new, min_ready):
                delete.append(old)
            else:
                surging += 1
        return now_create + candidates[:max(surge - surging, 0)], delete

    def _rolling_victims(self, ds: Obj, digest: str, by_node: dict[str, list[Obj]],
                         eligible: set[str]) -> list[Obj]:
        strategy = (ds.get("spec") or {}).get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            return []
        min_ready = (ds.get("spec") or {}).get("minReadySeconds") or 0
        limit = max(resolve_int_or_percent(
            (strategy.get("rollingUpdate") or {}).get("maxUnavailable", 1), len(eligible),
            True), 1)
        unavailable = 0
        old_available, old_unavailable = [], []
        for node in sorted(eligible):
            mine = [p for p in by_node.get(node, []) if not is_terminating(p)]
            if not mine:
                unavailable += 1
                continue
            pod = mine[0]
            available = is_pod_available(pod, min_ready)
            if not available:
                unavailable += 1
            if (meta(pod).get("labels") or {}).get(REVISION_HASH_LABEL) != digest:
                (old_available if available else old_unavailable).append(pod)
        victims = list(old_unavailable)
        room = limit - unavailable
        victims.extend(old_available[:max(room, 0)])
        return victims

    async def _apply(self, key: str, ds: Obj, digest: str, to_create: list[str],
                     to_delete: list[Obj]) -> None:
        self.expectations.expect(key, adds=len(to_create), deletes=len(to_delete),
                                 uids=[meta(p)["uid"] for p in to_delete])
        template = copy.deepcopy((ds.get("spec") or {}).get("template") or {})
        template.setdefault("metadata", {}).setdefault("labels", {})[REVISION_HASH_LABEL] = digest
        template.setdefault("spec", {})["tolerations"] = daemon_tolerations(template["spec"])

        async def create(node: str) -> None:
            pod = pod_from_template(template, ds)
            pin_to_node(pod["spec"], node)
            try:
                created = await self.client.create("v1 pods", pod, meta(ds)["namespace"])
            except ApiError as exc:
                self.expectations.creation_failed(key)
                self.recorder.emit(ds, "Warning", "FailedCreate", f"Error creating: {exc}")
                raise
            self.recorder.emit(ds, "Normal", "SuccessfulCreate",
                               f"Created pod: {meta(created)['name']}")

        async def delete(pod: Obj) -> None:
            try:
                await self.client.delete("v1 pods", meta(pod)["name"], meta(pod)["namespace"],
                                         preconditions={"uid": meta(pod)["uid"]})
            except ApiError as exc:
                self.expectations.deletion_observed(key, meta(pod)["uid"])
                if not is_not_found(exc) and exc.code != 409:
                    raise
                return
            self.recorder.emit(ds, "Normal", "SuccessfulDelete",
                               f"Deleted pod: {meta(pod)['name']}")

        # Deletions first: a surge rollout then never runs more pods than it allows.
        results = await asyncio.gather(*(delete(p) for p in to_delete), return_exceptions=True)
        error = next((r for r in results if isinstance(r, BaseException)), None)
        pending = list(to_create)
        for batch in slow_start_batches(len(pending)):
            chunk, pending = pending[:batch], pending[batch:]
            results = await asyncio.gather(*(create(n) for n in chunk), return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                for _ in pending:
                    self.expectations.creation_failed(key)
                error = error or failures[0]
                break
        if error is not None:
            raise error

    async def _update_status(self, ds: Obj, digest: str, by_node: dict[str, list[Obj]],
                             eligible: set[str]) -> None:
        min_ready = (ds.get("spec") or {}).get("minReadySeconds") or 0
        scheduled = ready = available = updated = misscheduled = 0
        for node, pods in by_node.items():
            active = [p for p in pods if not is_terminating(p)]
            if not active:
                continue
            if node not in eligible:
                misscheduled += 1
                continue
            scheduled += 1
            # With a surge under way the node's new pod is the one that counts.
            pod = next((p for p in active if (meta(p).get("labels") or {}).get(
                REVISION_HASH_LABEL) == digest), active[0])
            ready += is_pod_ready(pod)
            available += is_pod_available(pod, min_ready)
            updated += (meta(pod).get("labels") or {}).get(REVISION_HASH_LABEL) == digest
        status = {"currentNumberScheduled": scheduled, "numberMisscheduled": misscheduled,
                  "desiredNumberScheduled": len(eligible), "numberReady": ready,
                  "observedGeneration": meta(ds).get("generation", 0),
                  "updatedNumberScheduled": updated, "numberAvailable": available,
                  "numberUnavailable": max(len(eligible) - available, 0)}
        current = ds.get("status") or {}
        if all((current.get(k) or 0) == v for k, v in status.items()):
            return
        # The four counts upstream requires are written even when they are 0.
        try:
            await write_status(self.client, DAEMONSETS, ds, status, required=(
                "currentNumberScheduled", "numberMisscheduled", "desiredNumberScheduled",
                "numberReady"))
        except ApiError as exc:
            if not is_not_found(exc):
                raise
