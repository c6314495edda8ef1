"""kube-apiserver's command line: upstream flag names and value syntax (Go's pflag).

Accepted forms: --name=value, --name value, and a bare --name for booleans. An unknown
flag is an error, so a typo in a unit file fails at start instead of being ignored.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from kubesmith.flags import (
    FlagParser,
    cidrs,
    comma_list,
    ip,
    parse_duration,
    port,
    port_range,
)

AUTHORIZATION_MODES = ("AlwaysAllow", "AlwaysDeny", "ABAC", "Webhook", "RBAC", "Node")
SUPPORTED_AUTHORIZATION_MODES = ("AlwaysAllow", "AlwaysDeny", "RBAC", "Node")

# Every admission plugin upstream knows; the ones kubesmith implements are in admission.py.
KNOWN_ADMISSION_PLUGINS = frozenset((
    "AlwaysAdmit", "AlwaysDeny", "AlwaysPullImages", "CertificateApproval",
    "CertificateSigning", "CertificateSubjectRestriction", "ClusterTrustBundleAttest",
    "DefaultIngressClass", "DefaultStorageClass", "DefaultTolerationSeconds",
    "DenyServiceExternalIPs",
    "EventRateLimit", "ExtendedResourceToleration", "ImagePolicyWebhook",
    "LimitPodHardAntiAffinityTopology", "LimitRanger", "MutatingAdmissionPolicy",
    "MutatingAdmissionWebhook", "NamespaceAutoProvision", "NamespaceExists",
    "NamespaceLifecycle", "NodeRestriction", "OwnerReferencesPermissionEnforcement",
    "PersistentVolumeClaimResize", "PersistentVolumeLabel", "PodNodeSelector", "PodSecurity",
    "PodTolerationRestriction", "Priority", "ResourceQuota", "RuntimeClass", "SecurityContextDeny",
    "ServiceAccount", "StorageObjectInUseProtection", "TaintNodesByCondition",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionWebhook",
))
# Upstream's default set (those admission.build does not know are skipped with a warning).
DEFAULT_ADMISSION_PLUGINS = ("NamespaceLifecycle", "LimitRanger", "ServiceAccount",
                             "TaintNodesByCondition", "PodSecurity", "Priority",
                             "DefaultTolerationSeconds", "DefaultStorageClass",
                             "StorageObjectInUseProtection", "PersistentVolumeClaimResize",
                             "RuntimeClass", "CertificateApproval", "CertificateSigning",
                             "ClusterTrustBundleAttest", "CertificateSubjectRestriction",
                             "DefaultIngressClass", "MutatingAdmissionWebhook",
                             "ValidatingAdmissionPolicy", "ValidatingAdmissionWebhook",
                             "ResourceQuota")


class OptionsError(ValueError):
    pass


@dataclass
class Options:
    etcd_servers: list[str] = field(default_factory=list)
    etcd_cafile: str | None = None
    etcd_certfile: str | None = None
    etcd_keyfile: str | None = None
    etcd_compaction_interval: float = 300.0
    secure_port: int = 6443
    bind_address: str = "0.0.0.0"
    advertise_address: str | None = None
    tls_cert_file: str | None = None
    tls_private_key_file: str | None = None
    client_ca_file: str | None = None
    service_cluster_ip_range: list = field(default_factory=list)
    service_node_port_range: tuple[int, int] = (30000, 32767)
    service_account_key_file: list[str] = field(default_factory=list)
    service_account_signing_key_file: str | None = None
    service_account_issuer: list[str] = field(default_factory=list)
    service_account_jwks_uri: str | None = None
    api_audiences: list[str] = field(default_factory=list)
    service_account_max_token_expiration: float = 0.0
    service_account_extend_token_expiration: bool = True
    authorization_mode: list[str] = field(default_factory=lambda: ["Node", "RBAC"])
    enable_admission_plugins: list[str] = field(default_factory=list)
    disable_admission_plugins: list[str] = field(default_factory=list)
    anonymous_auth: bool = False
    kubelet_client_certificate: str | None = None
    kubelet_client_key: str | None = None
    kubelet_certificate_authority: str | None = None
    encryption_provider_config: str | None = None
    allow_privileged: bool = False
    default_not_ready_toleration_seconds: int = 300
    default_unreachable_toleration_seconds: int = 300
    v: int = 0
    watch_cache: bool = True
    default_watch_cache_size: int = 100
    max_requests_inflight: int = 400
    max_mutating_requests_inflight: int = 200
    request_timeout: float = 60.0
    min_request_timeout: int = 1800

    @property
    def admission_plugins(self) -> list[str]:
        """Enabled plugins: upstream's defaults plus --enable, minus --disable."""
        enabled = list(DEFAULT_ADMISSION_PLUGINS)
        enabled += [p for p in self.enable_admission_plugins if p not in enabled]
        return [p for p in enabled if p not in self.disable_admission_plugins]


def _parser() -> FlagParser:
    parser = FlagParser("kube-apiserver", "kubesmith's Kubernetes API server", OptionsError)
    flag = parser.flag
    flag("--etcd-servers", comma_list, "etcd client URLs, comma separated")
    flag("--etcd-cafile", help_="CA bundle verifying the etcd members")
    flag("--etcd-certfile", help_="client certificate for etcd")
    flag("--etcd-keyfile", help_="client key for etcd")
    flag("--etcd-compaction-interval", parse_duration,
         "interval of etcd history compaction (0 disables)")
    flag("--secure-port", port, "HTTPS port (default 6443)")
    flag("--bind-address", ip, "address to listen on (default 0.0.0.0)")
    flag("--advertise-address", ip, "address published to the cluster")
    flag("--tls-cert-file", help_="serving certificate (with intermediates)")
    flag("--tls-private-key-file", help_="serving key")
    flag("--client-ca-file", help_="CA bundle verifying client certificates")
    flag("--service-cluster-ip-range", cidrs, "CIDR of service cluster IPs")
    flag("--service-node-port-range", port_range, "node port range LOW-HIGH")
    parser.add_argument("--service-account-key-file", action="append",
                        dest="service_account_key_file", default=argparse.SUPPRESS,
                        help="public keys verifying service account tokens (repeatable)")
    flag("--service-account-signing-key-file", help_="key signing service account tokens")
    parser.add_argument("--service-account-issuer", action="append",
                        dest="service_account_issuer", default=argparse.SUPPRESS,
                        help="issuer of service account tokens (repeatable)")
    flag("--service-account-jwks-uri", help_="jwks_uri of the discovery document at "
         "/.well-known/openid-configuration (https; default: this server's /openid/v1/jwks)")
    flag("--api-audiences", comma_list, "audiences API tokens must be for (default: the first "
         "--service-account-issuer)")
    flag("--service-account-max-token-expiration", parse_duration,
         "longest lifetime a TokenRequest may ask for (default unlimited)")
    flag("--service-account-extend-token-expiration", boolean=True,
         help_="issue the kubelet's 3607 s pod tokens for a year (default true)")
    flag("--authorization-mode", comma_list, "ordered authorizers (default Node,RBAC)")
    flag("--enable-admission-plugins", comma_list, "admission plugins besides the defaults")
    flag("--disable-admission-plugins", comma_list, "default admission plugins to turn off")
    flag("--anonymous-auth", boolean=True, help_="allow unauthenticated requests (default false)")
    flag("--kubelet-client-certificate", help_="client certificate for kubelets")
    flag("--kubelet-client-key", help_="client key for kubelets")
    flag("--kubelet-certificate-authority", help_="CA bundle verifying kubelets' serving "
         "certificates (not verified without it)")
    flag("--encryption-provider-config", help_="EncryptionConfiguration file")
    flag("--allow-privileged", boolean=True, help_="allow privileged containers")
    flag("--default-not-ready-toleration-seconds", int,
         "tolerationSeconds of the not-ready:NoExecute toleration every pod gets (300)")
    flag("--default-unreachable-toleration-seconds", int,
         "tolerationSeconds of the unreachable:NoExecute toleration every pod gets (300)")
    flag("--watch-cache", boolean=True, help_="serve watches and rv=0 reads from memory")
    flag("--default-watch-cache-size", int, "recent events kept per resource (default 100)")
    flag("--max-requests-inflight", int, "concurrent read requests before 429 (default 400)")
    flag("--max-mutating-requests-inflight", int,
         "concurrent write requests before 429 (default 200)")
    flag("--request-timeout", parse_duration, "timeout of non-watch requests (default 1m0s)")
    flag("--min-request-timeout", int, "minimum watch timeout in seconds (default 1800)")
    parser.verbosity_flag()
    return parser


def parse(argv: list[str]) -> Options:
    """Options from a command line; raises OptionsError for unknown or bad flags."""
    namespace = _parser().parse_args(argv)
    options = Options(**vars(namespace))
    check(options)
    return options


def usage() -> str:
    return _parser().format_help()


def jwks_uri_problem(value: str) -> str | None:
    """Why a --service-account-jwks-uri is refused (upstream wants an https URL), or None."""
    try:
        parts = urlsplit(value)
        parts.port   # a malformed port raises here
    except ValueError as exc:
        return f"--service-account-jwks-uri must be a valid URL: {exc}"
    if parts.scheme != "https" or not parts.hostname:
        return f"--service-account-jwks-uri requires an https URL, got {value!r}"
    return None


def check(options: Options) -> None:
    problems = []
    if not options.etcd_servers:
        problems.append("--etcd-servers must be specified")
    if not options.tls_cert_file or not options.tls_private_key_file:
        problems.append("--tls-cert-file and --tls-private-key-file are required "
                        "(there is no insecure port)")
    for mode in options.authorization_mode:
        if mode not in AUTHORIZATION_MODES:
            problems.append(f"--authorization-mode: unknown mode {mode!r}")
        elif mode not in SUPPORTED_AUTHORIZATION_MODES:
            problems.append(f"--authorization-mode: {mode} is not supported by this server")
    if not options.authorization_mode:
        problems.append("--authorization-mode must not be empty")
    for plugin in options.enable_admission_plugins + options.disable_admission_plugins:
        if plugin not in KNOWN_ADMISSION_PLUGINS:
            problems.append(f"unknown admission plugin {plugin!r}")
    if (options.etcd_certfile is None) != (options.etcd_keyfile is None):
        problems.append("--etcd-certfile and --etcd-keyfile go together")
    if (options.kubelet_client_certificate is None) != (options.kubelet_client_key is None):
        problems.append("--kubelet-client-certificate and --kubelet-client-key go together")
    for path in (options.etcd_cafile, options.etcd_certfile, options.etcd_keyfile,
                 options.tls_cert_file, options.tls_private_key_file, options.client_ca_file,
                 options.kubelet_certificate_authority,
                 options.encryption_provider_config, options.service_account_signing_key_file,
                 *options.service_account_key_file):
        if path and not os.path.isfile(path):
            problems.append(f"{path}: no such file")
    if options.service_account_signing_key_file and not options.service_account_issuer:
        problems.append("--service-account-issuer is required with "
                        "--service-account-signing-key-file")
    if options.service_account_jwks_uri:   # empty is unset, as upstream's
        problem = jwks_uri_problem(options.service_account_jwks_uri)
        if problem:
            problems.append(problem)
    if 0 < options.service_account_max_token_expiration < 3600:
        problems.append("--service-account-max-token-expiration must be at least 1h")
    if options.default_watch_cache_size < 0:
        problems.append("--default-watch-cache-size must not be negative")
    if problems:
        raise OptionsError("; ".join(problems))
