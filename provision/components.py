"""Each long-running component, described once: command, flags, user, files.

The roles turn a `Component` into a systemd unit or a supervisor program through
templates/; nothing else knows how a component is started. Flags use the upstream
names, so a component's description does not depend on which implementation runs it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from provision.settings import ClusterSettings
from provision.topology import Machine, Topology

PKI = "/etc/kubernetes/pki"
ETCD_PKI = f"{PKI}/etcd"
# A folder of its own under Debian's /var/lib/etcd, so the package's default instance
# (/var/lib/etcd/default, started by the package on systemd hosts) never mixes in.
ETCD_DATA_DIR = "/var/lib/etcd/kubernetes"
LOG_DIR = "/var/log/kubesmith"
VENV = "/opt/kubesmith/venv"

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
# Upstream's default HTTPS ports of /healthz (--secure-port), served on --bind-address.
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259


@dataclass(frozen=True)
class Component:
    name: str                      # service / program name on the host
    description: str
    executable: str                # absolute path on the host
    flags: tuple[tuple[str, str], ...] = ()   # (--name, value), rendered as --name=value
    user: str = "root"
    group: str = "root"
    working_directory: str = "/"
    environment: tuple[tuple[str, str], ...] = ()
    # Files on the host whose change must restart the component (certs, configs).
    files: tuple[str, ...] = field(default=())
    stop_timeout_seconds: int = 30

    @property
    def argv(self) -> list[str]:
        return [self.executable] + [f"{flag}={value}" for flag, value in self.flags]

    @property
    def command_line(self) -> str:
        # Flag values never contain spaces or quotes (checked in __post_init__), so a
        # plain join is a faithful command line for both systemd and supervisor.
        return " ".join(self.argv)

    @property
    def log_file(self) -> str:
        return f"{LOG_DIR}/{self.name}.log"

    def __post_init__(self) -> None:
        for flag, value in self.flags:
            if not flag.startswith("--") or any(c in str(value) for c in " \t\n\"'%"):
                raise ValueError(f"{self.name}: flag {flag}={value!r} cannot be rendered safely")


def _url(scheme: str, address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}"


def etcd_client_urls(topology: Topology) -> list[str]:
    """Client URLs of every etcd member (what kube-apiserver's --etcd-servers lists)."""
    return [_url("https", m.address, ETCD_CLIENT_PORT) for m in topology.etcd_members]


def etcd(settings: ClusterSettings, topology: Topology, member: Machine) -> Component:
    """One etcd member: client-cert auth on both the client and the peer URLs."""
    initial_cluster = ",".join(
        f"{m.name}={_url('https', m.address, ETCD_PEER_PORT)}" for m in topology.etcd_members
    )
    client_url = _url("https", member.address, ETCD_CLIENT_PORT)
    peer_url = _url("https", member.address, ETCD_PEER_PORT)
    files = tuple(f"{ETCD_PKI}/{name}" for name in (
        "ca.crt", "server.crt", "server.key", "peer.crt", "peer.key"))
    return Component(
        name="etcd",
        description=f"etcd member {member.name} of cluster {settings.cluster_name}",
        executable="/usr/bin/etcd",
        user="etcd",
        group="etcd",
        working_directory=ETCD_DATA_DIR,
        flags=(
            ("--name", member.name),
            ("--data-dir", ETCD_DATA_DIR),
            ("--listen-client-urls", f"{client_url},{_url('https', '127.0.0.1', ETCD_CLIENT_PORT)}"),
            ("--advertise-client-urls", client_url),
            ("--listen-peer-urls", peer_url),
            ("--initial-advertise-peer-urls", peer_url),
            ("--initial-cluster", initial_cluster),
            ("--initial-cluster-token", settings.cluster_name),
            ("--initial-cluster-state", "new"),
            ("--client-cert-auth", "true"),
            ("--trusted-ca-file", f"{ETCD_PKI}/ca.crt"),
            ("--cert-file", f"{ETCD_PKI}/server.crt"),
            ("--key-file", f"{ETCD_PKI}/server.key"),
            ("--peer-client-cert-auth", "true"),
            ("--peer-trusted-ca-file", f"{ETCD_PKI}/ca.crt"),
            ("--peer-cert-file", f"{ETCD_PKI}/peer.crt"),
            ("--peer-key-file", f"{ETCD_PKI}/peer.key"),
            ("--snapshot-count", "10000"),
        ),
        files=files,
    )


def kube_apiserver(settings: ClusterSettings, topology: Topology, master: Machine) -> Component:
    """kubesmith's kube-apiserver on one master, with kubeadm's file paths."""
    low, high = settings.node_port_range
    files = tuple(f"{PKI}/{name}" for name in (
        "ca.crt", "apiserver.crt", "apiserver.key", "apiserver-etcd-client.crt",
        "apiserver-etcd-client.key", "apiserver-kubelet-client.crt",
        "apiserver-kubelet-client.key", "sa.pub", "sa.key", "etcd/ca.crt")) + (
        "/etc/kubernetes/encryption-config.yaml",)
    return Component(
        name="kube-apiserver",
        description=f"kube-apiserver on {master.name} of cluster {settings.cluster_name}",
        executable=f"{VENV}/bin/kube-apiserver",
        flags=(
            ("--advertise-address", master.address),
            ("--secure-port", str(settings.api_port)),
            ("--etcd-servers", ",".join(etcd_client_urls(topology))),
            ("--etcd-cafile", f"{ETCD_PKI}/ca.crt"),
            ("--etcd-certfile", f"{PKI}/apiserver-etcd-client.crt"),
            ("--etcd-keyfile", f"{PKI}/apiserver-etcd-client.key"),
            ("--tls-cert-file", f"{PKI}/apiserver.crt"),
            ("--tls-private-key-file", f"{PKI}/apiserver.key"),
            ("--client-ca-file", f"{PKI}/ca.crt"),
            ("--kubelet-client-certificate", f"{PKI}/apiserver-kubelet-client.crt"),
            ("--kubelet-client-key", f"{PKI}/apiserver-kubelet-client.key"),
            ("--service-cluster-ip-range", str(settings.service_cidr)),
            ("--service-node-port-range", f"{low}-{high}"),
            ("--service-account-key-file", f"{PKI}/sa.pub"),
            ("--service-account-signing-key-file", f"{PKI}/sa.key"),
            ("--service-account-issuer", f"https://kubernetes.default.svc.{settings.dns_domain}"),
            ("--authorization-mode", "Node,RBAC"),
            ("--enable-admission-plugins",
             "NamespaceLifecycle,ServiceAccount,NodeRestriction,LimitRanger,ResourceQuota"),
            ("--anonymous-auth", "false"),
            ("--encryption-provider-config", "/etc/kubernetes/encryption-config.yaml"),
            ("--allow-privileged", "true"),
        ),
        files=files,
    )


def kube_scheduler(settings: ClusterSettings, master: Machine) -> Component:
    """kubesmith's kube-scheduler on one master, with kubeadm's flags; the masters elect
    one leader through a Lease, so exactly one schedules."""
    conf = "/etc/kubernetes/scheduler.conf"
    return Component(
        name="kube-scheduler",
        description=f"kube-scheduler on {master.name} of cluster {settings.cluster_name}",
        executable=f"{VENV}/bin/kube-scheduler",
        flags=(
            ("--kubeconfig", conf),
            ("--authentication-kubeconfig", conf),
            ("--authorization-kubeconfig", conf),
            ("--bind-address", "127.0.0.1"),
            ("--leader-elect", "true"),
        ),
        files=(conf,),
    )


def kube_controller_manager(settings: ClusterSettings, master: Machine) -> Component:
    """kubesmith's kube-controller-manager on one master, with kubeadm's flags."""
    conf = "/etc/kubernetes/controller-manager.conf"
    files = (conf,) + tuple(f"{PKI}/{name}" for name in (
        "ca.crt", "ca.key", "sa.key", "front-proxy-ca.crt"))
    return Component(
        name="kube-controller-manager",
        description=f"kube-controller-manager on {master.name} of cluster "
                    f"{settings.cluster_name}",
        executable=f"{VENV}/bin/kube-controller-manager",
        flags=(
            ("--kubeconfig", conf),
            ("--authentication-kubeconfig", conf),
            ("--authorization-kubeconfig", conf),
            ("--bind-address", "127.0.0.1"),
            ("--leader-elect", "true"),
            ("--cluster-name", settings.cluster_name),
            ("--allocate-node-cidrs", "true"),
            ("--cluster-cidr", str(settings.pod_cidr)),
            ("--node-cidr-mask-size", str(settings.node_cidr_mask_size)),
            ("--service-cluster-ip-range", str(settings.service_cidr)),
            ("--client-ca-file", f"{PKI}/ca.crt"),
            ("--requestheader-client-ca-file", f"{PKI}/front-proxy-ca.crt"),
            ("--root-ca-file", f"{PKI}/ca.crt"),
            ("--cluster-signing-cert-file", f"{PKI}/ca.crt"),
            ("--cluster-signing-key-file", f"{PKI}/ca.key"),
            ("--service-account-private-key-file", f"{PKI}/sa.key"),
            ("--use-service-account-credentials", "true"),
            ("--controllers", "*,bootstrapsigner,tokencleaner"),
        ),
        files=files,
    )
