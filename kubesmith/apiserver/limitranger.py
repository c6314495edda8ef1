"""The LimitRanger admission plugin, as upstream has it.

Pods (on create) get the namespace's LimitRange defaults for every container's limits
(`default`) and requests (`defaultRequest`), noted in the kubernetes.io/limit-ranger
annotation; then min, max and maxLimitRequestRatio are enforced per Container and per Pod,
and PersistentVolumeClaims' storage requests against min/max. A violation is 403 Forbidden
with upstream's wording.

Also home of the resource.Quantity arithmetic and canonical formatting that the quota
plugin shares.
"""
from __future__ import annotations

import copy
import logging
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from kubesmith.api.registry import REGISTRY
from kubesmith.api.validation import parse_quantity
from kubesmith.apiserver import admission, errors

if TYPE_CHECKING:
    from kubesmith.apiserver.server import APIServer

log = logging.getLogger(__name__)

Obj = dict[str, Any]
ANNOTATION = "kubernetes.io/limit-ranger"
_BINARY = (("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10))
_DECIMAL = ((18, "E"), (15, "P"), (12, "T"), (9, "G"), (6, "M"), (3, "k"), (0, ""),
            (-3, "m"), (-6, "u"), (-9, "n"))


# --- quantities -------------------------------------------------------------------------

class Quantity:
    """A parsed resource.Quantity: its exact value and the format it prints back in."""
    __slots__ = ("value", "binary")

    def __init__(self, value: Decimal, binary: bool = False):
        self.value = value
        self.binary = binary

    @classmethod
    def parse(cls, raw: Any) -> "Quantity | None":
        value = parse_quantity(raw)
        if value is None:
            return None
        binary = isinstance(raw, str) and raw.strip()[-2:] in {s for s, _ in _BINARY}
        return cls(value, binary)

    def __add__(self, other: "Quantity") -> "Quantity":
        # Like Quantity.Add: a zero takes the other's format.
        binary = other.binary if self.value == 0 else self.binary
        return Quantity(self.value + other.value, binary)

    def __sub__(self, other: "Quantity") -> "Quantity":
        return Quantity(self.value - other.value, self.binary)

    def __str__(self) -> str:
        return canonical(self.value, self.binary)


def canonical(value: Decimal, binary: bool = False) -> str:
    """Quantity.String(): the largest suffix that keeps an integer mantissa."""
    # Upstream rounds up to nano units.
    nanos = (value * Decimal(10) ** 9).to_integral_value(rounding="ROUND_CEILING")
    value = nanos / Decimal(10) ** 9
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    magnitude = -value if value < 0 else value
    if binary and magnitude >= 1024 and magnitude == magnitude.to_integral_value():
        whole = int(magnitude)
        for suffix, shift in _BINARY:
            if whole % (1 << shift) == 0:
                return f"{sign}{whole >> shift}{suffix}"
    for exponent, suffix in _DECIMAL:
        scaled = magnitude / (Decimal(10) ** exponent)
        if scaled == scaled.to_integral_value():
            return f"{sign}{int(scaled)}{suffix}"
    return f"{sign}{int(magnitude * Decimal(10) ** 9)}n"


def _resources(container: Obj) -> tuple[Obj, Obj]:
    resources = container.get("resources")
    if not isinstance(resources, dict):
        return {}, {}
    requests = resources.get("requests") if isinstance(resources.get("requests"), dict) else {}
    limits = resources.get("limits") if isinstance(resources.get("limits"), dict) else {}
    return requests, limits


def _quantities(values: Any) -> dict[str, Quantity]:
    result = {}
    for key, raw in (values or {}).items() if isinstance(values, dict) else ():
        parsed = Quantity.parse(raw)
        if parsed is not None:
            result[key] = parsed
    return result


def pod_resources(spec: Obj) -> tuple[dict[str, Quantity], dict[str, Quantity]]:
    """The pod's effective requests and limits: max(sum of containers, any init container),
    plus the pod overhead. A resource missing from a container leaves the sum unset only
    for the LimitRanger's pod checks (see pod_sums)."""
    requests: dict[str, Quantity] = {}
    limits: dict[str, Quantity] = {}
    for container in spec.get("containers") or []:
        if not isinstance(container, dict):
            continue
        req, lim = _resources(container)
        for into, values in ((requests, _quantities(req)), (limits, _quantities(lim))):
            for key, value in values.items():
                into[key] = into[key] + value if key in into else value
    for container in spec.get("initContainers") or []:
        if not isinstance(container, dict):
            continue
        req, lim = _resources(container)
        for into, values in ((requests, _quantities(req)), (limits, _quantities(lim))):
            for key, value in values.items():
                if key not in into or value.value > into[key].value:
                    into[key] = value
    for key, value in _quantities(spec.get("overhead")).items():
        requests[key] = requests[key] + value if key in requests else value
        if key in limits:
            limits[key] = limits[key] + value
    return requests, limits


def _pod_sums(spec: Obj) -> tuple[dict[str, Quantity], dict[str, Quantity]]:
    """Upstream's LimitRanger pod totals: a resource counts only when every container
    names it; init containers count as max(sum, each)."""
    containers = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
    result = []
    for pick in (0, 1):
        lists = [_quantities(_resources(c)[pick]) for c in containers]
        total: dict[str, Quantity] = {}
        for key in {k for values in lists for k in values}:
            if all(key in values for values in lists):
                acc = None
                for values in lists:
                    acc = values[key] if acc is None else acc + values[key]
                total[key] = acc
        for container in spec.get("initContainers") or []:
            if isinstance(container, dict):
                for key, value in _quantities(_resources(container)[pick]).items():
                    if key not in total or value.value > total[key].value:
                        total[key] = value
        result.append(total)
    return result[0], result[1]


# --- constraints ------------------------------------------------------------------------

def _min(kind: str, name: str, enforced: Quantity, requests, limits) -> str | None:
    if name not in requests:
        return f"minimum {name} usage per {kind} is {enforced}.  No request is specified"
    if requests[name].value < enforced.value:
        return f"minimum {name} usage per {kind} is {enforced}, but request is {requests[name]}"
    if name in limits and limits[name].value < enforced.value:
        return f"minimum {name} usage per {kind} is {enforced}, but limit is {limits[name]}"
    return None


def _max(kind: str, name: str, enforced: Quantity, requests, limits) -> str | None:
    if name not in limits:
        return f"maximum {name} usage per {kind} is {enforced}.  No limit is specified"
    if limits[name].value > enforced.value:
        return f"maximum {name} usage per {kind} is {enforced}, but limit is {limits[name]}"
    if name in requests and requests[name].value > enforced.value:
        return f"maximum {name} usage per {kind} is {enforced}, but request is {requests[name]}"
    return None


def _ratio(kind: str, name: str, enforced: Quantity, requests, limits) -> str | None:
    if name not in requests or requests[name].value == 0:
        return (f"{name} max limit to request ratio per {kind} is {enforced}, but no request "
                "is specified or request is 0")
    if name not in limits or limits[name].value == 0:
        return (f"{name} max limit to request ratio per {kind} is {enforced}, but no limit "
                "is specified or limit is 0")
    # Compared at milli precision, as upstream does.
    req = (requests[name].value * 1000).to_integral_value(rounding="ROUND_CEILING")
    lim = (limits[name].value * 1000).to_integral_value(rounding="ROUND_CEILING")
    ratio = lim / req
    if ratio > enforced.value:
        return (f"{name} max limit to request ratio per {kind} is {enforced}, but provided "
                f"ratio is {float(ratio):f}")
    return None


def _check(item: Obj, kind: str, requests, limits) -> list[str]:
    problems = []
    for field, check in (("min", _min), ("max", _max), ("maxLimitRequestRatio", _ratio)):
        for name, enforced in _quantities(item.get(field)).items():
            problem = check(kind, name, enforced, requests, limits)
            if problem:
                problems.append(problem)
    return problems


def _defaults(limit_range: Obj) -> tuple[Obj, Obj]:
    requests: Obj = {}
    limits: Obj = {}
    for item in (limit_range.get("spec") or {}).get("limits") or []:
        if isinstance(item, dict) and item.get("type") == "Container":
            requests.update(item.get("defaultRequest") or {})
            limits.update(item.get("default") or {})
    return requests, limits


def default_pod(limit_range: Obj, pod: Obj) -> None:
    default_requests, default_limits = _defaults(limit_range)
    if not default_requests and not default_limits:
        return
    spec = pod.get("spec") or {}
    notes = []
    for key, label in (("containers", "container"), ("initContainers", "init container")):
        for container in spec.get(key) or []:
            if not isinstance(container, dict):
                continue
            resources = container.get("resources")
            if not isinstance(resources, dict):
                resources = container["resources"] = {}
            set_limits, set_requests = [], []
            for field, defaults, changed in (("limits", default_limits, set_limits),
                                             ("requests", default_requests, set_requests)):
                values = resources.get(field)
                if not isinstance(values, dict):
                    values = None
                for name, value in defaults.items():
                    if values is None or name not in values:
                        if values is None:
                            values = resources[field] = {}
                        values[name] = copy.deepcopy(value)
                        changed.append(name)
            if set_requests:
                notes.append(f"{', '.join(sorted(set_requests))} request for {label} "
                             f"{container.get('name', '')}")
            if set_limits:
                notes.append(f"{', '.join(sorted(set_limits))} limit for {label} "
                             f"{container.get('name', '')}")
    if notes:
        meta = pod.setdefault("metadata", {})
        annotations = meta.get("annotations")
        if not isinstance(annotations, dict):
            annotations = meta["annotations"] = {}
        annotations[ANNOTATION] = "LimitRanger plugin set: " + "; ".join(notes)


def check_pod(limit_range: Obj, pod: Obj) -> list[str]:
    problems: list[str] = []
    spec = pod.get("spec") or {}
    for item in (limit_range.get("spec") or {}).get("limits") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "Container":
            for key in ("containers", "initContainers"):
                for container in spec.get(key) or []:
                    if isinstance(container, dict):
                        req, lim = _resources(container)
                        problems += _check(item, "Container", _quantities(req),
                                           _quantities(lim))
        elif item.get("type") == "Pod":
            requests, limits = _pod_sums(spec)
            problems += _check(item, "Pod", requests, limits)
    return problems


def check_claim(limit_range: Obj, claim: Obj) -> list[str]:
    problems: list[str] = []
    resources = (claim.get("spec") or {}).get("resources") or {}
    requests = _quantities(resources.get("requests"))
    for item in (limit_range.get("spec") or {}).get("limits") or []:
        if not isinstance(item, dict) or item.get("type") != "PersistentVolumeClaim":
            continue
        for name, enforced in _quantities(item.get("min")).items():
            if name not in requests:
                problems.append(f"minimum {name} usage per PersistentVolumeClaim is "
                                f"{enforced}.  No request is specified")
            elif requests[name].value < enforced.value:
                problems.append(f"minimum {name} usage per PersistentVolumeClaim is "
                                f"{enforced}, but request is {requests[name]}")
        for name, enforced in _quantities(item.get("max")).items():
            if name not in requests:
                problems.append(f"maximum {name} usage per PersistentVolumeClaim is "
                                f"{enforced}.  No request is specified")
            elif requests[name].value > enforced.value:
                problems.append(f"maximum {name} usage per PersistentVolumeClaim is "
                                f"{enforced}, but request is {requests[name]}")
    return problems


def aggregate(problems: list[str]) -> str:
    """utilerrors.NewAggregate's text."""
    return problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"


# --- the plugin -------------------------------------------------------------------------

async def namespace_objects(srv: "APIServer", plural: str, namespace: str) -> list[Obj]:
    """The namespace's objects of a core kind: the watch cache once synced, else etcd."""
    rt = REGISTRY.get("", "v1", plural)
    if rt is None:
        return []
    prefix = rt.storage_prefix(namespace)
    if srv.options.watch_cache:
        cache = srv.cache_for(rt)
        if cache.ready.is_set():
            return cache.snapshot(prefix)
    storage = srv.storage.for_type(rt)
    result = await srv.store.range(prefix)
    return [storage.decode(kv) for kv in result.kvs]


class LimitRanger(admission.Plugin):
    name = "LimitRanger"

    def __init__(self, srv: "APIServer"):
        self.srv = srv

    @staticmethod
    def _applies(request: admission.Request) -> str | None:
        rt = request.rt
        if rt.group != "" or request.subresource or request.obj is None:
            return None
        if rt.plural == "pods" and request.operation == admission.CREATE:
            return "pods"
        if rt.plural == "persistentvolumeclaims" and \
                request.operation in (admission.CREATE, admission.UPDATE):
            return "claims"
        return None

    async def admit(self, request: admission.Request) -> None:
        if self._applies(request) != "pods":
            return
        for limit_range in await namespace_objects(self.srv, "limitranges", request.namespace):
            default_pod(limit_range, request.obj)

    async def validate(self, request: admission.Request) -> None:
        what = self._applies(request)
        if what is None:
            return
        problems: list[str] = []
        for limit_range in await namespace_objects(self.srv, "limitranges", request.namespace):
            if what == "pods":
                problems += check_pod(limit_range, request.obj)
            else:
                problems += check_claim(limit_range, request.obj)
        if problems:
            meta = request.obj.get("metadata") or {}
            name = request.name or meta.get("name") or meta.get("generateName") or "Unknown"
            raise errors.forbidden(request.rt.plural, "", name, aggregate(problems))
