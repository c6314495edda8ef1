"""core/v1 kinds."""
from __future__ import annotations

import base64
import binascii
import ipaddress
from datetime import datetime
from typing import Any

from kubesmith.api.podspec import (
    PROTOCOLS, default_pod, format_labels, container_images, container_names,
    default_pod_template, qos_class, validate_pod_spec, validate_pod_spec_update,
    validate_pod_template,
)
from kubesmith.api.registry import (
    AGE_COLUMN, CREATED_AT_COLUMN, STANDARD_VERBS, Column, FieldError, ResourceType, dig,
    parse_time, register, since,
)
from kubesmith.api.validation import (
    config_key_problems, dns1123_label_problems, dns1123_subdomain_problems, duplicate,
    forbidden, immutable, invalid, is_int, label_value_problems, not_supported,
    port_name_problems, port_number_problems, qualified_name_problems, required,
    validate_enum, validate_labels, validate_non_negative, validate_quantity_map, with_meta,
)

CORE_VERBS = STANDARD_VERBS


_get = dig  # short local name: the column getters use it on every row


def _bool_text(value: Any) -> str:
    return "true" if value is True else "false"


# --- namespaces ---------------------------------------------------------------------------

def _namespace_phase(obj: dict) -> str:
    return (obj.get("status") or {}).get("phase", "")


def _default_namespace(obj: dict) -> None:
    # Namespaces carry their name as a label and the kubernetes finalizer (upstream does both).
    meta = obj.setdefault("metadata", {})
    labels = meta.setdefault("labels", {})
    if meta.get("name"):
        labels.setdefault("kubernetes.io/metadata.name", meta["name"])
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


@with_meta(namespaced=False, name_check="label")
def _validate_namespace(obj: dict, old: dict | None) -> list[FieldError]:
    errors: list[FieldError] = []
    for index, finalizer in enumerate(_get(obj, "spec", "finalizers", default=[])):
        path = f"spec.finalizers[{index}]"
        if not isinstance(finalizer, str):
            errors.append(invalid(path, finalizer, "must be a string"))
            continue
        errors.extend(invalid(path, finalizer, p) for p in qualified_name_problems(finalizer))
    phase = _get(obj, "status", "phase")
    if phase:
        errors.extend(validate_enum(phase, "status.phase", ("Active", "Terminating")))
    return errors


NAMESPACES = register(ResourceType(
    group="", version="v1", kind="Namespace", plural="namespaces", namespaced=False,
    short_names=("ns",), subresources=("status", "finalize"),
    columns=(Column("Status", "string", _namespace_phase,
                    "The status of the namespace"),),
    field_selectors={"status.phase": _namespace_phase},
    defaulter=_default_namespace, validator=_validate_namespace,
))


# --- configmaps and secrets ---------------------------------------------------------------

MAX_SECRET_BYTES = 1024 * 1024


def _data_count(obj: dict) -> int:
    return len(obj.get("data") or {}) + len(obj.get("binaryData") or {})


def _validate_keys(obj: dict, fields: tuple[str, ...]) -> list[FieldError]:
    errors: list[FieldError] = []
    seen: set[str] = set()
    for field in fields:
        data = obj.get(field)
        if data is None:
            continue
        if not isinstance(data, dict):
            errors.append(invalid(field, data, "must be a map"))
            continue
        for key in data:
            errors.extend(invalid(f"{field}[{key}]", key, p) for p in config_key_problems(key))
            if key in seen:
                errors.append(invalid(f"{field}[{key}]", key,
                                      "duplicate of key present in " + fields[0]))
            seen.add(key)
    return errors


def _validate_immutable_data(obj: dict, old: dict | None,
                             fields: tuple[str, ...]) -> list[FieldError]:
    errors: list[FieldError] = []
    if old is None or old.get("immutable") is not True:
        return errors
    if obj.get("immutable") is not True:
        errors.append(forbidden("immutable", "field is immutable when `immutable` is set"))
    for field in fields:
        if (obj.get(field) or {}) != (old.get(field) or {}):
            errors.append(forbidden(field, "field is immutable when `immutable` is set"))
    return errors


@with_meta(namespaced=True)
def _validate_configmap(obj: dict, old: dict | None) -> list[FieldError]:
    errors = _validate_keys(obj, ("data", "binaryData"))
    total = sum(len(str(k)) + len(str(v)) for k, v in (obj.get("data") or {}).items()) \
        + sum(len(str(k)) + len(str(v)) * 3 // 4 for k, v in (obj.get("binaryData") or {}).items())
    if total > MAX_SECRET_BYTES:
        errors.append(FieldError("FieldValueTooLong", "",
                                 f"Too long: must have at most {MAX_SECRET_BYTES} bytes"))
    for key, value in (obj.get("binaryData") or {}).items():
        if not _is_b64(value):
            errors.append(invalid(f"binaryData[{key}]", "<binary>", "must be base64 encoded"))
    errors.extend(_validate_immutable_data(obj, old, ("data", "binaryData")))
    return errors


CONFIGMAPS = register(ResourceType(
    group="", version="v1", kind="ConfigMap", plural="configmaps", namespaced=True,
    short_names=("cm",),
    columns=(Column("Data", "integer", _data_count, "Number of keys"),),
    validator=_validate_configmap,
))


def _secret_type(obj: dict) -> str:
    return obj.get("type") or "Opaque"


def _default_secret(obj: dict) -> None:
    obj.setdefault("type", "Opaque")
    # stringData is write-only: its values replace data's, encoded (upstream's conversion).
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict) and string_data:
        data = obj.get("data")
        if not isinstance(data, dict):
            data = obj["data"] = {}
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def _is_b64(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


_SECRET_TYPE_KEYS = {
    "kubernetes.io/dockercfg": (".dockercfg",),
    "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
    "kubernetes.io/tls": ("tls.crt", "tls.key"),
    "kubernetes.io/ssh-auth": ("ssh-privatekey",),
}


@with_meta(namespaced=True)
def _validate_secret(obj: dict, old: dict | None) -> list[FieldError]:
    errors = _validate_keys(obj, ("data",))
    data = obj.get("data") or {}
    total = 0
    if isinstance(data, dict):
        for key, value in data.items():
            if not _is_b64(value):
                errors.append(invalid(f"data[{key}]", "<secret contents redacted>",
                                      "must be base64 encoded"))
            else:
                total += len(base64.b64decode(value))
    if total > MAX_SECRET_BYTES:
        errors.append(FieldError("FieldValueTooLong", "data",
                                 f"Too long: may not be more than {MAX_SECRET_BYTES} bytes"))
    secret_type = obj.get("type") or "Opaque"
    keys = set(data) | set(obj.get("stringData") or {}) if isinstance(data, dict) else set()
    for key in _SECRET_TYPE_KEYS.get(secret_type, ()):
        if key not in keys:
            errors.append(required(f"data[{key}]", ""))
    if secret_type == "kubernetes.io/service-account-token":
        annotations = _get(obj, "metadata", "annotations", default={})
        if not annotations.get("kubernetes.io/service-account.name"):
            errors.append(required("metadata.annotations[kubernetes.io/service-account.name]",
                                   ""))
    if secret_type == "kubernetes.io/basic-auth" and not ({"username", "password"} & keys):
        errors.append(required("data[username]", ""))
    if old is not None and (old.get("type") or "Opaque") != secret_type:
        errors.append(immutable("type", secret_type))
    errors.extend(_validate_immutable_data(obj, old, ("data",)))
    return errors


SECRETS = register(ResourceType(
    group="", version="v1", kind="Secret", plural="secrets", namespaced=True,
    columns=(Column("Type", "string", _secret_type, "The type of the secret"),
             Column("Data", "integer", lambda o: len(o.get("data") or {}), "Number of keys")),
    field_selectors={"type": _secret_type},
    defaulter=_default_secret, validator=_validate_secret,
))


# --- pods -----------------------------------------------------------------------------

def _restartable_init(container: Any) -> bool:
    return isinstance(container, dict) and container.get("restartPolicy") == "Always"


def _later(current: datetime | None, value: Any) -> datetime | None:
    parsed = parse_time(value)
    if parsed is not None and (current is None or parsed > current):
        return parsed
    return current


def pod_summary(obj: dict) -> tuple[str, str, str]:
    """(READY, STATUS, RESTARTS) cells as kubectl shows them for a pod."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    meta = obj.get("metadata") or {}
    containers = spec.get("containers") or []
    init_specs = {c.get("name"): c for c in spec.get("initContainers") or [] if isinstance(c, dict)}
    total = len(containers) + sum(1 for c in init_specs.values() if _restartable_init(c))
    ready = 0
    restarts = 0
    sidecar_restarts = 0
    last_restart: datetime | None = None
    last_sidecar_restart: datetime | None = None
    phase = status.get("phase") or ""
    reason = status.get("reason") or phase
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "SchedulingGated":
            reason = "SchedulingGated"

    initializing = False
    init_statuses = status.get("initContainerStatuses") or []
    for index, cstatus in enumerate(init_statuses):
        count = cstatus.get("restartCount") or 0
        restarts += count
        last_terminated = _get(cstatus, "lastState", "terminated")
        if last_terminated:
            last_restart = _later(last_restart, last_terminated.get("finishedAt"))
        sidecar = _restartable_init(init_specs.get(cstatus.get("name")))
        if sidecar:
            sidecar_restarts += count
            if last_terminated:
                last_sidecar_restart = _later(last_sidecar_restart,
                                              last_terminated.get("finishedAt"))
        state = cstatus.get("state") or {}
        terminated = state.get("terminated")
        waiting = state.get("waiting")
        if terminated and (terminated.get("exitCode") or 0) == 0:
            continue
        if sidecar and cstatus.get("started") is True:
            if cstatus.get("ready"):
                ready += 1
            continue
        if terminated:
            if not terminated.get("reason"):
                if terminated.get("signal"):
                    reason = f"Init:Signal:{terminated['signal']}"
                else:
                    reason = f"Init:ExitCode:{terminated.get('exitCode') or 0}"
            else:
                reason = "Init:" + terminated["reason"]
        elif waiting and waiting.get("reason") and waiting["reason"] != "PodInitializing":
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{index}/{len(spec.get('initContainers') or [])}"
        initializing = True
        break

    initialized = any(c.get("type") == "Initialized" and c.get("status") == "True"
                      for c in status.get("conditions") or [])
    if not initializing or initialized:
        restarts = sidecar_restarts
        last_restart = last_sidecar_restart
        has_running = False
        for cstatus in reversed(status.get("containerStatuses") or []):
            restarts += cstatus.get("restartCount") or 0
            last_terminated = _get(cstatus, "lastState", "terminated")
            if last_terminated:
                last_restart = _later(last_restart, last_terminated.get("finishedAt"))
            state = cstatus.get("state") or {}
            waiting = state.get("waiting")
            terminated = state.get("terminated")
            if waiting and waiting.get("reason"):
                reason = waiting["reason"]
            elif terminated and terminated.get("reason"):
                reason = terminated["reason"]
            elif terminated is not None:
                if terminated.get("signal"):
                    reason = f"Signal:{terminated['signal']}"
                else:
                    reason = f"ExitCode:{terminated.get('exitCode') or 0}"
            elif cstatus.get("ready") and state.get("running") is not None:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            ready_condition = any(c.get("type") == "Ready" and c.get("status") == "True"
                                  for c in status.get("conditions") or [])
            reason = "Running" if ready_condition else "NotReady"

    if meta.get("deletionTimestamp") and status.get("reason") == "NodeLost":
        reason = "Unknown"
    elif meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed"):
        reason = "Terminating"

    restarts_text = str(restarts)
    if restarts and last_restart is not None:
        restarts_text = f"{restarts} ({since(last_restart.isoformat())} ago)"
    return f"{ready}/{total}", reason, restarts_text


def _pod_ip(obj: dict) -> str:
    ips = _get(obj, "status", "podIPs", default=[])
    if ips and isinstance(ips[0], dict) and ips[0].get("ip"):
        return ips[0]["ip"]
    return _get(obj, "status", "podIP", default="")


def _readiness_gates(obj: dict) -> str:
    gates = _get(obj, "spec", "readinessGates", default=[])
    if not gates:
        return "<none>"
    conditions = _get(obj, "status", "conditions", default=[])
    true = 0
    for gate in gates:
        for condition in conditions:
            if condition.get("type") == gate.get("conditionType"):
                if condition.get("status") == "True":
                    true += 1
                break
    return f"{true}/{len(gates)}"


def _prepare_pod(obj: dict) -> None:
    status = obj.setdefault("status", {})
    status.setdefault("phase", "Pending")
    status.setdefault("qosClass", qos_class(obj.get("spec") or {}))


@with_meta(namespaced=True)
def _validate_pod(obj: dict, old: dict | None) -> list[FieldError]:
    errors = validate_pod_spec(obj.get("spec"))
    if old is not None:
        errors.extend(validate_pod_spec_update(obj.get("spec"), old.get("spec")))
    elif _get(obj, "spec", "ephemeralContainers"):
        # They join a running pod through pods/ephemeralcontainers, never with it.
        errors.append(forbidden("spec.ephemeralContainers", "cannot be set on create"))
    phase = _get(obj, "status", "phase")
    if phase:
        errors.extend(validate_enum(phase, "status.phase",
                                    ("Pending", "Running", "Succeeded", "Failed", "Unknown")))
    return errors


POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")

PODS = register(ResourceType(
    group="", version="v1", kind="Pod", plural="pods", namespaced=True,
    short_names=("po",), categories=("all",),
    subresources=("status", "binding", "eviction", "log", "exec", "attach", "portforward",
                  "proxy", "ephemeralcontainers"),
    columns=(
        Column("Ready", "string", lambda o: pod_summary(o)[0],
               "Ready containers of the pod, out of its containers"),
        Column("Status", "string", lambda o: pod_summary(o)[1],
               "The pod's status as a short reason"),
        Column("Restarts", "string", lambda o: pod_summary(o)[2],
               "Container restarts, with the time since the last one"),
        AGE_COLUMN,
        Column("IP", "string", lambda o: _pod_ip(o) or "<none>", "The pod's IP address",
               priority=1),
        Column("Node", "string", lambda o: _get(o, "spec", "nodeName") or "<none>",
               "The node the pod is bound to", priority=1),
        Column("Nominated Node", "string",
               lambda o: _get(o, "status", "nominatedNodeName") or "<none>",
               "The node nominated for the pod by preemption", priority=1),
        Column("Readiness Gates", "string", _readiness_gates,
               "Readiness gates whose condition is true, out of all", priority=1),
    ),
    field_selectors={
        "spec.nodeName": lambda o: _get(o, "spec", "nodeName", default=""),
        "spec.restartPolicy": lambda o: _get(o, "spec", "restartPolicy", default=""),
        "spec.schedulerName": lambda o: _get(o, "spec", "schedulerName", default=""),
        "spec.serviceAccountName": lambda o: _get(o, "spec", "serviceAccountName", default=""),
        "spec.hostNetwork": lambda o: _bool_text(_get(o, "spec", "hostNetwork")),
        "status.phase": lambda o: _get(o, "status", "phase", default=""),
        "status.podIP": _pod_ip,
        "status.nominatedNodeName": lambda o: _get(o, "status", "nominatedNodeName", default=""),
    },
    defaulter=default_pod, validator=_validate_pod, prepare_create=_prepare_pod,
))


# --- bindings (create-only) -----------------------------------------------------------------

@with_meta(namespaced=True)
def _validate_binding(obj: dict, old: dict | None) -> list[FieldError]:
    errors: list[FieldError] = []
    target = obj.get("target")
    if not isinstance(target, dict) or not target.get("name"):
        errors.append(required("target.name", ""))
    elif target.get("kind") not in (None, "", "Node"):
        errors.append(not_supported("target.kind", target["kind"], ("Node", "<empty>")))
    return errors


BINDINGS = register(ResourceType(
    group="", version="v1", kind="Binding", plural="bindings", namespaced=True,
    verbs=("create",), validator=_validate_binding,
))


# --- nodes ----------------------------------------------------------------------------

def _node_status(obj: dict) -> str:
    conditions = {c.get("type"): c for c in _get(obj, "status", "conditions", default=[])
                  if isinstance(c, dict)}
    parts = []
    ready = conditions.get("Ready")
    if ready is not None:
        parts.append("Ready" if ready.get("status") == "True" else "NotReady")
    if not parts:
        parts.append("Unknown")
    if _get(obj, "spec", "unschedulable") is True:
        parts.append("SchedulingDisabled")
    return ",".join(parts)


def _node_roles(obj: dict) -> str:
    roles = set()
    for key, value in (_get(obj, "metadata", "labels", default={})).items():
        if key.startswith("node-role.kubernetes.io/"):
            role = key[len("node-role.kubernetes.io/"):]
            if role:
                roles.add(role)
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    return ",".join(sorted(roles)) or "<none>"


def _node_address(obj: dict, kind: str) -> str:
    for address in _get(obj, "status", "addresses", default=[]):
        if address.get("type") == kind:
            return address.get("address", "")
    return "<none>"


def _node_info(key: str):
    return lambda o: _get(o, "status", "nodeInfo", key) or "<unknown>"


@with_meta(namespaced=False)
def _validate_node(obj: dict, old: dict | None) -> list[FieldError]:
    errors: list[FieldError] = []
    spec = obj.get("spec") or {}
    for index, taint in enumerate(spec.get("taints") or []):
        path = f"spec.taints[{index}]"
        if not isinstance(taint, dict):
            errors.append(invalid(path, taint, "must be an object"))
            continue
        if not taint.get("key"):
            errors.append(required(f"{path}.key", ""))
        else:
            errors.extend(invalid(f"{path}.key", taint["key"], p)
                          for p in qualified_name_problems(taint["key"]))
        if taint.get("value"):
            errors.extend(invalid(f"{path}.value", taint["value"], p)
                          for p in label_value_problems(taint["value"]))
        errors.extend(validate_enum(taint.get("effect"), f"{path}.effect",
                                    ("NoSchedule", "PreferNoSchedule", "NoExecute"),
                                    required_value=True))
    status = obj.get("status") or {}
    errors.extend(validate_quantity_map(status.get("capacity"), "status.capacity"))
    errors.extend(validate_quantity_map(status.get("allocatable"), "status.allocatable"))
    if old is not None:
        old_cidr = _get(old, "spec", "podCIDR")
        if old_cidr and spec.get("podCIDR") != old_cidr:
            errors.append(forbidden("spec.podCIDR", "node updates may not change podCIDR "
                                    "except from \"\" to valid"))
        old_provider = _get(old, "spec", "providerID")
        if old_provider and spec.get("providerID") != old_provider:
            errors.append(forbidden("spec.providerID", "node updates may not change providerID "
                                    "except from \"\" to valid"))
    return errors


def _default_node(obj: dict) -> None:
    status = obj.get("status")
    if isinstance(status, dict) and status.get("capacity") and status.get("allocatable") is None:
        status["allocatable"] = dict(status["capacity"])


NODES = register(ResourceType(
    group="", version="v1", kind="Node", plural="nodes", namespaced=False,
    short_names=("no",), subresources=("status", "proxy"), storage_resource="minions",
    columns=(
        Column("Status", "string", _node_status, "The status of the node"),
        Column("Roles", "string", _node_roles, "The roles of the node"),
        AGE_COLUMN,
        Column("Version", "string", lambda o: _get(o, "status", "nodeInfo", "kubeletVersion",
                                                   default=""),
               "Kubelet version reported by the node"),
        Column("Internal-IP", "string", lambda o: _node_address(o, "InternalIP"),
               "The node's internal address", priority=1),
        Column("External-IP", "string", lambda o: _node_address(o, "ExternalIP"),
               "The node's external address", priority=1),
        Column("OS-Image", "string", _node_info("osImage"),
               "The operating system image reported by the node", priority=1),
        Column("Kernel-Version", "string", _node_info("kernelVersion"),
               "The kernel version reported by the node", priority=1),
        Column("Container-Runtime", "string", _node_info("containerRuntimeVersion"),
               "The container runtime and its version", priority=1),
    ),
    field_selectors={"spec.unschedulable": lambda o: _bool_text(_get(o, "spec",
                                                                     "unschedulable"))},
    defaulter=_default_node, validator=_validate_node,
))


# --- services -------------------------------------------------------------------------

SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")


def _ip_family(ip: str) -> str | None:
    try:
        return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"
    except ValueError:
        return None


def _default_service(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec.get("sessionAffinity") == "ClientIP":
        config = spec.setdefault("sessionAffinityConfig", {}).setdefault("clientIP", {})
        config.setdefault("timeoutSeconds", 10800)
    for port in spec.get("ports") or []:
        if not isinstance(port, dict):
            continue
        port.setdefault("protocol", "TCP")
        if port.get("targetPort") in (None, 0, "") and port.get("port") is not None:
            port["targetPort"] = port["port"]
    service_type = spec.get("type")
    if service_type in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if service_type == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    if service_type != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
        cluster_ip = spec.get("clusterIP")
        if cluster_ip and not spec.get("clusterIPs"):
            spec["clusterIPs"] = [cluster_ip]
        if not spec.get("ipFamilies"):
            families = [f for f in (_ip_family(ip) for ip in spec.get("clusterIPs") or [])
                        if f]
            spec["ipFamilies"] = families or ["IPv4"]
        spec.setdefault("ipFamilyPolicy",
                        "RequireDualStack" if len(spec["ipFamilies"]) > 1 else "SingleStack")
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


def _prepare_service_update(obj: dict, old: dict) -> None:
    """Keep what the server allocated when an update leaves it out (replace without IPs)."""
    spec = obj.setdefault("spec", {})
    old_spec = old.get("spec") or {}
    if spec.get("type") == "ExternalName" or old_spec.get("type") == "ExternalName":
        return
    for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
        if not spec.get(key) and old_spec.get(key):
            spec[key] = old_spec[key]
    if spec.get("type") in ("NodePort", "LoadBalancer"):
        old_ports = {(p.get("port"), p.get("protocol")): p for p in old_spec.get("ports") or []
                     if isinstance(p, dict)}
        for port in spec.get("ports") or []:
            if isinstance(port, dict) and not port.get("nodePort"):
                previous = old_ports.get((port.get("port"), port.get("protocol", "TCP")))
                if previous and previous.get("nodePort"):
                    port["nodePort"] = previous["nodePort"]
        if not spec.get("healthCheckNodePort") and old_spec.get("healthCheckNodePort"):
            spec["healthCheckNodePort"] = old_spec["healthCheckNodePort"]


@with_meta(namespaced=True, name_check="dns1035")
def _validate_service(obj: dict, old: dict | None) -> list[FieldError]:
    errors: list[FieldError] = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec", "")]
    service_type = spec.get("type") or "ClusterIP"
    errors.extend(validate_enum(spec.get("type"), "spec.type", SERVICE_TYPES, True))
    cluster_ip = spec.get("clusterIP") or ""
    headless = cluster_ip == "None"
    ports = spec.get("ports") or []
    if service_type == "ExternalName":
        name = spec.get("externalName")
        if not name:
            errors.append(required("spec.externalName", ""))
        else:
            errors.extend(invalid("spec.externalName", name, p)
                          for p in dns1123_subdomain_problems(name.rstrip(".")))
        if cluster_ip and not headless:
            errors.append(forbidden("spec.clusterIP", "may not be set for ExternalName services"))
    elif not ports and not headless:
        errors.append(required("spec.ports", ""))
    if cluster_ip and not headless and _ip_family(cluster_ip) is None:
        errors.append(invalid("spec.clusterIP", cluster_ip,
                              "must be empty, 'None', or a valid IP address"))
    if headless and service_type in ("NodePort", "LoadBalancer"):
        errors.append(invalid("spec.clusterIP", cluster_ip,
                              f"may not be set to 'None' for {service_type} services"))
    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    for index, port in enumerate(ports):
        path = f"spec.ports[{index}]"
        if not isinstance(port, dict):
            errors.append(invalid(path, port, "must be an object"))
            continue
        name = port.get("name") or ""
        if len(ports) > 1 and not name:
            errors.append(required(f"{path}.name", ""))
        if name:
            errors.extend(invalid(f"{path}.name", name, p) for p in dns1123_label_problems(name))
            if name in names:
                errors.append(duplicate(f"{path}.name", name))
            names.add(name)
        if port.get("port") is None:
            errors.append(required(f"{path}.port", ""))
        else:
            errors.extend(invalid(f"{path}.port", port["port"], p)
                          for p in port_number_problems(port["port"]))
        protocol = port.get("protocol")
        errors.extend(validate_enum(protocol, f"{path}.protocol", PROTOCOLS, True))
        key = (port.get("port"), protocol)
        if key in seen:
            errors.append(duplicate(path, {"port": port.get("port"), "protocol": protocol}))
        seen.add(key)
        target = port.get("targetPort")
        if is_int(target):
            errors.extend(invalid(f"{path}.targetPort", target, p)
                          for p in port_number_problems(target))
        elif isinstance(target, str):
            errors.extend(invalid(f"{path}.targetPort", target, p)
                          for p in port_name_problems(target))
        node_port = port.get("nodePort")
        if node_port:
            if service_type not in ("NodePort", "LoadBalancer"):
                errors.append(forbidden(f"{path}.nodePort",
                                        f"may not be used when `type` is '{service_type}'"))
            errors.extend(invalid(f"{path}.nodePort", node_port, p)
                          for p in port_number_problems(node_port))
    errors.extend(validate_labels(spec.get("selector"), "spec.selector"))
    errors.extend(validate_enum(spec.get("sessionAffinity"), "spec.sessionAffinity",
                                ("ClientIP", "None")))
    if spec.get("sessionAffinity") == "ClientIP":
        timeout = _get(spec, "sessionAffinityConfig", "clientIP", "timeoutSeconds")
        if timeout is not None and (not is_int(timeout) or not 0 < timeout <= 86400):
            errors.append(invalid("spec.sessionAffinityConfig.clientIP.timeoutSeconds", timeout,
                                  "must be greater than 0 and less than 86400"))
    errors.extend(validate_enum(spec.get("ipFamilyPolicy"), "spec.ipFamilyPolicy",
                                ("SingleStack", "PreferDualStack", "RequireDualStack")))
    for index, family in enumerate(spec.get("ipFamilies") or []):
        errors.extend(validate_enum(family, f"spec.ipFamilies[{index}]", ("IPv4", "IPv6")))
    for key in ("externalTrafficPolicy", "internalTrafficPolicy"):
        errors.extend(validate_enum(spec.get(key), f"spec.{key}", ("Cluster", "Local")))
    if spec.get("externalTrafficPolicy") and service_type not in ("NodePort", "LoadBalancer"):
        errors.append(invalid("spec.externalTrafficPolicy", spec["externalTrafficPolicy"],
                              "may only be set for externally-accessible services"))
    for index, ip in enumerate(spec.get("externalIPs") or []):
        if _ip_family(ip) is None:
            errors.append(invalid(f"spec.externalIPs[{index}]", ip, "must be a valid IP address"))
    if old is not None:
        old_spec = old.get("spec") or {}
        external_change = "ExternalName" in (service_type, old_spec.get("type"))
        old_ip = old_spec.get("clusterIP")
        if old_ip and not external_change and cluster_ip != old_ip:
            errors.append(immutable("spec.clusterIP", cluster_ip))
    return errors


def _lb_ingress(obj: dict, wide: bool = True) -> str:
    values = []
    for ingress in _get(obj, "status", "loadBalancer", "ingress", default=[]):
        if ingress.get("ip"):
            values.append(ingress["ip"])
        elif ingress.get("hostname"):
            values.append(ingress["hostname"])
    text = ",".join(values)
    if not wide and len(text) > 16:
        text = text[:13] + "..."
    return text


def _service_external_ip(obj: dict) -> str:
    spec = obj.get("spec") or {}
    service_type = spec.get("type") or "ClusterIP"
    external = spec.get("externalIPs") or []
    if service_type in ("ClusterIP", "NodePort"):
        return ",".join(external) if external else "<none>"
    if service_type == "LoadBalancer":
        ingress = _lb_ingress(obj)
        if external:
            return ",".join(([*ingress.split(",")] if ingress else []) + external)
        return ingress or "<pending>"
    if service_type == "ExternalName":
        return spec.get("externalName", "")
    return "<unknown>"


def _service_ports(obj: dict) -> str:
    pieces = []
    for port in _get(obj, "spec", "ports", default=[]):
        protocol = port.get("protocol") or "TCP"
        if port.get("nodePort"):
            pieces.append(f"{port.get('port')}:{port['nodePort']}/{protocol}")
        else:
            pieces.append(f"{port.get('port')}/{protocol}")
    return ",".join(pieces) or "<none>"


SERVICES = register(ResourceType(
    group="", version="v1", kind="Service", plural="services", namespaced=True,
    short_names=("svc",), categories=("all",), subresources=("status", "proxy"),
    storage_resource="services/specs",
    columns=(
        Column("Type", "string", lambda o: _get(o, "spec", "type", default=""),
               "The type of the service"),
        Column("Cluster-IP", "string", lambda o: _get(o, "spec", "clusterIP") or "<none>",
               "The virtual IP of the service inside the cluster"),
        Column("External-IP", "string", _service_external_ip,
               "Addresses the service is reachable at from outside the cluster"),
        Column("Port(s)", "string", _service_ports, "The ports the service exposes"),
        AGE_COLUMN,
        Column("Selector", "string", lambda o: format_labels(_get(o, "spec", "selector")),
               "The labels of the pods the service routes to", priority=1),
    ),
    defaulter=_default_service, validator=_validate_service,
    prepare_update=_prepare_service_update,
))


# --- endpoints ------------------------------------------------------------------------

def format_endpoints(obj: dict) -> str:
    subsets = obj.get("subsets") or []
    if not subsets:
        return "<none>"
    shown: list[str] = []
    limit = 3
    more = False
    count = 0
    for subset in subsets:
        addresses = subset.get("addresses") or []
        ports = subset.get("ports") or []
        if not ports:
            count += len(addresses)
            for address in addresses:
                if len(shown) == limit:
                    more = True
                    continue
                shown.append(address.get("ip", ""))
            continue
        for port in ports:
            count += len(addresses)
            for address in addresses:
                if len(shown) == limit:
                    more = True
                    continue
                ip = address.get("ip", "")
                host = f"[{ip}]" if ":" in ip else ip
                shown.append(f"{host}:{port.get('port')}")
    text = ",".join(shown)
    if more:
        return f"{text} + {count - limit} more..."
    return text


def _default_endpoints(obj: dict) -> None:
    for subset in obj.get("subsets") or []:
        for port in (subset or {}).get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")


@with_meta(namespaced=True)
def _validate_endpoints(obj: dict, old: dict | None) -> list[FieldError]:
    errors: list[FieldError] = []
    for sindex, subset in enumerate(obj.get("subsets") or []):
        spath = f"subsets[{sindex}]"
        for key in ("addresses", "notReadyAddresses"):
            for aindex, address in enumerate((subset or {}).get(key) or []):
                ip = (address or {}).get("ip")
                if not ip:
                    errors.append(required(f"{spath}.{key}[{aindex}].ip", ""))
                elif _ip_family(ip) is None:
                    errors.append(invalid(f"{spath}.{key}[{aindex}].ip", ip,
                                          "must be a valid IP address"))
        for pindex, port in enumerate((subset or {}).get("ports") or []):
            ppath = f"{spath}.ports[{pindex}]"
            errors.extend(invalid(f"{ppath}.port", (port or {}).get("port"), p)
                          for p in port_number_problems((port or {}).get("port")))
            errors.extend(validate_enum((port or {}).get("protocol"), f"{ppath}.protocol",
                                        PROTOCOLS, True))
    return errors


ENDPOINTS = register(ResourceType(
    group="", version="v1", kind="Endpoints", plural="endpoints", namespaced=True,
    singular="endpoints", short_names=("ep",), storage_resource="services/endpoints",
    columns=(Column("Endpoints", "string", format_endpoints, "Endpoints of the service"),),
    defaulter=_default_endpoints, validator=_validate_endpoints,
))


# --- service accounts -------------------------------------------------------------------

@with_meta(namespaced=True)
def _validate_service_account(obj: dict, old: dict | None) -> list[FieldError]:
    errors: list[FieldError] = []
    for index, secret in enumerate(obj.get("secrets") or []):
        if not isinstance(secret, dict):
            errors.append(invalid(f"secrets[{index}]", secret, "must be an object"))
    return errors


SERVICE_ACCOUNTS = register(ResourceType(
    group="", version="v1", kind="ServiceAccount", plural="serviceaccounts", namespaced=True,
    short_names=("sa",), subresources=("token",),
    columns=(Column("Secrets", "integer", lambda o: len(o.get("secrets") or []),
                    "Number of secrets listed by the service account"),),
    validator=_validate_service_account,
))


# --- events ---------------------------------------------------------------------------

def _event_source(obj: dict) -> str:
    component = _get(obj, "source", "component") or obj.get("reportingComponent") or ""
    host = _get(obj, "source", "host") or obj.get("reportingInstance") or ""
    return f"{component}, {host}" if host else component


def _event_cells(obj: dict) -> dict[str, Any]:
    first = since(obj.get("firstTimestamp")) if obj.get("firstTimestamp") \
        else since(obj.get("eventTime"))
    last = since(obj.get("lastTimestamp")) if obj.get("lastTimestamp") else first
    count = obj.get("count") or 0
    series = obj.get("series")
    if isinstance(series, dict) and series:
        last = since(series.get("lastObservedTime"))
        count = series.get("count") or 0
    elif count == 0:
        count = 1
    involved = obj.get("involvedObject") or {}
    kind = (involved.get("kind") or "").lower()
    target = f"{kind}/{involved['name']}" if involved.get("name") else kind
    return {"last": last, "first": first, "count": count, "target": target}


EVENT_COLUMNS = (
    Column("Last Seen", "string", lambda o: _event_cells(o)["last"],
           "Time since the event was last observed"),
    Column("Type", "string", lambda o: o.get("type", ""), "Normal or Warning"),
    Column("Reason", "string", lambda o: o.get("reason", ""), "Why the event happened"),
    Column("Object", "string", lambda o: _event_cells(o)["target"],
           "The object the event is about"),
    Column("Subobject", "string", lambda o: _get(o, "involvedObject", "fieldPath", default=""),
           "The part of the object the event is about", priority=1),
    Column("Source", "string", _event_source, "The component that reported the event",
           priority=1),
    Column("Message", "string", lambda o: (o.get("message") or "").strip(),
           "What happened, for people"),
    Column("First Seen", "string", lambda o: _event_cells(o)["first"],
           "Time since the event was first observed", priority=1),
    Column("Count", "integer", lambda o: _event_cells(o)["count"],
           "How often the event was observed", priority=1),
    Column("Name", "string", lambda o: _get(o, "metadata", "name", default=""),
           "Name of the event object", format="name", priority=1),
)


def _event_field(*path: str):
    return lambda o: str(_get(o, *path, default=""))


EVENT_FIELD_SELECTORS = {
    "involvedObject.kind": _event_field("involvedObject", "kind"),
    "involvedObject.namespace": _event_field("involvedObject", "namespace"),
    "involvedObject.name": _event_field("involvedObject", "name"),
    "involvedObject.uid": _event_field("involvedObject", "uid"),
    "involvedObject.apiVersion": _event_field("involvedObject", "apiVersion"),
    "involvedObject.resourceVersion": _event_field("involvedObject", "resourceVersion"),
    "involvedObject.fieldPath": _event_field("involvedObject", "fieldPath"),
    "reason": _event_field("reason"),
    "reportingComponent": _event_field("reportingComponent"),
    "source": lambda o: _get(o, "source", "component") or o.get("reportingComponent") or "",
    "type": _event_field("type"),
}


@with_meta(namespaced=True)
def _validate_event(obj: dict, old: dict | None) -> list[FieldError]:
    errors: list[FieldError] = []
    involved = obj.get("involvedObject")
    namespace = _get(obj, "metadata", "namespace", default="")
    if isinstance(involved, dict) and involved.get("namespace") and namespace \
            and involved["namespace"] != namespace:
        errors.append(invalid("involvedObject.namespace", involved["namespace"],
                              "does not match event.namespace"))
    if obj.get("type") and obj["type"] not in ("Normal", "Warning"):
        errors.append(not_supported("type", obj["type"], ("Normal", "Warning")))
    if obj.get("eventTime") and not obj.get("reportingComponent"):
        errors.append(required("reportingComponent", ""))
    count = obj.get("count")
    if count is not None:
        errors.extend(validate_non_negative(count, "count"))
    return errors


EVENTS = register(ResourceType(
    group="", version="v1", kind="Event", plural="events", namespaced=True,
    short_names=("ev",), columns=EVENT_COLUMNS, field_selectors=EVENT_FIELD_SELECTORS,
    validator=_validate_event,
))


# --- replication controllers --------------------------------------------------------------

def _default_rc(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("minReadySeconds", 0)
    template = spec.get("template")
    labels = _get(template, "metadata", "labels", default={})
    if labels:
        if not spec.get("selector"):
            spec["selector"] = dict(labels)
        meta = obj.setdefault("metadata", {})
        if not meta.get("labels"):
            meta["labels"] = dict(labels)
    default_pod_template(template)


@with_meta(namespaced=True)
def _validate_rc(obj: dict, old: dict | None) -> list[FieldError]:
    errors: list[FieldError] = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec", "")]
    errors.extend(validate_non_negative(spec.get("replicas"), "spec.replicas"))
    errors.extend(validate_non_negative(spec.get("minReadySeconds"), "spec.minReadySeconds"))
    selector = spec.get("selector") or {}
    if not selector:
        errors.append(required("spec.selector", ""))
    errors.extend(validate_labels(selector, "spec.selector"))
    template = spec.get("template")
    if template is None:
        errors.append(required("spec.template", ""))
    else:
        labels = _get(template, "metadata", "labels", default={})
        if selector and any(labels.get(k) != v for k, v in selector.items()):
            errors.append(invalid("spec.template.metadata.labels", labels,
                                  "`selector` does not match template `labels`"))
        errors.extend(validate_pod_template(template, restart_policies=("Always",)))
    return errors


REPLICATION_CONTROLLERS = register(ResourceType(
    group="", version="v1", kind="ReplicationController", plural="replicationcontrollers",
    namespaced=True, short_names=("rc",), categories=("all",),
    subresources=("status", "scale"), storage_resource="controllers",
    columns=(
        Column("Desired", "integer", lambda o: _get(o, "spec", "replicas", default=0),
               "Number of desired pods"),
        Column("Current", "integer", lambda o: _get(o, "status", "replicas", default=0),
               "Number of pods currently running"),
        Column("Ready", "integer", lambda o: _get(o, "status", "readyReplicas", default=0),
               "Number of pods ready"),
        Column("Containers", "string", lambda o: container_names(_get(o, "spec", "template")),
               "Names of each container in the template", priority=1),
        Column("Images", "string", lambda o: container_images(_get(o, "spec", "template")),
               "Images of each container in the template", priority=1),
        Column("Selector", "string", lambda o: format_labels(_get(o, "spec", "selector")),
               "Label selector of the pods the controller manages", priority=1),
    ),
    field_selectors={"status.replicas": lambda o: str(_get(o, "status", "replicas",
                                                           default=0))},
    defaulter=_default_rc, validator=_validate_rc,
))


# --- limit ranges and resource quotas ------------------------------------------------------

LIMIT_TYPES = ("Pod", "Container", "PersistentVolumeClaim")


def _default_limit_range(obj: dict) -> None:
    for item in _get(obj, "spec", "limits", default=[]):
        if not isinstance(item, dict) or item.get("type") != "Container":
            continue
        default = item.setdefault("default", {})
        for name, value in (item.get("max") or {}).items():
            default.setdefault(name, value)
        request = item.setdefault("defaultRequest", {})
        for name, value in default.items():
            request.setdefault(name, value)
        for name, value in (item.get("min") or {}).items():
            request.setdefault(name, value)
        if not default:
            item.pop("default")
        if not request:
            item.pop("defaultRequest")


@with_meta(namespaced=True)
def _validate_limit_range(obj: dict, old: dict | None) -> list[FieldError]:
    errors: list[FieldError] = []
    for index, item in enumerate(_get(obj, "spec", "limits", default=[])):
        path = f"spec.limits[{index}]"
        if not isinstance(item, dict):
            errors.append(invalid(path, item, "must be an object"))
            continue
        if not item.get("type"):
            errors.append(required(f"{path}.type", ""))
        for key in ("max", "min", "default", "defaultRequest", "maxLimitRequestRatio"):
            errors.extend(validate_quantity_map(item.get(key), f"{path}.{key}"))
    return errors


LIMIT_RANGES = register(ResourceType(
    group="", version="v1", kind="LimitRange", plural="limitranges", namespaced=True,
    short_names=("limits",), columns=(CREATED_AT_COLUMN,), table_age=False,
    defaulter=_default_limit_range, validator=_validate_limit_range,
))


def _quota_columns(obj: dict) -> tuple[str, str]:
    hard = _get(obj, "status", "hard", default={})
    used = _get(obj, "status", "used", default={})
    requests, limits = [], []
    for name in sorted(hard):
        text = f"{name}: {used.get(name, '0')}/{hard[name]}"
        pieces = name.split(".")
        (limits if len(pieces) > 1 and pieces[0] == "limits" else requests).append(text)
    return ", ".join(requests), ", ".join(limits)


QUOTA_SCOPES = ("Terminating", "NotTerminating", "BestEffort", "NotBestEffort",
                "PriorityClass", "CrossNamespacePodAffinity", "VolumeAttributesClass")


# Upstream's standard quota resource names (others, count/* and extended ones, are not
# checked against scopes), and what each pod scope may limit.
_STANDARD_QUOTA_NAMES = {"pods", "services", "replicationcontrollers", "resourcequotas",
                         "secrets", "configmaps", "persistentvolumeclaims",
                         "services.nodeports", "services.loadbalancers", "requests.storage",
                         "cpu", "memory", "ephemeral-storage", "requests.cpu",
                         "requests.memory", "requests.ephemeral-storage", "limits.cpu",
                         "limits.memory", "limits.ephemeral-storage"}
_POD_COMPUTE = {"cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu",
                "limits.memory"}
_EXISTS_ONLY_SCOPES = ("Terminating", "NotTerminating", "BestEffort", "NotBestEffort",
                       "CrossNamespacePodAffinity")


def _scope_fits(scope: str, resource: str) -> bool:
    if resource not in _STANDARD_QUOTA_NAMES:
        return True
    if scope == "BestEffort":
        return resource == "pods"
    if scope in ("Terminating", "NotTerminating", "NotBestEffort", "PriorityClass",
                 "CrossNamespacePodAffinity"):
        return resource == "pods" or resource in _POD_COMPUTE
    return True


def _conflicting(scopes: set) -> bool:
    return {"BestEffort", "NotBestEffort"} <= scopes or \
        {"Terminating", "NotTerminating"} <= scopes


def _validate_quota_scopes(obj: dict) -> list[FieldError]:
    errors: list[FieldError] = []
    hard = _get(obj, "spec", "hard", default={})
    hard = sorted(hard) if isinstance(hard, dict) else []
    scopes = _get(obj, "spec", "scopes", default=[]) or []
    if isinstance(scopes, list):
        for index, scope in enumerate(scopes):
            problems = validate_enum(scope, f"spec.scopes[{index}]", QUOTA_SCOPES)
            errors.extend(problems)
            if not problems and any(not _scope_fits(scope, k) for k in hard):
                errors.append(invalid("spec.scopes", scopes,
                                      "unsupported scope applied to resource"))
        if _conflicting(set(s for s in scopes if isinstance(s, str))):
            errors.append(invalid("spec.scopes", scopes, "conflicting scopes"))
    selector = _get(obj, "spec", "scopeSelector")
    expressions = selector.get("matchExpressions") if isinstance(selector, dict) else None
    path = "spec.scopeSelector.matchExpressions"
    named: set = set()
    for index, req in enumerate(expressions if isinstance(expressions, list) else []):
        if not isinstance(req, dict):
            errors.append(invalid(f"{path}[{index}]", req, "must be an object"))
            continue
        scope, operator = req.get("scopeName"), req.get("operator")
        values = req.get("values") or []
        if scope not in QUOTA_SCOPES:
            errors.append(invalid(f"{path}.scopeName", scope, "unsupported scope"))
        elif any(not _scope_fits(scope, k) for k in hard):
            errors.append(invalid(path, selector, "unsupported scope applied to resource"))
        if scope in _EXISTS_ONLY_SCOPES and operator != "Exists":
            errors.append(invalid(f"{path}.operator", operator,
                                  "must be 'Exist' when scope is any of "
                                  "ResourceQuotaScopeTerminating, "
                                  "ResourceQuotaScopeNotTerminating, "
                                  "ResourceQuotaScopeBestEffort, "
                                  "ResourceQuotaScopeNotBestEffort or "
                                  "ResourceQuotaScopeCrossNamespacePodAffinity"))
        if operator in ("In", "NotIn"):
            if not values:
                errors.append(required(f"{path}.values",
                                       "must be at least one value when `operator` is 'In' "
                                       "or 'NotIn' for scope selector"))
        elif operator in ("Exists", "DoesNotExist"):
            if values:
                errors.append(invalid(f"{path}.values", values,
                                      "must be no value when `operator` is 'Exist' or "
                                      "'DoesNotExist' for scope selector"))
        else:
            errors.append(invalid(f"{path}.operator", operator,
                                  "not a valid selector operator"))
        named.add(scope)
    if _conflicting(named):
        errors.append(invalid(path, selector, "conflicting scopes"))
    return errors


@with_meta(namespaced=True)
def _validate_resource_quota(obj: dict, old: dict | None) -> list[FieldError]:
    errors = validate_quantity_map(_get(obj, "spec", "hard"), "spec.hard")
    errors.extend(validate_quantity_map(_get(obj, "status", "hard"), "status.hard"))
    errors.extend(validate_quantity_map(_get(obj, "status", "used"), "status.used"))
    errors.extend(_validate_quota_scopes(obj))
    return errors


RESOURCE_QUOTAS = register(ResourceType(
    group="", version="v1", kind="ResourceQuota", plural="resourcequotas", namespaced=True,
    short_names=("quota",), subresources=("status",),
    columns=(
        AGE_COLUMN,
        Column("Request", "string", lambda o: _quota_columns(o)[0],
               "Requests used out of the hard limits"),
        Column("Limit", "string", lambda o: _quota_columns(o)[1],
               "Limits used out of the hard limits"),
    ),
    validator=_validate_resource_quota,
))


# --- component statuses -------------------------------------------------------------------
# Computed at request time by the API server (kubesmith/apiserver/componentstatus.py) and
# never stored: get and list only.

def _healthy_condition(obj: dict) -> dict:
    for condition in obj.get("conditions") or ():
        if isinstance(condition, dict) and condition.get("type") == "Healthy":
            return condition
    return {}


def _component_health(obj: dict) -> str:
    return "Healthy" if _healthy_condition(obj).get("status") == "True" else "Unhealthy"


COMPONENT_STATUSES = register(ResourceType(
    group="", version="v1", kind="ComponentStatus", plural="componentstatuses",
    namespaced=False, short_names=("cs",), verbs=("get", "list"), table_age=False,
    columns=(
        Column("Status", "string", _component_health,
               "Healthy when the component answered its health check"),
        Column("Message", "string", lambda o: _healthy_condition(o).get("message", ""),
               "What the component answered"),
        Column("Error", "string", lambda o: _healthy_condition(o).get("error", ""),
               "Why the health check failed"),
    ),
))
