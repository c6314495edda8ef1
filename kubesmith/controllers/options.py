"""kube-controller-manager's command line: upstream flag names and value syntax (pflag).

Accepted forms: --name=value, --name value, and a bare --name for booleans; durations in
Go's syntax ("40s", "5m0s"). An unknown flag is an error, so a typo in a unit file fails
at start instead of being ignored.

--controllers keeps upstream's semantics: "*" is every controller enabled by default,
"foo" enables foo, "-foo" disables it; both the current names
("garbage-collector-controller") and the older aliases ("garbagecollector") are accepted.
A name upstream knows that kubesmith does not implement is reported and skipped; a name
upstream does not know is an error.

--use-service-account-credentials gives each controller a client of its own
ServiceAccount in kube-system, as upstream (credentials.py); without it every controller
writes with the client of --kubeconfig.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from kubesmith.flags import FlagParser, cidrs_or_empty, comma_list, ip, parse_duration, port_or_zero


class OptionsError(ValueError):
    pass


# Upstream's controller names (names.go) -> the older alias each one also answers to.
UPSTREAM_CONTROLLERS: dict[str, str] = {
    "serviceaccount-token-controller": "serviceaccount-token",
    "endpoints-controller": "endpoint",
    "endpointslice-controller": "endpointslice",
    "endpointslice-mirroring-controller": "endpointslicemirroring",
    "replicationcontroller-controller": "replicationcontroller",
    "pod-garbage-collector-controller": "podgc",
    "resourcequota-controller": "resourcequota",
    "namespace-controller": "namespace",
    "serviceaccount-controller": "serviceaccount",
    "garbage-collector-controller": "garbagecollector",
    "daemonset-controller": "daemonset",
    "job-controller": "job",
    "deployment-controller": "deployment",
    "replicaset-controller": "replicaset",
    "horizontal-pod-autoscaler-controller": "horizontalpodautoscaling",
    "disruption-controller": "disruption",
    "statefulset-controller": "statefulset",
    "cronjob-controller": "cronjob",
    "certificatesigningrequest-signing-controller": "csrsigning",
    "certificatesigningrequest-approving-controller": "csrapproving",
    "certificatesigningrequest-cleaner-controller": "csrcleaner",
    "ttl-controller": "ttl",
    "bootstrap-signer-controller": "bootstrapsigner",
    "token-cleaner-controller": "tokencleaner",
    "node-ipam-controller": "nodeipam",
    "node-lifecycle-controller": "nodelifecycle",
    "taint-eviction-controller": "taint-eviction-controller",
    "service-lb-controller": "service",
    "node-route-controller": "route",
    "cloud-node-lifecycle-controller": "cloud-node-lifecycle",
    "persistentvolume-binder-controller": "persistentvolume-binder",
    "persistentvolume-attach-detach-controller": "attachdetach",
    "persistentvolume-expander-controller": "persistentvolume-expander",
    "clusterrole-aggregation-controller": "clusterrole-aggregation",
    "persistentvolumeclaim-protection-controller": "pvc-protection",
    "persistentvolume-protection-controller": "pv-protection",
    "ttl-after-finished-controller": "ttl-after-finished",
    "root-ca-certificate-publisher-controller": "root-ca-cert-publisher",
    "ephemeral-volume-controller": "ephemeral-volume",
    "storageversion-garbage-collector-controller": "storage-version-gc",
    "resourceclaim-controller": "resourceclaim",
    "legacy-serviceaccount-token-cleaner-controller": "legacy-serviceaccount-token-cleaner",
    "validatingadmissionpolicy-status-controller": "validatingadmissionpolicy-status",
    "service-cidr-controller": "service-cidr-controller",
    "storage-version-migrator-controller": "storage-version-migrator",
}
# Off unless named, even with "*" (upstream's ControllersDisabledByDefault).
UPSTREAM_DISABLED_BY_DEFAULT = frozenset({"bootstrap-signer-controller",
                                          "token-cleaner-controller"})
_CANONICAL = {alias: name for name, alias in UPSTREAM_CONTROLLERS.items()}


def canonical_name(name: str) -> str:
    """Upstream's current name for a controller name or alias (unknown names as given)."""
    if name in UPSTREAM_CONTROLLERS:
        return name
    return _CANONICAL.get(name, name)


def is_enabled(name: str, controllers: Iterable[str], disabled_by_default: Iterable[str]
               ) -> bool:
    """Upstream's IsControllerEnabled, with names and aliases compared as one."""
    wanted = canonical_name(name)
    star = False
    for entry in controllers:
        if entry == "*":
            star = True
        elif entry.startswith("-") and canonical_name(entry[1:]) == wanted:
            return False
        elif canonical_name(entry) == wanted:
            return True
    if not star:
        return False
    return wanted not in {canonical_name(n) for n in disabled_by_default}


def check_controller_names(controllers: Iterable[str], known: Iterable[str]) -> list[str]:
    """Problems with --controllers: names neither upstream nor kubesmith knows."""
    names = {canonical_name(n) for n in known} | set(UPSTREAM_CONTROLLERS)
    problems = []
    for entry in controllers:
        name = entry[1:] if entry.startswith("-") else entry
        if entry == "*":
            continue
        if canonical_name(name) not in names:
            problems.append(f"--controllers: {name!r} is not in the list of known "
                            "controllers")
    return problems


# --concurrent-<x>-syncs flags and upstream's defaults (dest: concurrent_<x>_syncs).
CONCURRENT_SYNCS = {
    "deployment": 5, "replicaset": 5, "rc": 5, "statefulset": 5, "daemonset": 2,
    "job": 5, "cron-job": 5, "endpoint": 5, "service-endpoint": 5, "ttl-after-finished": 5,
    "namespace": 10, "serviceaccount-token": 5, "gc": 20, "resource-quota": 5,
    "horizontal-pod-autoscaler": 5, "service": 1, "ephemeralvolume": 5,
    "endpointslice-mirroring": 5,
}


@dataclass
class Options:
    kubeconfig: str | None = None
    authentication_kubeconfig: str | None = None
    authorization_kubeconfig: str | None = None
    master: str | None = None
    bind_address: str = "0.0.0.0"
    secure_port: int = 10257
    tls_cert_file: str | None = None
    tls_private_key_file: str | None = None
    leader_elect: bool = True
    leader_elect_lease_duration: float = 15.0
    leader_elect_renew_deadline: float = 10.0
    leader_elect_retry_period: float = 2.0
    leader_elect_resource_name: str = "kube-controller-manager"
    leader_elect_resource_namespace: str = "kube-system"
    cluster_name: str = "kubernetes"
    allocate_node_cidrs: bool = False
    cluster_cidr: list = field(default_factory=list)
    node_cidr_mask_size: int | None = None
    node_cidr_mask_size_ipv4: int | None = None
    node_cidr_mask_size_ipv6: int | None = None
    service_cluster_ip_range: list = field(default_factory=list)
    client_ca_file: str | None = None
    requestheader_client_ca_file: str | None = None
    root_ca_file: str | None = None
    cluster_signing_cert_file: str | None = None
    cluster_signing_key_file: str | None = None
    service_account_private_key_file: str | None = None
    use_service_account_credentials: bool = False
    controllers: list[str] = field(default_factory=lambda: ["*"])
    node_monitor_grace_period: float = 40.0
    node_monitor_period: float = 5.0
    node_startup_grace_period: float = 60.0
    pod_eviction_timeout: float = 300.0
    node_eviction_rate: float = 0.1
    secondary_node_eviction_rate: float = 0.01
    large_cluster_size_threshold: int = 50
    unhealthy_zone_threshold: float = 0.55
    terminated_pod_gc_threshold: int = 12500
    kube_api_qps: float = 20.0
    kube_api_burst: int = 30
    min_resync_period: float = 43200.0
    v: int = 0
    concurrent_deployment_syncs: int = 5
    concurrent_replicaset_syncs: int = 5
    concurrent_rc_syncs: int = 5
    concurrent_statefulset_syncs: int = 5
    concurrent_daemonset_syncs: int = 2
    concurrent_job_syncs: int = 5
    concurrent_cron_job_syncs: int = 5
    concurrent_endpoint_syncs: int = 5
    concurrent_service_endpoint_syncs: int = 5
    concurrent_ttl_after_finished_syncs: int = 5
    concurrent_namespace_syncs: int = 10
    concurrent_serviceaccount_token_syncs: int = 5
    concurrent_gc_syncs: int = 20
    concurrent_resource_quota_syncs: int = 5
    concurrent_horizontal_pod_autoscaler_syncs: int = 5
    concurrent_service_syncs: int = 1
    concurrent_ephemeralvolume_syncs: int = 5
    concurrent_endpointslice_mirroring_syncs: int = 5

    def mask_size(self, network) -> int:
        """--node-cidr-mask-size(-ipv4|-ipv6) for a cluster CIDR (upstream: 24 and 64)."""
        if network.version == 6:
            return self.node_cidr_mask_size_ipv6 or self.node_cidr_mask_size or 64
        return self.node_cidr_mask_size_ipv4 or self.node_cidr_mask_size or 24


def _parser() -> FlagParser:
    parser = FlagParser("kube-controller-manager", "kubesmith's Kubernetes controller manager",
                        OptionsError)
    flag = parser.flag
    flag("--kubeconfig", help_="kubeconfig of the API server and credentials")
    flag("--authentication-kubeconfig", help_="accepted; /healthz needs no authentication")
    flag("--authorization-kubeconfig", help_="accepted; /healthz needs no authorization")
    flag("--master", help_="API server URL, overriding the kubeconfig's")
    flag("--bind-address", ip, "address of the /healthz HTTPS listener (0.0.0.0)")
    flag("--secure-port", port_or_zero, "HTTPS port of /healthz (10257; 0 turns it off)")
    flag("--tls-cert-file", help_="serving certificate (default: a self-signed one)")
    flag("--tls-private-key-file", help_="serving key")
    flag("--leader-elect", boolean=True, help_="run controllers only while holding the "
         "Lease kube-system/kube-controller-manager (default true)")
    flag("--leader-elect-lease-duration", parse_duration, "15s")
    flag("--leader-elect-renew-deadline", parse_duration, "10s")
    flag("--leader-elect-retry-period", parse_duration, "2s")
    flag("--leader-elect-resource-name", help_="Lease name (kube-controller-manager)")
    flag("--leader-elect-resource-namespace", help_="Lease namespace (kube-system)")
    flag("--leader-elect-resource-lock", help_="accepted: always leases")
    flag("--cluster-name", help_="cluster instance prefix (kubernetes)")
    flag("--allocate-node-cidrs", boolean=True, help_="give nodes pod CIDRs")
    flag("--cluster-cidr", cidrs_or_empty, "CIDR range of pods (one, or a dual-stack pair)")
    flag("--node-cidr-mask-size", int, "prefix length of node CIDRs (24 / 64)")
    flag("--node-cidr-mask-size-ipv4", int, "prefix length of IPv4 node CIDRs (24)")
    flag("--node-cidr-mask-size-ipv6", int, "prefix length of IPv6 node CIDRs (64)")
    flag("--service-cluster-ip-range", cidrs_or_empty, "CIDR range of service cluster IPs")
    flag("--client-ca-file", help_="accepted")
    flag("--requestheader-client-ca-file", help_="accepted")
    flag("--root-ca-file", help_="CA published to every namespace as kube-root-ca.crt")
    flag("--cluster-signing-cert-file", help_="accepted")
    flag("--cluster-signing-key-file", help_="accepted")
    flag("--service-account-private-key-file", help_="accepted")
    flag("--use-service-account-credentials", boolean=True,
         help_="accepted; every controller uses the --kubeconfig client")
    flag("--controllers", comma_list, "controllers to run: '*', 'foo', '-foo' (default '*')")
    flag("--node-monitor-grace-period", parse_duration,
         "silence after which a node is Unknown (40s)")
    flag("--node-monitor-period", parse_duration, "how often node health is checked (5s)")
    flag("--node-startup-grace-period", parse_duration,
         "silence allowed to a node that never reported (1m0s)")
    flag("--pod-eviction-timeout", parse_duration, "accepted (taints evict pods upstream too)")
    flag("--node-eviction-rate", float, "nodes a second given NoExecute taints in a healthy "
         "zone (0.1)")
    flag("--secondary-node-eviction-rate", float, "the same in an unhealthy zone (0.01)")
    flag("--large-cluster-size-threshold", int, "nodes from which an unhealthy zone keeps "
         "the secondary rate instead of stopping (50)")
    flag("--unhealthy-zone-threshold", float, "share of not-Ready nodes (at least 3) that "
         "makes a zone unhealthy (0.55)")
    flag("--terminated-pod-gc-threshold", int,
         "terminated pods kept before the oldest are deleted (12500; 0 keeps all)")
    flag("--kube-api-qps", float, "requests per second to the API server (20)")
    flag("--kube-api-burst", int, "request burst to the API server (30)")
    flag("--min-resync-period", parse_duration, "accepted (12h0m0s)")
    for name in CONCURRENT_SYNCS:
        flag(f"--concurrent-{name}-syncs", int, f"workers ({CONCURRENT_SYNCS[name]})")
    parser.verbosity_flag()
    return parser


_IGNORED = ("leader_elect_resource_lock",)


def parse(argv: list[str]) -> Options:
    """Options from a command line; raises OptionsError for unknown or bad flags."""
    values = vars(_parser().parse_args(argv))
    for name in _IGNORED:
        values.pop(name, None)
    options = Options(**values)
    check(options)
    return options


def check(options: Options, known_controllers: Iterable[str] = ()) -> None:
    problems = check_controller_names(options.controllers, known_controllers)
    if options.allocate_node_cidrs and not options.cluster_cidr:
        problems.append("--cluster-cidr is required with --allocate-node-cidrs")
    for net in options.cluster_cidr:
        size = options.mask_size(net)
        if not net.prefixlen <= size <= net.max_prefixlen:
            problems.append(f"--node-cidr-mask-size {size} does not fit {net}")
    if options.leader_elect and not (options.leader_elect_lease_duration
                                     > options.leader_elect_renew_deadline
                                     > 1.2 * options.leader_elect_retry_period):
        problems.append("--leader-elect-lease-duration must exceed "
                        "--leader-elect-renew-deadline, which must exceed 1.2 * "
                        "--leader-elect-retry-period")
    if options.node_monitor_period <= 0 or options.node_monitor_grace_period <= 0:
        problems.append("--node-monitor-period and --node-monitor-grace-period must be "
                        "positive")
    if problems:
        raise OptionsError("; ".join(problems))


def usage() -> str:
    return _parser().format_help()
