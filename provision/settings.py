"""Cluster settings: their names, defaults, parsing and validation.

group_data/all.py documents every setting an operator may change; this module holds
the same names with their defaults (a unit test keeps the two in step) and turns raw
values into a validated `ClusterSettings`. Validation runs once, before any host is
touched, and reports every problem at once so an operator fixes them in one go.
"""
from __future__ import annotations

import difflib
import ipaddress
import os
import re
import runpy
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from provision.topology import Topology

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SERVICE_MANAGERS = ("auto", "systemd", "supervisor")
ETCD_SOURCES = ("debian",)
KEY_ALGORITHMS = ("ecdsa-p256", "rsa-2048")
_PYINFRA_DATA_PREFIXES = ("ssh_", "winrm_", "docker_", "local_", "_")

# RFC 1123 label, as Kubernetes requires for node names.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class SettingsError(ValueError):
    """One or more settings are wrong; `problems` lists each as a sentence."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid cluster settings ({len(problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class ClusterSettings:
    cluster_name: str
    service_cidr: IPNetwork
    pod_cidr: IPNetwork
    node_cidr_mask_size: int
    node_port_range: tuple[int, int]
    dns_domain: str
    dns_ip: IPAddress
    api_port: int
    service_manager: str
    etcd_source: str
    load_balancer_name: str | None
    load_balancer_ip: IPAddress | None
    key_algorithm: str
    ca_validity_days: int
    cert_validity_days: int
    state_dir: Path

    @property
    def first_service_ip(self) -> IPAddress:
        """The `kubernetes` Service's ClusterIP: the service range's first address."""
        return self.service_cidr.network_address + 1

    def api_endpoint(self, topology: Topology) -> str:
        """Host part of the URL that clients outside the masters use for the API."""
        if self.load_balancer_name:
            return self.load_balancer_name
        if self.load_balancer_ip:
            return _url_host(str(self.load_balancer_ip))
        return _url_host(topology.masters[0].address)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


# --- parsers: each returns the parsed value or raises ValueError with a reason ---

def _name(value: Any) -> str:
    if not isinstance(value, str) or not _DNS_LABEL.match(value):
        raise ValueError("must be a lowercase DNS label (a-z, 0-9, '-', at most 63 characters)")
    return value


def _network(value: Any) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(value), strict=True)
    except ValueError as exc:
        raise ValueError(f"is not a network in CIDR form ({exc})") from None


def _address(value: Any) -> IPAddress:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise ValueError("is not an IP address") from None


def _optional(parser: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        return None if value in (None, "") else parser(value)
    return parse


def _int_between(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return value
    return parse


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return parse


def _port_range(value: Any) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)-(\d+)", str(value))
    if not match:
        raise ValueError("must look like 30000-32767")
    low, high = int(match[1]), int(match[2])
    if not 1 <= low < high <= 65535:
        raise ValueError("must be a rising range of ports within 1-65535")
    return low, high


def _domain(value: Any) -> str:
    if not isinstance(value, str) or not _DNS_SUBDOMAIN.match(value) or len(value) > 253:
        raise ValueError("must be a lowercase DNS domain such as cluster.local")
    return value


def _hostname(value: Any) -> str:
    return _domain(value)


def _path(value: Any) -> Path | None:
    return Path(os.path.expanduser(str(value))) if value else None


# name -> (default, parser). group_data/all.py documents each of these.
SETTINGS: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "cluster_name": ("kubesmith", _name),
    "service_cidr": ("10.96.0.0/12", _network),
    "pod_cidr": ("10.244.0.0/16", _network),
    "node_cidr_mask_size": (24, _int_between(8, 30)),
    "node_port_range": ("30000-32767", _port_range),
    "dns_domain": ("cluster.local", _domain),
    "dns_ip": ("10.96.0.10", _address),
    "api_port": (6443, _int_between(1, 65535)),
    "service_manager": ("auto", _one_of(SERVICE_MANAGERS)),
    "etcd_source": ("debian", _one_of(ETCD_SOURCES)),
    "load_balancer_name": (None, _optional(_hostname)),
    "load_balancer_ip": (None, _optional(_address)),
    "key_algorithm": ("ecdsa-p256", _one_of(KEY_ALGORITHMS)),
    "ca_validity_days": (3650, _int_between(1, 36500)),
    "cert_validity_days": (365, _int_between(1, 3650)),
    "state_dir": (None, _path),
}


def default_state_dir(cluster_name: str) -> Path:
    """Where generated state lives unless `state_dir` says otherwise (outside any checkout)."""
    root = os.environ.get("KUBESMITH_STATE_DIR")
    if root:
        return Path(root) / cluster_name
    return Path.home() / ".kubesmith" / "clusters" / cluster_name


def load_settings(data: Mapping[str, Any]) -> ClusterSettings:
    """Parse and cross-check settings; raise SettingsError listing every problem."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name, (default, parse) in SETTINGS.items():
        raw = data.get(name, default)
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            problems.append(f"{name}={raw!r} {exc}")
    if problems:
        raise SettingsError(problems)

    service, pod = values["service_cidr"], values["pod_cidr"]
    if service.version != pod.version:
        problems.append("service_cidr and pod_cidr must be of the same IP family")
    elif service.overlaps(pod):
        problems.append(f"service_cidr {service} overlaps pod_cidr {pod}")
    if service.num_addresses < 8:
        problems.append(f"service_cidr {service} is too small (needs at least 8 addresses)")
    dns_ip = values["dns_ip"]
    if dns_ip.version != service.version or dns_ip not in service:
        problems.append(f"dns_ip {dns_ip} is outside service_cidr {service}")
    elif dns_ip in (service.network_address, service.network_address + 1, service.broadcast_address):
        problems.append(f"dns_ip {dns_ip} is reserved in service_cidr {service} "
                        "(network address, the kubernetes Service's IP, or broadcast)")
    if pod.version == 4 and values["node_cidr_mask_size"] <= pod.prefixlen:
        problems.append(f"node_cidr_mask_size /{values['node_cidr_mask_size']} must be longer "
                        f"than pod_cidr's /{pod.prefixlen}")
    low, high = values["node_port_range"]
    if low <= values["api_port"] <= high:
        problems.append(f"api_port {values['api_port']} lies inside node_port_range {low}-{high}")
    if problems:
        raise SettingsError(problems)

    if values["state_dir"] is None:
        values["state_dir"] = default_state_dir(values["cluster_name"])
    return ClusterSettings(**values)


def validate_topology(settings: ClusterSettings, topology: Topology) -> None:
    """Check the inventory against the settings; raise SettingsError listing every problem."""
    problems: list[str] = []
    if not topology.masters:
        problems.append("the inventory has no masters: put at least one host in the `masters` group")
    members = len(topology.etcd_members)
    if members == 0:
        problems.append("the inventory has no etcd members: put 1, 3 or 5 hosts in the `etcd` group")
    elif members % 2 == 0:
        problems.append(f"the `etcd` group has {members} members; etcd needs an odd count "
                        "(1, 3, 5) to keep a quorum")
    seen_addresses: dict[IPAddress, str] = {}
    for machine in topology.machines:
        if not _DNS_LABEL.match(machine.name):
            problems.append(f"host name {machine.name!r} is not a lowercase DNS label "
                            "(Kubernetes node names must be)")
        try:
            address = ipaddress.ip_address(machine.address)
        except ValueError:
            problems.append(f"host {machine.name}: address {machine.address!r} is not an IP address")
            continue
        if address in seen_addresses:
            problems.append(f"hosts {seen_addresses[address]} and {machine.name} "
                            f"share the address {address}")
        seen_addresses[address] = machine.name
        for label, network in (("service_cidr", settings.service_cidr),
                               ("pod_cidr", settings.pod_cidr)):
            if address.version == network.version and address in network:
                problems.append(f"host {machine.name}: address {address} lies inside "
                                f"{label} {network}")
    if problems:
        raise SettingsError(problems)


def read_group_data(path: Path) -> dict[str, Any]:
    """The public names a pyinfra group_data file defines (outside a pyinfra run)."""
    namespace = runpy.run_path(str(path))
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, types.ModuleType)}


def check_names(data: Mapping[str, Any]) -> None:
    """Reject names that are no setting (a typo would otherwise fall back to a default).

    pyinfra's own connection settings (ssh_*, and the like) may sit beside ours.
    """
    problems = []
    for name in data:
        if name in SETTINGS or name.startswith(_PYINFRA_DATA_PREFIXES):
            continue
        close = difflib.get_close_matches(name, SETTINGS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"{name} is not a cluster setting{hint}")
    if problems:
        raise SettingsError(problems)


def settings_from_checkout(root: Path) -> ClusterSettings:
    """Settings as group_data/all.py in the checkout defines them, for the operator commands."""
    data = read_group_data(root / "group_data" / "all.py")
    check_names(data)
    return load_settings(data)
