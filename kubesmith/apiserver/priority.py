"""The Priority admission plugin, as upstream's: pods get their priority from a class.

On pod create the plugin resolves spec.priorityClassName (or, without one, the class
marked globalDefault) and writes spec.priority and spec.preemptionPolicy from it; a pod
naming a missing class, or carrying a priority or policy other than its class's, is
refused with 403. On priority class create and update it keeps globalDefault unique,
and it refuses deleting the two system classes (upstream refuses that in the class
storage; kubesmith's generic storage has no per-kind delete hook).

Pod defaulting leaves both fields alone (as upstream's), so a value in the request is
the client's own.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from kubesmith.api.kinds.scheduling import (
    DEFAULT_PREEMPTION_POLICY, SYSTEM_PRIORITY_CLASSES,
)
from kubesmith.api.registry import REGISTRY
from kubesmith.apiserver import admission, errors

if TYPE_CHECKING:
    from kubesmith.apiserver.server import APIServer

GROUP, PLURAL = "scheduling.k8s.io", "priorityclasses"
# What a pod without any class gets when no class is globalDefault.
DEFAULT_PRIORITY = 0


class PriorityClassSource(Protocol):
    """Where the plugin reads priority classes from (the server's store, or a fake)."""

    async def get(self, name: str) -> dict | None: ...

    async def list(self, *, fresh: bool = False) -> list[dict]: ...


class StoredPriorityClasses:
    """The server's priority classes: the watch cache when synced, else etcd.

    A name missing from the cache is looked up in etcd too, so a class created a moment
    ago is found; `fresh` reads etcd for the globalDefault uniqueness check.
    """

    def __init__(self, srv: "APIServer"):
        self.srv = srv

    def _rt(self):
        return REGISTRY.get(GROUP, "v1", PLURAL)

    def _cache(self, rt):
        if not self.srv.options.watch_cache:
            return None
        cache = self.srv.cache_for(rt)
        return cache if cache.ready.is_set() else None

    async def get(self, name: str) -> dict | None:
        rt = self._rt()
        return await self.srv.read_object(rt, rt.storage_key(None, name))

    async def list(self, *, fresh: bool = False) -> list[dict]:
        rt = self._rt()
        prefix = rt.storage_prefix(None)
        cache = None if fresh else self._cache(rt)
        if cache is not None:
            return cache.snapshot(prefix)
        storage = self.srv.storage.for_type(rt)
        result = await self.srv.store.range(prefix)
        return [storage.decode(kv) for kv in result.kvs]


def default_class(classes: list[dict]) -> dict | None:
    """The globalDefault class; if a race left several, the lowest value wins (upstream)."""
    chosen = None
    for pc in classes:
        if pc.get("globalDefault") and (chosen is None or
                                        pc.get("value", 0) < chosen.get("value", 0)):
            chosen = pc
    return chosen


def _name(obj: dict | None) -> str:
    return ((obj or {}).get("metadata") or {}).get("name") or ""


class Priority(admission.Plugin):
    name = "Priority"

    def __init__(self, classes: PriorityClassSource):
        self.classes = classes

    async def admit(self, request: admission.Request) -> None:
        if request.subresource or not _is_pods(request) or not isinstance(request.obj, dict):
            return
        if request.operation == admission.CREATE:
            await self._admit_new_pod(request)
        elif request.operation == admission.UPDATE and isinstance(request.old, dict):
            _keep_priority(request.obj, request.old)

    async def validate(self, request: admission.Request) -> None:
        if request.subresource or request.rt.group != GROUP or request.rt.plural != PLURAL:
            return
        if request.operation == admission.DELETE:
            if request.name in SYSTEM_PRIORITY_CLASSES:
                raise errors.forbidden(PLURAL, GROUP, request.name,
                                       "this is a system priority class and cannot be deleted")
            return
        if request.operation in (admission.CREATE, admission.UPDATE) and \
                isinstance(request.obj, dict) and request.obj.get("globalDefault"):
            current = default_class(await self.classes.list(fresh=True))
            if current is not None and (request.operation == admission.CREATE or
                                        _name(current) != request.name):
                raise errors.forbidden(
                    PLURAL, GROUP, request.name,
                    f"PriorityClass {_name(current)} is already marked as default. "
                    "Only one default can exist")

    async def _admit_new_pod(self, request: admission.Request) -> None:
        spec = request.obj.setdefault("spec", {})
        class_name = spec.get("priorityClassName") or ""
        if class_name:
            pc = await self.classes.get(class_name)
            if pc is None:
                raise errors.forbidden("pods", "", request.name,
                                       f"no PriorityClass with name {class_name} was found")
            priority, policy = pc.get("value", 0), pc.get("preemptionPolicy")
        else:
            pc = default_class(await self.classes.list())
            if pc is not None:
                spec["priorityClassName"] = _name(pc)
                priority, policy = pc.get("value", 0), pc.get("preemptionPolicy")
            else:
                priority, policy = DEFAULT_PRIORITY, DEFAULT_PREEMPTION_POLICY
        given = spec.get("priority")
        if given is not None and given != priority:
            raise _not_computed(request, "integer value of priority", given, priority)
        spec["priority"] = priority
        if policy:
            given_policy = spec.get("preemptionPolicy")
            if given_policy and given_policy != policy:
                raise _not_computed(request, "string value of PreemptionPolicy",
                                    given_policy, policy)
            spec["preemptionPolicy"] = policy


def _not_computed(request: admission.Request, what: str, given, computed) -> errors.APIError:
    """Upstream's refusal of a pod naming a value other than the one its class gives."""
    return errors.forbidden(
        "pods", "", request.name,
        f"the {what} ({given}) must not be provided in pod spec; priority admission "
        f"controller computed {computed} from the given PriorityClass name")


def _is_pods(request: admission.Request) -> bool:
    return request.rt.group == "" and request.rt.plural == "pods"


def _keep_priority(new: dict, old: dict) -> None:
    """An update that leaves out the priority keeps the one admission computed at create
    (a different one is refused by the pod's update validation)."""
    new_spec, old_spec = new.setdefault("spec", {}), old.get("spec") or {}
    old_priority = old_spec.get("priority")
    if old_priority is not None and new_spec.get("priority") is None:
        new_spec["priority"] = old_priority
    old_policy = old_spec.get("preemptionPolicy")
    if old_policy and not new_spec.get("preemptionPolicy"):
        new_spec["preemptionPolicy"] = old_policy
