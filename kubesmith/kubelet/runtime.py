"""CRI configs from pod specs: what the kubelet asks containerd to run, as upstream's
kuberuntime builds it (pure functions, no I/O except the host files named below).

    sandbox = sandbox_config(pod, settings, attempt=0)
    config = container_config(pod, container, settings, attempt=restart_count,
                              image_ref=image_id, envs=envs, mounts=mounts)

What follows upstream here:
  * labels and annotations on sandboxes and containers (io.kubernetes.pod.*, restart
    count, termination message path, grace period, preStop handler), which is how the
    kubelet finds its own containers again after a restart;
  * QoS classes and cgroupfs parents: Guaranteed pods under <root>/kubepods/pod<uid>,
    Burstable and BestEffort under <root>/kubepods/{burstable,besteffort}/pod<uid>;
  * resources: cpu requests -> shares (1024 per core, at least 2), cpu limits -> CFS
    quota over a 100 ms period (at least 1 ms), memory limit in bytes, OOM score by QoS;
  * cluster DNS: ClusterFirst gets the cluster nameservers and the
    <ns>.svc.<domain> svc.<domain> <domain> searches before the host's, ndots:5;
  * $(VAR) references in command and args expanded from the container's environment;
  * security contexts: runAsUser/Group (container over pod), runAsNonRoot check,
    readOnlyRootFilesystem, privileged, capabilities, no_new_privs, default masked
    and read-only /proc paths.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from kubesmith.cri import api
from kubesmith.scheduler.resources import quantity_milli, quantity_value

Obj = dict[str, Any]

# Labels and annotations upstream's kubelet puts on sandboxes and containers.
POD_NAME_LABEL = "io.kubernetes.pod.name"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
POD_UID_LABEL = "io.kubernetes.pod.uid"
CONTAINER_NAME_LABEL = "io.kubernetes.container.name"
CONTAINER_TYPE_LABEL = "io.kubernetes.container.type"     # not upstream: init, app, ephemeral
KUBERNETES_MANAGED_LABEL = "io.cri-containerd.kind"       # set by containerd itself
HASH_ANNOTATION = "io.kubernetes.container.hash"
RESTART_COUNT_ANNOTATION = "io.kubernetes.container.restartCount"
TERMINATION_PATH_ANNOTATION = "io.kubernetes.container.terminationMessagePath"
TERMINATION_POLICY_ANNOTATION = "io.kubernetes.container.terminationMessagePolicy"
GRACE_PERIOD_ANNOTATION = "io.kubernetes.pod.terminationGracePeriod"
PRESTOP_ANNOTATION = "io.kubernetes.container.preStopHandler"
PORTS_ANNOTATION = "io.kubernetes.container.ports"
HOST_LOG_ROOT = "/var/log/pods"

# cgroupfs conversion constants (upstream's cm package).
MIN_SHARES = 2
SHARES_PER_CPU = 1024
QUOTA_PERIOD = 100_000          # microseconds
MIN_QUOTA = 1000
GUARANTEED_OOM_SCORE = -997
BESTEFFORT_OOM_SCORE = 1000
# The kubelet's own and the runtime's OOM score sit lower still; burstable stays in 2..999.
BURSTABLE_OOM_MIN, BURSTABLE_OOM_MAX = 2, 999
DNS_NDOTS = 5
MAX_DNS_SEARCHES = 32
MAX_DNS_SERVERS = 3

DEFAULT_MASKED_PATHS = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys",
                        "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                        "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                        "/sys/devices/virtual/powercap"]
DEFAULT_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                          "/proc/sysrq-trigger"]

_PROTOCOLS = {"TCP": api.TCP, "UDP": api.UDP, "SCTP": api.SCTP}


class ContainerConfigError(Exception):
    """A container that cannot be configured as its spec asks (reported as
    CreateContainerConfigError, as upstream)."""


@dataclass
class RuntimeSettings:
    """The node-wide inputs of config building (from the KubeletConfiguration)."""
    root_dir: str = "/var/lib/kubelet"
    cgroup_root: str = "/"
    cgroups_per_qos: bool = True
    cluster_dns: list[str] = field(default_factory=list)
    cluster_domain: str = ""
    resolv_conf: str = "/etc/resolv.conf"
    memory_capacity: int = 0        # bytes, for burstable OOM scores
    pod_pids_limit: int = -1
    node_name: str = ""
    log_root: str = HOST_LOG_ROOT


# --- small helpers --------------------------------------------------------------------

def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _spec(obj: Obj) -> Obj:
    return obj.get("spec") or {}


def pod_dir(root_dir: str, uid: str) -> str:
    return os.path.join(root_dir, "pods", uid)


def pod_log_directory(pod: Obj, log_root: str = HOST_LOG_ROOT) -> str:
    meta = _meta(pod)
    return os.path.join(log_root,
                        f"{meta.get('namespace', '')}_{meta.get('name', '')}_{meta.get('uid', '')}")


def container_log_path(name: str, restart_count: int) -> str:
    """The container's log file, relative to the sandbox's log directory."""
    return os.path.join(name, f"{restart_count}.log")


def all_containers(pod: Obj) -> list[Obj]:
    spec = _spec(pod)
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


# --- QoS and cgroups ------------------------------------------------------------------

def qos_class(pod: Obj) -> str:
    """Guaranteed, Burstable or BestEffort, computed from the spec as upstream (a
    missing request counts as its limit, as the API server's defaulting makes it)."""
    requests: dict[str, int] = {}
    limits: dict[str, int] = {}
    guaranteed = True
    for container in all_containers(pod):
        resources = container.get("resources") or {}
        container_limits = resources.get("limits") or {}
        container_requests = dict(container_limits, **(resources.get("requests") or {}))
        for name in ("cpu", "memory"):
            if quantity_milli(container_requests.get(name, 0)):
                requests[name] = requests.get(name, 0) + quantity_milli(container_requests[name])
            if quantity_milli(container_limits.get(name, 0)):
                limits[name] = limits.get(name, 0) + quantity_milli(container_limits[name])
        if not all(quantity_milli(container_limits.get(n, 0)) for n in ("cpu", "memory")):
            guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if guaranteed and requests == limits:
        return "Guaranteed"
    return "Burstable"


def pod_qos(pod: Obj) -> str:
    return (pod.get("status") or {}).get("qosClass") or qos_class(pod)


def pod_cgroup_parent(pod: Obj, settings: RuntimeSettings) -> str:
    """The pod's cgroup (cgroupfs path), as upstream's pod container manager names it."""
    if not settings.cgroups_per_qos:
        return settings.cgroup_root
    qos = pod_qos(pod)
    parts = [settings.cgroup_root.rstrip("/"), "kubepods"]
    if qos != "Guaranteed":
        parts.append(qos.lower())
    parts.append(f"pod{_meta(pod).get('uid', '')}")
    return "/".join(parts) if parts[0] else "/" + "/".join(parts[1:])


def milli_cpu_to_shares(milli: int) -> int:
    if milli == 0:
        return MIN_SHARES
    return max(MIN_SHARES, milli * SHARES_PER_CPU // 1000)


def milli_cpu_to_quota(milli: int, period: int = QUOTA_PERIOD) -> int:
    if milli == 0:
        return 0
    return max(MIN_QUOTA, milli * period // 1000)


def oom_score_adjust(pod: Obj, container: Obj, memory_capacity: int) -> int:
    qos = pod_qos(pod)
    if qos == "Guaranteed":
        return GUARANTEED_OOM_SCORE
    if qos == "BestEffort":
        return BESTEFFORT_OOM_SCORE
    request = quantity_value(((container.get("resources") or {}).get("requests") or {})
                             .get("memory", 0))
    if memory_capacity <= 0:
        return BURSTABLE_OOM_MAX
    score = 1000 - (1000 * request) // memory_capacity
    return min(BURSTABLE_OOM_MAX, max(BURSTABLE_OOM_MIN, int(score)))


def container_resources(pod: Obj, container: Obj,
                        settings: RuntimeSettings) -> api.LinuxContainerResources:
    resources = container.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    cpu_request = requests.get("cpu", limits.get("cpu"))
    out = api.LinuxContainerResources(
        cpu_shares=milli_cpu_to_shares(quantity_milli(cpu_request) if cpu_request else 0),
        oom_score_adj=oom_score_adjust(pod, container, settings.memory_capacity))
    if limits.get("cpu"):
        out.cpu_period = QUOTA_PERIOD
        out.cpu_quota = milli_cpu_to_quota(quantity_milli(limits["cpu"]))
    if limits.get("memory"):
        out.memory_limit_in_bytes = quantity_value(limits["memory"])
    return out


# --- DNS ------------------------------------------------------------------------------

def read_resolv_conf(path: str) -> tuple[list[str], list[str], list[str]]:
    """(nameservers, searches, options) of a resolv.conf; empty when unreadable."""
    servers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as source:
            lines = source.read().splitlines()
    except OSError:
        return servers, searches, options
    for line in lines:
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            servers.append(words[1])
        elif words[0] in ("search", "domain"):
            searches = words[1:]      # the last search/domain line wins, as in glibc
        elif words[0] == "options":
            options.extend(words[1:])
    return servers, searches, options


def _merge_options(base: list[str], extra: Iterable[Obj]) -> list[str]:
    """Pod dnsConfig options over `base` ("ndots:5"); a later name replaces an earlier."""
    merged: dict[str, str] = {}
    for text in base:
        name, sep, value = text.partition(":")
        merged[name] = text
    for option in extra or []:
        name = option.get("name", "")
        if not name:
            continue
        merged[name] = f"{name}:{option['value']}" if option.get("value") is not None \
            else name
    return list(merged.values())


def _dedupe(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item and item not in seen:
            seen.append(item)
    return seen


def dns_config(pod: Obj, settings: RuntimeSettings) -> api.DNSConfig | None:
    """The sandbox's resolv.conf as upstream's dns configurer makes it; None means the
    runtime's default (the host's) and is never returned: the host file is read here."""
    spec = _spec(pod)
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    host_network = bool(spec.get("hostNetwork"))
    if policy == "ClusterFirst" and host_network:
        policy = "Default"      # ClusterFirst on the host network falls back to the host's
    elif policy == "ClusterFirstWithHostNet":
        policy = "ClusterFirst"
    host_servers, host_searches, host_options = read_resolv_conf(settings.resolv_conf)
    servers: list[str]
    searches: list[str]
    options: list[str]
    if policy == "None":
        servers, searches, options = [], [], []
    elif policy == "ClusterFirst" and settings.cluster_dns:
        namespace = _meta(pod).get("namespace", "default")
        domain = settings.cluster_domain
        cluster_searches = ([f"{namespace}.svc.{domain}", f"svc.{domain}", domain]
                            if domain else [])
        servers = list(settings.cluster_dns)
        searches = cluster_searches + host_searches
        options = _merge_options([], [{"name": "ndots", "value": str(DNS_NDOTS)}])
    else:
        # Default, or ClusterFirst without cluster DNS (upstream falls back to Default).
        servers, searches, options = host_servers, host_searches, host_options
    extra = spec.get("dnsConfig") or {}
    servers = _dedupe(servers + list(extra.get("nameservers") or []))[:MAX_DNS_SERVERS]
    searches = _dedupe(searches + list(extra.get("searches") or []))[:MAX_DNS_SEARCHES]
    options = _merge_options(options, extra.get("options") or [])
    return api.DNSConfig(servers=servers, searches=searches, options=options)


# --- the sandbox ----------------------------------------------------------------------

def pod_hostname(pod: Obj) -> str:
    """spec.hostname or the pod's name, 63 characters at most without a trailing '-'
    or '.' (upstream truncates the same way)."""
    hostname = _spec(pod).get("hostname") or _meta(pod).get("name", "")
    if len(hostname) > 63:
        hostname = hostname[:63].rstrip("-.")
    return hostname


def pod_domain(pod: Obj, cluster_domain: str) -> str:
    spec = _spec(pod)
    if spec.get("subdomain") and cluster_domain:
        return f"{spec['subdomain']}.{_meta(pod).get('namespace', '')}.svc.{cluster_domain}"
    return ""


def pod_labels(pod: Obj) -> dict[str, str]:
    meta = _meta(pod)
    labels = dict(meta.get("labels") or {})
    labels.update({POD_NAME_LABEL: meta.get("name", ""),
                   POD_NAMESPACE_LABEL: meta.get("namespace", ""),
                   POD_UID_LABEL: meta.get("uid", "")})
    return labels


def port_mappings(pod: Obj) -> list[api.PortMapping]:
    mappings = []
    for container in _spec(pod).get("containers") or []:
        for port in container.get("ports") or []:
            mappings.append(api.PortMapping(
                protocol=_PROTOCOLS.get(port.get("protocol") or "TCP", api.TCP),
                container_port=int(port.get("containerPort") or 0),
                host_port=int(port.get("hostPort") or 0),
                host_ip=port.get("hostIP") or ""))
    return mappings


def _int64(value: Any) -> api.Int64Value | None:
    return api.Int64Value(value=int(value)) if value is not None else None


def _seccomp(profile: Obj | None) -> api.SecurityProfile:
    kind = (profile or {}).get("type")
    if kind == "RuntimeDefault":
        return api.SecurityProfile(profile_type=api.SecurityProfile.RuntimeDefault)
    if kind == "Localhost":
        return api.SecurityProfile(profile_type=api.SecurityProfile.Localhost,
                                   localhost_ref=profile.get("localhostProfile", ""))
    return api.SecurityProfile(profile_type=api.SecurityProfile.Unconfined)


def supplemental_groups(pod_security: Obj) -> list[int]:
    """The pod's supplementalGroups, then its fsGroup (upstream adds it the same way)."""
    groups = [int(g) for g in pod_security.get("supplementalGroups") or []]
    if pod_security.get("fsGroup") is not None and int(pod_security["fsGroup"]) not in groups:
        groups.append(int(pod_security["fsGroup"]))
    return groups


def sandbox_config(pod: Obj, settings: RuntimeSettings, attempt: int = 0
                   ) -> api.PodSandboxConfig:
    meta, spec = _meta(pod), _spec(pod)
    host_network = bool(spec.get("hostNetwork"))
    pod_security = spec.get("securityContext") or {}
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=meta.get("name", ""), uid=meta.get("uid", ""),
                                        namespace=meta.get("namespace", ""),
                                        attempt=attempt),
        log_directory=pod_log_directory(pod, settings.log_root),
        dns_config=dns_config(pod, settings),
        port_mappings=port_mappings(pod),
        labels=pod_labels(pod),
        annotations=dict(meta.get("annotations") or {}))
    if not host_network:
        config.hostname = pod_hostname(pod)
    namespaces = api.NamespaceOption(
        network=api.NODE if host_network else api.POD,
        pid=api.NODE if spec.get("hostPID") else (
            api.POD if spec.get("shareProcessNamespace") else api.CONTAINER),
        ipc=api.NODE if spec.get("hostIPC") else api.POD)
    security = api.LinuxSandboxSecurityContext(
        namespace_options=namespaces,
        privileged=any(((c.get("securityContext") or {}).get("privileged") is True)
                       for c in all_containers(pod)),
        supplemental_groups=supplemental_groups(pod_security),
        seccomp=_seccomp(pod_security.get("seccompProfile")))
    if pod_security.get("runAsUser") is not None:
        security.run_as_user.CopyFrom(_int64(pod_security["runAsUser"]))
    if pod_security.get("runAsGroup") is not None:
        security.run_as_group.CopyFrom(_int64(pod_security["runAsGroup"]))
    linux = api.LinuxPodSandboxConfig(
        cgroup_parent=pod_cgroup_parent(pod, settings), security_context=security,
        sysctls={s["name"]: str(s.get("value", ""))
                 for s in pod_security.get("sysctls") or [] if s.get("name")})
    config.linux.CopyFrom(linux)
    return config


# --- containers -----------------------------------------------------------------------

_VAR_REF = re.compile(r"\$\$|\$\(([^)]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Upstream's $(VAR) expansion: $(VAR) from env (left as is when undefined), $$ -> $."""
    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)
    return _VAR_REF.sub(replace, text)


def container_hash(container: Obj) -> str:
    """A stable digest of the container's spec, stored as upstream's container hash: a
    changed spec (a new image in a static pod, say) means a new container."""
    text = json.dumps(container, sort_keys=True, separators=(",", ":"))
    return format(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16), "x")


def container_labels(pod: Obj, container: Obj, init: bool = False,
                     ephemeral: bool = False) -> dict[str, str]:
    meta = _meta(pod)
    kind = "init" if init else "ephemeral" if ephemeral else "app"
    return {POD_NAME_LABEL: meta.get("name", ""), POD_NAMESPACE_LABEL: meta.get("namespace", ""),
            POD_UID_LABEL: meta.get("uid", ""), CONTAINER_NAME_LABEL: container.get("name", ""),
            CONTAINER_TYPE_LABEL: kind}


def container_annotations(pod: Obj, container: Obj, restart_count: int) -> dict[str, str]:
    spec = _spec(pod)
    annotations = {
        HASH_ANNOTATION: container_hash(container),
        RESTART_COUNT_ANNOTATION: str(restart_count),
        TERMINATION_PATH_ANNOTATION: container.get("terminationMessagePath")
        or "/dev/termination-log",
        TERMINATION_POLICY_ANNOTATION: container.get("terminationMessagePolicy") or "File",
    }
    grace = _meta(pod).get("deletionGracePeriodSeconds",
                           spec.get("terminationGracePeriodSeconds"))
    if grace is not None:
        annotations[GRACE_PERIOD_ANNOTATION] = str(grace)
    pre_stop = (container.get("lifecycle") or {}).get("preStop")
    if pre_stop:
        annotations[PRESTOP_ANNOTATION] = json.dumps(pre_stop, separators=(",", ":"))
    if container.get("ports"):
        annotations[PORTS_ANNOTATION] = json.dumps(container["ports"], separators=(",", ":"))
    return annotations


def check_run_as_non_root(pod: Obj, container: Obj, image: api.Image | None) -> None:
    """Upstream's verifyRunAsNonRoot: with runAsNonRoot the container must not run as
    uid 0, and a user that cannot be checked is refused."""
    pod_security = _spec(pod).get("securityContext") or {}
    security = container.get("securityContext") or {}
    non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
    if not non_root:
        return
    user = security.get("runAsUser", pod_security.get("runAsUser"))
    if user is not None:
        if int(user) == 0:
            raise ContainerConfigError("container's runAsUser breaks non-root policy "
                                       f"(pod: {_meta(pod).get('name')}, "
                                       f"container: {container.get('name')})")
        return
    if image is not None and image.HasField("uid"):
        if image.uid.value == 0:
            raise ContainerConfigError("container has runAsNonRoot and image will run as "
                                       f"root (pod: {_meta(pod).get('name')}, "
                                       f"container: {container.get('name')})")
        return
    username = image.username if image is not None else ""
    if username:
        raise ContainerConfigError(f"container has runAsNonRoot and image has non-numeric "
                                   f"user ({username}), cannot verify user is non-root "
                                   f"(pod: {_meta(pod).get('name')}, "
                                   f"container: {container.get('name')})")
    raise ContainerConfigError("container has runAsNonRoot and image will run as root "
                               f"(pod: {_meta(pod).get('name')}, "
                               f"container: {container.get('name')})")


def container_security(pod: Obj, container: Obj, namespaces: api.NamespaceOption
                       ) -> api.LinuxContainerSecurityContext:
    pod_security = _spec(pod).get("securityContext") or {}
    security = container.get("securityContext") or {}
    privileged = security.get("privileged") is True
    capabilities = security.get("capabilities") or {}
    out = api.LinuxContainerSecurityContext(
        privileged=privileged,
        readonly_rootfs=security.get("readOnlyRootFilesystem") is True,
        supplemental_groups=supplemental_groups(pod_security),
        no_new_privs=(not privileged and security.get("allowPrivilegeEscalation") is False),
        capabilities=api.Capability(add_capabilities=list(capabilities.get("add") or []),
                                    drop_capabilities=list(capabilities.get("drop") or [])),
        seccomp=_seccomp(security.get("seccompProfile") or pod_security.get("seccompProfile")))
    out.namespace_options.CopyFrom(namespaces)
    if not privileged and (security.get("procMount") or "Default") == "Default":
        out.masked_paths.extend(DEFAULT_MASKED_PATHS)
        out.readonly_paths.extend(DEFAULT_READONLY_PATHS)
    user = security.get("runAsUser", pod_security.get("runAsUser"))
    if user is not None:
        out.run_as_user.CopyFrom(_int64(user))
    group = security.get("runAsGroup", pod_security.get("runAsGroup"))
    if group is not None:
        out.run_as_group.CopyFrom(_int64(group))
    return out


def container_config(pod: Obj, container: Obj, settings: RuntimeSettings, *,
                     attempt: int, image_ref: str, envs: list[api.KeyValue],
                     mounts: list[api.Mount], init: bool = False,
                     image: api.Image | None = None, ephemeral: bool = False,
                     target_id: str = "") -> api.ContainerConfig:
    """One container's CreateContainer config; raises ContainerConfigError.

    `target_id`: the runtime id of an ephemeral container's targetContainerName, whose
    process namespace it joins (upstream's CRI NamespaceMode TARGET) so that a debug
    container sees the target's processes."""
    check_run_as_non_root(pod, container, image)
    spec = _spec(pod)
    env = {kv.key: kv.value for kv in envs}
    namespaces = api.NamespaceOption(
        network=api.NODE if spec.get("hostNetwork") else api.POD,
        pid=api.NODE if spec.get("hostPID") else (
            api.POD if spec.get("shareProcessNamespace") else api.CONTAINER),
        ipc=api.NODE if spec.get("hostIPC") else api.POD)
    if target_id and namespaces.pid == api.CONTAINER:
        namespaces.pid = api.TARGET
        namespaces.target_id = target_id
    config = api.ContainerConfig(
        metadata=api.ContainerMetadata(name=container.get("name", ""), attempt=attempt),
        image=api.ImageSpec(image=image_ref, user_specified_image=container.get("image", "")),
        command=[expand(c, env) for c in container.get("command") or []],
        args=[expand(a, env) for a in container.get("args") or []],
        working_dir=container.get("workingDir") or "",
        envs=envs,
        mounts=mounts,
        labels=container_labels(pod, container, init, ephemeral),
        annotations=container_annotations(pod, container, attempt),
        log_path=container_log_path(container.get("name", ""), attempt),
        stdin=bool(container.get("stdin")),
        stdin_once=bool(container.get("stdinOnce")),
        tty=bool(container.get("tty")))
    config.linux.CopyFrom(api.LinuxContainerConfig(
        resources=container_resources(pod, container, settings),
        security_context=container_security(pod, container, namespaces)))
    return config


# --- files the kubelet manages for a pod ----------------------------------------------

HOSTS_HEADER = "# Kubernetes-managed hosts file."
HOSTS_HEADER_HOST_NETWORK = "# Kubernetes-managed hosts file (host network)."


def hosts_file_content(pod: Obj, pod_ips: list[str], cluster_domain: str,
                       host_hosts: str = "/etc/hosts") -> str:
    """The /etc/hosts upstream's kubelet writes into each container."""
    spec = _spec(pod)
    lines: list[str]
    if spec.get("hostNetwork"):
        lines = [HOSTS_HEADER_HOST_NETWORK]
        try:
            with open(host_hosts, encoding="utf-8", errors="replace") as source:
                lines.extend(source.read().rstrip("\n").splitlines())
        except OSError:
            pass
    else:
        lines = [HOSTS_HEADER, "127.0.0.1\tlocalhost",
                 "::1\tlocalhost ip6-localhost ip6-loopback",
                 "fe00::0\tip6-localnet", "fe00::0\tip6-mcastprefix",
                 "fe00::1\tip6-allnodes", "fe00::2\tip6-allrouters"]
        hostname = pod_hostname(pod)
        domain = pod_domain(pod, cluster_domain)
        for address in pod_ips:
            if domain:
                lines.append(f"{address}\t{hostname}.{domain}\t{hostname}")
            else:
                lines.append(f"{address}\t{hostname}")
    aliases = spec.get("hostAliases") or []
    if aliases:
        lines += ["", "# Entries added by HostAliases."]
        for alias in aliases:
            if alias.get("ip") and alias.get("hostnames"):
                lines.append("\t".join([alias["ip"], *alias["hostnames"]]))
    return "\n".join(lines) + "\n"


def write_file_atomically(path: str, content: str | bytes, mode: int = 0o644) -> None:
    data = content.encode() if isinstance(content, str) else content
    temp = f"{path}.tmp{os.getpid()}"
    with open(temp, "wb") as out:
        out.write(data)
    os.chmod(temp, mode)
    os.replace(temp, path)


def managed_mounts(pod: Obj, container: Obj, settings: RuntimeSettings, pod_ips: list[str],
                   restart_count: int) -> list[api.Mount]:
    """/etc/hosts (unless the container mounts its own) and the termination log file,
    written under the pod's folder; upstream mounts both the same way."""
    uid = _meta(pod).get("uid", "")
    folder = pod_dir(settings.root_dir, uid)
    os.makedirs(folder, exist_ok=True)
    mounts = []
    targets = {m.get("mountPath") for m in container.get("volumeMounts") or []}
    if "/etc/hosts" not in targets and (pod_ips or _spec(pod).get("hostNetwork")):
        hosts_path = os.path.join(folder, "etc-hosts")
        write_file_atomically(hosts_path, hosts_file_content(pod, pod_ips,
                                                             settings.cluster_domain))
        mounts.append(api.Mount(container_path="/etc/hosts", host_path=hosts_path))
    message_path = container.get("terminationMessagePath") or "/dev/termination-log"
    if message_path not in targets:
        folder_for_container = os.path.join(folder, "containers", container.get("name", ""))
        os.makedirs(folder_for_container, exist_ok=True)
        log_file = os.path.join(folder_for_container, f"{restart_count:08x}")
        with open(log_file, "wb"):
            pass
        os.chmod(log_file, 0o666)
        mounts.append(api.Mount(container_path=message_path, host_path=log_file))
    return mounts


def termination_message_file(root_dir: str, uid: str, name: str, restart_count: int) -> str:
    return os.path.join(pod_dir(root_dir, uid), "containers", name, f"{restart_count:08x}")
