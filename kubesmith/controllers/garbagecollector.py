"""The garbage collector: objects whose owners (metadata.ownerReferences) are gone are
deleted, as upstream's garbagecollector does.

The graph is kept from one informer per resource type (events excepted, as upstream):
objects by uid and, for each owner uid, the uids of its dependents. Work is one queue of
uids; processing one (attemptToDelete in upstream's terms):

  * an object being deleted with the "orphan" finalizer: its dependents' references to
    it are removed, then the finalizer;
  * an object being deleted with the "foregroundDeletion" finalizer: its dependents are
    deleted; once none with blockOwnerDeletion is left, the finalizer is removed and the
    API server deletes the object;
  * an object with owners: each owner is "solid" (exists), "dangling" (gone, or its uid
    differs) or "waiting" (being deleted in the foreground). With a solid owner, the
    references to dangling and waiting owners are removed; with none, the object is
    deleted (in the foreground when an owner waits for it and it has dependents of its
    own, else as its own finalizers say, background by default).

An owner missing from the cache is read from the API server before it is called gone,
so informers lagging one another never delete anything alive.
"""
from __future__ import annotations

import logging
from typing import Any, NamedTuple

from kubesmith.api import REGISTRY, ResourceType
from kubesmith.client.informers import DeletedFinalStateUnknown
from kubesmith.client.rest import ApiError, is_conflict, is_invalid, is_not_found
from kubesmith.client.workqueue import WorkQueue, run_workers
from kubesmith.controllers import register
from kubesmith.controllers.context import ControllerContext

log = logging.getLogger(__name__)

Obj = dict[str, Any]
ORPHAN = "orphan"
FOREGROUND = "foregroundDeletion"
# Upstream's ignoredResources: never owners nor dependents worth a watch.
IGNORED = {("", "events"), ("events.k8s.io", "events")}


class Node(NamedTuple):
    rt: ResourceType
    obj: Obj

    @property
    def meta(self) -> Obj:
        return self.obj.get("metadata") or {}

    @property
    def uid(self) -> str:
        return self.meta.get("uid", "")

    @property
    def owners(self) -> list[Obj]:
        return [ref for ref in self.meta.get("ownerReferences") or [] if ref.get("uid")]

    @property
    def finalizers(self) -> list[str]:
        return list(self.meta.get("finalizers") or [])

    @property
    def deleting(self) -> bool:
        return bool(self.meta.get("deletionTimestamp"))

    def __str__(self) -> str:
        meta = self.meta
        where = f"{meta.get('namespace')}/" if meta.get("namespace") else ""
        return f"{self.rt.kind} {where}{meta.get('name')} ({self.uid})"


def gc_resources() -> list[ResourceType]:
    """One resource type per stored kind that can be listed, watched and deleted."""
    seen: set[str] = set()
    result = []
    for rt in REGISTRY:
        if (rt.group, rt.plural) in IGNORED or rt.storage_resource in seen:
            continue
        if not {"list", "watch", "delete"} <= set(rt.verbs):
            continue
        seen.add(rt.storage_resource)
        result.append(rt)
    return result


def owner_type(ref: Obj) -> ResourceType | None:
    """The resource type an ownerReference names (another version of its group will do)."""
    rt = REGISTRY.by_api_version(ref.get("apiVersion", ""), ref.get("kind", ""))
    if rt is not None:
        return rt
    group = (ref.get("apiVersion") or "").rpartition("/")[0]
    for candidate in REGISTRY:
        if candidate.group == group and candidate.kind == ref.get("kind"):
            return candidate
    return None


def _unwrap(obj: Obj | DeletedFinalStateUnknown) -> Obj:
    return obj.obj if isinstance(obj, DeletedFinalStateUnknown) else obj


def _owner_uids(obj: Obj) -> set[str]:
    return {ref.get("uid") for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
            if ref.get("uid")}


@register("garbagecollector")
class GarbageCollector:
    def __init__(self, ctx: ControllerContext):
        self.client = ctx.client
        self.nodes: dict[str, Node] = {}
        self.dependents: dict[str, set[str]] = {}    # owner uid -> dependent uids
        self.queue = WorkQueue(name="garbage_collector_attempt_to_delete")
        self.informers = []
        for rt in gc_resources():
            informer = ctx.informers.informer(rt)
            informer.add_event_handler(
                on_add=lambda obj, rt=rt: self._changed(rt, None, obj),
                on_update=lambda old, new, rt=rt: self._changed(rt, old, new),
                on_delete=lambda obj, rt=rt: self._deleted(rt, obj))
            self.informers.append(informer)

    # --- the graph ----------------------------------------------------------------------

    def _changed(self, rt: ResourceType, old: Obj | None, obj: Obj) -> None:
        node = Node(rt, obj)
        uid = node.uid
        if not uid:
            return
        previous = self.nodes.get(uid)
        self.nodes[uid] = node
        old_owners = _owner_uids(previous.obj) if previous else set()
        new_owners = {ref["uid"] for ref in node.owners}
        for owner in old_owners - new_owners:
            self._unlink(owner, uid)
        for owner in new_owners - old_owners:
            self.dependents.setdefault(owner, set()).add(uid)
        if new_owners and (previous is None or new_owners != old_owners):
            self.queue.add(uid)
        if node.deleting and (ORPHAN in node.finalizers or FOREGROUND in node.finalizers):
            self.queue.add(uid)
        # A dependent no longer ours, or no longer blocking, may free a waiting owner.
        if previous is not None and previous.owners != node.owners:
            for owner in old_owners:
                self._wake_owner(owner)

    def _deleted(self, rt: ResourceType, obj: Obj | DeletedFinalStateUnknown) -> None:
        obj = _unwrap(obj)
        uid = (obj.get("metadata") or {}).get("uid", "")
        node = self.nodes.pop(uid, None)
        for owner in _owner_uids(node.obj if node else obj):
            self._unlink(owner, uid)
            self._wake_owner(owner)
        # Its dependents may have no owner left.
        for dependent in self.dependents.get(uid, ()):
            self.queue.add(dependent)
        if not self.dependents.get(uid, True):
            del self.dependents[uid]

    def _unlink(self, owner: str, dependent: str) -> None:
        dependents = self.dependents.get(owner)
        if dependents is not None:
            dependents.discard(dependent)
            if not dependents and owner not in self.nodes:
                del self.dependents[owner]

    def _wake_owner(self, owner: str) -> None:
        node = self.nodes.get(owner)
        if node is not None and node.deleting and FOREGROUND in node.finalizers:
            self.queue.add(owner)

    def dependents_of(self, uid: str) -> list[Node]:
        return [self.nodes[d] for d in self.dependents.get(uid, ()) if d in self.nodes]

    # --- work ---------------------------------------------------------------------------

    async def run(self, workers: int) -> None:
        await run_workers(self.queue, self.sync, workers)

    async def sync(self, uid: str) -> None:
        node = self.nodes.get(uid)
        if node is None:
            return
        if node.deleting:
            if ORPHAN in node.finalizers:
                await self.orphan_dependents(node)
            elif FOREGROUND in node.finalizers:
                await self.delete_dependents(node)
            return
        if node.owners:
            await self.attempt_to_delete(node)

    async def attempt_to_delete(self, node: Node) -> None:
        solid, dangling, waiting = [], [], []
        for ref in node.owners:
            state = await self._owner_state(node, ref)
            {"solid": solid, "dangling": dangling, "waiting": waiting}[state].append(ref)
        if solid:
            if dangling or waiting:
                gone = [ref["uid"] for ref in dangling + waiting]
                log.info("removing references to owners %s from %s", gone, node)
                await self._remove_owner_references(node, gone)
            return
        if waiting and self.dependents_of(node.uid):
            policy = "Foreground"
        elif ORPHAN in node.finalizers:
            policy = "Orphan"
        elif FOREGROUND in node.finalizers:
            policy = "Foreground"
        else:
            policy = "Background"
        log.info("deleting %s (owners gone), propagation %s", node, policy)
        await self._delete(node, policy)

    async def _owner_state(self, node: Node, ref: Obj) -> str:
        owner = self.nodes.get(ref["uid"])
        if owner is None:
            owner_obj = await self._read_owner(node, ref)
            if owner_obj is None:
                return "dangling"
            owner = Node(owner_type(ref), owner_obj)   # type: ignore[arg-type]
        if owner.deleting and FOREGROUND in owner.finalizers:
            return "waiting"
        return "solid"

    async def _read_owner(self, node: Node, ref: Obj) -> Obj | None:
        """The owner as the API server has it, or None when it is gone (or another
        object of the same name holds its place)."""
        rt = owner_type(ref)
        if rt is None:
            # A kind this cluster does not serve: nothing can be said, so nothing is done.
            raise RuntimeError(f"{node}: owner kind {ref.get('apiVersion')} "
                               f"{ref.get('kind')} is unknown")
        namespace = node.meta.get("namespace")
        if rt.namespaced and not namespace:
            return None     # a cluster-scoped object cannot have a namespaced owner
        try:
            owner = await self.client.get(rt, ref.get("name", ""),
                                          namespace if rt.namespaced else None)
        except ApiError as exc:
            if is_not_found(exc):
                return None
            raise
        if (owner.get("metadata") or {}).get("uid") != ref["uid"]:
            return None
        return owner

    async def orphan_dependents(self, owner: Node) -> None:
        for dependent in self.dependents_of(owner.uid):
            await self._remove_owner_references(dependent, [owner.uid])
        await self._remove_finalizer(owner, ORPHAN)

    async def delete_dependents(self, owner: Node) -> None:
        dependents = self.dependents_of(owner.uid)
        blocking = [d for d in dependents
                    if any(ref["uid"] == owner.uid and ref.get("blockOwnerDeletion")
                           for ref in d.owners)]
        if not blocking:
            await self._remove_finalizer(owner, FOREGROUND)
            return
        # Each dependent sees its owner waiting and is deleted; their deletions wake
        # this owner again.
        for dependent in dependents:
            if not dependent.deleting:
                self.queue.add(dependent.uid)

    # --- writes ---------------------------------------------------------------------------

    def _namespace(self, node: Node) -> str | None:
        return node.meta.get("namespace") if node.rt.namespaced else None

    async def _delete(self, node: Node, policy: str) -> None:
        try:
            await self.client.delete(node.rt, node.meta.get("name", ""), self._namespace(node),
                                     propagation_policy=policy,
                                     preconditions={"uid": node.uid})
        except ApiError as exc:
            if is_not_found(exc) or is_conflict(exc):
                return      # gone already, or another object now has the name
            raise

    async def _remove_owner_references(self, node: Node, owner_uids: list[str]) -> None:
        patch: Any = {"metadata": {"uid": node.uid, "ownerReferences": [
            {"$patch": "delete", "uid": uid} for uid in owner_uids]}}
        patch_type = "strategic"
        if {ref["uid"] for ref in node.owners} <= set(owner_uids):
            # None left: the field goes (an emptied list would stay as []), provided the
            # object is still the one this cache saw.
            patch_type = "json"
            patch = [{"op": "test", "path": "/metadata/uid", "value": node.uid},
                     {"op": "test", "path": "/metadata/resourceVersion",
                      "value": node.meta.get("resourceVersion", "")},
                     {"op": "remove", "path": "/metadata/ownerReferences"}]
        try:
            await self.client.patch(node.rt, node.meta.get("name", ""), patch,
                                    self._namespace(node), patch_type=patch_type)
        except ApiError as exc:
            if is_not_found(exc) or is_invalid(exc) and node.uid not in self.nodes:
                return
            raise

    async def _remove_finalizer(self, node: Node, finalizer: str) -> None:
        """Remove one finalizer, on the object as the API server has it now."""
        name, namespace = node.meta.get("name", ""), self._namespace(node)
        for _ in range(5):
            try:
                live = await self.client.get(node.rt, name, namespace)
            except ApiError as exc:
                if is_not_found(exc):
                    return
                raise
            meta = live.get("metadata") or {}
            if meta.get("uid") != node.uid or finalizer not in (meta.get("finalizers") or []):
                return
            left = [f for f in meta["finalizers"] if f != finalizer]
            patch = {"metadata": {"finalizers": left or None,
                                  "resourceVersion": meta.get("resourceVersion")}}
            try:
                await self.client.patch(node.rt, name, patch, namespace, patch_type="merge")
                log.info("removed finalizer %s from %s", finalizer, node)
                return
            except ApiError as exc:
                if is_not_found(exc):
                    return
                if not is_conflict(exc):
                    raise
        raise RuntimeError(f"{node}: finalizer {finalizer} keeps conflicting")
