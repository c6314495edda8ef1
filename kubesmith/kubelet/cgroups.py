"""Pod cgroups on cgroup v1 with the cgroupfs driver, as upstream's pod container
manager keeps them.

The runtime makes each container's cgroup under the parent the kubelet names
(<cgroupRoot>/kubepods/<qos>/pod<uid>); the kubelet makes that pod cgroup first, with
the pod's own limits (the sum of its containers' cpu shares, cpu quota and memory
limit when every container has one, podPidsLimit), and removes it when the pod is gone:
runc removes only the containers' own cgroups.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from kubesmith.kubelet import runtime as cri_config
from kubesmith.scheduler.resources import quantity_milli, quantity_value

log = logging.getLogger(__name__)

Obj = dict[str, Any]
CGROUP_MOUNT = "/sys/fs/cgroup"
# The v1 hierarchies a pod cgroup is made in (each one the runtime uses too).
SUBSYSTEMS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio")


def _hierarchies() -> list[str]:
    return [os.path.join(CGROUP_MOUNT, name) for name in SUBSYSTEMS
            if os.path.isdir(os.path.join(CGROUP_MOUNT, name))]


def paths(cgroup: str) -> list[str]:
    """The folders of cgroup `cgroup` ("/kubepods/burstable/pod<uid>") in every
    hierarchy."""
    relative = cgroup.strip("/")
    return [os.path.join(root, relative) for root in _hierarchies()]


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w") as out:
            out.write(value)
    except OSError as exc:
        log.debug("cgroup %s = %s: %s", path, value, exc)


def _init_cpuset(folder: str) -> None:
    """A new cpuset cgroup has no cpus or mems; it takes its parent's."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        target = os.path.join(folder, name)
        try:
            with open(target) as source:
                if source.read().strip():
                    continue
            with open(os.path.join(os.path.dirname(folder), name)) as source:
                value = source.read().strip()
        except OSError:
            continue
        _write(target, value)


def pod_limits(pod: Obj, pids_limit: int = -1) -> dict[str, str]:
    """The pod cgroup's settings (file name -> value)."""
    containers = (pod.get("spec") or {}).get("containers") or []
    milli = 0
    quota_milli = 0
    memory = 0
    all_cpu_limited = all_memory_limited = bool(containers)
    for container in containers:
        resources = container.get("resources") or {}
        limits = resources.get("limits") or {}
        requests = dict(limits, **(resources.get("requests") or {}))
        milli += quantity_milli(requests.get("cpu", 0))
        if limits.get("cpu"):
            quota_milli += quantity_milli(limits["cpu"])
        else:
            all_cpu_limited = False
        if limits.get("memory"):
            memory += quantity_value(limits["memory"])
        else:
            all_memory_limited = False
    settings = {"cpu.shares": str(cri_config.milli_cpu_to_shares(milli))}
    if all_cpu_limited and quota_milli:
        settings["cpu.cfs_period_us"] = str(cri_config.QUOTA_PERIOD)
        settings["cpu.cfs_quota_us"] = str(cri_config.milli_cpu_to_quota(quota_milli))
    if all_memory_limited and memory:
        settings["memory.limit_in_bytes"] = str(memory)
    if pids_limit and pids_limit > 0:
        settings["pids.max"] = str(pids_limit)
    return settings


def ensure(cgroup: str, settings: dict[str, str] | None = None) -> None:
    """Make cgroup `cgroup` (and its parents) in every hierarchy and apply `settings`
    where the file exists."""
    for folder in paths(cgroup):
        if not os.path.isdir(folder):
            # One level at a time, so each new cpuset level gets its parent's cpus.
            parts = []
            head = folder
            while not os.path.isdir(head):
                parts.append(head)
                head = os.path.dirname(head)
            for level in reversed(parts):
                try:
                    os.mkdir(level)
                except FileExistsError:
                    pass
                except OSError as exc:
                    log.debug("cgroup %s: %s", level, exc)
                    break
                if "/cpuset/" in level + "/":
                    _init_cpuset(level)
        for name, value in (settings or {}).items():
            target = os.path.join(folder, name)
            if os.path.exists(target):
                _write(target, value)


def remove(cgroup: str) -> bool:
    """Remove cgroup `cgroup` and whatever empty cgroups are below it; true when it is
    gone from every hierarchy (a cgroup with processes left stays)."""
    gone = True
    for folder in paths(cgroup):
        if not os.path.isdir(folder):
            continue
        for current, folders, _ in os.walk(folder, topdown=False):
            try:
                os.rmdir(current)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.debug("cgroup %s stays: %s", current, exc)
                gone = False
    return gone
