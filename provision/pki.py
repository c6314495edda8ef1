"""Cluster PKI, generated on the operator's machine into the cluster state folder.

The layout and certificate profiles follow kubeadm, so the files can be copied to
the hosts at kubeadm's paths (see `host_files`) and every component finds what it
expects:

    <state>/pki/ca.{crt,key}                    cluster CA ("kubernetes")
    <state>/pki/front-proxy-ca.{crt,key}        front proxy CA
    <state>/pki/etcd/ca.{crt,key}               etcd CA
    <state>/pki/sa.{key,pub}                    service account signing key pair
    <state>/pki/apiserver.{crt,key}             API server serving cert (shared by all masters)
    <state>/pki/apiserver-kubelet-client.*      API server -> kubelet client
    <state>/pki/apiserver-etcd-client.*         API server -> etcd client
    <state>/pki/front-proxy-client.*            aggregation layer client
    <state>/pki/{admin,super-admin,controller-manager,scheduler,kube-proxy,kube-dns}.*
                                                client certs embedded in kubeconfigs
    <state>/pki/etcd/<member>/{server,peer,healthcheck-client}.*
    <state>/pki/nodes/<node>/kubelet.*          kubelet serving cert
    <state>/pki/nodes/<node>/kubelet-client.*   kubelet client cert (system:node:<node>)
    <state>/kubeconfigs/{admin,super-admin,controller-manager,scheduler,kube-proxy,
                         kube-dns}.conf
    <state>/kubeconfigs/kubelet/<node>.conf

Generation is idempotent and add-only. A private key, once written, is never
replaced; a certificate is re-issued for its existing key only when it is missing,
expired or close to expiry, not signed by its current CA, or no longer matches the
subject, usages and SANs the inventory calls for. Certificate authorities and the
service account key are never replaced: a CA certificate without its key (or an
expired CA) stops the run with a PKIError and has to be dealt with by hand. The one
repair done automatically is re-creating a lost CA certificate from its surviving
key, which keeps every certificate it signed valid.

Folders of machines that left the inventory are reported, never deleted.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from provision import kubeconfig
from provision.topology import Machine, Topology

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]

PKI_DIR = "pki"
KUBECONFIG_DIR = "kubeconfigs"

KEY_ALGORITHMS = ("ecdsa-p256", "rsa-2048")

# Certificates are renewed this long before they expire.
RENEW_BEFORE = timedelta(days=30)
# Certificates start being valid slightly in the past so that hosts whose clock
# lags behind the operator's accept them straight away.
BACKDATE = timedelta(minutes=5)

KEY_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700

# kubeadm's locations on the hosts.
REMOTE_K8S = "/etc/kubernetes"
REMOTE_PKI = "/etc/kubernetes/pki"
REMOTE_KUBELET_PKI = "/var/lib/kubelet/pki"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PKIError(Exception):
    """The PKI cannot be generated or is in a state that needs a human decision."""


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class Authority:
    """A certificate authority of the cluster."""

    stem: str  # path under pki/ without extension
    common_name: str
    label: str  # name used in reports, as kubeadm prints it


CLUSTER_CA = Authority("ca", "kubernetes", "ca")
FRONT_PROXY_CA = Authority("front-proxy-ca", "front-proxy-ca", "front-proxy-ca")
ETCD_CA = Authority("etcd/ca", "etcd-ca", "etcd-ca")
AUTHORITIES = (CLUSTER_CA, FRONT_PROXY_CA, ETCD_CA)


@dataclass(frozen=True)
class CertSpec:
    """What one leaf certificate must look like."""

    stem: str  # path under pki/ without extension
    authority: Authority
    common_name: str
    organizations: tuple[str, ...] = ()
    server: bool = False
    client: bool = False
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[IPAddress, ...] = ()

    @property
    def extended_key_usages(self) -> frozenset[ObjectIdentifier]:
        usages = set()
        if self.server:
            usages.add(ExtendedKeyUsageOID.SERVER_AUTH)
        if self.client:
            usages.add(ExtendedKeyUsageOID.CLIENT_AUTH)
        return frozenset(usages)


@dataclass(frozen=True)
class KubeconfigSpec:
    """A kubeconfig and the client certificate it embeds."""

    path: str  # under kubeconfigs/
    cert: CertSpec  # the kubeconfig user is the certificate's common name
    local: bool  # reaches the API server on its own host rather than the endpoint


def _ip(value) -> IPAddress | None:
    try:
        return ipaddress.ip_address(str(value).strip("[]"))
    except ValueError:
        return None


def _alt_names(*groups: Iterable) -> tuple[tuple[str, ...], tuple[IPAddress, ...]]:
    """Split host names and addresses into DNS and IP SANs, dropping duplicates."""
    dns: dict[str, None] = {}
    ips: dict[IPAddress, None] = {}
    for group in groups:
        for value in group:
            if value is None or value == "":
                continue
            address = _ip(value)
            if address is not None:
                ips[address] = None
            else:
                dns[str(value).lower()] = None
    return tuple(dns), tuple(ips)


def _check_name(machine: Machine) -> str:
    # Machine names become directory names in the state folder.
    if not _SAFE_NAME.match(machine.name):
        raise PKIError(f"machine name {machine.name!r} cannot be used as a file name")
    return machine.name


def _node_client_spec(machine: Machine) -> CertSpec:
    name = _check_name(machine)
    return CertSpec(
        stem=f"nodes/{name}/kubelet-client",
        authority=CLUSTER_CA,
        common_name=f"system:node:{name}",
        organizations=("system:nodes",),
        client=True,
    )


def certificate_specs(settings, topology: Topology) -> list[CertSpec]:
    """Every leaf certificate the inventory calls for (kubeconfig clients included)."""
    _check_topology(topology)
    lb_name = settings.load_balancer_name or None
    lb_ip = settings.load_balancer_ip
    masters = topology.masters
    dns, ips = _alt_names(
        [m.name for m in masters],
        [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            f"kubernetes.default.svc.{settings.dns_domain}",
            lb_name,
        ],
        [m.address for m in masters],
        ["127.0.0.1", settings.first_service_ip, lb_ip],
    )
    specs = [
        CertSpec(
            "apiserver", CLUSTER_CA, "kube-apiserver",
            server=True, dns_names=dns, ip_addresses=ips,
        ),
        CertSpec(
            "apiserver-kubelet-client", CLUSTER_CA, "kube-apiserver-kubelet-client",
            organizations=("kubeadm:cluster-admins",), client=True,
        ),
        CertSpec(
            "apiserver-etcd-client", ETCD_CA, "kube-apiserver-etcd-client", client=True
        ),
        CertSpec(
            "front-proxy-client", FRONT_PROXY_CA, "front-proxy-client", client=True
        ),
    ]
    for member in topology.etcd_members:
        name = _check_name(member)
        dns, ips = _alt_names([name, "localhost"], [member.address, "127.0.0.1", "::1"])
        for kind in ("server", "peer"):
            specs.append(
                CertSpec(
                    f"etcd/{name}/{kind}", ETCD_CA, name,
                    server=True, client=True, dns_names=dns, ip_addresses=ips,
                )
            )
        specs.append(
            CertSpec(
                f"etcd/{name}/healthcheck-client", ETCD_CA,
                "kube-etcd-healthcheck-client", client=True,
            )
        )
    for node in topology.nodes:
        name = _check_name(node)
        dns, ips = _alt_names([name], [node.address])
        specs.append(
            CertSpec(
                f"nodes/{name}/kubelet", CLUSTER_CA, name,
                server=True, dns_names=dns, ip_addresses=ips,
            )
        )
    specs.extend(spec.cert for spec in kubeconfig_specs(topology))
    return specs


def kubeconfig_specs(topology: Topology) -> list[KubeconfigSpec]:
    """The kubeconfigs to write, with the client certificate each one embeds."""

    def client(stem: str, cn: str, *orgs: str) -> CertSpec:
        return CertSpec(stem, CLUSTER_CA, cn, organizations=orgs, client=True)

    specs = [
        KubeconfigSpec(
            "admin.conf", client("admin", "kubernetes-admin", "kubeadm:cluster-admins"), False
        ),
        KubeconfigSpec(
            "super-admin.conf",
            client("super-admin", "kubernetes-super-admin", "system:masters"),
            False,
        ),
        KubeconfigSpec(
            "controller-manager.conf",
            client("controller-manager", "system:kube-controller-manager"),
            True,
        ),
        KubeconfigSpec(
            "scheduler.conf", client("scheduler", "system:kube-scheduler"), True
        ),
        KubeconfigSpec(
            "kube-proxy.conf", client("kube-proxy", "system:kube-proxy"), False
        ),
        # The cluster DNS add-on on every master, reaching its own API server; the
        # add-ons manifest grants this user what it reads and writes.
        KubeconfigSpec("kube-dns.conf", client("kube-dns", "system:kube-dns"), True),
    ]
    for node in topology.nodes:
        specs.append(
            KubeconfigSpec(f"kubelet/{_check_name(node)}.conf", _node_client_spec(node), False)
        )
    return specs


def api_endpoint(settings, topology: Topology) -> str:
    """Host name or address through which the API servers are reached."""
    if settings.load_balancer_name:
        return settings.load_balancer_name
    if settings.load_balancer_ip:
        return str(settings.load_balancer_ip)
    _check_topology(topology)
    return topology.masters[0].address


def _check_topology(topology: Topology) -> None:
    if not topology.masters:
        raise PKIError("the inventory has no masters")


def _check_settings(settings) -> None:
    if settings.key_algorithm not in KEY_ALGORITHMS:
        raise PKIError(
            f"unsupported key algorithm {settings.key_algorithm!r}; "
            f"choose one of {', '.join(KEY_ALGORITHMS)}"
        )
    if settings.cert_validity_days <= 0 or settings.ca_validity_days <= 0:
        raise PKIError("certificate validity periods must be positive")


# ------------------------------------------------------------------------ file access


def _make_private_dir(path: Path) -> None:
    """Create `path` and any missing parents, each readable by the owner only."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=DIR_MODE)
        os.chmod(directory, DIR_MODE)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never half.

    The temporary file is created with its final mode, so key material is never
    readable by others, not even for an instant.
    """
    _make_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # the umask may have removed bits
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_if_changed(path: Path, data: bytes, mode: int) -> str:
    """Write `data` unless the file already holds it; returns the action taken."""
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        _write_atomic(path, data, mode)
        return "created"
    if current != data:
        _write_atomic(path, data, mode)
        return "updated"
    if (path.stat().st_mode & 0o777) != mode:
        os.chmod(path, mode)
    return "kept"


def _key_pem(key: PrivateKey) -> bytes:
    # Traditional OpenSSL encoding ("EC PRIVATE KEY" / "RSA PRIVATE KEY"), as kubeadm writes.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _public_pem(key) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _same_public_key(a, b) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(der, spki) == b.public_bytes(der, spki)


def _load_key(path: Path, warnings: list[str] | None = None) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"{path}: cannot read private key ({exc})") from exc
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise PKIError(f"{path}: only ECDSA and RSA keys are supported")
    if path.stat().st_mode & 0o077:
        os.chmod(path, KEY_MODE)
        if warnings is not None:
            warnings.append(f"{path}: was readable by other users; permissions set to 0600")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise PKIError(f"{path}: cannot read certificate ({exc})") from exc


def _generate_key(algorithm: str) -> PrivateKey:
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise PKIError(f"unsupported key algorithm {algorithm!r}")


# ------------------------------------------------------------------------- issuance


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _subject_key_id(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def _name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    # Organizations before the common name, the order Go's crypto/x509 produces.
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _self_signed_ca(authority: Authority, key: PrivateKey, now: datetime, days: int):
    subject = _name(authority.common_name)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def _issue(
    spec: CertSpec,
    public_key,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    now: datetime,
    not_after: datetime,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(spec.common_name, spec.organizations))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA key exchange (TLS 1.2 without ECDHE) encrypts with the cert's key.
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                sorted(spec.extended_key_usages, key=lambda oid: oid.dotted_string)
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                _subject_key_id(ca_cert)
            ),
            critical=False,
        )
    )
    if spec.dns_names or spec.ip_addresses:
        names = [x509.DNSName(n) for n in spec.dns_names]
        names += [x509.IPAddress(ip) for ip in spec.ip_addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


# ---------------------------------------------------------------------------- checks


def _renewal_window(validity: timedelta) -> timedelta:
    # Short-lived certificates (lab clusters) would otherwise be re-issued on
    # every run; for them renewal starts in the last third of their lifetime.
    return min(RENEW_BEFORE, validity / 3)


def _sans(cert: x509.Certificate) -> tuple[frozenset[str], frozenset[IPAddress]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset(), frozenset()
    dns = frozenset(n.lower() for n in ext.get_values_for_type(x509.DNSName))
    return dns, frozenset(ext.get_values_for_type(x509.IPAddress))


def _ekus(cert: x509.Certificate) -> frozenset[ObjectIdentifier]:
    try:
        return frozenset(
            cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        )
    except x509.ExtensionNotFound:
        return frozenset()


def _subject_fields(name: x509.Name) -> tuple[list[str], list[str]]:
    cns = [a.value for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = sorted(a.value for a in name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    return cns, orgs


def _san_change(cert: x509.Certificate, spec: CertSpec) -> str | None:
    """Human-readable difference between a certificate's SANs and the wanted ones."""
    dns, ips = _sans(cert)
    have = {f"DNS:{n}" for n in dns} | {f"IP:{a}" for a in ips}
    want = {f"DNS:{n}" for n in spec.dns_names} | {f"IP:{a}" for a in spec.ip_addresses}
    parts = []
    if want - have:
        parts.append("added " + ", ".join(sorted(want - have)))
    if have - want:
        parts.append("removed " + ", ".join(sorted(have - want)))
    return "; ".join(parts) or None


def _reissue_reasons(
    cert: x509.Certificate,
    key: PrivateKey,
    spec: CertSpec,
    ca_cert: x509.Certificate,
    now: datetime,
    fresh_not_after: datetime,
    validity: timedelta,
) -> list[str]:
    """Why an existing certificate must be re-issued; empty when it is fine."""
    reasons = []
    if not _same_public_key(cert.public_key(), key.public_key()):
        reasons.append("certificate does not belong to the private key")
    if not _issued_by(cert, ca_cert):
        reasons.append(f"not signed by the current {spec.authority.label}")
    if _subject_fields(cert.subject) != ([spec.common_name], sorted(spec.organizations)):
        reasons.append(f"subject changed (was {cert.subject.rfc4514_string()})")
    if _ekus(cert) != spec.extended_key_usages:
        reasons.append("extended key usage changed")
    san_change = _san_change(cert, spec)
    if san_change:
        reasons.append(f"SANs changed: {san_change}")
    not_after = cert.not_valid_after_utc
    if not_after <= now:
        reasons.append(f"expired on {not_after:%Y-%m-%d}")
    elif (
        not_after - now < _renewal_window(validity)
        # A certificate capped by a soon-to-expire CA would otherwise be
        # re-issued on every run without gaining anything.
        and fresh_not_after > not_after + timedelta(hours=1)
    ):
        reasons.append(f"expires on {not_after:%Y-%m-%d}")
    return reasons


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Outcome:
    """What happened to one file (or certificate/key pair) during a run."""

    path: str  # relative to the state folder, e.g. "pki/apiserver.crt"
    action: str  # "created", "reissued", "updated" or "kept"
    reason: str = ""

    def __str__(self) -> str:
        text = f"{self.action:<9} {self.path}"
        return f"{text} ({self.reason})" if self.reason else text


@dataclass
class PKIResult:
    """Report of `ensure_pki`.

    `outcomes` covers everything under pki/ (one entry per certificate, key pair or
    service account key), `kubeconfigs` everything under kubeconfigs/. `orphaned`
    lists per-machine folders and kubeconfigs of machines no longer in the inventory;
    they are left in place. `warnings` are things the operator should look at.
    """

    outcomes: list[Outcome] = field(default_factory=list)
    kubeconfigs: list[Outcome] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def _with(self, action: str) -> list[Outcome]:
        return [o for o in self.outcomes + self.kubeconfigs if o.action == action]

    @property
    def created(self) -> list[Outcome]:
        return self._with("created")

    @property
    def reissued(self) -> list[Outcome]:
        return self._with("reissued")

    @property
    def updated(self) -> list[Outcome]:
        return self._with("updated")

    @property
    def kept(self) -> list[Outcome]:
        return self._with("kept")

    @property
    def changed(self) -> bool:
        return any(o.action != "kept" for o in self.outcomes + self.kubeconfigs)

    def summary(self, verbose: bool = False) -> str:
        """Printable report; unchanged files are only listed when `verbose`."""
        lines = [
            str(o) for o in self.outcomes + self.kubeconfigs if verbose or o.action != "kept"
        ]
        kept = len(self.kept)
        if kept and not verbose:
            lines.append(f"{kept} file(s) unchanged")
        lines += [
            f"orphaned  {p} (no longer in the inventory; left in place)"
            for p in self.orphaned
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------------- ensure


def _rel(state_dir: Path, path: Path) -> str:
    return path.relative_to(state_dir).as_posix()


def _load_authority(pki: Path, authority: Authority, now: datetime, warnings: list[str]):
    """Existing (cert, key) of a CA, (None, key) if only the key survived, or None.

    Raises PKIError for anything that would require replacing the CA.
    """
    crt, key_path = pki / f"{authority.stem}.crt", pki / f"{authority.stem}.key"
    if not key_path.exists():
        if crt.exists():
            raise PKIError(
                f"{crt} exists but its private key {key_path} is missing; refusing to "
                f"create a new {authority.label}, which would invalidate every certificate "
                "it signed. Restore the key from a backup, or remove the CA certificate "
                "deliberately to start a new CA."
            )
        return None
    key = _load_key(key_path, warnings)
    if not crt.exists():
        return None, key
    cert = _load_cert(crt)
    if not _same_public_key(cert.public_key(), key.public_key()):
        raise PKIError(f"{crt} and {key_path} do not belong together")
    if not _is_ca(cert):
        raise PKIError(f"{crt} is not a CA certificate")
    not_after = cert.not_valid_after_utc
    if not_after <= now:
        raise PKIError(
            f"{authority.label} ({crt}) expired on {not_after:%Y-%m-%d}; "
            "CA rotation is a manual operation"
        )
    if not_after - now < RENEW_BEFORE:
        warnings.append(
            f"{authority.label} expires on {not_after:%Y-%m-%d}; plan a CA rotation"
        )
    return cert, key


def _ensure_authorities(state_dir: Path, settings, now: datetime, result: PKIResult):
    pki = state_dir / PKI_DIR
    # Inspect every CA before writing anything, so that a damaged CA stops the run
    # before the others are touched.
    loaded = {a: _load_authority(pki, a, now, result.warnings) for a in AUTHORITIES}
    authorities = {}
    for authority, existing in loaded.items():
        crt, key_path = pki / f"{authority.stem}.crt", pki / f"{authority.stem}.key"
        if existing is not None and existing[0] is not None:
            authorities[authority] = existing
            result.outcomes.append(Outcome(_rel(state_dir, crt), "kept"))
            continue
        if existing is None:
            key = _generate_key(settings.key_algorithm)
            _write_atomic(key_path, _key_pem(key), KEY_MODE)
            action, reason = "created", ""
        else:
            # The certificate can be rebuilt from the surviving key: certificates
            # signed earlier still verify against the new one (same name, same key).
            key = existing[1]
            action, reason = "reissued", "certificate missing; re-created for the existing key"
        cert = _self_signed_ca(authority, key, now, settings.ca_validity_days)
        _write_atomic(crt, _cert_pem(cert), PUBLIC_MODE)
        authorities[authority] = (cert, key)
        result.outcomes.append(Outcome(_rel(state_dir, crt), action, reason))
    return authorities


def _check_service_account_key(pki: Path) -> None:
    key_path, pub_path = pki / "sa.key", pki / "sa.pub"
    if pub_path.exists() and not key_path.exists():
        raise PKIError(
            f"{pub_path} exists but {key_path} is missing; a new key would invalidate "
            "every service account token. Restore sa.key, or remove sa.pub "
            "deliberately to start over."
        )


def _ensure_service_account_key(state_dir: Path, settings, result: PKIResult) -> None:
    pki = state_dir / PKI_DIR
    key_path, pub_path = pki / "sa.key", pki / "sa.pub"
    if not key_path.exists():
        key = _generate_key(settings.key_algorithm)
        _write_atomic(key_path, _key_pem(key), KEY_MODE)
        _write_atomic(pub_path, _public_pem(key.public_key()), PUBLIC_MODE)
        result.outcomes.append(Outcome(_rel(state_dir, key_path), "created"))
        return
    key = _load_key(key_path, result.warnings)
    current = None
    if pub_path.exists():
        with contextlib.suppress(ValueError, UnsupportedAlgorithm):
            current = serialization.load_pem_public_key(pub_path.read_bytes())
    if current is not None and _same_public_key(current, key.public_key()):
        result.outcomes.append(Outcome(_rel(state_dir, key_path), "kept"))
        return
    reason = "sa.pub did not match sa.key" if pub_path.exists() else "sa.pub was missing"
    # sa.pub is derived from sa.key, so rewriting it loses nothing.
    _write_atomic(pub_path, _public_pem(key.public_key()), PUBLIC_MODE)
    result.outcomes.append(Outcome(_rel(state_dir, pub_path), "updated", reason))


def _ensure_certificate(
    state_dir: Path,
    spec: CertSpec,
    ca: tuple[x509.Certificate, PrivateKey],
    settings,
    now: datetime,
    result: PKIResult,
) -> None:
    ca_cert, ca_key = ca
    pki = state_dir / PKI_DIR
    crt, key_path = pki / f"{spec.stem}.crt", pki / f"{spec.stem}.key"
    validity = timedelta(days=settings.cert_validity_days)
    # A certificate never outlives the CA that signed it.
    not_after = min(now + validity, ca_cert.not_valid_after_utc)

    if not key_path.exists():
        key = _generate_key(settings.key_algorithm)
        _write_atomic(key_path, _key_pem(key), KEY_MODE)
        reason = "private key was missing; new key generated" if crt.exists() else ""
        action, reasons = "created", [reason] if reason else []
    else:
        key = _load_key(key_path, result.warnings)
        cert = None
        if crt.exists():
            try:
                cert = _load_cert(crt)
            except PKIError:
                cert = None  # a public certificate can always be re-issued
        if cert is None:
            action, reasons = "reissued", ["certificate missing or unreadable"]
        else:
            reasons = _reissue_reasons(cert, key, spec, ca_cert, now, not_after, validity)
            if not reasons:
                result.outcomes.append(Outcome(_rel(state_dir, crt), "kept"))
                return
            action = "reissued"

    cert = _issue(spec, key.public_key(), ca_cert, ca_key, now, not_after)
    _write_atomic(crt, _cert_pem(cert), PUBLIC_MODE)
    result.outcomes.append(Outcome(_rel(state_dir, crt), action, "; ".join(reasons)))


def _orphans(state_dir: Path, topology: Topology) -> list[str]:
    nodes = {m.name for m in topology.nodes}
    members = {m.name for m in topology.etcd_members}
    found = []
    for parent, wanted in (
        (state_dir / PKI_DIR / "nodes", nodes),
        (state_dir / PKI_DIR / "etcd", members),
    ):
        if parent.is_dir():
            found += [p for p in parent.iterdir() if p.is_dir() and p.name not in wanted]
    kubelet_dir = state_dir / KUBECONFIG_DIR / "kubelet"
    if kubelet_dir.is_dir():
        found += [p for p in kubelet_dir.glob("*.conf") if p.stem not in nodes]
    return sorted(_rel(state_dir, p) for p in found)


def ensure_pki(
    state_dir: Path, settings, topology: Topology, *, now: datetime | None = None
) -> PKIResult:
    """Create or complete the cluster PKI and the kubeconfigs in `state_dir`.

    This is the single entry point for a deploy: after the certificates it calls
    `ensure_kubeconfigs`, whose outcomes are in `PKIResult.kubeconfigs`. Running it
    again with the same inventory changes no file. `now` overrides the clock.
    """
    state_dir = Path(state_dir)
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    _check_settings(settings)
    specs = certificate_specs(settings, topology)  # validates the inventory first
    _check_service_account_key(state_dir / PKI_DIR)
    _make_private_dir(state_dir / PKI_DIR)

    result = PKIResult()
    authorities = _ensure_authorities(state_dir, settings, now, result)
    _ensure_service_account_key(state_dir, settings, result)
    for spec in specs:
        _ensure_certificate(state_dir, spec, authorities[spec.authority], settings, now, result)
    result.kubeconfigs = ensure_kubeconfigs(state_dir, settings, topology)
    result.orphaned = _orphans(state_dir, topology)
    return result


def ensure_kubeconfigs(state_dir: Path, settings, topology: Topology) -> list[Outcome]:
    """Render every kubeconfig from the certificates already in `state_dir`/pki.

    Called by `ensure_pki`, which is what a deploy should use (a new API endpoint
    also needs a new API server certificate). Calling it directly only refreshes
    the kubeconfigs. A file is rewritten only when its content changes. Raises
    PKIError if a certificate it needs has not been generated yet.
    """
    state_dir = Path(state_dir)
    pki = state_dir / PKI_DIR
    out_dir = state_dir / KUBECONFIG_DIR
    _make_private_dir(out_dir)
    remote = kubeconfig.server_url(api_endpoint(settings, topology), settings.api_port)
    local = kubeconfig.server_url("127.0.0.1", settings.api_port)

    def read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise PKIError(f"{path} is missing; run ensure_pki first") from None

    ca_pem = read(pki / f"{CLUSTER_CA.stem}.crt")
    outcomes = []
    for spec in kubeconfig_specs(topology):
        text = kubeconfig.render(
            cluster_name=settings.cluster_name,
            server=local if spec.local else remote,
            ca_pem=ca_pem,
            user=spec.cert.common_name,
            client_cert_pem=read(pki / f"{spec.cert.stem}.crt"),
            client_key_pem=read(pki / f"{spec.cert.stem}.key"),
        )
        path = out_dir / spec.path
        action = _write_if_changed(path, text.encode(), KEY_MODE)
        outcomes.append(Outcome(_rel(state_dir, path), action))
    return outcomes


# ------------------------------------------------------------------------ expiration


@dataclass(frozen=True)
class CertInfo:
    """One row of the expiration report."""

    name: str  # "apiserver", "etcd/etcd-1/server", "admin.conf", "ca", ...
    path: Path
    subject: str  # common name
    not_after: datetime
    residual: timedelta
    authority: str  # label of the issuing CA; empty for the CAs themselves
    is_ca: bool

    @property
    def expired(self) -> bool:
        return self.residual <= timedelta(0)


def _authority_label(cert: x509.Certificate, cas: dict[str, x509.Certificate]) -> str:
    for label, ca in cas.items():
        if _issued_by(cert, ca):
            return label
    cns = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return cns[0].value if cns else cert.issuer.rfc4514_string()


def _common_name(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return cns[0].value if cns else ""


def check_expiration(state_dir: Path, *, now: datetime | None = None) -> list[CertInfo]:
    """Every certificate under pki/ and every client certificate embedded in a
    kubeconfig under kubeconfigs/, with its expiry; CAs are flagged `is_ca`.

    Client certificates appear twice (as pki/ file and as kubeconfig) since the
    two can drift apart if a kubeconfig is edited by hand.
    """
    state_dir = Path(state_dir)
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    pki = state_dir / PKI_DIR
    cas = {
        a.label: _load_cert(pki / f"{a.stem}.crt")
        for a in AUTHORITIES
        if (pki / f"{a.stem}.crt").exists()
    }
    ca_files = {(pki / f"{a.stem}.crt"): a.label for a in AUTHORITIES}

    def row(name: str, path: Path, cert: x509.Certificate) -> CertInfo:
        is_ca = _is_ca(cert)
        self_signed = is_ca and _issued_by(cert, cert)
        return CertInfo(
            name=name,
            path=path,
            subject=_common_name(cert),
            not_after=cert.not_valid_after_utc,
            residual=cert.not_valid_after_utc - now,
            authority="" if self_signed else _authority_label(cert, cas),
            is_ca=is_ca,
        )

    rows = []
    if pki.is_dir():
        for path in sorted(pki.rglob("*.crt")):
            name = ca_files.get(path) or path.relative_to(pki).with_suffix("").as_posix()
            rows.append(row(name, path, _load_cert(path)))
    conf_dir = state_dir / KUBECONFIG_DIR
    if conf_dir.is_dir():
        for path in sorted(conf_dir.rglob("*.conf")):
            name = path.relative_to(conf_dir).as_posix()
            try:
                users = kubeconfig.embedded_users(path.read_text())
                certs = [(u, x509.load_pem_x509_certificate(u.client_cert_pem)) for u in users]
            except (kubeconfig.KubeconfigError, ValueError) as exc:
                raise PKIError(f"{path}: {exc}") from exc
            for user, cert in certs:
                label = name if len(certs) == 1 else f"{name} ({user.name})"
                rows.append(row(label, path, cert))
    return sorted(rows, key=lambda r: r.name)


def _short_duration(delta: timedelta) -> str:
    """Residual time in the compact style kubeadm prints (364d, 9y, <invalid>)."""
    seconds = int(delta.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    return f"{hours // (24 * 365)}y"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "   ".join(cell.ljust(width) for cell, width in zip(r, widths)).rstrip()
        for r in [header, *rows]
    ]


def format_expiration_table(rows: Iterable[CertInfo]) -> str:
    """Render `check_expiration` rows like `kubeadm certs check-expiration`."""
    rows = list(rows)

    def expires(info: CertInfo) -> str:
        return info.not_after.astimezone(timezone.utc).strftime("%b %d, %Y %H:%M UTC")

    leaves = [
        [r.name, expires(r), _short_duration(r.residual), r.authority]
        for r in rows
        if not r.is_ca
    ]
    cas = [[r.name, expires(r), _short_duration(r.residual)] for r in rows if r.is_ca]
    lines = _table(["CERTIFICATE", "EXPIRES", "RESIDUAL TIME", "CERTIFICATE AUTHORITY"], leaves)
    lines.append("")
    lines += _table(["CERTIFICATE AUTHORITY", "EXPIRES", "RESIDUAL TIME"], cas)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- distribution


@dataclass(frozen=True)
class HostFile:
    """A file of the state folder and where it goes on a host."""

    remote: str
    local: Path
    secret: bool  # private key material: deploy with mode 0600

    @property
    def mode(self) -> int:
        return KEY_MODE if self.secret else PUBLIC_MODE


def host_files(state_dir: Path, machine: Machine) -> list[HostFile]:
    """The files `machine` must receive, at kubeadm's paths, sorted by remote path.

    Raises PKIError if one of them has not been generated (run `ensure_pki` first).
    """
    state_dir = Path(state_dir)
    pki = state_dir / PKI_DIR
    confs = state_dir / KUBECONFIG_DIR
    name = _check_name(machine)
    files: dict[str, HostFile] = {}

    def add(remote: str, local: Path, secret: bool) -> None:
        files[remote] = HostFile(remote, local, secret)

    def add_pair(remote_stem: str, local_stem: Path) -> None:
        add(f"{remote_stem}.crt", local_stem.with_name(local_stem.name + ".crt"), False)
        add(f"{remote_stem}.key", local_stem.with_name(local_stem.name + ".key"), True)

    # Every machine is a node.
    add(f"{REMOTE_PKI}/ca.crt", pki / "ca.crt", False)
    add(f"{REMOTE_K8S}/kubelet.conf", confs / "kubelet" / f"{name}.conf", True)
    add(f"{REMOTE_K8S}/kube-proxy.conf", confs / "kube-proxy.conf", True)
    add_pair(f"{REMOTE_KUBELET_PKI}/kubelet", pki / "nodes" / name / "kubelet")

    if machine.is_master:
        add(f"{REMOTE_PKI}/ca.key", pki / "ca.key", True)
        for stem in ("apiserver", "apiserver-kubelet-client", "apiserver-etcd-client",
                     "front-proxy-ca", "front-proxy-client"):
            add_pair(f"{REMOTE_PKI}/{stem}", pki / stem)
        add(f"{REMOTE_PKI}/sa.key", pki / "sa.key", True)
        add(f"{REMOTE_PKI}/sa.pub", pki / "sa.pub", False)
        add(f"{REMOTE_PKI}/etcd/ca.crt", pki / "etcd" / "ca.crt", False)
        for conf in ("admin.conf", "super-admin.conf", "controller-manager.conf",
                     "scheduler.conf", "kube-dns.conf"):
            add(f"{REMOTE_K8S}/{conf}", confs / conf, True)

    if machine.is_etcd:
        add(f"{REMOTE_PKI}/etcd/ca.crt", pki / "etcd" / "ca.crt", False)
        for stem in ("server", "peer", "healthcheck-client"):
            add_pair(f"{REMOTE_PKI}/etcd/{stem}", pki / "etcd" / name / stem)

    missing = sorted(str(f.local) for f in files.values() if not f.local.is_file())
    if missing:
        raise PKIError(
            f"files for {machine.name} have not been generated ({', '.join(missing)}); "
            "run ensure_pki first"
        )
    return [files[remote] for remote in sorted(files)]
