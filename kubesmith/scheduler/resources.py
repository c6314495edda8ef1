"""Requests and allocatable as plain integers, like upstream's framework.Resource.

CPU is in millicores, memory and ephemeral-storage in bytes (rounded up, as
resource.Quantity's Value() and MilliValue() do); extended resources ("example.com/gpu",
"hugepages-2Mi") are kept by name.
"""
from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Mapping

from kubesmith.api.validation import parse_quantity

CPU, MEMORY, EPHEMERAL, PODS = "cpu", "memory", "ephemeral-storage", "pods"
# Upstream's defaults for containers without requests, used only when scoring, so that
# many request-less pods do not all land on one node.
DEFAULT_MILLI_CPU = 100
DEFAULT_MEMORY = 200 * 1024 * 1024


def quantity_value(raw: Any) -> int:
    """resource.Quantity.Value(): rounded up to an integer (0 when malformed)."""
    number = parse_quantity(raw)
    return int(math.ceil(number)) if number is not None else 0


def quantity_milli(raw: Any) -> int:
    """resource.Quantity.MilliValue(): thousandths, rounded up."""
    number = parse_quantity(raw)
    return int(math.ceil(number * Decimal(1000))) if number is not None else 0


def is_scalar_resource(name: str) -> bool:
    """Extended and hugepages resources, which the scheduler counts like cpu/memory."""
    if name.startswith("hugepages-") or name.startswith("attachable-volumes-"):
        return True
    return "/" in name and not name.startswith("kubernetes.io/")


class Resources:
    """Amounts of the resources the scheduler fits; mutable, for running totals."""

    __slots__ = ("milli_cpu", "memory", "ephemeral", "scalars")

    def __init__(self, milli_cpu: int = 0, memory: int = 0, ephemeral: int = 0,
                 scalars: dict[str, int] | None = None):
        self.milli_cpu = milli_cpu
        self.memory = memory
        self.ephemeral = ephemeral
        self.scalars = scalars or {}

    def __repr__(self) -> str:
        return (f"Resources(cpu={self.milli_cpu}m, memory={self.memory}, "
                f"ephemeral={self.ephemeral}, scalars={self.scalars})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Resources) and (
            self.milli_cpu, self.memory, self.ephemeral, self.scalars) == (
            other.milli_cpu, other.memory, other.ephemeral, other.scalars)

    @classmethod
    def from_list(cls, values: Mapping[str, Any] | None) -> "Resources":
        """From a ResourceList ({"cpu": "500m", "memory": "1Gi", ...})."""
        res = cls()
        for name, raw in (values or {}).items():
            if name == CPU:
                res.milli_cpu += quantity_milli(raw)
            elif name == MEMORY:
                res.memory += quantity_value(raw)
            elif name == EPHEMERAL:
                res.ephemeral += quantity_value(raw)
            elif is_scalar_resource(name):
                res.scalars[name] = res.scalars.get(name, 0) + quantity_value(raw)
        return res

    def copy(self) -> "Resources":
        return Resources(self.milli_cpu, self.memory, self.ephemeral, dict(self.scalars))

    def add(self, other: "Resources", sign: int = 1) -> None:
        self.milli_cpu += sign * other.milli_cpu
        self.memory += sign * other.memory
        self.ephemeral += sign * other.ephemeral
        for name, value in other.scalars.items():
            self.scalars[name] = self.scalars.get(name, 0) + sign * value

    def set_max(self, other: "Resources") -> None:
        self.milli_cpu = max(self.milli_cpu, other.milli_cpu)
        self.memory = max(self.memory, other.memory)
        self.ephemeral = max(self.ephemeral, other.ephemeral)
        for name, value in other.scalars.items():
            self.scalars[name] = max(self.scalars.get(name, 0), value)


def _requests(container: Mapping[str, Any]) -> Mapping[str, Any]:
    return (container.get("resources") or {}).get("requests") or {}


def pod_requests(spec: Mapping[str, Any]) -> Resources:
    """What the pod asks of a node: the sum over its containers, or more if an init
    container needs more (init containers run one at a time, restartable "sidecar"
    init containers keep running beside what follows), plus spec.overhead."""
    total = Resources()
    for container in spec.get("containers") or ():
        total.add(Resources.from_list(_requests(container)))
    sidecars = Resources()
    init_peak = Resources()
    for container in spec.get("initContainers") or ():
        requests = Resources.from_list(_requests(container))
        if container.get("restartPolicy") == "Always":
            sidecars.add(requests)
            init_peak.set_max(sidecars)
        else:
            running = sidecars.copy()
            running.add(requests)
            init_peak.set_max(running)
    total.add(sidecars)
    total.set_max(init_peak)
    if spec.get("overhead"):
        total.add(Resources.from_list(spec["overhead"]))
    return total


def pod_non_zero_requests(spec: Mapping[str, Any]) -> tuple[int, int]:
    """(milli-CPU, memory) for scoring, with upstream's defaults for containers that
    request none."""
    cpu = memory = 0
    for container in spec.get("containers") or ():
        requests = _requests(container)
        cpu += quantity_milli(requests[CPU]) if CPU in requests else DEFAULT_MILLI_CPU
        memory += quantity_value(requests[MEMORY]) if MEMORY in requests else DEFAULT_MEMORY
    init_cpu = init_memory = 0
    for container in spec.get("initContainers") or ():
        requests = _requests(container)
        init_cpu = max(init_cpu, quantity_milli(requests[CPU]) if CPU in requests
                       else DEFAULT_MILLI_CPU)
        init_memory = max(init_memory, quantity_value(requests[MEMORY])
                          if MEMORY in requests else DEFAULT_MEMORY)
    overhead = spec.get("overhead") or {}
    cpu = max(cpu, init_cpu) + (quantity_milli(overhead[CPU]) if CPU in overhead else 0)
    memory = max(memory, init_memory) + (quantity_value(overhead[MEMORY])
                                         if MEMORY in overhead else 0)
    return cpu, memory


def node_allocatable(node: Mapping[str, Any]) -> tuple[Resources, int]:
    """(allocatable resources, allowed pod count) of a node: status.allocatable, or
    status.capacity when allocatable is not reported."""
    status = node.get("status") or {}
    values = status.get("allocatable") or status.get("capacity") or {}
    return Resources.from_list(values), quantity_value(values.get(PODS, 0))
