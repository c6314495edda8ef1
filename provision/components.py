"""Each long-running component, described once: command, flags, user, files.

The roles turn a `Component` into a systemd unit or a supervisor program through
templates/; nothing else knows how a component is started. Flags use the upstream
names, so a component's description does not depend on which implementation runs it.

The node components' configuration files (containerd's config.toml, the
KubeletConfiguration, the KubeProxyConfiguration) are rendered here too, from
templates/node/, so a component and the files it reads are described side by side.
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

# Node components (every host, masters included).
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
CONTAINER_RUNTIME_ENDPOINT = f"unix://{CONTAINERD_SOCKET}"
# The pod sandbox ("pause") image. No registry is reachable from air-gapped sites or the
# lab, so it is built locally (provision/images.py) and imported like the others.
PAUSE_IMAGE = "kubesmith.local/pause:latest"
IMAGES_DIR = "/opt/kubesmith/images"   # image tarballs on the host, imported into containerd
CNI_CONF_DIR = "/etc/cni/net.d"
CNI_BIN_DIR = "/usr/lib/cni"            # Debian's containernetworking-plugins
KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"
KUBELET_KUBECONFIG = "/etc/kubernetes/kubelet.conf"
KUBELET_PKI = "/var/lib/kubelet/pki"
STATIC_POD_PATH = "/etc/kubernetes/manifests"
KUBE_PROXY_CONFIG = "/var/lib/kube-proxy/config.conf"
KUBE_PROXY_KUBECONFIG = "/etc/kubernetes/kube-proxy.conf"
KUBE_DNS_KUBECONFIG = "/etc/kubernetes/kube-dns.conf"
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
CONTROL_PLANE_TAINT = f"{CONTROL_PLANE_LABEL}:NoSchedule"
# Node components run iptables, ip, runc, the CNI plugins: a full root PATH, whatever
# the service manager was started with.
NODE_ENVIRONMENT = (("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),)

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
# Upstream's default HTTPS ports of /healthz (--secure-port), served on --bind-address.
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259
# The kubelet's plain-HTTP /healthz on 127.0.0.1 (healthzPort) and its HTTPS API port.
KUBELET_HEALTHZ_PORT = 10248
KUBELET_PORT = 10250


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
    # systemd only: KillMode=process leaves the component's children running when it
    # stops (containerd's shims, hence the containers, survive a containerd restart),
    # and Delegate=yes lets it manage cgroups below its own. Under supervisor, shims
    # run in process groups of their own, so stopping the group spares them already.
    keep_children_on_stop: bool = False

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


# --------------------------------------------------------------------------- nodes


def containerd(settings: ClusterSettings, machine: Machine) -> Component:
    """Debian's containerd with the CRI plugin, configured by `containerd_config`."""
    return Component(
        name="containerd",
        description=f"containerd (CRI runtime) on {machine.name} of cluster "
                    f"{settings.cluster_name}",
        executable="/usr/bin/containerd",
        flags=(("--config", CONTAINERD_CONFIG),),
        environment=NODE_ENVIRONMENT,
        files=(CONTAINERD_CONFIG,),
        keep_children_on_stop=True,
    )


def kubelet(settings: ClusterSettings, machine: Machine) -> Component:
    """kubesmith's kubelet: upstream's flags, the rest in its KubeletConfiguration.

    Masters register tainted, so ordinary pods stay off them; their control-plane label
    is set by the deploy (NodeRestriction forbids a kubelet to set node-role labels).
    """
    flags = [
        ("--config", KUBELET_CONFIG),
        ("--kubeconfig", KUBELET_KUBECONFIG),
        ("--container-runtime-endpoint", CONTAINER_RUNTIME_ENDPOINT),
        ("--hostname-override", machine.name),
        ("--node-ip", machine.address),
    ]
    if machine.is_master:
        flags.append(("--register-with-taints", CONTROL_PLANE_TAINT))
    return Component(
        name="kubelet",
        description=f"kubelet on {machine.name} of cluster {settings.cluster_name}",
        executable=f"{VENV}/bin/kubelet",
        flags=tuple(flags),
        environment=NODE_ENVIRONMENT,
        files=(KUBELET_CONFIG, KUBELET_KUBECONFIG, f"{PKI}/ca.crt",
               f"{KUBELET_PKI}/kubelet.crt", f"{KUBELET_PKI}/kubelet.key"),
        # Pods keep running while the kubelet stops, as upstream; nothing to wait for.
        stop_timeout_seconds=15,
    )


def kube_proxy(settings: ClusterSettings, machine: Machine) -> Component:
    """kubesmith's kube-proxy (iptables mode), configured by `kube_proxy_config`."""
    return Component(
        name="kube-proxy",
        description=f"kube-proxy on {machine.name} of cluster {settings.cluster_name}",
        executable=f"{VENV}/bin/kube-proxy",
        flags=(("--config", KUBE_PROXY_CONFIG), ("--hostname-override", machine.name)),
        environment=NODE_ENVIRONMENT,
        files=(KUBE_PROXY_CONFIG, KUBE_PROXY_KUBECONFIG),
    )


def pod_network(settings: ClusterSettings, machine: Machine) -> Component:
    """The pod-network agent: the CNI config for this node's podCIDR, and routes to the
    other nodes' podCIDRs. It reads Nodes with the node's own kubelet credentials (the
    Node authorizer lets system:nodes get, list and watch every Node)."""
    return Component(
        name="kubesmith-pod-network",
        description=f"pod network agent on {machine.name} of cluster {settings.cluster_name}",
        executable=f"{VENV}/bin/kubesmith-pod-network",
        flags=(
            ("--kubeconfig", KUBELET_KUBECONFIG),
            ("--node-name", machine.name),
            ("--cluster-cidr", str(settings.pod_cidr)),
            ("--cni-conf-dir", CNI_CONF_DIR),
            ("--cni-bin-dir", CNI_BIN_DIR),
        ),
        environment=NODE_ENVIRONMENT,
        files=(KUBELET_KUBECONFIG,),
    )


def kube_dns(settings: ClusterSettings, master: Machine) -> Component:
    """The cluster DNS add-on on one master, on the master's address (port 53); the
    kube-system/kube-dns Service (ClusterIP = dns_ip) reaches it through kube-proxy."""
    return Component(
        name="kubesmith-dns",
        description=f"cluster DNS on {master.name} of cluster {settings.cluster_name}",
        executable=f"{VENV}/bin/kubesmith-dns",
        flags=(
            ("--kubeconfig", KUBE_DNS_KUBECONFIG),
            ("--cluster-domain", settings.dns_domain),
            ("--bind-address", master.address),
            ("--node-name", master.name),
            ("--upstream-resolv-conf", "/etc/resolv.conf"),
            # Reverse names of Service and pod addresses are the cluster's own: never
            # forwarded to the host's resolvers.
            ("--reverse-cidrs", f"{settings.service_cidr},{settings.pod_cidr}"),
        ),
        environment=NODE_ENVIRONMENT,
        files=(KUBE_DNS_KUBECONFIG,),
    )


def containerd_config(settings: ClusterSettings) -> str:
    """/etc/containerd/config.toml: CRI on, cgroupfs (as the kubelet), local pause image."""
    from provision import render   # render imports this module
    return render.render("node/containerd-config.toml.j2", pause_image=PAUSE_IMAGE,
                         cni_bin_dir=CNI_BIN_DIR, cni_conf_dir=CNI_CONF_DIR,
                         socket=CONTAINERD_SOCKET)


def kubelet_config(settings: ClusterSettings, cgroup_root: str = "/") -> str:
    """/var/lib/kubelet/config.yaml (kubelet.config.k8s.io/v1beta1 KubeletConfiguration).

    `cgroup_root` is "/" on real machines; lab hosts share one cgroup tree and give each
    kubelet a folder of its own (the inventory's `kubelet_cgroup_root`).
    """
    from provision import render
    if not cgroup_root.startswith("/"):
        raise ValueError(f"cgroupRoot {cgroup_root!r} must be an absolute cgroup path")
    return render.render("node/kubelet-config.yaml.j2", settings=settings,
                         cgroup_root=cgroup_root, pki=PKI, kubelet_pki=KUBELET_PKI,
                         static_pod_path=STATIC_POD_PATH, endpoint=CONTAINER_RUNTIME_ENDPOINT,
                         healthz_port=KUBELET_HEALTHZ_PORT, port=KUBELET_PORT)


def kube_proxy_config(settings: ClusterSettings) -> str:
    """/var/lib/kube-proxy/config.conf (kubeproxy.config.k8s.io/v1alpha1), the same on
    every node (the node name comes from --hostname-override, as kubeadm does it)."""
    from provision import render
    return render.render("node/kube-proxy-config.yaml.j2", settings=settings,
                         kubeconfig=KUBE_PROXY_KUBECONFIG)
