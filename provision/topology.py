"""The cluster's machines and the roles they play, as read from a pyinfra inventory.

Every host is a node (it runs kubelet and kube-proxy); masters also run the control
plane, and the `etcd` group runs etcd members.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MASTERS = "masters"
WORKERS = "workers"
ETCD = "etcd"


@dataclass(frozen=True)
class Machine:
    name: str
    address: str
    groups: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_master(self) -> bool:
        return MASTERS in self.groups

    @property
    def is_etcd(self) -> bool:
        return ETCD in self.groups


@dataclass(frozen=True)
class Topology:
    machines: tuple[Machine, ...]

    @property
    def masters(self) -> tuple[Machine, ...]:
        return tuple(m for m in self.machines if m.is_master)

    @property
    def workers(self) -> tuple[Machine, ...]:
        return tuple(m for m in self.machines if WORKERS in m.groups)

    @property
    def etcd_members(self) -> tuple[Machine, ...]:
        return tuple(m for m in self.machines if m.is_etcd)

    @property
    def nodes(self) -> tuple[Machine, ...]:
        return self.machines

    def get(self, name: str) -> Machine:
        for machine in self.machines:
            if machine.name == name:
                return machine
        raise KeyError(name)
