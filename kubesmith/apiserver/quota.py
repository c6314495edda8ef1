"""The ResourceQuota admission plugin, with the API server keeping the quotas' status.

A create (or an update that grows usage) in a namespace with quotas is checked against
each matching quota's status.hard and status.used; over quota is 403 Forbidden with
upstream's "exceeded quota: ..." message. The new usage is written in the same etcd
transaction as the object itself, guarded by the quota's mod_revision: concurrent
creates cannot both take the last unit, on one API server or several.

Usage that shrinks (deletes, pods that finished) is recounted from the stored objects
shortly after a delete or update, and every RESYNC seconds; the recount is guarded the
same way, so it never overwrites a charge it did not see. Quota objects get status.hard
from spec.hard and a fresh status.used when created or changed.

Counted: pods, services, services.nodeports, services.loadbalancers, configmaps,
secrets, persistentvolumeclaims (and requests.storage, per storage class too),
replicationcontrollers, resourcequotas, cpu/memory/ephemeral-storage requests and limits,
extended-resource requests, and count/<resource>.<group> for every kind.

Scopes (spec.scopes and spec.scopeSelector) narrow a quota to the pods they match, as
upstream: Terminating / NotTerminating (activeDeadlineSeconds set or not), BestEffort /
NotBestEffort (no cpu/memory requests or limits in any container), PriorityClass
(priorityClassName In / NotIn / Exists / DoesNotExist), CrossNamespacePodAffinity (pod
(anti-)affinity terms naming other namespaces). A scoped quota matches no other kind.
"""
from __future__ import annotations

import asyncio
import copy
import logging
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from kubesmith.api.registry import REGISTRY, ResourceType
from kubesmith.apiserver import admission, errors, txn
from kubesmith.apiserver.limitranger import Quantity, pod_resources
from kubesmith.store import ConflictError, StoreError

if TYPE_CHECKING:
    from kubesmith.apiserver.server import APIServer

log = logging.getLogger(__name__)

Obj = dict[str, Any]
RESYNC = 15.0           # seconds between full recounts
POKE_DELAY = 0.2        # a recount after a delete waits this long for the delete to land
COMPUTE = ("cpu", "memory", "ephemeral-storage")
REQUIRED = {"cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"}
STORAGE_CLASS = ".storageclass.storage.k8s.io/"
_LEGACY = {
    "pods": {"pods"},
    "services": {"services", "services.nodeports", "services.loadbalancers"},
    "configmaps": {"configmaps"},
    "secrets": {"secrets"},
    "persistentvolumeclaims": {"persistentvolumeclaims", "requests.storage"},
    "replicationcontrollers": {"replicationcontrollers"},
    "resourcequotas": {"resourcequotas"},
}
ONE = Quantity(Decimal(1))


def count_name(rt: ResourceType) -> str:
    return f"count/{rt.plural}" + (f".{rt.group}" if rt.group else "")


def matches(rt: ResourceType, name: str) -> bool:
    if name == count_name(rt):
        return True
    if rt.group != "":
        return False
    if name in _LEGACY.get(rt.plural, ()):
        return True
    if rt.plural == "pods":
        return name in COMPUTE or name.startswith(("requests.", "limits.", "hugepages-")) \
            and name != "requests.storage"
    if rt.plural == "persistentvolumeclaims":
        return STORAGE_CLASS in name
    return False


def _kind_of(name: str) -> ResourceType | None:
    """The kind a quota resource name counts."""
    if name.startswith("count/"):
        plural, _, group = name[len("count/"):].partition(".")
        return next((rt for rt in REGISTRY if rt.plural == plural and rt.group == group
                     and not rt.create_only), None)
    for plural, names in _LEGACY.items():
        if name in names:
            return REGISTRY.get("", "v1", plural)
    if STORAGE_CLASS in name:
        return REGISTRY.get("", "v1", "persistentvolumeclaims")
    if name in COMPUTE or name.startswith(("requests.", "limits.", "hugepages-")):
        return REGISTRY.get("", "v1", "pods")
    return None


def _terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def usage(rt: ResourceType, obj: Obj) -> dict[str, Quantity]:
    """What one object consumes, under every name a quota may limit it by."""
    result = {count_name(rt): ONE}
    if rt.group != "":
        return result
    plural = rt.plural
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    if plural == "pods":
        if _terminal(obj):
            return result
        result["pods"] = ONE
        requests, limits = pod_resources(spec)
        for name in COMPUTE:
            if name in requests:
                result[name] = requests[name]
                result[f"requests.{name}"] = requests[name]
            if name in limits:
                result[f"limits.{name}"] = limits[name]
        for name, value in requests.items():
            if name.startswith("hugepages-"):
                result[name] = value
                result[f"requests.{name}"] = value
            elif "/" in name:
                result[f"requests.{name}"] = value
    elif plural == "services":
        result["services"] = ONE
        ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
        if spec.get("type") == "NodePort":
            result["services.nodeports"] = Quantity(Decimal(len(ports)))
        elif spec.get("type") == "LoadBalancer":
            if spec.get("allocateLoadBalancerNodePorts") is False:
                count = sum(1 for p in ports if p.get("nodePort"))
            else:
                count = len(ports)
            result["services.nodeports"] = Quantity(Decimal(count))
            result["services.loadbalancers"] = ONE
    elif plural == "persistentvolumeclaims":
        result["persistentvolumeclaims"] = ONE
        requested = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
        storage = Quantity.parse(requested) if requested is not None else None
        if storage is not None:
            result["requests.storage"] = storage
        storage_class = spec.get("storageClassName")
        if isinstance(storage_class, str) and storage_class:
            result[f"{storage_class}{STORAGE_CLASS}persistentvolumeclaims"] = ONE
            if storage is not None:
                result[f"{storage_class}{STORAGE_CLASS}requests.storage"] = storage
    elif plural in _LEGACY:
        result[plural] = ONE
    return result


def pretty(values: dict[str, Quantity]) -> str:
    return ",".join(f"{k}={values[k]}" for k in sorted(values))


def _quantities(values: Any) -> dict[str, Quantity]:
    result = {}
    if isinstance(values, dict):
        for key, raw in values.items():
            parsed = Quantity.parse(raw)
            if parsed is not None:
                result[key] = parsed
    return result


def _hard(quota: Obj) -> dict[str, Quantity]:
    status = quota.get("status") or {}
    return _quantities(status.get("hard") or (quota.get("spec") or {}).get("hard"))


def _scope_requirements(quota: Obj) -> list[tuple[str, str, list]]:
    """(scopeName, operator, values) of spec.scopes (each as Exists) and of
    spec.scopeSelector.matchExpressions."""
    spec = quota.get("spec") or {}
    found = [(scope, "Exists", []) for scope in spec.get("scopes") or []
             if isinstance(scope, str)]
    selector = spec.get("scopeSelector") or {}
    for expression in (selector.get("matchExpressions") or []
                       if isinstance(selector, dict) else []):
        if isinstance(expression, dict):
            found.append((expression.get("scopeName") or "", expression.get("operator") or "",
                          list(expression.get("values") or [])))
    return found


def _best_effort(pod: Obj) -> bool:
    """Upstream's QoS class BestEffort: no cpu or memory requests or limits anywhere."""
    spec = pod.get("spec") or {}
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            resources = (container or {}).get("resources") or {}
            for kind in ("requests", "limits"):
                if any(name in (resources.get(kind) or {}) for name in ("cpu", "memory")):
                    return False
    return True


def _cross_namespace_affinity(pod: Obj) -> bool:
    affinity = (pod.get("spec") or {}).get("affinity") or {}
    for kind in ("podAffinity", "podAntiAffinity"):
        rules = affinity.get(kind) or {}
        terms = list(rules.get("requiredDuringSchedulingIgnoredDuringExecution") or [])
        terms += [(t or {}).get("podAffinityTerm") for t in
                  rules.get("preferredDuringSchedulingIgnoredDuringExecution") or []]
        if any(isinstance(t, dict) and (t.get("namespaces") or
                                        t.get("namespaceSelector") is not None)
               for t in terms):
            return True
    return False


def _scope_matches(scope: str, operator: str, values: list, pod: Obj) -> bool:
    spec = pod.get("spec") or {}
    if scope == "PriorityClass":
        name = spec.get("priorityClassName") or ""
        return {"In": name in values, "NotIn": name not in values, "Exists": bool(name),
                "DoesNotExist": not name}.get(operator, False)
    deadline = spec.get("activeDeadlineSeconds")
    matched = {"Terminating": deadline is not None and deadline >= 0,
               "NotTerminating": deadline is None or deadline < 0,
               "BestEffort": _best_effort(pod),
               "NotBestEffort": not _best_effort(pod),
               "CrossNamespacePodAffinity": _cross_namespace_affinity(pod)}.get(scope)
    if matched is None:
        return False
    return matched if operator == "Exists" else not matched if operator == "DoesNotExist" \
        else False


def in_scope(quota: Obj, rt: ResourceType, obj: Obj) -> bool:
    """Whether the quota applies to the object: always without scopes; with scopes only
    to pods that match every one of them."""
    requirements = _scope_requirements(quota)
    if not requirements:
        return True
    if rt.group != "" or rt.plural != "pods":
        return False
    return all(_scope_matches(scope, operator, values, obj)
               for scope, operator, values in requirements)


def _pod_constraints(quota_name: str, restricted: list[str], pod: Obj) -> str | None:
    required = REQUIRED.intersection(restricted)
    if not required:
        return None
    missing: dict[str, set[str]] = {}
    spec = pod.get("spec") or {}
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            if not isinstance(container, dict):
                continue
            resources = container.get("resources") or {}
            present = set()
            for name in ("cpu", "memory"):
                if name in (resources.get("requests") or {}):
                    present |= {name, f"requests.{name}"}
                if name in (resources.get("limits") or {}):
                    present.add(f"limits.{name}")
            for name in required - present:
                missing.setdefault(name, set()).add(container.get("name", ""))
    if not missing:
        return None
    parts = [f"{name} for: {','.join(sorted(missing[name]))}" for name in sorted(missing)]
    return f"failed quota: {quota_name}: must specify {'; '.join(parts)}"


class ResourceQuota(admission.Plugin):
    name = "ResourceQuota"

    def __init__(self, srv: "APIServer"):
        self.srv = srv
        self.rt = REGISTRY.get("", "v1", "resourcequotas")
        self._task: asyncio.Task | None = None
        self._poked: dict[str, asyncio.TimerHandle] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # --- reading ---------------------------------------------------------------------

    def _maybe_has_quotas(self, namespace: str) -> bool:
        """False only when the synced cache shows the namespace has none."""
        if not self.srv.options.watch_cache:
            return True
        cache = self.srv.cache_for(self.rt)
        if not cache.ready.is_set():
            return True
        return bool(cache.snapshot(self.rt.storage_prefix(namespace)))

    async def _quotas(self, namespace: str, revision: int = 0):
        storage = self.srv.storage.for_type(self.rt)
        result = await self.srv.store.range(self.rt.storage_prefix(namespace),
                                            revision=revision)
        quotas = []
        for kv in result.kvs:
            try:
                quotas.append((kv, storage.decode(kv)))
            except Exception:
                log.warning("cannot decode quota %r", kv.key)
        return quotas, result.revision

    async def count(self, namespace: str, names, revision: int = 0,
                    quota: Obj | None = None) -> dict[str, Quantity]:
        """Usage under `names` of every object stored in the namespace (at revision) that
        `quota`'s scopes match."""
        totals: dict[str, Quantity] = {n: Quantity(Decimal(0)) for n in names}
        kinds = {}
        for name in names:
            rt = _kind_of(name)
            if rt is not None:
                kinds[rt.storage_prefix(namespace)] = rt
        for prefix, rt in kinds.items():
            storage = self.srv.storage.for_type(rt)
            result = await self.srv.store.range(prefix, revision=revision)
            for kv in result.kvs:
                try:
                    obj = storage.decode(kv)
                except Exception:
                    continue
                if quota is not None and not in_scope(quota, rt, obj):
                    continue
                for name, value in usage(rt, obj).items():
                    if name in totals and matches(rt, name):
                        totals[name] = totals[name] + value
        return totals

    # --- background recounts -----------------------------------------------------------

    def _start(self) -> None:
        if self._task is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._task = loop.create_task(self._resync(), name="quota-resync")
            tasks = getattr(self.srv, "_tasks", None)
            if isinstance(tasks, list):
                tasks.append(self._task)     # cancelled with the server

    def poke(self, namespace: str) -> None:
        """Recount the namespace's quotas soon (after a delete has landed)."""
        if namespace in self._poked:
            return
        loop = asyncio.get_running_loop()

        def fire():
            self._poked.pop(namespace, None)
            loop.create_task(self._recount_quietly(namespace))
        self._poked[namespace] = loop.call_later(POKE_DELAY, fire)

    async def _recount_quietly(self, namespace: str) -> None:
        try:
            await self.recount(namespace)
        except (StoreError, errors.APIError) as exc:
            log.info("quota recount of %s: %s", namespace, exc)
        except Exception:
            log.exception("quota recount of %s failed", namespace)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(RESYNC)
            try:
                result = await self.srv.store.range(self.rt.storage_prefix(None),
                                                    keys_only=True)
            except StoreError:
                continue
            namespaces = sorted({kv.key[len(self.rt.storage_prefix(None)):].split(b"/")[0]
                                 .decode() for kv in result.kvs})
            for namespace in namespaces:
                await self._recount_quietly(namespace)

    async def recount(self, namespace: str) -> None:
        """Set every quota's status from the stored objects, unless a charge raced us."""
        async with self._locks.setdefault(namespace, asyncio.Lock()):
            for _ in range(5):
                quotas, revision = await self._quotas(namespace)
                if not quotas:
                    return
                extra = txn.Extra()
                storage = self.srv.storage.for_type(self.rt)
                for kv, quota in quotas:
                    hard = (quota.get("spec") or {}).get("hard") or {}
                    used = await self.count(namespace, list(hard), revision, quota)
                    status = quota.get("status") or {}
                    new_used = {k: str(v) for k, v in used.items()}
                    if status.get("hard") == hard and status.get("used") == new_used:
                        continue
                    updated = copy.deepcopy(quota)
                    updated["status"] = {**status, "hard": copy.deepcopy(hard),
                                         "used": new_used}
                    extra.guards.append(txn.Guard(kv.key, mod_revision=kv.mod_revision))
                    extra.puts[kv.key] = storage.encode(updated)
                if not extra:
                    return
                first = extra.guards.pop(0)
                data = extra.puts.pop(first.key)
                try:
                    await txn.update(self.srv.store, first.key, data, first.mod_revision,
                                     extra)
                    return
                except (ConflictError, txn.Retry):
                    continue

    # --- admission -------------------------------------------------------------------

    async def admit(self, request: admission.Request) -> None:
        self._start()
        rt = request.rt
        if rt is not self.rt or request.subresource or request.obj is None or \
                request.operation not in (admission.CREATE, admission.UPDATE):
            return
        # A quota's status follows its spec and the namespace's current usage.
        hard = (request.obj.get("spec") or {}).get("hard") or {}
        if not isinstance(hard, dict):
            return
        used = await self.count(request.namespace, [k for k in hard if isinstance(k, str)],
                                quota=request.obj)
        status = request.obj.get("status")
        if not isinstance(status, dict):
            status = request.obj["status"] = {}
        status["hard"] = copy.deepcopy(hard)
        status["used"] = {k: str(v) for k, v in used.items()}

    async def validate(self, request: admission.Request) -> None:
        rt, namespace = request.rt, request.namespace
        if not namespace or rt.create_only or rt is self.rt:
            return
        if not self._maybe_has_quotas(namespace):
            return
        if request.operation == admission.DELETE or (
                request.operation == admission.UPDATE and (request.subresource or
                                                           rt.plural == "pods")):
            # Usage may shrink: recount once the change has landed.
            self.poke(namespace)
            return
        if request.subresource or request.obj is None or \
                request.operation not in (admission.CREATE, admission.UPDATE):
            return
        if ((request.obj.get("metadata") or {}).get("deletionTimestamp")):
            return
        await self._charge(request)

    async def _charge(self, request: admission.Request) -> None:
        rt, namespace, obj = request.rt, request.namespace, request.obj
        quotas, _ = await self._quotas(namespace)
        if not quotas:
            return
        wanted = usage(rt, obj)
        before = usage(rt, request.old) if request.operation == admission.UPDATE and \
            request.old is not None else {}
        storage = self.srv.storage.for_type(self.rt)
        extra = txn.Extra()
        for kv, quota in quotas:
            if not in_scope(quota, rt, obj):
                if before and in_scope(quota, rt, request.old):
                    self.poke(namespace)        # it left the quota's scope
                continue
            # What the quota held of the object before (nothing when it was out of scope).
            held = before if before and in_scope(quota, rt, request.old) else {}
            charge: dict[str, Quantity] = {}
            for name, value in wanted.items():
                delta = value.value - (held[name].value if name in held else 0)
                if delta < 0:
                    self.poke(namespace)
                charge[name] = Quantity(max(delta, Decimal(0)), value.binary)
            hard = _hard(quota)
            restricted = [n for n in hard if matches(rt, n)]
            if not restricted:
                continue
            quota_name = (quota.get("metadata") or {}).get("name", "")
            if rt.group == "" and rt.plural == "pods":
                problem = _pod_constraints(quota_name, restricted, obj)
                if problem:
                    raise self._forbidden(request, problem)
            delta = {n: charge[n] for n in restricted if n in charge and charge[n].value != 0}
            if not delta:
                continue
            status = quota.get("status") or {}
            used = _quantities(status.get("used"))
            missing = [n for n in restricted if n not in used]
            if missing:
                used.update(await self.count(namespace, missing, quota=quota))
            new_used = dict(used)
            for name, value in delta.items():
                new_used[name] = used[name] + value if name in used else value
            exceeded = sorted(n for n in delta if new_used[n].value > hard[n].value)
            if exceeded:
                raise self._forbidden(request, (
                    f"exceeded quota: {quota_name}, "
                    f"requested: {pretty({n: delta[n] for n in exceeded})}, "
                    f"used: {pretty({n: used[n] for n in exceeded if n in used})}, "
                    f"limited: {pretty({n: hard[n] for n in exceeded})}"))
            if request.dry_run:
                continue
            updated = copy.deepcopy(quota)
            updated_status = updated.setdefault("status", {})
            updated_status.setdefault("hard", (quota.get("spec") or {}).get("hard") or {})
            recorded = dict(updated_status.get("used") or {})
            for name in delta:
                recorded[name] = str(new_used[name])
            for name in missing:
                recorded.setdefault(name, str(new_used.get(name, used[name])))
            updated_status["used"] = recorded
            extra.guards.append(txn.Guard(kv.key, mod_revision=kv.mod_revision))
            extra.puts[kv.key] = storage.encode(updated)
        if extra:
            request.extra = txn.combine(getattr(request, "extra", None), extra)

    @staticmethod
    def _forbidden(request: admission.Request, message: str) -> errors.APIError:
        meta = (request.obj or {}).get("metadata") or {}
        name = request.name or meta.get("name") or meta.get("generateName") or "Unknown"
        return errors.forbidden(request.rt.plural, request.rt.group, name, message)
