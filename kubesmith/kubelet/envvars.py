"""A container's environment, as upstream's kubelet builds it.

    env = await container_env(pod, container, client=client, services=services,
                              node_name="node-1", host_ip="10.0.0.5", pod_ip="10.244.1.7")
    # -> [api.KeyValue(key="FOO", value="bar"), ..., api.KeyValue("KUBERNETES_PORT", ...)]

The order of work follows upstream's makeEnvironmentVariables:

1. `envFrom` (ConfigMaps and Secrets, with an optional prefix) fills a table first; keys
   that are no valid variable names are skipped.
2. `env` entries, in the order declared, replace or add to it: a literal `value` has its
   `$(VAR)` references expanded (against the variables so far and the service
   variables), a `valueFrom` is resolved (configMapKeyRef, secretKeyRef, fieldRef,
   resourceFieldRef).
3. The service variables (`FOO_SERVICE_HOST`, `FOO_PORT_80_TCP`, ...) come last, except
   names the container already defines.

A missing ConfigMap, Secret or key that is not `optional` is an `EnvError`, which the
kubelet reports as CreateContainerConfigError. The downward-API helpers here
(`pod_field_value`, `resource_field_value`) also serve downwardAPI volumes.
"""
from __future__ import annotations

import base64
import math
import re
from decimal import Decimal
from typing import Any, Callable, Mapping

from kubesmith.api.validation import parse_quantity
from kubesmith.client.rest import ApiClient, ApiError, is_not_found
from kubesmith.cri import api

Obj = dict[str, Any]

# Upstream's IsEnvVarName: what an envFrom key must look like to become a variable.
_ENV_VAR_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
# The service every pod gets variables for, even with enableServiceLinks false.
MASTER_SERVICE = ("default", "kubernetes")
# Unset limits read through the downward API default to the node's allocatable.
DEFAULTED_LIMITS = ("cpu", "memory", "ephemeral-storage")


class EnvError(Exception):
    """The environment cannot be built (a missing ConfigMap, Secret or key, a bad field
    path); the message is what the kubelet shows as CreateContainerConfigError."""


# --- $(VAR) expansion -----------------------------------------------------------------

def expand(text: str, mapping: Callable[[str], str]) -> str:
    """Upstream's expansion.Expand: `$(NAME)` becomes mapping(NAME), `$$` an escaped
    `$`; any other `$` and an unclosed `$(` stay as written."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            following = text[cursor + 1]
            if following == "$":                # "$$": one literal "$"
                out.append("$")
                advance = 1
            elif following == "(":
                closer = text.find(")", cursor + 2)
                if closer == -1:                # "$(" never closed: left as is
                    out.append("$(")
                    advance = 1
                else:
                    out.append(mapping(text[cursor + 2:closer]))
                    advance = closer - cursor
            else:                               # a "$" that starts no reference
                out.append("$" + following)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def mapping_for(*tables: Mapping[str, str]) -> Callable[[str], str]:
    """Upstream's MappingFuncFor: the first table holding a name gives its value; an
    unknown name is left as the `$(NAME)` it was written as."""
    def lookup(name: str) -> str:
        for table in tables:
            if name in table:
                return table[name]
        return f"$({name})"
    return lookup


def expand_subpath(expr: str, env: Mapping[str, str]) -> str:
    """A volumeMount's subPathExpr with the container's variables (upstream's
    ExpandContainerVolumeMounts): every referenced variable must have a value."""
    missing: set[str] = set()

    def lookup(name: str) -> str:
        value = env.get(name, "")
        if not value:
            missing.add(name)
        return value
    expanded = expand(expr, lookup)
    if missing:
        raise EnvError(f"missing value for {', '.join(sorted(missing))}")
    return expanded


# --- service variables ----------------------------------------------------------------

def _env_name(name: str) -> str:
    return name.replace("-", "_").upper()


def _cluster_ip_set(service: Obj) -> bool:
    ip = (service.get("spec") or {}).get("clusterIP") or ""
    return ip not in ("", "None")


def _host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def service_variables(service: Obj) -> list[tuple[str, str]]:
    """The variables of one Service with a ClusterIP, in upstream's FromServices order:
    FOO_SERVICE_HOST, FOO_SERVICE_PORT, FOO_SERVICE_PORT_<NAME> per named port, then the
    Docker-link ones (FOO_PORT, FOO_PORT_<port>_<PROTO>{,_PROTO,_PORT,_ADDR})."""
    spec = service.get("spec") or {}
    ports = spec.get("ports") or []
    if not _cluster_ip_set(service) or not ports:
        return []
    ip = spec["clusterIP"]
    prefix = _env_name(service["metadata"]["name"])
    out = [(f"{prefix}_SERVICE_HOST", ip),
           (f"{prefix}_SERVICE_PORT", str(ports[0].get("port")))]
    for port in ports:
        if port.get("name"):
            out.append((f"{prefix}_SERVICE_PORT_{_env_name(port['name'])}",
                        str(port.get("port"))))
    for index, port in enumerate(ports):
        protocol = port.get("protocol") or "TCP"
        url = f"{protocol.lower()}://{_host_port(ip, port.get('port'))}"
        if index == 0:
            out.append((f"{prefix}_PORT", url))
        port_prefix = f"{prefix}_PORT_{port.get('port')}_{protocol.upper()}"
        out += [(port_prefix, url),
                (f"{port_prefix}_PROTO", protocol.lower()),
                (f"{port_prefix}_PORT", str(port.get("port"))),
                (f"{port_prefix}_ADDR", ip)]
    return out


def service_env(services: list[Obj], namespace: str, enable_service_links: bool
                ) -> dict[str, str]:
    """The service variables a pod in `namespace` gets: default/kubernetes always, the
    namespace's other Services with a ClusterIP when service links are enabled."""
    chosen: dict[str, Obj] = {}
    for service in services:
        meta = service.get("metadata") or {}
        name, svc_namespace = meta.get("name"), meta.get("namespace")
        if not name or not _cluster_ip_set(service):
            continue
        if (svc_namespace, name) == MASTER_SERVICE:
            chosen.setdefault(name, service)
        elif svc_namespace == namespace and enable_service_links:
            chosen[name] = service
    env: dict[str, str] = {}
    for name in sorted(chosen):
        env.update(service_variables(chosen[name]))
    return env


# --- downward API ---------------------------------------------------------------------

def format_map(values: Mapping[str, str]) -> str:
    """Labels or annotations as the downward API writes them: `key="value"` lines,
    sorted by key, values quoted as Go's %q does."""
    return "\n".join(f"{key}={go_quote(values[key])}" for key in sorted(values))


def go_quote(text: str) -> str:
    """A string quoted as Go's %q writes it."""
    out = ['"']
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif not char.isprintable():
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x80 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _subscript(field_path: str) -> tuple[str, str | None]:
    """"metadata.labels['app']" -> ("metadata.labels", "app")."""
    if field_path.endswith("']") and "['" in field_path:
        base, _, key = field_path[:-2].partition("['")
        if base:
            return base, key
    return field_path, None


def metadata_field_value(pod: Obj, field_path: str) -> str:
    """The metadata.* field paths both env and downwardAPI volumes accept (upstream's
    ExtractFieldPathAsString)."""
    meta = pod.get("metadata") or {}
    base, key = _subscript(field_path)
    if base in ("metadata.labels", "metadata.annotations"):
        values = meta.get(base.split(".")[1]) or {}
        return format_map(values) if key is None else str(values.get(key, ""))
    if key is None and base in ("metadata.name", "metadata.namespace", "metadata.uid"):
        return str(meta.get(base.split(".")[1]) or "")
    raise EnvError(f"unsupported fieldPath: {field_path}")


def pod_field_value(pod: Obj, field_path: str, *, node_name: str = "", host_ip: str = "",
                    pod_ip: str = "") -> str:
    """An env fieldRef: metadata fields plus spec.nodeName, spec.serviceAccountName,
    status.hostIP(s) and status.podIP(s)."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    if field_path == "spec.nodeName":
        return spec.get("nodeName") or node_name
    if field_path == "spec.serviceAccountName":
        return spec.get("serviceAccountName") or ""
    if field_path == "status.hostIP":
        return host_ip or status.get("hostIP") or ""
    if field_path == "status.hostIPs":
        ips = [entry.get("ip") for entry in status.get("hostIPs") or [] if entry.get("ip")]
        return ",".join(_with_first(ips, host_ip))
    if field_path == "status.podIP":
        return pod_ip or status.get("podIP") or ""
    if field_path == "status.podIPs":
        ips = [entry.get("ip") for entry in status.get("podIPs") or [] if entry.get("ip")]
        return ",".join(_with_first(ips, pod_ip))
    return metadata_field_value(pod, field_path)


def _with_first(ips: list[str], first: str) -> list[str]:
    """The known IPs with the kubelet's current one first (it may be newer than status)."""
    if not first:
        return ips
    return [first] + [ip for ip in ips if ip != first]


def _container_named(pod: Obj, name: str) -> Obj | None:
    spec = pod.get("spec") or {}
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if container.get("name") == name:
            return container
    return None


def resource_field_value(pod: Obj, container: Obj | None, ref: Obj,
                         node_allocatable: Mapping[str, Any] | None = None) -> str:
    """A resourceFieldRef (limits.cpu, requests.memory, limits.hugepages-2Mi, ...) of
    `container` (or the one ref.containerName names) divided by ref.divisor and rounded
    up, as upstream's ExtractContainerResourceValue; unset cpu, memory and
    ephemeral-storage limits read as the node's allocatable."""
    if ref.get("containerName"):
        container = _container_named(pod, ref["containerName"])
        if container is None:
            raise EnvError(f"container {ref['containerName']} not found")
    if container is None:
        raise EnvError("resourceFieldRef needs a containerName")
    resources = container.get("resources") or {}
    field = ref.get("resource") or ""
    kind, _, name = field.partition(".")
    if kind not in ("limits", "requests") or not (
            name in DEFAULTED_LIMITS or name.startswith("hugepages-")):
        raise EnvError(f"unsupported container resource : {field}")
    values = dict(resources.get(kind) or {})
    if kind == "limits":
        for resource_name in DEFAULTED_LIMITS:
            if resource_name not in values and node_allocatable and \
                    resource_name in node_allocatable:
                values[resource_name] = node_allocatable[resource_name]
    amount = parse_quantity(values.get(name, 0)) or Decimal(0)
    divisor = parse_quantity(ref.get("divisor") or 0) or Decimal(1)
    if name == "cpu":
        # MilliValue() of both, then the quotient rounded up.
        quotient = math.ceil(amount * 1000) / math.ceil(divisor * 1000)
    else:
        quotient = math.ceil(amount) / math.ceil(divisor)
    return str(math.ceil(quotient))


# --- ConfigMaps and Secrets -----------------------------------------------------------

class _Sources:
    """The ConfigMaps and Secrets one container's environment reads, each fetched once."""

    def __init__(self, client: ApiClient, namespace: str):
        self.client = client
        self.namespace = namespace
        self._cache: dict[tuple[str, str], Obj | None] = {}

    async def get(self, kind: str, name: str) -> Obj | None:
        """The object's string data (secrets decoded), None when it does not exist."""
        if (kind, name) not in self._cache:
            try:
                obj = await self.client.get(f"{kind}s", name, self.namespace)
            except ApiError as err:
                if not is_not_found(err):
                    raise EnvError(f"couldn't get {kind} {self.namespace}/{name}: "
                                   f"{err}") from err
                obj = None
            self._cache[(kind, name)] = None if obj is None else _string_data(kind, obj)
        return self._cache[(kind, name)]


def _string_data(kind: str, obj: Obj) -> dict[str, str]:
    if kind == "secret":
        return {key: base64.b64decode(value).decode(errors="replace")
                for key, value in (obj.get("data") or {}).items()}
    data = dict(obj.get("data") or {})
    for key, value in (obj.get("binaryData") or {}).items():
        data.setdefault(key, base64.b64decode(value).decode(errors="replace"))
    return data


_KIND_TITLE = {"configmap": "ConfigMap", "secret": "Secret"}


async def _key_ref(sources: _Sources, kind: str, ref: Obj) -> str | None:
    """A configMapKeyRef / secretKeyRef value; None when optional and missing."""
    name, key, optional = ref.get("name") or "", ref.get("key") or "", bool(ref.get("optional"))
    data = await sources.get(kind, name)
    if data is None:
        if optional:
            return None
        raise EnvError(f'{kind} "{name}" not found')
    if key not in data:
        if optional:
            return None
        raise EnvError(f"couldn't find key {key} in {_KIND_TITLE[kind]} "
                       f"{sources.namespace}/{name}")
    return data[key]


# --- the environment ------------------------------------------------------------------

async def container_env(pod: Obj, container: Obj, *, client: ApiClient,
                        services: list[Obj], node_name: str, host_ip: str, pod_ip: str,
                        node_allocatable: Mapping[str, Any] | None = None
                        ) -> list[api.KeyValue]:
    """The container's environment for its CRI ContainerConfig (see the module
    docstring). `services` are the Services of the pod's namespace plus
    default/kubernetes; `node_allocatable` (the Node's status.allocatable) stands in for
    unset limits in resourceFieldRefs."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    namespace = meta.get("namespace") or "default"
    links = spec.get("enableServiceLinks")
    services_env = service_env(services, namespace, True if links is None else bool(links))
    sources = _Sources(client, namespace)
    env: dict[str, str] = {}

    for env_from in container.get("envFrom") or []:
        prefix = env_from.get("prefix") or ""
        for field, kind in (("configMapRef", "configmap"), ("secretRef", "secret")):
            ref = env_from.get(field)
            if ref is None:
                continue
            data = await sources.get(kind, ref.get("name") or "")
            if data is None:
                if ref.get("optional"):
                    continue
                raise EnvError(f'{kind} "{ref.get("name")}" not found')
            for key, value in data.items():
                name = prefix + key
                if _ENV_VAR_NAME.match(name):      # invalid names are skipped, as upstream
                    env[name] = value

    lookup = mapping_for(env, services_env)
    for var in container.get("env") or []:
        name = var.get("name")
        if not name:
            continue
        value = var.get("value") or ""
        source = var.get("valueFrom")
        if value:
            value = expand(value, lookup)
        elif source:
            if source.get("configMapKeyRef") is not None:
                resolved = await _key_ref(sources, "configmap", source["configMapKeyRef"])
            elif source.get("secretKeyRef") is not None:
                resolved = await _key_ref(sources, "secret", source["secretKeyRef"])
            elif source.get("fieldRef") is not None:
                resolved = pod_field_value(pod, source["fieldRef"].get("fieldPath") or "",
                                           node_name=node_name, host_ip=host_ip,
                                           pod_ip=pod_ip)
            elif source.get("resourceFieldRef") is not None:
                resolved = resource_field_value(pod, container, source["resourceFieldRef"],
                                                node_allocatable)
            else:
                resolved = ""
            if resolved is None:        # an optional reference that is missing
                continue
            value = resolved
        env[name] = value

    result = [api.KeyValue(key=key, value=value) for key, value in env.items()]
    result += [api.KeyValue(key=key, value=value) for key, value in services_env.items()
               if key not in env]
    return result


def env_map(env: list[api.KeyValue]) -> dict[str, str]:
    """A built environment as a dict (for subPathExpr and command/args expansion)."""
    return {kv.key: kv.value for kv in env}
