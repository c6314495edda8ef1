"""kube-controller-manager: the control loops that make the API's objects happen.

Every controller is a class registered here by name (the names upstream's --controllers
flag uses: "replicaset", "deployment", "namespace", "garbagecollector", ...), built from
one ControllerContext (context.py) and run by the manager (manager.py) while this
process holds the leader Lease. Controllers share the process's informers and API client
from kubesmith.client; none lists, watches or opens a connection of its own.
"""
from __future__ import annotations

from typing import Callable, TypeVar

CONTROLLERS: dict[str, type] = {}
# Controllers upstream leaves off unless named in --controllers ("*" does not turn them on).
DISABLED_BY_DEFAULT: set[str] = set()

T = TypeVar("T", bound=type)


def register(name: str, *, enabled_by_default: bool = True) -> Callable[[T], T]:
    def add(cls: T) -> T:
        if name in CONTROLLERS:
            raise ValueError(f"controller {name!r} registered twice")
        cls.name = name
        CONTROLLERS[name] = cls
        if not enabled_by_default:
            DISABLED_BY_DEFAULT.add(name)
        return cls
    return add
