"""Everything the deploy prepares on the operator's machine, once per run.

Validation, then the PKI and kubeconfigs, then the container images every node imports
(provision/images.py, into <state>/images/, rebuilt only when their inputs change); the
wheelhouse is built per host platform on first demand (`wheelhouse_for`).

deploy.py is executed once per host; the work here (validating settings against the
whole inventory, generating the PKI and kubeconfigs, building wheelhouses) must happen
once, before any host is changed, and its result is shared by every host's run.
pyinfra runs the per-host passes as concurrent greenlets, which may switch while a
wheel build waits on pip, so the one-time work is done under a greenlet-aware lock.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from gevent.lock import RLock

from provision import encryption, images, pki, settings as settings_mod, wheelhouse
from provision.settings import ClusterSettings, SettingsError
from provision.topology import Machine, Topology


@dataclass(frozen=True)
class InventoryHost:
    """The little the preparation needs from a pyinfra host."""
    name: str
    groups: frozenset[str]
    data: Mapping[str, Any]


@dataclass(frozen=True)
class ClusterPlan:
    settings: ClusterSettings
    topology: Topology
    pki: Any   # provision.pki.PKIResult
    # Image ref -> OCI tarball in the state folder, imported into every node's containerd.
    images: Mapping[str, Path] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    def machine(self, name: str) -> Machine:
        return self.topology.get(name)

    def host_files(self, name: str) -> list[pki.HostFile]:
        machine = self.machine(name)
        files = pki.host_files(self.state_dir, machine)
        if machine.is_master:
            files.append(pki.HostFile(encryption.REMOTE_PATH,
                                      self.state_dir / encryption.CONFIG_NAME, secret=True))
        return files


IMAGES_DIR = "images"   # under the cluster state folder

_plan: ClusterPlan | None = None
_lock = RLock()
_wheelhouses: dict[wheelhouse.Platform, wheelhouse.Wheelhouse] = {}


def topology_from(hosts: Iterable[InventoryHost]) -> Topology:
    machines = []
    for host in hosts:
        address = host.data.get("address") or host.data.get("ssh_hostname") or host.name
        machines.append(Machine(name=host.name, address=str(address), groups=host.groups))
    return Topology(tuple(machines))


def settings_from(hosts: list[InventoryHost]) -> ClusterSettings:
    """The settings every host agrees on; a host-level override of a cluster setting is an error."""
    if not hosts:
        raise SettingsError(["the inventory has no hosts"])
    values = {name: hosts[0].data.get(name, default)
              for name, (default, _) in settings_mod.SETTINGS.items()}
    problems = []
    for host in hosts[1:]:
        for name in settings_mod.SETTINGS:
            other = host.data.get(name, settings_mod.SETTINGS[name][0])
            if other != values[name]:
                problems.append(f"{name} is {values[name]!r} on {hosts[0].name} but {other!r} "
                                f"on {host.name}; cluster settings must be the same on every host")
    if problems:
        raise SettingsError(problems)
    return settings_mod.load_settings(values)


def prepare(hosts: list[InventoryHost], group_data_file: Path | None = None) -> ClusterPlan:
    """Validate settings and inventory, then generate the PKI and kubeconfigs (add-only)."""
    with _lock:
        return _prepare(hosts, group_data_file)


def _prepare(hosts: list[InventoryHost], group_data_file: Path | None) -> ClusterPlan:
    global _plan
    if _plan is not None:
        return _plan
    if group_data_file is not None and group_data_file.exists():
        settings_mod.check_names(settings_mod.read_group_data(group_data_file))
    cluster_settings = settings_from(hosts)
    topology = topology_from(hosts)
    settings_mod.validate_topology(cluster_settings, topology)
    result = pki.ensure_pki(cluster_settings.state_dir, cluster_settings, topology)
    for line in result.summary().splitlines():
        print(f"--> PKI: {line}", file=sys.stderr)
    path, created = encryption.ensure_encryption_config(cluster_settings.state_dir)
    if created:
        print(f"--> created {path} (encryption of secrets at rest)", file=sys.stderr)
    built = images.build_images(cluster_settings.state_dir / IMAGES_DIR)
    _plan = ClusterPlan(settings=cluster_settings, topology=topology, pki=result, images=built)
    return _plan


def wheelhouse_for(plan: ClusterPlan, platform: wheelhouse.Platform) -> wheelhouse.Wheelhouse:
    with _lock:
        if platform not in _wheelhouses:
            _wheelhouses[platform] = wheelhouse.ensure_wheelhouse(plan.state_dir, platform)
        return _wheelhouses[platform]
