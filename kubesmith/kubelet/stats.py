"""The Summary API (/stats/summary): node and pod resource usage, in upstream's shape.

The node's figures come from the host itself: CPU from /proc/stat (usageNanoCores is
the rate since the previous reading), memory from /proc/meminfo and /proc/vmstat, the
kubelet's filesystem (root-dir) from statvfs, the image filesystem from the runtime's
ImageFsInfo, network from /proc/net/dev, process limits from /proc. The pods' come
from the runtime's container stats (ListContainerStats), one entry per running
container, summed per pod, plus the size of each container's logs and of the pod's
emptyDir volumes (measured at most once a minute per pod, as upstream's volume stats
are cached, since walking a volume costs I/O).

    provider = StatsProvider(runtime, "node-1", root_dir="/var/lib/kubelet")
    summary = await provider.summary()     # {"node": {...}, "pods": [...]}
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from typing import Any

from kubesmith.cri import api

log = logging.getLogger(__name__)

Obj = dict[str, Any]

POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"

DEFAULT_ROOT_DIR = "/var/lib/kubelet"
DEFAULT_POD_LOG_DIR = "/var/log/pods"
VOLUME_STATS_TTL = 60.0      # upstream measures volumes once a minute
NANOS = 1_000_000_000


def rfc3339(epoch_ns: int | float | None = None) -> str:
    """A time as the Summary API prints it (UTC, seconds)."""
    seconds = time.time() if epoch_ns is None else epoch_ns / NANOS
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- host readings ----------------------------------------------------------------------

def read_cpu(proc: str = "/proc") -> int:
    """Cumulative CPU time of the whole host in core-nanoseconds (busy time, not idle or
    iowait)."""
    with open(os.path.join(proc, "stat")) as stat:
        fields = stat.readline().split()
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    # guest time is already counted in user time
    busy = sum(values[:8]) - idle
    ticks = os.sysconf("SC_CLK_TCK")
    return busy * NANOS // ticks


def read_boot_time(proc: str = "/proc") -> int | None:
    with open(os.path.join(proc, "stat")) as stat:
        for line in stat:
            if line.startswith("btime "):
                return int(line.split()[1])
    return None


def _keyed_numbers(path: str, scale: int = 1) -> dict[str, int]:
    found = {}
    with open(path) as source:
        for line in source:
            parts = line.replace(":", " ").split()
            if len(parts) >= 2 and parts[1].isdigit():
                found[parts[0]] = int(parts[1]) * scale
    return found


def read_memory(proc: str = "/proc") -> Obj:
    """The node's memory figures as the Summary API names them (bytes)."""
    info = _keyed_numbers(os.path.join(proc, "meminfo"), 1024)
    total = info.get("MemTotal", 0)
    usage = total - info.get("MemFree", 0)
    working_set = max(0, usage - info.get("Inactive(file)", 0))
    memory = {"availableBytes": max(0, total - working_set), "usageBytes": usage,
              "workingSetBytes": working_set,
              "rssBytes": info.get("Active(anon)", 0) + info.get("Inactive(anon)", 0)}
    try:
        vmstat = _keyed_numbers(os.path.join(proc, "vmstat"))
        memory["pageFaults"] = vmstat.get("pgfault", 0)
        memory["majorPageFaults"] = vmstat.get("pgmajfault", 0)
    except OSError:
        pass
    return memory


def read_network(proc: str = "/proc") -> list[Obj]:
    """Per-interface counters (loopback left out, as upstream)."""
    interfaces = []
    with open(os.path.join(proc, "net", "dev")) as dev:
        for line in list(dev)[2:]:
            name, _, rest = line.partition(":")
            name = name.strip()
            values = rest.split()
            if name == "lo" or len(values) < 11:
                continue
            interfaces.append({"name": name, "rxBytes": int(values[0]),
                               "rxErrors": int(values[2]), "txBytes": int(values[8]),
                               "txErrors": int(values[10])})
    return interfaces


def default_interface(proc: str = "/proc") -> str | None:
    """The interface of the default route (the one the Summary API names first)."""
    try:
        with open(os.path.join(proc, "net", "route")) as routes:
            for line in list(routes)[1:]:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "00000000":
                    return fields[0]
    except OSError:
        pass
    return None


def filesystem(path: str) -> Obj:
    """Capacity and use of the filesystem holding `path`."""
    st = os.statvfs(path)
    capacity = st.f_blocks * st.f_frsize
    return {"availableBytes": st.f_bavail * st.f_frsize, "capacityBytes": capacity,
            "usedBytes": (st.f_blocks - st.f_bfree) * st.f_frsize,
            "inodesFree": st.f_ffree, "inodes": st.f_files,
            "inodesUsed": st.f_files - st.f_ffree}


def disk_usage(path: str) -> tuple[int, int]:
    """(bytes, inodes) used under `path`, symlinks not followed; 0s when absent."""
    used = inodes = 0
    for folder, dirs, files in os.walk(path, onerror=lambda _: None):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            inodes += 1
            used += st.st_blocks * 512
    return used, inodes


def read_rlimit(proc: str = "/proc") -> Obj:
    with open(os.path.join(proc, "sys", "kernel", "pid_max")) as source:
        maxpid = int(source.read().strip())
    with open(os.path.join(proc, "loadavg")) as source:
        running_total = source.read().split()[3]     # "running/total" tasks
    return {"maxpid": maxpid, "curproc": int(running_total.split("/")[1])}


def read_self(proc: str = "/proc") -> tuple[int, int]:
    """(CPU core-nanoseconds, resident bytes) of this process: the kubelet's own use."""
    with open(os.path.join(proc, "self", "stat")) as source:
        fields = source.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) * NANOS // ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def _value(wrapper) -> int | None:
    """A CRI UInt64Value's value, or None when the runtime left it out."""
    return wrapper.value if wrapper is not None and wrapper.ByteSize() else None


class _Rate:
    """usageNanoCores from two cumulative readings, remembered per key."""

    def __init__(self):
        self.last: dict[str, tuple[int, int]] = {}    # key -> (time ns, core-ns)

    def rate(self, key: str, at_ns: int, cumulative: int) -> int | None:
        previous = self.last.get(key)
        self.last[key] = (at_ns, cumulative)
        if previous is None or at_ns <= previous[0] or cumulative < previous[1]:
            return None
        return (cumulative - previous[1]) * NANOS // (at_ns - previous[0])

    def keep_only(self, keys: set[str]) -> None:
        for key in list(self.last):
            if key not in keys and not key.startswith("node"):
                del self.last[key]


class StatsProvider:
    """Builds Summary API answers from the host and the runtime."""

    def __init__(self, runtime, node_name: str, *, root_dir: str = DEFAULT_ROOT_DIR,
                 pod_log_dir: str = DEFAULT_POD_LOG_DIR, proc: str = "/proc"):
        self.runtime = runtime
        self.node_name = node_name
        self.root_dir = root_dir
        self.pod_log_dir = pod_log_dir
        self.proc = proc
        self.rates = _Rate()
        self._volume_cache: dict[str, tuple[float, list[Obj]]] = {}
        self._kubelet_start = rfc3339()
        # A first reading now, so the first summary already has a CPU rate.
        self._node_cpu()

    def _node_cpu(self) -> Obj:
        now = time.time_ns()
        cumulative = read_cpu(self.proc)
        cpu = {"time": rfc3339(now), "usageCoreNanoSeconds": cumulative}
        rate = self.rates.rate("node", now, cumulative)
        if rate is not None:
            cpu["usageNanoCores"] = rate
        return cpu

    async def summary(self, only_cpu_and_memory: bool = False) -> Obj:
        node = await asyncio.to_thread(self._node, only_cpu_and_memory)
        if not only_cpu_and_memory:
            node["runtime"] = {"imageFs": await self._image_fs()}
        pods = await self._pods(only_cpu_and_memory)
        return {"node": node, "pods": pods}

    def _node(self, only_cpu_and_memory: bool) -> Obj:
        now = rfc3339()
        node: Obj = {"nodeName": self.node_name}
        boot = read_boot_time(self.proc)
        if boot:
            node["startTime"] = rfc3339(boot * NANOS)
        node["cpu"] = self._node_cpu()
        node["memory"] = dict(read_memory(self.proc), time=now)
        node["systemContainers"] = [self._kubelet_container(now)]
        if only_cpu_and_memory:
            return node
        interfaces = read_network(self.proc)
        if interfaces:
            default = default_interface(self.proc)
            first = next((i for i in interfaces if i["name"] == default), interfaces[0])
            node["network"] = dict(first, time=now, interfaces=interfaces)
        if os.path.isdir(self.root_dir):
            node["fs"] = dict(filesystem(self.root_dir), time=now)
        try:
            node["rlimit"] = dict(read_rlimit(self.proc), time=now)
        except (OSError, ValueError, IndexError):
            pass
        return node

    def _kubelet_container(self, now: str) -> Obj:
        cpu_ns, rss = read_self(self.proc)
        at = time.time_ns()
        cpu = {"time": now, "usageCoreNanoSeconds": cpu_ns}
        rate = self.rates.rate("node/kubelet", at, cpu_ns)
        if rate is not None:
            cpu["usageNanoCores"] = rate
        return {"name": "kubelet", "startTime": self._kubelet_start, "cpu": cpu,
                "memory": {"time": now, "usageBytes": rss, "workingSetBytes": rss,
                           "rssBytes": rss}}

    async def _image_fs(self) -> Obj:
        try:
            info = await self.runtime.image_fs_info()
        except Exception as exc:
            log.debug("ImageFsInfo failed: %s", exc)
            return {}
        if not info.image_filesystems:
            return {}
        usage = info.image_filesystems[0]
        image_fs: Obj = {"time": rfc3339(usage.timestamp or None)}
        mountpoint = usage.fs_id.mountpoint if usage.HasField("fs_id") else ""
        if mountpoint and os.path.exists(mountpoint):
            image_fs.update(await asyncio.to_thread(filesystem, mountpoint))
        used = _value(usage.used_bytes)
        if used is not None:
            image_fs["usedBytes"] = used
        inodes = _value(usage.inodes_used)
        if inodes is not None:
            image_fs["inodesUsed"] = inodes
        return image_fs

    async def _pods(self, only_cpu_and_memory: bool) -> list[Obj]:
        sandboxes = await self.runtime.list_pod_sandbox(api.PodSandboxFilter(
            state=api.PodSandboxStateValue(state=api.SANDBOX_READY)))
        running = {c.id: c for c in await self.runtime.list_containers(api.ContainerFilter(
            state=api.ContainerStateValue(state=api.CONTAINER_RUNNING)))}
        stats = [s for s in await self.runtime.list_container_stats()
                 if s.attributes.id in running]
        by_uid: dict[str, list] = {}
        for stat in stats:
            by_uid.setdefault(stat.attributes.labels.get(POD_UID, ""), []).append(stat)
        pods = []
        seen_keys: set[str] = set()
        for sandbox in sandboxes:
            meta = sandbox.metadata
            uid = meta.uid or sandbox.labels.get(POD_UID, "")
            pod: Obj = {"podRef": {"name": meta.name, "namespace": meta.namespace,
                                   "uid": uid},
                        "startTime": rfc3339(sandbox.created_at or None)}
            containers = []
            for stat in by_uid.get(uid, []):
                seen_keys.add(stat.attributes.id)
                entry = self._container(stat, only_cpu_and_memory, meta, uid)
                created = running[stat.attributes.id].created_at
                if created:
                    entry["startTime"] = rfc3339(created)
                containers.append(entry)
            pod["containers"] = containers
            pod["cpu"] = _sum(containers, "cpu", ("usageNanoCores", "usageCoreNanoSeconds"))
            pod["memory"] = _sum(containers, "memory", (
                "usageBytes", "workingSetBytes", "rssBytes", "pageFaults",
                "majorPageFaults"))
            if not only_cpu_and_memory:
                volumes = await self._volumes(uid)
                if volumes:
                    pod["volume"] = volumes
                pod["ephemeral-storage"] = self._ephemeral(containers, volumes)
            pods.append(pod)
        self.rates.keep_only(seen_keys)
        return pods

    def _container(self, stat, only_cpu_and_memory: bool, pod_meta, uid: str) -> Obj:
        name = stat.attributes.metadata.name or stat.attributes.labels.get(CONTAINER_NAME, "")
        entry: Obj = {"name": name}
        cpu_stats = stat.cpu
        if stat.HasField("cpu"):
            cpu: Obj = {"time": rfc3339(cpu_stats.timestamp or None)}
            cumulative = _value(cpu_stats.usage_core_nano_seconds)
            if cumulative is not None:
                cpu["usageCoreNanoSeconds"] = cumulative
            rate = _value(cpu_stats.usage_nano_cores)
            if not rate and cumulative is not None:
                # Runtimes that leave the rate out: computed from the last reading.
                rate = self.rates.rate(stat.attributes.id,
                                       cpu_stats.timestamp or time.time_ns(), cumulative)
            if rate is not None:
                cpu["usageNanoCores"] = rate
            entry["cpu"] = cpu
        if stat.HasField("memory"):
            memory_stats = stat.memory
            memory: Obj = {"time": rfc3339(memory_stats.timestamp or None)}
            for field, key in (("working_set_bytes", "workingSetBytes"),
                               ("available_bytes", "availableBytes"),
                               ("usage_bytes", "usageBytes"), ("rss_bytes", "rssBytes"),
                               ("page_faults", "pageFaults"),
                               ("major_page_faults", "majorPageFaults")):
                value = _value(getattr(memory_stats, field))
                if value is not None:
                    memory[key] = value
            entry["memory"] = memory
        if only_cpu_and_memory:
            return entry
        if stat.HasField("writable_layer"):
            layer = stat.writable_layer
            rootfs: Obj = {"time": rfc3339(layer.timestamp or None)}
            for field, key in (("used_bytes", "usedBytes"), ("inodes_used", "inodesUsed")):
                value = _value(getattr(layer, field))
                if value is not None:
                    rootfs[key] = value
            entry["rootfs"] = rootfs
        folder = os.path.join(self.pod_log_dir,
                              f"{pod_meta.namespace}_{pod_meta.name}_{uid}", name)
        if os.path.isdir(folder):
            used, inodes = disk_usage(folder)
            logs = {"time": rfc3339(), "usedBytes": used, "inodesUsed": inodes}
            try:
                logs.update({k: v for k, v in filesystem(folder).items()
                             if k not in ("usedBytes", "inodesUsed")})
            except OSError:
                pass
            entry["logs"] = logs
        return entry

    async def _volumes(self, uid: str) -> list[Obj]:
        """Sizes of the pod's emptyDir volumes (cached for VOLUME_STATS_TTL)."""
        cached = self._volume_cache.get(uid)
        now = time.monotonic()
        if cached and now - cached[0] < VOLUME_STATS_TTL:
            return cached[1]
        folder = os.path.join(self.root_dir, "pods", uid, "volumes", "kubernetes.io~empty-dir")

        def measure() -> list[Obj]:
            volumes = []
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                return volumes
            for name in names:
                path = os.path.join(folder, name)
                used, inodes = disk_usage(path)
                volume = {"time": rfc3339(), "name": name, "usedBytes": used,
                          "inodesUsed": inodes}
                try:
                    fs = filesystem(path)
                    volume.update(capacityBytes=fs["capacityBytes"],
                                  availableBytes=fs["availableBytes"],
                                  inodes=fs["inodes"], inodesFree=fs["inodesFree"])
                except OSError:
                    pass
                volumes.append(volume)
            return volumes

        volumes = await asyncio.to_thread(measure)
        self._volume_cache[uid] = (now, volumes)
        # Forget pods gone long ago.
        for old in [k for k, (at, _) in self._volume_cache.items()
                    if now - at > 10 * VOLUME_STATS_TTL]:
            del self._volume_cache[old]
        return volumes

    @staticmethod
    def _ephemeral(containers: list[Obj], volumes: list[Obj]) -> Obj:
        used = inodes = 0
        for container in containers:
            for key in ("rootfs", "logs"):
                part = container.get(key) or {}
                used += part.get("usedBytes", 0)
                inodes += part.get("inodesUsed", 0)
        for volume in volumes:
            used += volume.get("usedBytes", 0)
            inodes += volume.get("inodesUsed", 0)
        return {"time": rfc3339(), "usedBytes": used, "inodesUsed": inodes}


def _seconds(text: str | None) -> float | None:
    if not text:
        return None
    moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


class ResourceMetrics:
    """/metrics/resource, what metrics-server reads (upstream's resource metrics): CPU
    time and working set of the node, each pod and each container, from one summary.
    An object with collect(), so prometheus_client.generate_latest can print it."""

    def __init__(self, summary: Obj | None, error: bool = False):
        self.summary = summary or {"node": {}, "pods": []}
        self.error = error

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        node = self.summary.get("node") or {}
        node_cpu = CounterMetricFamily("node_cpu_usage_seconds", "Cumulative cpu time "
                                       "consumed by the node in core-seconds")
        node_memory = GaugeMetricFamily("node_memory_working_set_bytes", "Current working "
                                        "set of the node in bytes")
        _add(node_cpu, [], node.get("cpu"), "usageCoreNanoSeconds", 1e-9)
        _add(node_memory, [], node.get("memory"), "workingSetBytes")
        labels = ["container", "pod", "namespace"]
        container_cpu = CounterMetricFamily("container_cpu_usage_seconds", "Cumulative cpu "
                                            "time consumed by the container in core-seconds",
                                            labels=labels)
        container_memory = GaugeMetricFamily("container_memory_working_set_bytes", "Current "
                                             "working set of the container in bytes",
                                             labels=labels)
        container_start = GaugeMetricFamily("container_start_time_seconds", "Start time of "
                                            "the container since unix epoch in seconds",
                                            labels=labels)
        pod_cpu = CounterMetricFamily("pod_cpu_usage_seconds", "Cumulative cpu time consumed "
                                      "by the pod in core-seconds", labels=["pod", "namespace"])
        pod_memory = GaugeMetricFamily("pod_memory_working_set_bytes", "Current working set "
                                       "of the pod in bytes", labels=["pod", "namespace"])
        for pod in self.summary.get("pods") or []:
            ref = pod.get("podRef") or {}
            pod_labels = [ref.get("name", ""), ref.get("namespace", "")]
            _add(pod_cpu, pod_labels, pod.get("cpu"), "usageCoreNanoSeconds", 1e-9)
            _add(pod_memory, pod_labels, pod.get("memory"), "workingSetBytes")
            for container in pod.get("containers") or []:
                names = [container.get("name", "")] + pod_labels
                _add(container_cpu, names, container.get("cpu"), "usageCoreNanoSeconds",
                     1e-9)
                _add(container_memory, names, container.get("memory"), "workingSetBytes")
                start = _seconds(container.get("startTime"))
                if start is not None:
                    container_start.add_metric(names, start)
        scrape_error = GaugeMetricFamily("scrape_error", "1 if there was an error while "
                                         "getting container metrics, 0 otherwise")
        scrape_error.add_metric([], 1 if self.error else 0)
        yield from (node_cpu, node_memory, container_cpu, container_memory, container_start,
                    pod_cpu, pod_memory, scrape_error)


def _add(family, labels: list[str], part: Obj | None, key: str, scale: float = 1) -> None:
    """One sample from a summary part, stamped with the part's time (as upstream)."""
    if not part or key not in part:
        return
    family.add_metric(labels, part[key] * scale, timestamp=_seconds(part.get("time")))


def _sum(containers: list[Obj], part: str, keys: tuple[str, ...]) -> Obj:
    total: Obj = {"time": rfc3339()}
    for key in keys:
        values = [c[part][key] for c in containers if key in (c.get(part) or {})]
        if values:
            total[key] = sum(values)
    return total
