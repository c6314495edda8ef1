"""PodSpec and PodTemplateSpec: defaults and validation shared by pods and every
workload kind (deployments, replica sets, replication controllers, daemon sets, stateful
sets, jobs, cron jobs).
"""
from __future__ import annotations

import copy
from typing import Any

from kubesmith.api.registry import FieldError, Obj
from kubesmith.api.validation import (
    dns1123_label_problems, dns1123_subdomain_problems, duplicate, forbidden, invalid,
    is_int, not_supported, parse_quantity, port_name_problems, port_number_problems,
    qualified_name_problems, required, validate_annotations, validate_enum, validate_labels,
    validate_non_negative, validate_positive, validate_quantity_map,
)

RESTART_POLICIES = ("Always", "OnFailure", "Never")
DNS_POLICIES = ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
PROTOCOLS = ("TCP", "UDP", "SCTP")
TERMINATION_MESSAGE_POLICIES = ("File", "FallbackToLogsOnError")
TOLERATION_OPERATORS = ("Exists", "Equal")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
VOLUME_MODE_DEFAULT = 0o644  # 420: secret, configMap, downwardAPI, projected volumes

_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
_MODE_SOURCES = ("secret", "configMap", "downwardAPI", "projected")


def not_found(path: str, value: Any) -> FieldError:
    return FieldError("FieldValueNotFound", path, f'Not found: "{value}"')


# --- defaults -------------------------------------------------------------------------

def image_tag(image: str) -> tuple[str, bool]:
    """(tag, has_digest) of an image reference; the tag is "" when none is given."""
    reference, _, digest = image.partition("@")
    last = reference.rsplit("/", 1)[-1]
    tag = last.rpartition(":")[2] if ":" in last else ""
    return tag, bool(digest)


def default_pull_policy(image: str) -> str:
    tag, has_digest = image_tag(image or "")
    if tag == "latest" or (not tag and not has_digest):
        return "Always"
    return "IfNotPresent"


def _default_probe(probe: Any) -> None:
    if not isinstance(probe, dict):
        return
    probe.setdefault("timeoutSeconds", 1)
    probe.setdefault("periodSeconds", 10)
    probe.setdefault("successThreshold", 1)
    probe.setdefault("failureThreshold", 3)
    _default_handler(probe)


def _default_handler(handler: Any) -> None:
    if not isinstance(handler, dict):
        return
    http = handler.get("httpGet")
    if isinstance(http, dict):
        http.setdefault("path", "/")
        http.setdefault("scheme", "HTTP")


def default_container(container: Obj) -> None:
    if not isinstance(container, dict):
        return
    if not container.get("imagePullPolicy") and container.get("image"):
        container["imagePullPolicy"] = default_pull_policy(container["image"])
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault("resources", {})
    for port in container.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
    for env in container.get("env") or []:
        field_ref = (env.get("valueFrom") or {}).get("fieldRef") if isinstance(env, dict) else None
        if isinstance(field_ref, dict):
            field_ref.setdefault("apiVersion", "v1")
    for key in ("livenessProbe", "readinessProbe", "startupProbe"):
        _default_probe(container.get(key))
    lifecycle = container.get("lifecycle")
    if isinstance(lifecycle, dict):
        _default_handler(lifecycle.get("postStart"))
        _default_handler(lifecycle.get("preStop"))


def _default_volume(volume: Obj) -> None:
    if not isinstance(volume, dict):
        return
    if not any(key != "name" for key in volume):
        volume["emptyDir"] = {}
    for key in _MODE_SOURCES:
        source = volume.get(key)
        if isinstance(source, dict):
            source.setdefault("defaultMode", VOLUME_MODE_DEFAULT)
            if key == "downwardAPI":
                for item in source.get("items") or []:
                    field_ref = item.get("fieldRef") if isinstance(item, dict) else None
                    if isinstance(field_ref, dict):
                        field_ref.setdefault("apiVersion", "v1")
            if key == "projected":
                for projection in source.get("sources") or []:
                    token = (projection or {}).get("serviceAccountToken")
                    if isinstance(token, dict):
                        token.setdefault("expirationSeconds", 3600)
                    for item in ((projection or {}).get("downwardAPI") or {}).get("items") or []:
                        field_ref = item.get("fieldRef") if isinstance(item, dict) else None
                        if isinstance(field_ref, dict):
                            field_ref.setdefault("apiVersion", "v1")
    host_path = volume.get("hostPath")
    if isinstance(host_path, dict):
        host_path.setdefault("type", "")
    if isinstance(volume.get("iscsi"), dict):
        volume["iscsi"].setdefault("iscsiInterface", "default")


def default_pod_spec(spec: Obj) -> None:
    """Defaults every PodSpec gets, in a pod or in a template."""
    if not isinstance(spec, dict):
        return
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    host_network = spec.get("hostNetwork") is True
    for key in _CONTAINER_LISTS:
        for container in spec.get(key) or []:
            default_container(container)
            if host_network and isinstance(container, dict):
                for port in container.get("ports") or []:
                    if isinstance(port, dict) and not port.get("hostPort"):
                        port["hostPort"] = port.get("containerPort")
    for volume in spec.get("volumes") or []:
        _default_volume(volume)


def default_pod_template(template: Any) -> None:
    if isinstance(template, dict):
        default_pod_spec(template.setdefault("spec", {}))


def default_pod(obj: Obj) -> None:
    """Defaults of a Pod object (its spec plus what only pods get)."""
    spec = obj.setdefault("spec", {})
    default_pod_spec(spec)
    spec.setdefault("enableServiceLinks", True)
    # priority and preemptionPolicy are not defaults: the Priority admission plugin sets
    # them from the pod's PriorityClass, and refuses a pod that names other values.
    # The deprecated serviceAccount mirrors serviceAccountName (upstream's conversion).
    if spec.get("serviceAccountName") and not spec.get("serviceAccount"):
        spec["serviceAccount"] = spec["serviceAccountName"]
    elif spec.get("serviceAccount") and not spec.get("serviceAccountName"):
        spec["serviceAccountName"] = spec["serviceAccount"]
    for key in _CONTAINER_LISTS:
        for container in spec.get(key) or []:
            resources = container.get("resources") if isinstance(container, dict) else None
            if isinstance(resources, dict) and isinstance(resources.get("limits"), dict):
                requests = resources.setdefault("requests", {})
                if isinstance(requests, dict):
                    for name, value in resources["limits"].items():
                        requests.setdefault(name, value)


def qos_class(spec: Obj) -> str:
    """Guaranteed, Burstable or BestEffort, from the containers' requests and limits."""
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    guaranteed = True
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    for container in containers:
        resources = (container or {}).get("resources") or {}
        container_requests = {k: v for k, v in (resources.get("requests") or {}).items()
                              if k in ("cpu", "memory") and (parse_quantity(v) or 0) != 0}
        container_limits = {k: v for k, v in (resources.get("limits") or {}).items()
                            if k in ("cpu", "memory") and (parse_quantity(v) or 0) != 0}
        requests.update(container_requests)
        limits.update(container_limits)
        if set(container_limits) != {"cpu", "memory"}:
            guaranteed = False
        for name, value in container_requests.items():
            if parse_quantity(container_limits.get(name)) != parse_quantity(value):
                guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if guaranteed and set(limits) == {"cpu", "memory"}:
        return "Guaranteed"
    return "Burstable"


# --- validation -----------------------------------------------------------------------

def _env_name_problems(name: str) -> list[str]:
    if "=" in name:
        return ["must not contain '='"]
    if any(not (32 <= ord(c) <= 126) for c in name):
        return ["must consist of printable ASCII characters"]
    return []


def _validate_probe(probe: Any, path: str, liveness_like: bool) -> list[FieldError]:
    errors: list[FieldError] = []
    if probe is None:
        return errors
    if not isinstance(probe, dict):
        return [invalid(path, probe, "must be an object")]
    handlers = [k for k in ("exec", "httpGet", "tcpSocket", "grpc") if probe.get(k) is not None]
    if not handlers:
        errors.append(required(path, "must specify a handler type"))
    elif len(handlers) > 1:
        errors.append(forbidden(f"{path}.{handlers[1]}",
                                "may not specify more than 1 handler type"))
    for key in ("initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold",
                "failureThreshold"):
        errors.extend(validate_non_negative(probe.get(key), f"{path}.{key}"))
    if liveness_like and probe.get("successThreshold") not in (None, 1):
        errors.append(invalid(f"{path}.successThreshold", probe.get("successThreshold"),
                              "must be 1"))
    for key in ("httpGet", "tcpSocket"):
        action = probe.get(key)
        if isinstance(action, dict):
            errors.extend(_validate_port_ref(action.get("port"), f"{path}.{key}.port"))
    http = probe.get("httpGet")
    if isinstance(http, dict) and http.get("scheme") not in (None, "HTTP", "HTTPS"):
        errors.append(not_supported(f"{path}.httpGet.scheme", http["scheme"], ("HTTP", "HTTPS")))
    return errors


def _validate_port_ref(port: Any, path: str) -> list[FieldError]:
    if port is None or port == "":
        return [required(path, "")]
    if is_int(port):
        return [invalid(path, port, p) for p in port_number_problems(port)]
    if isinstance(port, str):
        return [invalid(path, port, p) for p in port_name_problems(port)]
    return [invalid(path, port, "must be an integer or a port name")]


def _validate_resources(resources: Any, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if not isinstance(resources, dict):
        return errors
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    errors.extend(validate_quantity_map(limits, f"{path}.limits"))
    errors.extend(validate_quantity_map(requests, f"{path}.requests"))
    if isinstance(limits, dict) and isinstance(requests, dict):
        for name, value in requests.items():
            request = parse_quantity(value)
            limit = parse_quantity(limits.get(name)) if name in limits else None
            if request is not None and limit is not None and request > limit:
                errors.append(invalid(f"{path}.requests[{name}]", value,
                                      f"must be less than or equal to {name} limit of "
                                      f"{limits[name]}"))
    return errors


# Fields an ephemeral container may not set: it must not be relied on for the pod's own
# service (upstream lists the allowed fields; these are the container fields it leaves out).
EPHEMERAL_FORBIDDEN_FIELDS = ("ports", "resources", "resizePolicy", "lifecycle",
                              "livenessProbe", "readinessProbe", "startupProbe",
                              "restartPolicy")
EPHEMERAL_FORBIDDEN = "cannot be set for an Ephemeral Container"


def _validate_ephemeral_only(container: Obj, path: str) -> list[FieldError]:
    errors = [forbidden(f"{path}.{key}", EPHEMERAL_FORBIDDEN)
              for key in EPHEMERAL_FORBIDDEN_FIELDS if container.get(key)]
    for index, mount in enumerate(container.get("volumeMounts") or []):
        if isinstance(mount, dict) and mount.get("subPath"):
            # A subPath is a bind mount that outlives the container until the pod goes.
            errors.append(forbidden(f"{path}.volumeMounts[{index}].subPath",
                                    EPHEMERAL_FORBIDDEN))
    return errors


def _validate_container(container: Any, path: str, volumes: set[str], kind: str
                        ) -> list[FieldError]:
    errors: list[FieldError] = []
    if not isinstance(container, dict):
        return [invalid(path, container, "must be an object")]
    name = container.get("name")
    if not name:
        errors.append(required(f"{path}.name", ""))
    elif isinstance(name, str):
        errors.extend(invalid(f"{path}.name", name, p) for p in dns1123_label_problems(name))
    if not container.get("image"):
        errors.append(required(f"{path}.image", ""))
    errors.extend(validate_enum(container.get("imagePullPolicy"), f"{path}.imagePullPolicy",
                                PULL_POLICIES))
    errors.extend(validate_enum(container.get("terminationMessagePolicy"),
                                f"{path}.terminationMessagePolicy",
                                TERMINATION_MESSAGE_POLICIES))
    if kind == "ephemeralContainers":
        errors.extend(_validate_ephemeral_only(container, path))
    elif container.get("restartPolicy") is not None:
        if kind != "initContainers":
            errors.append(forbidden(f"{path}.restartPolicy",
                                    "may not be set for non-init containers"))
        elif container["restartPolicy"] != "Always":
            errors.append(not_supported(f"{path}.restartPolicy", container["restartPolicy"],
                                        ("Always",)))
    port_names: set[str] = set()
    for index, port in enumerate(container.get("ports") or []):
        ppath = f"{path}.ports[{index}]"
        if not isinstance(port, dict):
            errors.append(invalid(ppath, port, "must be an object"))
            continue
        if port.get("containerPort") is None:
            errors.append(required(f"{ppath}.containerPort", ""))
        else:
            errors.extend(invalid(f"{ppath}.containerPort", port["containerPort"], p)
                          for p in port_number_problems(port["containerPort"]))
        host_port = port.get("hostPort")
        if host_port not in (None, 0):
            errors.extend(invalid(f"{ppath}.hostPort", host_port, p)
                          for p in port_number_problems(host_port))
        errors.extend(validate_enum(port.get("protocol"), f"{ppath}.protocol", PROTOCOLS))
        port_name = port.get("name")
        if port_name:
            errors.extend(invalid(f"{ppath}.name", port_name, p)
                          for p in port_name_problems(port_name))
            if port_name in port_names:
                errors.append(duplicate(f"{ppath}.name", port_name))
            port_names.add(port_name)
    for index, env in enumerate(container.get("env") or []):
        epath = f"{path}.env[{index}]"
        if not isinstance(env, dict):
            errors.append(invalid(epath, env, "must be an object"))
            continue
        env_name = env.get("name")
        if not env_name:
            errors.append(required(f"{epath}.name", ""))
        else:
            errors.extend(invalid(f"{epath}.name", env_name, p)
                          for p in _env_name_problems(env_name))
        value_from = env.get("valueFrom")
        if value_from is not None:
            if env.get("value"):
                errors.append(invalid(f"{epath}.valueFrom", "",
                                      "may not be specified when `value` is not empty"))
            sources = [k for k in ("fieldRef", "resourceFieldRef", "configMapKeyRef",
                                   "secretKeyRef", "fileKeyRef")
                       if isinstance(value_from, dict) and value_from.get(k) is not None]
            if not sources:
                errors.append(invalid(f"{epath}.valueFrom", "",
                                      "must specify one of: `fieldRef`, `resourceFieldRef`, "
                                      "`configMapKeyRef` or `secretKeyRef`"))
            elif len(sources) > 1:
                errors.append(invalid(f"{epath}.valueFrom", "",
                                      "may not have more than one field specified at a time"))
    mount_paths: set[str] = set()
    for index, mount in enumerate(container.get("volumeMounts") or []):
        mpath = f"{path}.volumeMounts[{index}]"
        if not isinstance(mount, dict):
            errors.append(invalid(mpath, mount, "must be an object"))
            continue
        mount_name = mount.get("name")
        if not mount_name:
            errors.append(required(f"{mpath}.name", ""))
        elif mount_name not in volumes:
            errors.append(not_found(f"{mpath}.name", mount_name))
        mount_path = mount.get("mountPath")
        if not mount_path:
            errors.append(required(f"{mpath}.mountPath", ""))
        elif mount_path in mount_paths:
            errors.append(invalid(f"{mpath}.mountPath", mount_path, "must be unique"))
        else:
            mount_paths.add(mount_path)
    errors.extend(_validate_resources(container.get("resources"), f"{path}.resources"))
    if kind != "ephemeralContainers":
        errors.extend(_validate_probe(container.get("livenessProbe"), f"{path}.livenessProbe",
                                      True))
        errors.extend(_validate_probe(container.get("startupProbe"), f"{path}.startupProbe",
                                      True))
        errors.extend(_validate_probe(container.get("readinessProbe"),
                                      f"{path}.readinessProbe", False))
    return errors


def validate_pod_spec(spec: Any, path: str = "spec") -> list[FieldError]:
    errors: list[FieldError] = []
    if not isinstance(spec, dict):
        return [required(path, "")]
    volumes: set[str] = set()
    for index, volume in enumerate(spec.get("volumes") or []):
        vpath = f"{path}.volumes[{index}]"
        if not isinstance(volume, dict):
            errors.append(invalid(vpath, volume, "must be an object"))
            continue
        name = volume.get("name")
        if not name:
            errors.append(required(f"{vpath}.name", ""))
        else:
            errors.extend(invalid(f"{vpath}.name", name, p) for p in dns1123_label_problems(name))
            if name in volumes:
                errors.append(duplicate(f"{vpath}.name", name))
            volumes.add(name)
        sources = [k for k in volume if k != "name" and volume[k] is not None]
        if not sources:
            errors.append(required(vpath, "must specify a volume type"))
        elif len(sources) > 1:
            errors.append(forbidden(f"{vpath}.{sources[1]}",
                                    "may not specify more than 1 volume type"))
        for key in _MODE_SOURCES:
            source = volume.get(key)
            if isinstance(source, dict) and source.get("defaultMode") is not None:
                mode = source["defaultMode"]
                if not is_int(mode) or not 0 <= mode <= 0o777:
                    errors.append(invalid(f"{vpath}.{key}.defaultMode", mode,
                                          "must be a number between 0 and 0777 (octal), both "
                                          "inclusive"))
    containers = spec.get("containers")
    if not containers:
        errors.append(required(f"{path}.containers", ""))
    names: set[str] = set()
    for kind in _CONTAINER_LISTS:
        items = spec.get(kind) or []
        if not isinstance(items, list):
            errors.append(invalid(f"{path}.{kind}", items, "must be a list"))
            continue
        for index, container in enumerate(items):
            cpath = f"{path}.{kind}[{index}]"
            errors.extend(_validate_container(container, cpath, volumes, kind))
            name = container.get("name") if isinstance(container, dict) else None
            if name:
                if name in names:
                    errors.append(duplicate(f"{cpath}.name", name))
                names.add(name)
    # An ephemeral container's target is a regular or init container of the pod.
    targets = {c.get("name") for kind in ("containers", "initContainers")
               for c in (spec.get(kind) if isinstance(spec.get(kind), list) else [])
               if isinstance(c, dict)}
    ephemerals = spec.get("ephemeralContainers")
    for index, container in enumerate(ephemerals if isinstance(ephemerals, list) else []):
        target = container.get("targetContainerName") if isinstance(container, dict) else None
        if target and target not in targets:
            errors.append(not_found(f"{path}.ephemeralContainers[{index}].targetContainerName",
                                    target))
    errors.extend(validate_enum(spec.get("restartPolicy"), f"{path}.restartPolicy",
                                RESTART_POLICIES, required_value=True))
    errors.extend(validate_enum(spec.get("dnsPolicy"), f"{path}.dnsPolicy", DNS_POLICIES,
                                required_value=True))
    if spec.get("dnsPolicy") == "None" and not spec.get("dnsConfig"):
        errors.append(required(f"{path}.dnsConfig",
                               "must provide `dnsConfig` when `dnsPolicy` is None"))
    errors.extend(validate_labels(spec.get("nodeSelector"), f"{path}.nodeSelector"))
    for key in ("serviceAccountName", "nodeName", "priorityClassName", "schedulerName"):
        value = spec.get(key)
        if value and isinstance(value, str):
            errors.extend(invalid(f"{path}.{key}", value, p)
                          for p in dns1123_subdomain_problems(value))
    for key in ("hostname", "subdomain"):
        value = spec.get(key)
        if value and isinstance(value, str):
            errors.extend(invalid(f"{path}.{key}", value, p)
                          for p in dns1123_label_problems(value))
    errors.extend(validate_positive(spec.get("activeDeadlineSeconds"),
                                    f"{path}.activeDeadlineSeconds"))
    errors.extend(validate_non_negative(spec.get("terminationGracePeriodSeconds"),
                                        f"{path}.terminationGracePeriodSeconds"))
    for index, toleration in enumerate(spec.get("tolerations") or []):
        tpath = f"{path}.tolerations[{index}]"
        if not isinstance(toleration, dict):
            errors.append(invalid(tpath, toleration, "must be an object"))
            continue
        key = toleration.get("key")
        if key:
            errors.extend(invalid(f"{tpath}.key", key, p) for p in qualified_name_problems(key))
        operator = toleration.get("operator") or "Equal"
        if operator not in TOLERATION_OPERATORS:
            errors.append(not_supported(f"{tpath}.operator", operator, TOLERATION_OPERATORS))
        if not key and operator != "Exists":
            errors.append(invalid(f"{tpath}.operator", operator,
                                  "operator must be Exists when `key` is empty, which means "
                                  "\"match all values and all keys\""))
        if operator == "Exists" and toleration.get("value"):
            errors.append(invalid(f"{tpath}.operator", toleration.get("value"),
                                  "value must be empty when `operator` is 'Exists'"))
        effect = toleration.get("effect")
        if effect:
            errors.extend(validate_enum(effect, f"{tpath}.effect", TAINT_EFFECTS))
        if toleration.get("tolerationSeconds") is not None and effect != "NoExecute":
            errors.append(invalid(f"{tpath}.effect", effect,
                                  "effect must be 'NoExecute' when `tolerationSeconds` is set"))
    for index, secret in enumerate(spec.get("imagePullSecrets") or []):
        if isinstance(secret, dict) and not secret.get("name"):
            errors.append(required(f"{path}.imagePullSecrets[{index}].name", ""))
    ips: set[str] = set()
    for index, alias in enumerate(spec.get("hostAliases") or []):
        if isinstance(alias, dict):
            ip = alias.get("ip")
            if not ip:
                errors.append(required(f"{path}.hostAliases[{index}].ip", ""))
            ips.add(ip)
    errors.extend(_validate_resources(spec.get("overhead") and {"limits": spec["overhead"]},
                                      f"{path}.overhead"))
    return errors


def validate_pod_template(template: Any, path: str = "spec.template",
                          restart_policies: tuple[str, ...] | None = None) -> list[FieldError]:
    """A PodTemplateSpec inside a workload; `restart_policies` limits the pod's policy."""
    errors: list[FieldError] = []
    if not isinstance(template, dict):
        return [required(path, "")]
    meta = template.get("metadata") or {}
    errors.extend(validate_labels(meta.get("labels"), f"{path}.metadata.labels"))
    errors.extend(validate_annotations(meta.get("annotations"), f"{path}.metadata.annotations"))
    spec = template.get("spec")
    errors.extend(validate_pod_spec(spec, f"{path}.spec"))
    if isinstance(spec, dict) and restart_policies is not None:
        policy = spec.get("restartPolicy")
        if policy and policy in RESTART_POLICIES and policy not in restart_policies:
            errors.append(not_supported(f"{path}.spec.restartPolicy", policy, restart_policies))
    if isinstance(spec, dict) and spec.get("activeDeadlineSeconds") is not None \
            and restart_policies == ("Always",):
        errors.append(forbidden(f"{path}.spec.activeDeadlineSeconds",
                                "activeDeadlineSeconds in ReplicaSet is not Supported"))
    return errors


def _without_mutable(spec: Obj, old_spec: Obj) -> tuple[Obj, Obj]:
    """Both specs with the fields a pod update may change made equal."""
    new = copy.deepcopy(spec)
    old = copy.deepcopy(old_spec)
    for key in ("containers", "initContainers"):
        for index, container in enumerate(new.get(key) or []):
            olds = old.get(key) or []
            if index < len(olds) and isinstance(container, dict) and isinstance(olds[index], dict):
                container["image"] = olds[index].get("image")
    for key in ("activeDeadlineSeconds", "terminationGracePeriodSeconds"):
        new.pop(key, None)
        old.pop(key, None)
    old_tolerations = old.get("tolerations") or []
    new_tolerations = new.get("tolerations") or []
    if all(t in new_tolerations for t in old_tolerations):
        new.pop("tolerations", None)
        old.pop("tolerations", None)
    # Scheduling gates may only be removed; node selector / affinity may be added to while
    # the pod is still gated (upstream's rule); keep it simple: removal of gates only.
    old_gates = old.get("schedulingGates") or []
    new_gates = new.get("schedulingGates") or []
    if all(g in old_gates for g in new_gates):
        new.pop("schedulingGates", None)
        old.pop("schedulingGates", None)
    # Ephemeral containers change only through their subresource.
    new.pop("ephemeralContainers", None)
    old.pop("ephemeralContainers", None)
    return new, old


def validate_pod_spec_update(spec: Any, old_spec: Any, path: str = "spec") -> list[FieldError]:
    if not isinstance(spec, dict) or not isinstance(old_spec, dict):
        return []
    errors: list[FieldError] = []
    old_deadline = old_spec.get("activeDeadlineSeconds")
    new_deadline = spec.get("activeDeadlineSeconds")
    if old_deadline is not None and (new_deadline is None or
                                     (is_int(new_deadline) and new_deadline > old_deadline)):
        errors.append(invalid(f"{path}.activeDeadlineSeconds", new_deadline,
                              "must be less than or equal to previous value"))
    new, old = _without_mutable(spec, old_spec)
    if new != old:
        changed = sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
        errors.append(forbidden(path, "pod updates may not change fields other than "
                                "`spec.containers[*].image`, `spec.initContainers[*].image`, "
                                "`spec.activeDeadlineSeconds`, `spec.tolerations` (only "
                                "additions to existing tolerations), "
                                "`spec.terminationGracePeriodSeconds`; changed: "
                                + ", ".join(f"spec.{k}" for k in changed)))
    return errors


def container_names(template: Any) -> str:
    spec = (template or {}).get("spec") or {}
    return ",".join(c.get("name", "") for c in spec.get("containers") or [] if isinstance(c, dict))


def container_images(template: Any) -> str:
    spec = (template or {}).get("spec") or {}
    return ",".join(c.get("image", "") for c in spec.get("containers") or []
                    if isinstance(c, dict))


_SELECTOR_OPS = {"In": "in", "NotIn": "notin"}


def format_labels(labels: Any) -> str:
    """labels.FormatLabels: "a=b,c=d" sorted by key, "<none>" when empty."""
    if not isinstance(labels, dict) or not labels:
        return "<none>"
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def format_label_selector(selector: Any) -> str:
    """metav1.FormatLabelSelector: matchLabels and expressions, "<none>" when empty."""
    if not isinstance(selector, dict):
        return "<none>"
    parts = [(k, f"{k}={v}") for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        operator = expr.get("operator")
        key = expr.get("key", "")
        values = sorted(expr.get("values") or [])
        if operator in _SELECTOR_OPS:
            parts.append((key, f"{key} {_SELECTOR_OPS[operator]} ({','.join(values)})"))
        elif operator == "Exists":
            parts.append((key, key))
        elif operator == "DoesNotExist":
            parts.append((key, f"!{key}"))
    text = ",".join(text for _, text in sorted(parts, key=lambda part: part[0]))
    if not text:
        return "<none>"
    return text

