"""The kubelet's settings: its KubeletConfiguration file (`--config`) and command line.

    options = parse_args(["--config", "/var/lib/kubelet/config.yaml",
                          "--kubeconfig", "/etc/kubernetes/kubelet.conf"])
    options.config.node_status_update_frequency   # 10.0 (seconds)

The file is upstream's kubelet.config.k8s.io/v1beta1 KubeletConfiguration (YAML or JSON)
with upstream's defaults. Fields this kubelet does not act on (evictionHard, failSwapOn,
imageMinimumGCAge, ...) and fields it does not know are accepted and ignored, as
upstream's lenient decoding does; a value of the wrong form is a `ConfigError` naming the
field, which main.py reports before exiting 1. Command-line flags win over the file, as
upstream's do.
"""
from __future__ import annotations

import argparse
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

import yaml

from kubesmith.api.validation import parse_quantity
from kubesmith.flags import FlagParser, comma_list, ip, parse_duration

API_VERSION = "kubelet.config.k8s.io/v1beta1"
KIND = "KubeletConfiguration"
DEFAULT_RUNTIME_ENDPOINT = "unix:///run/containerd/containerd.sock"
DEFAULT_ROOT_DIR = "/var/lib/kubelet"
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class ConfigError(ValueError):
    """A kubelet setting with a value of the wrong form (the message names it)."""


@dataclass
class KubeletConfig:
    """KubeletConfiguration's fields this kubelet uses, with upstream's defaults.
    Durations are seconds, sizes bytes."""
    address: str = "0.0.0.0"
    port: int = 10250
    healthz_bind_address: str = "127.0.0.1"
    healthz_port: int = 10248
    static_pod_path: str = ""
    file_check_frequency: float = 20.0
    sync_frequency: float = 60.0
    cluster_dns: list[str] = field(default_factory=list)
    cluster_domain: str = ""
    cgroup_root: str = "/"
    cgroups_per_qos: bool = True
    cgroup_driver: str = "cgroupfs"
    tls_cert_file: str = ""
    tls_private_key_file: str = ""
    client_ca_file: str = ""
    webhook_authentication: bool = True
    anonymous_authentication: bool = False
    authorization_mode: str = "Webhook"
    container_log_max_size: int = 10 * 1024 * 1024
    container_log_max_files: int = 5
    node_status_update_frequency: float = 10.0
    node_status_report_frequency: float = 300.0
    node_lease_duration_seconds: int = 40
    max_pods: int = 110
    pod_pids_limit: int = -1
    register_node: bool = True
    register_with_taints: list[dict] = field(default_factory=list)
    node_labels: dict[str, str] = field(default_factory=dict)
    resolv_conf: str = "/etc/resolv.conf"
    runtime_request_timeout: float = 120.0
    container_runtime_endpoint: str = DEFAULT_RUNTIME_ENDPOINT
    serialize_image_pulls: bool = True
    enable_server: bool = True
    provider_id: str = ""


# --- value parsers: each raises ConfigError naming the field -------------------------

def _duration(name: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # metav1.Duration in JSON is a string; a bare number is nanoseconds in Go.
        return float(value) / 1e9
    try:
        seconds = parse_duration(str(value))
    except argparse.ArgumentTypeError:
        raise ConfigError(f"{name}: invalid duration {value!r} (e.g. 10s, 1m30s)") from None
    if seconds < 0:
        raise ConfigError(f"{name}: must not be negative, got {value!r}")
    return seconds


def _int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: want an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: want true or false, got {value!r}")
    return value


def _str(name: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{name}: want a string, got {value!r}")
    return value


def _port(name: str, value: Any) -> int:
    number = _int(name, value)
    if not 0 <= number <= 65535:
        raise ConfigError(f"{name}: {number} is not a valid port")
    return number


def _address(name: str, value: Any) -> str:
    text = _str(name, value)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not an IP address") from None


def _size(name: str, value: Any) -> int:
    number = parse_quantity(value)
    if number is None or number < 0:
        raise ConfigError(f"{name}: invalid quantity {value!r} (e.g. 10Mi)")
    return int(number)


def parse_taints(text_or_list: Any, name: str = "registerWithTaints") -> list[dict]:
    """Taints as `--register-with-taints` ("key=value:Effect,key:Effect") or as the
    config file's list of {key, value, effect}."""
    if isinstance(text_or_list, str):
        items = []
        for part in comma_list(text_or_list):
            head, sep, effect = part.rpartition(":")
            key, _, value = head.partition("=")
            items.append({"key": key, "value": value, "effect": effect} if sep
                         else {"key": part, "effect": ""})
    elif isinstance(text_or_list, list):
        items = text_or_list
    elif text_or_list is None:
        items = []
    else:
        raise ConfigError(f"{name}: want a list of taints, got {text_or_list!r}")
    taints = []
    for item in items:
        if not isinstance(item, dict) or not item.get("key") \
                or item.get("effect") not in TAINT_EFFECTS:
            raise ConfigError(f"{name}: invalid taint {item!r}: want key[=value]:"
                              f"{'|'.join(TAINT_EFFECTS)}")
        taint = {"key": str(item["key"]), "effect": item["effect"]}
        if item.get("value"):
            taint["value"] = str(item["value"])
        taints.append(taint)
    return taints


def _is_kubelet_label(key: str) -> bool:
    """Upstream's kubelet label set: the kubernetes.io/k8s.io labels a kubelet may put
    on its own Node (NodeRestriction refuses the others, node-role.* included)."""
    allowed = {"kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch",
               "beta.kubernetes.io/os", "beta.kubernetes.io/arch",
               "beta.kubernetes.io/instance-type", "node.kubernetes.io/instance-type",
               "topology.kubernetes.io/zone", "topology.kubernetes.io/region",
               "failure-domain.beta.kubernetes.io/zone",
               "failure-domain.beta.kubernetes.io/region"}
    if key in allowed:
        return True
    prefix = key.split("/", 1)[0] if "/" in key else ""
    return any(prefix == d or prefix.endswith("." + d)
               for d in ("kubelet.kubernetes.io", "node.kubernetes.io"))


def parse_node_labels(value: Any, name: str = "--node-labels") -> dict[str, str]:
    """`--node-labels` ("k=v,k2=v2") or the config's map; labels in the kubernetes.io
    and k8s.io namespaces outside the kubelet's own set are refused, as upstream's
    kubelet refuses them at start."""
    if isinstance(value, str):
        labels = {}
        for part in comma_list(value):
            key, sep, val = part.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{name}: invalid label {part!r}: want key=value")
            labels[key.strip()] = val.strip()
    elif isinstance(value, dict):
        labels = {str(k): "" if v is None else str(v) for k, v in value.items()}
    elif value is None:
        labels = {}
    else:
        raise ConfigError(f"{name}: want key=value pairs, got {value!r}")
    bad = []
    for key in labels:
        prefix = key.split("/", 1)[0] if "/" in key else ""
        restricted = any(prefix == d or prefix.endswith("." + d)
                         for d in ("kubernetes.io", "k8s.io"))
        if restricted and not _is_kubelet_label(key):
            bad.append(key)
        elif prefix == "node-restriction.kubernetes.io" or prefix.endswith(
                ".node-restriction.kubernetes.io"):
            bad.append(key)
    if bad:
        raise ConfigError(
            f"{name}: unknown 'kubernetes.io' or 'k8s.io' labels specified: "
            f"{', '.join(sorted(set(bad)))} (the kubelet may only set its own labels "
            f"under those prefixes)")
    return labels


# Config file key -> (attribute, parser). Nested keys are written with dots.
_FIELDS: dict[str, tuple[str, Any]] = {
    "address": ("address", _address),
    "port": ("port", _port),
    "healthzBindAddress": ("healthz_bind_address", _address),
    "healthzPort": ("healthz_port", _port),
    "staticPodPath": ("static_pod_path", _str),
    "fileCheckFrequency": ("file_check_frequency", _duration),
    "syncFrequency": ("sync_frequency", _duration),
    "clusterDomain": ("cluster_domain", _str),
    "cgroupRoot": ("cgroup_root", _str),
    "cgroupsPerQOS": ("cgroups_per_qos", _bool),
    "tlsCertFile": ("tls_cert_file", _str),
    "tlsPrivateKeyFile": ("tls_private_key_file", _str),
    "authentication.x509.clientCAFile": ("client_ca_file", _str),
    "authentication.webhook.enabled": ("webhook_authentication", _bool),
    "authentication.anonymous.enabled": ("anonymous_authentication", _bool),
    "containerLogMaxSize": ("container_log_max_size", _size),
    "containerLogMaxFiles": ("container_log_max_files", lambda n, v: _int(n, v, 2)),
    "nodeStatusUpdateFrequency": ("node_status_update_frequency", _duration),
    "nodeStatusReportFrequency": ("node_status_report_frequency", _duration),
    "nodeLeaseDurationSeconds": ("node_lease_duration_seconds", lambda n, v: _int(n, v, 1)),
    "maxPods": ("max_pods", lambda n, v: _int(n, v, 1)),
    "podPidsLimit": ("pod_pids_limit", lambda n, v: _int(n, v, -1)),
    "registerNode": ("register_node", _bool),
    "registerWithTaints": ("register_with_taints", lambda n, v: parse_taints(v, n)),
    "nodeLabels": ("node_labels", lambda n, v: parse_node_labels(v, n)),
    "resolvConf": ("resolv_conf", _str),
    "runtimeRequestTimeout": ("runtime_request_timeout", _duration),
    "containerRuntimeEndpoint": ("container_runtime_endpoint", _str),
    "serializeImagePulls": ("serialize_image_pulls", _bool),
    "enableServer": ("enable_server", _bool),
    "providerID": ("provider_id", _str),
}


def _lookup(doc: dict, dotted: str) -> tuple[bool, Any]:
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def parse_config(doc: Any) -> KubeletConfig:
    """A KubeletConfiguration document (already decoded) -> KubeletConfig."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError("the kubelet config must be a KubeletConfiguration object")
    kind, version = doc.get("kind"), doc.get("apiVersion")
    if kind is not None and kind != KIND:
        raise ConfigError(f"kind: want {KIND}, got {kind!r}")
    if version is not None and version != API_VERSION:
        raise ConfigError(f"apiVersion: want {API_VERSION}, got {version!r}")
    config = KubeletConfig()
    for key, (attribute, parser) in _FIELDS.items():
        present, value = _lookup(doc, key)
        if present and value is not None:
            setattr(config, attribute, parser(key, value))
    present, dns = _lookup(doc, "clusterDNS")
    if present and dns is not None:
        if not isinstance(dns, list):
            raise ConfigError(f"clusterDNS: want a list of IP addresses, got {dns!r}")
        config.cluster_dns = [_address("clusterDNS", item) for item in dns]
    driver = doc.get("cgroupDriver")
    if driver is not None:
        if driver != "cgroupfs":
            raise ConfigError(f"cgroupDriver: only cgroupfs is supported, got {driver!r}")
        config.cgroup_driver = driver
    mode = _lookup(doc, "authorization.mode")[1]
    if mode is not None:
        if mode not in ("Webhook", "AlwaysAllow"):
            raise ConfigError(f"authorization.mode: want Webhook or AlwaysAllow, "
                              f"got {mode!r}")
        config.authorization_mode = mode
    if not config.cgroup_root:
        config.cgroup_root = "/"    # upstream: "" means the root with cgroupsPerQOS
    if not config.cgroup_root.startswith("/"):
        raise ConfigError(f"cgroupRoot: must be an absolute path, got {config.cgroup_root!r}")
    return config


def load_config(path: str) -> KubeletConfig:
    try:
        with open(path, encoding="utf-8") as source:
            doc = yaml.safe_load(source)
    except OSError as exc:
        raise ConfigError(f"reading {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_config(doc)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# --- the command line -----------------------------------------------------------------

@dataclass
class KubeletOptions:
    """Everything the kubelet was told: the command line over the config file."""
    config: KubeletConfig
    kubeconfig: str
    node_name: str
    node_ip: str = ""
    root_dir: str = DEFAULT_ROOT_DIR
    verbosity: int = 2
    config_path: str = ""


def _node_ip(text: str) -> str:
    # Upstream takes one address or a dual-stack pair; the first is the InternalIP.
    first = comma_list(text)[0] if comma_list(text) else ""
    return ip(first)


def parse_args(argv: list[str] | None) -> KubeletOptions:
    """The kubelet's command line (upstream flag names); raises ConfigError."""
    parser = FlagParser("kubelet", "kubesmith's kubelet: runs this node's pods through "
                        "CRI v1", error=ConfigError)
    parser.flag("--config", help_="KubeletConfiguration file")
    parser.flag("--kubeconfig", help_="kubeconfig of the API server")
    parser.flag("--hostname-override", help_="node name (default: the host name)")
    parser.flag("--node-ip", _node_ip, help_="the node's InternalIP")
    parser.flag("--container-runtime-endpoint", help_="CRI endpoint "
                f"({DEFAULT_RUNTIME_ENDPOINT})")
    parser.flag("--root-dir", help_=f"kubelet state folder ({DEFAULT_ROOT_DIR})")
    parser.flag("--register-with-taints", help_="taints the Node registers with, "
                "key=value:Effect,...")
    parser.flag("--node-labels", help_="labels the Node registers with, k=v,...")
    parser.flag("--pod-infra-container-image", help_="ignored: containerd's setting rules")
    parser.flag("--fail-swap-on", boolean=True, help_="ignored")
    parser.verbosity_flag()
    args = vars(parser.parse_args(argv))
    config_path = args.get("config", "")
    config = load_config(config_path) if config_path else KubeletConfig()
    if "container_runtime_endpoint" in args:
        config.container_runtime_endpoint = args["container_runtime_endpoint"]
    if "register_with_taints" in args:
        config.register_with_taints = parse_taints(args["register_with_taints"],
                                                   "--register-with-taints")
    if "node_labels" in args:
        config.node_labels = dict(config.node_labels,
                                  **parse_node_labels(args["node_labels"]))
    if not args.get("kubeconfig"):
        raise ConfigError("--kubeconfig is required (this kubelet does not run standalone)")
    name = (args.get("hostname_override") or socket.gethostname()).strip().lower()
    if not name:
        raise ConfigError("--hostname-override: the node name must not be empty")
    return KubeletOptions(config=config, kubeconfig=args["kubeconfig"], node_name=name,
                          node_ip=args.get("node_ip", ""),
                          root_dir=args.get("root_dir") or DEFAULT_ROOT_DIR,
                          verbosity=args.get("v", 2), config_path=config_path)
