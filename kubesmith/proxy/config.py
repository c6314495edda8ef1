"""kube-proxy's configuration: a KubeProxyConfiguration file (kubeproxy.config.k8s.io/
v1alpha1) given with --config, upstream's defaults, and the few command-line flags
kubesmith's deploy uses.

    kube-proxy --config=/var/lib/kube-proxy/config.conf --hostname-override=node-1

Fields read from the file (upstream's names and defaults):

    clientConnection.kubeconfig, .qps (5), .burst (10)
    hostnameOverride, bindAddress, clusterCIDR, mode ("" or "iptables" only)
    healthzBindAddress ("0.0.0.0:10256"), metricsBindAddress ("127.0.0.1:10249")
    iptables.masqueradeAll (false), .masqueradeBit (14), .localhostNodePorts (true),
             .syncPeriod ("30s"), .minSyncPeriod ("1s")
    nodePortAddresses: CIDRs and the keywords "primary", "localhost", "all"
                       (unset means "all", as upstream's iptables mode)
    detectLocalMode: "ClusterCIDR" (the default) or "" (no local-traffic detection)

Flags: --config, --kubeconfig, --hostname-override, --cluster-cidr, --bind-address,
--healthz-bind-address, --metrics-bind-address, --proxy-mode, --masquerade-all,
--iptables-masquerade-bit, --iptables-localhost-nodeports, --iptables-sync-period,
--iptables-min-sync-period, --nodeport-addresses, --kube-api-qps, --kube-api-burst,
--cleanup, --v.

Other upstream fields are accepted and ignored (conntrack sysctls are left as the host
has them). Upstream ignores most flags once --config is given; kubesmith lets a flag
given explicitly override the file, which is what --hostname-override and
--kubeconfig need and which no deploy depends on either way.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubesmith.flags import FlagParser, comma_list, parse_bool, parse_duration

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
KIND = "KubeProxyConfiguration"
NODE_PORT_KEYWORDS = ("primary", "localhost", "all")


class ConfigError(ValueError):
    pass


@dataclass
class ProxyConfig:
    kubeconfig: str = ""
    kube_api_qps: float = 5.0
    kube_api_burst: int = 10
    hostname_override: str = ""
    bind_address: str = "0.0.0.0"
    cluster_cidr: list[ipaddress.IPv4Network] = field(default_factory=list)
    mode: str = "iptables"
    healthz_bind_address: str = "0.0.0.0:10256"
    metrics_bind_address: str = "127.0.0.1:10249"
    masquerade_all: bool = False
    masquerade_bit: int = 14
    localhost_node_ports: bool = True
    sync_period: float = 30.0
    min_sync_period: float = 1.0
    node_port_addresses: list[str] = field(default_factory=list)
    detect_local_mode: str = "ClusterCIDR"
    cleanup: bool = False
    v: int = 0


def _duration(value: Any, name: str) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return parse_duration(str(value))
    except Exception:
        raise ConfigError(f"{name}: invalid duration {value!r}") from None


def _cidrs(value: Any, name: str) -> list[ipaddress.IPv4Network]:
    nets = []
    for part in str(value or "").split(","):
        if not part.strip():
            continue
        try:
            net = ipaddress.ip_network(part.strip(), strict=False)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        # Only IPv4 is proxied; an IPv6 half of a dual-stack pair is skipped.
        if net.version == 4:
            nets.append(net)
    return nets


def _split_host_port(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{name}: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def host_port(value: str, name: str = "address") -> tuple[str, int]:
    """("0.0.0.0", 10256) from "0.0.0.0:10256" (port 0 turns a server off)."""
    return _split_host_port(value, name)


def from_file(path: str | Path, config: ProxyConfig | None = None) -> ProxyConfig:
    """The configuration of a KubeProxyConfiguration file over `config` (or defaults)."""
    config = config or ProxyConfig()
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: not a {KIND}")
    if doc.get("kind", KIND) != KIND or doc.get("apiVersion", API_VERSION) != API_VERSION:
        raise ConfigError(f"{path}: expected {API_VERSION} {KIND}, got "
                          f"{doc.get('apiVersion')} {doc.get('kind')}")
    connection = doc.get("clientConnection") or {}
    if connection.get("kubeconfig"):
        config.kubeconfig = str(connection["kubeconfig"])
    if connection.get("qps"):
        config.kube_api_qps = float(connection["qps"])
    if connection.get("burst"):
        config.kube_api_burst = int(connection["burst"])
    for key, attr in (("hostnameOverride", "hostname_override"),
                      ("bindAddress", "bind_address"),
                      ("healthzBindAddress", "healthz_bind_address"),
                      ("metricsBindAddress", "metrics_bind_address")):
        if doc.get(key):
            setattr(config, attr, str(doc[key]))
    if doc.get("clusterCIDR"):
        config.cluster_cidr = _cidrs(doc["clusterCIDR"], "clusterCIDR")
    if doc.get("mode"):
        config.mode = str(doc["mode"])
    if "detectLocalMode" in doc:
        config.detect_local_mode = str(doc["detectLocalMode"] or "ClusterCIDR")
    iptables = doc.get("iptables") or {}
    if iptables.get("masqueradeAll") is not None:
        config.masquerade_all = bool(iptables["masqueradeAll"])
    if iptables.get("masqueradeBit") is not None:
        config.masquerade_bit = int(iptables["masqueradeBit"])
    if iptables.get("localhostNodePorts") is not None:
        config.localhost_node_ports = bool(iptables["localhostNodePorts"])
    if iptables.get("syncPeriod"):
        config.sync_period = _duration(iptables["syncPeriod"], "iptables.syncPeriod")
    if iptables.get("minSyncPeriod") is not None:
        config.min_sync_period = _duration(iptables["minSyncPeriod"], "iptables.minSyncPeriod")
    if doc.get("nodePortAddresses"):
        config.node_port_addresses = [str(a) for a in doc["nodePortAddresses"]]
    return config


def validate(config: ProxyConfig) -> ProxyConfig:
    if config.mode not in ("", "iptables"):
        raise ConfigError(f"mode {config.mode!r} is not supported (only \"iptables\")")
    config.mode = "iptables"
    if not 0 <= config.masquerade_bit <= 31:
        raise ConfigError("iptables.masqueradeBit must be within [0, 31]")
    if config.sync_period <= 0:
        raise ConfigError("iptables.syncPeriod must be greater than 0")
    if config.min_sync_period < 0:
        raise ConfigError("iptables.minSyncPeriod must be 0 or more")
    if config.detect_local_mode not in ("ClusterCIDR", ""):
        raise ConfigError(f"detectLocalMode {config.detect_local_mode!r} is not supported")
    for entry in config.node_port_addresses:
        if entry in NODE_PORT_KEYWORDS:
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"nodePortAddresses: {entry!r} is neither a CIDR nor one of "
                              f"{', '.join(NODE_PORT_KEYWORDS)}") from None
    for value, name in ((config.healthz_bind_address, "healthzBindAddress"),
                        (config.metrics_bind_address, "metricsBindAddress")):
        if value:
            _split_host_port(value, name)
    if not config.kubeconfig and not config.cleanup:
        raise ConfigError("no kubeconfig: give --kubeconfig or clientConnection.kubeconfig")
    return config


def _parser() -> FlagParser:
    parser = FlagParser("kube-proxy", "kubesmith's kube-proxy (iptables mode)",
                        error=ConfigError)
    flag = parser.flag
    flag("--config", help_="a KubeProxyConfiguration file")
    flag("--kubeconfig", help_="kubeconfig of the API server")
    flag("--hostname-override", help_="the name of this node (default: the hostname)")
    flag("--cluster-cidr", help_="the pod range; traffic to ClusterIPs from outside it "
         "is masqueraded")
    flag("--bind-address", help_="this node's primary IP (default 0.0.0.0)")
    flag("--healthz-bind-address", help_="HOST:PORT of /healthz (default 0.0.0.0:10256)")
    flag("--metrics-bind-address", help_="HOST:PORT of /metrics (default 127.0.0.1:10249)")
    flag("--proxy-mode", help_="only \"iptables\"", dest="mode")
    flag("--masquerade-all", boolean=True, help_="SNAT all traffic to ClusterIPs")
    flag("--iptables-masquerade-bit", int, "fwmark bit marking traffic to SNAT (default 14)",
         dest="masquerade_bit")
    flag("--iptables-localhost-nodeports", parse_bool, "serve NodePorts on 127.0.0.1 "
         "(default true)", dest="localhost_node_ports")
    flag("--iptables-sync-period", parse_duration, "full resync period (default 30s)",
         dest="sync_period")
    flag("--iptables-min-sync-period", parse_duration, "least time between syncs "
         "(default 1s)", dest="min_sync_period")
    flag("--nodeport-addresses", comma_list, "CIDRs or primary/localhost/all",
         dest="node_port_addresses")
    flag("--cleanup", boolean=True, help_="remove kube-proxy's iptables rules and exit")
    flag("--kube-api-qps", float, "default 5")
    flag("--kube-api-burst", int, "default 10")
    parser.verbosity_flag()
    return parser


def parse(argv: list[str]) -> ProxyConfig:
    """The configuration from the command line (and the --config file it names)."""
    known, unknown = _parser().parse_known_args(argv)
    if unknown:
        raise ConfigError(f"unknown flag: {unknown[0].split('=')[0]}")
    values = vars(known)
    config = ProxyConfig()
    if values.get("config"):
        config = from_file(values.pop("config"), config)
    values.pop("config", None)
    if "cluster_cidr" in values:
        values["cluster_cidr"] = _cidrs(values["cluster_cidr"], "--cluster-cidr")
    for key, value in values.items():
        setattr(config, key, value)
    return validate(config)
