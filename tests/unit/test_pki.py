"""Tests of the cluster PKI and kubeconfig generation, with real keys and certificates."""
from __future__ import annotations

import base64
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import threading
import types
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provision import kubeconfig, pki
from provision.topology import Machine, Topology

SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH
ip = ipaddress.ip_address


def make_settings(**overrides):
    values = dict(
        cluster_name="kubesmith",
        dns_domain="cluster.local",
        service_cidr=ipaddress.ip_network("10.96.0.0/12"),
        first_service_ip=ip("10.96.0.1"),
        api_port=6443,
        load_balancer_name=None,
        load_balancer_ip=None,
        key_algorithm="ecdsa-p256",
        ca_validity_days=3650,
        cert_validity_days=365,
    )
    values.update(overrides)
    return types.SimpleNamespace(**values)


def machine(name: str, address: str, *groups: str) -> Machine:
    return Machine(name, address, frozenset(groups))


CP1 = machine("cp1", "10.0.0.11", "masters", "etcd")
CP2 = machine("cp2", "10.0.0.12", "masters", "etcd")
CP3 = machine("cp3", "10.0.0.13", "masters", "etcd")
W1 = machine("w1", "10.0.0.21", "workers")
W2 = machine("w2", "10.0.0.22", "workers")
TOPOLOGY = Topology((CP1, CP2, CP3, W1, W2))
SETTINGS = make_settings()


@pytest.fixture(scope="session")
def generated(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("generated") / "state"
    pki.ensure_pki(path, SETTINGS, TOPOLOGY)
    return path


@pytest.fixture
def state(generated, tmp_path) -> Path:
    """A state folder after a first run with TOPOLOGY; a private copy for each test
    (contents, modes and mtimes preserved)."""
    path = tmp_path / "state"
    shutil.copytree(generated, path)
    return path


def cert_at(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def key_at(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


def sans(cert: x509.Certificate) -> tuple[set[str], set]:
    value = ext(cert, x509.SubjectAlternativeName).value
    return set(value.get_values_for_type(x509.DNSName)), set(
        value.get_values_for_type(x509.IPAddress)
    )


def subject(cert: x509.Certificate) -> tuple[str, list[str]]:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return cn, orgs


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Content, mtime and mode of every file below `root`."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def public_der(key) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign_like(
    spec_cert: x509.Certificate,
    ca_dir: Path,
    ca_stem: str,
    not_after: datetime,
    subject_name: x509.Name | None = None,
    ekus: list | None = None,
    public_key=None,
):
    """A copy of `spec_cert` (same key, subject, extensions) signed by the given CA with
    the given expiry, optionally with another subject or extended key usage."""
    ca_cert = cert_at(ca_dir / f"{ca_stem}.crt")
    ca_key = key_at(ca_dir / f"{ca_stem}.key")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name or spec_cert.subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key or spec_cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - timedelta(days=365))
        .not_valid_after(not_after)
    )
    for extension in spec_cert.extensions:
        value = extension.value
        if isinstance(value, x509.AuthorityKeyIdentifier):
            continue
        if isinstance(value, x509.ExtendedKeyUsage) and ekus is not None:
            value = x509.ExtendedKeyUsage(ekus)
        builder = builder.add_extension(value, extension.critical)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


# ------------------------------------------------------------------------- layout


EXPECTED_PKI_FILES = {
    "ca.crt", "ca.key", "front-proxy-ca.crt", "front-proxy-ca.key",
    "etcd/ca.crt", "etcd/ca.key", "sa.key", "sa.pub",
    "apiserver.crt", "apiserver.key",
    "apiserver-kubelet-client.crt", "apiserver-kubelet-client.key",
    "apiserver-etcd-client.crt", "apiserver-etcd-client.key",
    "front-proxy-client.crt", "front-proxy-client.key",
    "admin.crt", "admin.key", "super-admin.crt", "super-admin.key",
    "controller-manager.crt", "controller-manager.key",
    "scheduler.crt", "scheduler.key", "kube-proxy.crt", "kube-proxy.key",
    "kube-dns.crt", "kube-dns.key",
    *(
        f"etcd/{m}/{kind}.{ext}"
        for m in ("cp1", "cp2", "cp3")
        for kind in ("server", "peer", "healthcheck-client")
        for ext in ("crt", "key")
    ),
    *(
        f"nodes/{n}/{kind}.{ext}"
        for n in ("cp1", "cp2", "cp3", "w1", "w2")
        for kind in ("kubelet", "kubelet-client")
        for ext in ("crt", "key")
    ),
}
EXPECTED_KUBECONFIGS = {
    "admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf",
    "kube-proxy.conf", "kube-dns.conf",
    *(f"kubelet/{n}.conf" for n in ("cp1", "cp2", "cp3", "w1", "w2")),
}


def test_first_run_creates_kubeadm_layout(tmp_path):
    result = pki.ensure_pki(tmp_path / "state", SETTINGS, TOPOLOGY)

    assert set(snapshot(tmp_path / "state" / "pki")) == EXPECTED_PKI_FILES
    assert set(snapshot(tmp_path / "state" / "kubeconfigs")) == EXPECTED_KUBECONFIGS
    assert result.changed
    assert not result.reissued and not result.kept and not result.warnings
    assert {o.path for o in result.created} >= {
        "pki/ca.crt", "pki/apiserver.crt", "pki/nodes/w1/kubelet-client.crt",
        "kubeconfigs/admin.conf", "kubeconfigs/kubelet/w2.conf",
    }
    assert "pki/apiserver.crt" in result.summary()


def assert_modes(root: Path) -> None:
    for path in root.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        elif path.suffix in (".key", ".conf"):
            assert mode == 0o600, path
        else:
            assert mode == 0o644, path


def test_file_and_directory_modes(state):
    assert_modes(state)


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_key_files_are_never_created_readable_by_others(tmp_path, monkeypatch, umask):
    created = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, *args, **kwargs):
        if flags & os.O_CREAT:
            created.append((Path(path), mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    old_umask = os.umask(umask)  # the final modes must not depend on the umask
    try:
        pki.ensure_pki(tmp_path / "state", SETTINGS, TOPOLOGY)
    finally:
        os.umask(old_umask)

    secret = [(p, m) for p, m in created if ".key." in p.name or ".conf." in p.name]
    key_files = [p for p in EXPECTED_PKI_FILES if p.endswith(".key")]
    assert len(secret) == len(key_files) + len(EXPECTED_KUBECONFIGS)
    assert all(mode == 0o600 for _, mode in secret)
    assert not list((tmp_path / "state").rglob(".*.tmp"))
    assert_modes(tmp_path / "state")


# ----------------------------------------------------------------- certificate content


@pytest.mark.parametrize(
    "stem,cn",
    [("ca", "kubernetes"), ("front-proxy-ca", "front-proxy-ca"), ("etcd/ca", "etcd-ca")],
)
def test_ca_certificates(state, stem, cn):
    cert = cert_at(state / "pki" / f"{stem}.crt")
    now = datetime.now(timezone.utc)

    assert subject(cert) == (cn, [])
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign and usage.value.digital_signature
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert now - timedelta(minutes=10) < cert.not_valid_before_utc < now - timedelta(minutes=1)
    assert abs(cert.not_valid_after_utc - (now + timedelta(days=3650))) < timedelta(minutes=1)


def leaf_expectations():
    """(path under pki, CA stem, CN, organizations, extended key usages)."""
    rows = [
        ("apiserver", "ca", "kube-apiserver", [], {SERVER}),
        ("apiserver-kubelet-client", "ca", "kube-apiserver-kubelet-client",
         ["kubeadm:cluster-admins"], {CLIENT}),
        ("apiserver-etcd-client", "etcd/ca", "kube-apiserver-etcd-client", [], {CLIENT}),
        ("front-proxy-client", "front-proxy-ca", "front-proxy-client", [], {CLIENT}),
        ("admin", "ca", "kubernetes-admin", ["kubeadm:cluster-admins"], {CLIENT}),
        ("super-admin", "ca", "kubernetes-super-admin", ["system:masters"], {CLIENT}),
        ("controller-manager", "ca", "system:kube-controller-manager", [], {CLIENT}),
        ("scheduler", "ca", "system:kube-scheduler", [], {CLIENT}),
        ("kube-proxy", "ca", "system:kube-proxy", [], {CLIENT}),
        ("kube-dns", "ca", "system:kube-dns", [], {CLIENT}),
    ]
    for m in ("cp1", "cp2", "cp3"):
        rows += [
            (f"etcd/{m}/server", "etcd/ca", m, [], {SERVER, CLIENT}),
            (f"etcd/{m}/peer", "etcd/ca", m, [], {SERVER, CLIENT}),
            (f"etcd/{m}/healthcheck-client", "etcd/ca", "kube-etcd-healthcheck-client", [],
             {CLIENT}),
        ]
    for n in ("cp1", "w2"):
        rows += [
            (f"nodes/{n}/kubelet", "ca", n, [], {SERVER}),
            (f"nodes/{n}/kubelet-client", "ca", f"system:node:{n}", ["system:nodes"], {CLIENT}),
        ]
    return rows


def test_leaf_certificates(state):
    now = datetime.now(timezone.utc)
    serials = set()
    for stem, ca_stem, cn, orgs, ekus in leaf_expectations():
        cert = cert_at(state / "pki" / f"{stem}.crt")
        ca = cert_at(state / "pki" / f"{ca_stem}.crt")
        key = key_at(state / "pki" / f"{stem}.key")

        assert subject(cert) == (cn, orgs), stem
        cert.verify_directly_issued_by(ca)
        for other in {"ca", "front-proxy-ca", "etcd/ca"} - {ca_stem}:
            with pytest.raises(ValueError):
                cert.verify_directly_issued_by(cert_at(state / "pki" / f"{other}.crt"))
        assert public_der(cert.public_key()) == public_der(key.public_key()), stem
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"

        constraints = ext(cert, x509.BasicConstraints)
        assert constraints.critical and not constraints.value.ca
        usage = ext(cert, x509.KeyUsage)
        assert usage.critical and usage.value.digital_signature
        assert not usage.value.key_encipherment  # ECDSA keys cannot encipher
        assert not usage.value.key_cert_sign
        assert set(ext(cert, x509.ExtendedKeyUsage).value) == ekus, stem
        assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ext(
            ca, x509.SubjectKeyIdentifier
        ).value.digest
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
        assert now - timedelta(minutes=10) < cert.not_valid_before_utc < now - timedelta(minutes=1)
        assert abs(cert.not_valid_after_utc - (now + timedelta(days=365))) < timedelta(minutes=1)
        serials.add(cert.serial_number)
    assert len(serials) == len(leaf_expectations())


APISERVER_DNS = {
    "cp1", "cp2", "cp3", "localhost", "kubernetes", "kubernetes.default",
    "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
}
APISERVER_IPS = {ip("10.0.0.11"), ip("10.0.0.12"), ip("10.0.0.13"), ip("127.0.0.1"),
                 ip("10.96.0.1")}


def test_apiserver_sans(state):
    assert sans(cert_at(state / "pki" / "apiserver.crt")) == (APISERVER_DNS, APISERVER_IPS)


def test_apiserver_sans_include_load_balancer(tmp_path):
    settings = make_settings(
        load_balancer_name="api.example.test", load_balancer_ip=ip("192.0.2.10"),
        dns_domain="k8s.internal",
    )
    pki.ensure_pki(tmp_path, settings, TOPOLOGY)

    dns, ips = sans(cert_at(tmp_path / "pki" / "apiserver.crt"))
    assert dns == (APISERVER_DNS - {"kubernetes.default.svc.cluster.local"}) | {
        "api.example.test", "kubernetes.default.svc.k8s.internal",
    }
    assert ips == APISERVER_IPS | {ip("192.0.2.10")}


def test_etcd_and_kubelet_sans(state):
    for kind in ("server", "peer"):
        assert sans(cert_at(state / "pki" / "etcd" / "cp2" / f"{kind}.crt")) == (
            {"cp2", "localhost"}, {ip("10.0.0.12"), ip("127.0.0.1"), ip("::1")},
        )
    assert sans(cert_at(state / "pki" / "nodes" / "w1" / "kubelet.crt")) == (
        {"w1"}, {ip("10.0.0.21")},
    )


def test_service_account_key_pair(state):
    key = key_at(state / "pki" / "sa.key")
    pub = serialization.load_pem_public_key((state / "pki" / "sa.pub").read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert public_der(pub) == public_der(key.public_key())
    assert (state / "pki" / "sa.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_rsa_keys(tmp_path):
    settings = make_settings(key_algorithm="rsa-2048")
    topology = Topology((CP1,))
    pki.ensure_pki(tmp_path, settings, topology)

    for path in (tmp_path / "pki").rglob("*.key"):
        key = key_at(path)
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048, path
    cert = cert_at(tmp_path / "pki" / "apiserver.crt")
    assert ext(cert, x509.KeyUsage).value.key_encipherment
    assert cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSA_WITH_SHA256
    cert.verify_directly_issued_by(cert_at(tmp_path / "pki" / "ca.crt"))
    handshake(tmp_path / "pki", "apiserver", "admin", "ca", "kubernetes.default.svc")


# ---------------------------------------------------------------------- kubeconfigs


KUBECONFIG_USERS = {
    "admin.conf": ("kubernetes-admin", "admin", "https://10.0.0.11:6443"),
    "super-admin.conf": ("kubernetes-super-admin", "super-admin", "https://10.0.0.11:6443"),
    "controller-manager.conf": (
        "system:kube-controller-manager", "controller-manager", "https://127.0.0.1:6443"
    ),
    "scheduler.conf": ("system:kube-scheduler", "scheduler", "https://127.0.0.1:6443"),
    "kube-proxy.conf": ("system:kube-proxy", "kube-proxy", "https://10.0.0.11:6443"),
    "kube-dns.conf": ("system:kube-dns", "kube-dns", "https://127.0.0.1:6443"),
    "kubelet/w1.conf": ("system:node:w1", "nodes/w1/kubelet-client", "https://10.0.0.11:6443"),
    "kubelet/cp2.conf": (
        "system:node:cp2", "nodes/cp2/kubelet-client", "https://10.0.0.11:6443"
    ),
}


@pytest.mark.parametrize("name", sorted(KUBECONFIG_USERS))
def test_kubeconfig_contents(state, name):
    user, stem, server = KUBECONFIG_USERS[name]
    doc = yaml.safe_load((state / "kubeconfigs" / name).read_text())

    assert doc["kind"] == "Config" and doc["apiVersion"] == "v1"
    assert doc["current-context"] == f"{user}@kubesmith"
    [cluster] = doc["clusters"]
    [context] = doc["contexts"]
    [entry] = doc["users"]
    assert cluster["name"] == "kubesmith"
    assert cluster["cluster"]["server"] == server
    ca_pem = base64.b64decode(cluster["cluster"]["certificate-authority-data"])
    assert ca_pem == (state / "pki" / "ca.crt").read_bytes()
    assert context == {
        "name": f"{user}@kubesmith", "context": {"cluster": "kubesmith", "user": user}
    }
    assert entry["name"] == user
    cert_pem = base64.b64decode(entry["user"]["client-certificate-data"])
    key_pem = base64.b64decode(entry["user"]["client-key-data"])
    assert cert_pem == (state / "pki" / f"{stem}.crt").read_bytes()
    assert key_pem == (state / "pki" / f"{stem}.key").read_bytes()
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert subject(cert)[0] == user
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))


def test_kubelet_kubeconfig_identity(state):
    doc = yaml.safe_load((state / "kubeconfigs" / "kubelet" / "w2.conf").read_text())
    cert = x509.load_pem_x509_certificate(
        base64.b64decode(doc["users"][0]["user"]["client-certificate-data"])
    )
    assert subject(cert) == ("system:node:w2", ["system:nodes"])
    assert set(ext(cert, x509.ExtendedKeyUsage).value) == {CLIENT}


@pytest.mark.parametrize(
    "overrides,remote,local",
    [
        ({"load_balancer_name": "api.example.test"},
         "https://api.example.test:6443", "https://127.0.0.1:6443"),
        ({"load_balancer_ip": ip("192.0.2.10"), "api_port": 8443},
         "https://192.0.2.10:8443", "https://127.0.0.1:8443"),
    ],
)
def test_kubeconfig_server_uses_load_balancer(tmp_path, overrides, remote, local):
    pki.ensure_pki(tmp_path, make_settings(**overrides), Topology((CP1, W1)))

    def server(name):
        doc = yaml.safe_load((tmp_path / "kubeconfigs" / name).read_text())
        return doc["clusters"][0]["cluster"]["server"]

    for name in ("admin.conf", "super-admin.conf", "kube-proxy.conf", "kubelet/w1.conf"):
        assert server(name) == remote
    for name in ("controller-manager.conf", "scheduler.conf", "kube-dns.conf"):
        assert server(name) == local


def test_kubeconfig_server_for_ipv6_master(tmp_path):
    cp = machine("cp1", "fd00::11", "masters", "etcd")
    pki.ensure_pki(tmp_path, SETTINGS, Topology((cp,)))
    doc = yaml.safe_load((tmp_path / "kubeconfigs" / "admin.conf").read_text())
    assert doc["clusters"][0]["cluster"]["server"] == "https://[fd00::11]:6443"
    assert ip("fd00::11") in sans(cert_at(tmp_path / "pki" / "apiserver.crt"))[1]


def test_kubeconfig_server_brackets_ipv6():
    assert kubeconfig.server_url("fd00::10", 6443) == "https://[fd00::10]:6443"
    assert kubeconfig.server_url("10.0.0.1", 6443) == "https://10.0.0.1:6443"
    assert kubeconfig.server_url("api.example.test", 443) == "https://api.example.test:443"


def test_ensure_kubeconfigs_rewrites_only_what_changed(state):
    before = snapshot(state / "kubeconfigs")
    outcomes = pki.ensure_kubeconfigs(state, SETTINGS, TOPOLOGY)
    assert {o.action for o in outcomes} == {"kept"}
    assert snapshot(state / "kubeconfigs") == before

    outcomes = pki.ensure_kubeconfigs(
        state, make_settings(load_balancer_name="api.example.test"), TOPOLOGY
    )
    updated = {o.path for o in outcomes if o.action == "updated"}
    assert "kubeconfigs/admin.conf" in updated
    assert "kubeconfigs/scheduler.conf" not in updated  # still talks to 127.0.0.1


def test_kubeconfig_layout_matches_kubectl():
    text = kubeconfig.render(
        cluster_name="kubesmith", server="https://10.0.0.11:6443", ca_pem=b"CA",
        user="kubernetes-admin", client_cert_pem=b"C", client_key_pem=b"K",
    )
    assert text == (
        "apiVersion: v1\n"
        "clusters:\n"
        "- cluster:\n"
        "    certificate-authority-data: Q0E=\n"
        "    server: https://10.0.0.11:6443\n"
        "  name: kubesmith\n"
        "contexts:\n"
        "- context:\n"
        "    cluster: kubesmith\n"
        "    user: kubernetes-admin\n"
        "  name: kubernetes-admin@kubesmith\n"
        "current-context: kubernetes-admin@kubesmith\n"
        "kind: Config\n"
        "preferences: {}\n"
        "users:\n"
        "- name: kubernetes-admin\n"
        "  user:\n"
        "    client-certificate-data: Qw==\n"
        "    client-key-data: Sw==\n"
    )
    [user] = kubeconfig.embedded_users(text)
    assert (user.name, user.client_cert_pem, user.client_key_pem) == (
        "kubernetes-admin", b"C", b"K"
    )


def test_kubeconfig_permissions_are_restored(state):
    path = state / "kubeconfigs" / "admin.conf"
    content = path.read_bytes()
    os.chmod(path, 0o644)
    outcomes = pki.ensure_kubeconfigs(state, SETTINGS, TOPOLOGY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == content
    assert {o.action for o in outcomes} == {"kept"}


def test_ensure_kubeconfigs_needs_pki(tmp_path):
    with pytest.raises(pki.PKIError, match="run ensure_pki first"):
        pki.ensure_kubeconfigs(tmp_path, SETTINGS, TOPOLOGY)


# ---------------------------------------------------------------------- idempotence


def test_second_run_changes_nothing(state):
    before = snapshot(state)
    result = pki.ensure_pki(state, SETTINGS, TOPOLOGY)

    assert snapshot(state) == before
    assert not result.changed
    assert not result.created and not result.reissued and not result.updated
    assert len(result.kept) == len(result.outcomes) + len(result.kubeconfigs)
    assert not result.warnings and not result.orphaned


def test_adding_a_master_reissues_apiserver_with_same_key(state):
    cp4 = machine("cp4", "10.0.0.14", "masters")
    before = snapshot(state)
    result = pki.ensure_pki(state, SETTINGS, Topology(TOPOLOGY.machines + (cp4,)))
    after = snapshot(state)

    assert after["pki/apiserver.key"] == before["pki/apiserver.key"]
    assert after["pki/apiserver.crt"][0] != before["pki/apiserver.crt"][0]
    cert = cert_at(state / "pki" / "apiserver.crt")
    assert sans(cert) == (APISERVER_DNS | {"cp4"}, APISERVER_IPS | {ip("10.0.0.14")})
    cert.verify_directly_issued_by(cert_at(state / "pki" / "ca.crt"))
    assert public_der(cert.public_key()) == public_der(
        key_at(state / "pki" / "apiserver.key").public_key()
    )

    [reissued] = result.reissued
    assert reissued.path == "pki/apiserver.crt"
    assert "DNS:cp4" in reissued.reason and "IP:10.0.0.14" in reissued.reason
    assert {o.path for o in result.created} == {
        "pki/nodes/cp4/kubelet.crt", "pki/nodes/cp4/kubelet-client.crt",
        "kubeconfigs/kubelet/cp4.conf",
    }
    # Everything that existed, apart from the API server certificate, is untouched.
    changed = {p for p in before if before[p] != after.get(p)}
    assert changed == {"pki/apiserver.crt"}


def test_removing_a_node_leaves_everything_in_place(state):
    before = snapshot(state)
    result = pki.ensure_pki(state, SETTINGS, Topology((CP1, CP2, CP3, W1)))

    assert snapshot(state) == before
    assert not result.changed
    assert result.orphaned == ["kubeconfigs/kubelet/w2.conf", "pki/nodes/w2"]
    assert "pki/nodes/w2" in result.summary()


def test_removing_an_etcd_member_reports_its_folder(state):
    cp3_worker = machine("cp3", "10.0.0.13", "workers")
    result = pki.ensure_pki(state, SETTINGS, Topology((CP1, CP2, cp3_worker, W1, W2)))
    assert result.orphaned == ["pki/etcd/cp3"]


# -------------------------------------------------------------------- repair / refuse


@pytest.mark.parametrize("stem", ["ca", "front-proxy-ca", "etcd/ca"])
def test_ca_certificate_without_key_is_refused(state, stem):
    (state / "pki" / f"{stem}.key").unlink()
    before = snapshot(state)

    with pytest.raises(pki.PKIError, match="private key .* is missing"):
        pki.ensure_pki(state, SETTINGS, TOPOLOGY)
    assert snapshot(state) == before


def test_service_account_public_key_without_private_key_is_refused(state):
    (state / "pki" / "sa.key").unlink()
    (state / "pki" / "ca.key").unlink()  # would be fine on its own (see below)
    (state / "pki" / "ca.crt").unlink()
    before = snapshot(state)
    with pytest.raises(pki.PKIError, match="sa.key is missing"):
        pki.ensure_pki(state, SETTINGS, TOPOLOGY)
    assert snapshot(state) == before  # refused before anything was written


def test_missing_sa_pub_is_rederived(state):
    key_before = (state / "pki" / "sa.key").read_bytes()
    pub_before = (state / "pki" / "sa.pub").read_bytes()
    (state / "pki" / "sa.pub").unlink()

    result = pki.ensure_pki(state, SETTINGS, TOPOLOGY)
    assert (state / "pki" / "sa.key").read_bytes() == key_before
    assert (state / "pki" / "sa.pub").read_bytes() == pub_before
    assert [o.path for o in result.updated] == ["pki/sa.pub"]


def test_ca_key_without_certificate_recreates_the_certificate(state):
    key_before = (state / "pki" / "ca.key").read_bytes()
    (state / "pki" / "ca.crt").unlink()

    result = pki.ensure_pki(state, SETTINGS, TOPOLOGY)
    assert (state / "pki" / "ca.key").read_bytes() == key_before
    assert [o.path for o in result.reissued] == ["pki/ca.crt"]
    # Same name and key: certificates it signed before still verify and are kept.
    cert_at(state / "pki" / "apiserver.crt").verify_directly_issued_by(
        cert_at(state / "pki" / "ca.crt")
    )
    assert {o.path for o in result.updated} == {
        f"kubeconfigs/{name}" for name in EXPECTED_KUBECONFIGS
    }  # they embed the CA certificate


def test_unreadable_key_is_refused_not_replaced(state):
    (state / "pki" / "apiserver.key").write_bytes(b"garbage")
    with pytest.raises(pki.PKIError, match="cannot read private key"):
        pki.ensure_pki(state, SETTINGS, TOPOLOGY)
    assert (state / "pki" / "apiserver.key").read_bytes() == b"garbage"


def test_expired_ca_is_refused(state):
    later = datetime.now(timezone.utc) + timedelta(days=3651)
    with pytest.raises(pki.PKIError, match="expired"):
        pki.ensure_pki(state, SETTINGS, TOPOLOGY, now=later)


def test_ca_close_to_expiry_warns_and_caps_leaf_validity(state):
    later = datetime.now(timezone.utc) + timedelta(days=3640)
    result = pki.ensure_pki(state, SETTINGS, TOPOLOGY, now=later)

    assert any("plan a CA rotation" in w for w in result.warnings)
    ca = cert_at(state / "pki" / "ca.crt")
    assert cert_at(state / "pki" / "admin.crt").not_valid_after_utc == ca.not_valid_after_utc
    # Capped certificates are not re-issued again and again.
    before = snapshot(state)
    again = pki.ensure_pki(state, SETTINGS, TOPOLOGY, now=later + timedelta(hours=2))
    assert not again.changed and snapshot(state) == before


@pytest.mark.parametrize(
    "remaining,reissued",
    [(timedelta(days=-1), True), (timedelta(days=10), True), (timedelta(days=40), False)],
)
def test_expiring_certificate_is_reissued_with_same_key(state, remaining, reissued):
    crt = state / "pki" / "apiserver-etcd-client.crt"
    key_before = (state / "pki" / "apiserver-etcd-client.key").read_bytes()
    crafted = sign_like(
        cert_at(crt), state / "pki", "etcd/ca", datetime.now(timezone.utc) + remaining
    )
    crt.write_bytes(crafted)

    result = pki.ensure_pki(state, SETTINGS, TOPOLOGY)

    assert (state / "pki" / "apiserver-etcd-client.key").read_bytes() == key_before
    assert [o.path for o in result.reissued] == (
        ["pki/apiserver-etcd-client.crt"] if reissued else []
    )
    cert = cert_at(crt)
    if reissued:
        assert cert.not_valid_after_utc > datetime.now(timezone.utc) + timedelta(days=364)
        cert.verify_directly_issued_by(cert_at(state / "pki" / "etcd" / "ca.crt"))
        key = key_at(state / "pki" / "apiserver-etcd-client.key")
        assert public_der(cert.public_key()) == public_der(key.public_key())
    else:
        assert crt.read_bytes() == crafted


def test_short_lived_certificates_are_not_reissued_every_run(tmp_path):
    settings = make_settings(cert_validity_days=7)
    topology = Topology((CP1,))
    pki.ensure_pki(tmp_path, settings, topology)
    now = datetime.now(timezone.utc)

    assert not pki.ensure_pki(tmp_path, settings, topology, now=now + timedelta(days=1)).changed
    late = pki.ensure_pki(tmp_path, settings, topology, now=now + timedelta(days=6))
    assert "pki/apiserver.crt" in {o.path for o in late.reissued}


def test_certificate_signed_by_wrong_ca_is_reissued(state):
    crt = state / "pki" / "front-proxy-client.crt"
    expiry = datetime.now(timezone.utc) + timedelta(days=300)
    crt.write_bytes(sign_like(cert_at(crt), state / "pki", "ca", expiry))
    result = pki.ensure_pki(state, SETTINGS, TOPOLOGY)

    [outcome] = result.reissued
    assert outcome.path == "pki/front-proxy-client.crt"
    assert "not signed by the current front-proxy-ca" in outcome.reason
    cert_at(crt).verify_directly_issued_by(cert_at(state / "pki" / "front-proxy-ca.crt"))


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"subject_name": x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-admin"),
        ])}, "subject changed"),
        ({"ekus": [SERVER, CLIENT]}, "extended key usage changed"),
        ({"public_key": ec.generate_private_key(ec.SECP256R1()).public_key()},
         "does not belong to the private key"),
    ],
)
def test_certificate_with_outdated_profile_is_reissued(state, change, reason):
    crt = state / "pki" / "admin.crt"
    key_before = (state / "pki" / "admin.key").read_bytes()
    expiry = datetime.now(timezone.utc) + timedelta(days=300)
    crt.write_bytes(sign_like(cert_at(crt), state / "pki", "ca", expiry, **change))

    result = pki.ensure_pki(state, SETTINGS, TOPOLOGY)

    [outcome] = result.reissued
    assert outcome.path == "pki/admin.crt" and reason in outcome.reason
    cert = cert_at(crt)
    assert subject(cert) == ("kubernetes-admin", ["kubeadm:cluster-admins"])
    assert set(ext(cert, x509.ExtendedKeyUsage).value) == {CLIENT}
    assert (state / "pki" / "admin.key").read_bytes() == key_before
    assert public_der(cert.public_key()) == public_der(
        key_at(state / "pki" / "admin.key").public_key()
    )
    assert [o.path for o in result.updated] == ["kubeconfigs/admin.conf"]


def test_missing_leaf_key_gets_a_new_key(state):
    key_path = state / "pki" / "nodes" / "w1" / "kubelet.key"
    old_key = key_path.read_bytes()
    key_path.unlink()

    result = pki.ensure_pki(state, SETTINGS, TOPOLOGY)
    assert key_path.read_bytes() != old_key
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = cert_at(state / "pki" / "nodes" / "w1" / "kubelet.crt")
    assert public_der(cert.public_key()) == public_der(key_at(key_path).public_key())
    assert "pki/nodes/w1/kubelet.crt" in {o.path for o in result.created}


def test_loose_key_permissions_are_tightened(state):
    key_path = state / "pki" / "admin.key"
    os.chmod(key_path, 0o644)
    result = pki.ensure_pki(state, SETTINGS, TOPOLOGY)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert any("admin.key" in w for w in result.warnings)


@pytest.mark.parametrize(
    "settings,topology,message",
    [
        (make_settings(key_algorithm="dsa"), TOPOLOGY, "unsupported key algorithm"),
        (SETTINGS, Topology((W1,)), "no masters"),
        (SETTINGS, Topology((CP1, machine("../x", "10.0.0.9"))), "cannot be used as a file name"),
    ],
)
def test_invalid_input_is_refused_before_writing(tmp_path, settings, topology, message):
    with pytest.raises(pki.PKIError, match=message):
        pki.ensure_pki(tmp_path / "state", settings, topology)
    assert not (tmp_path / "state").exists()


# ----------------------------------------------------------------------- expiration


def test_check_expiration_lists_everything(state):
    rows = pki.check_expiration(state)
    by_name = {r.name: r for r in rows}

    pki_certs = {p[:-4] for p in EXPECTED_PKI_FILES if p.endswith(".crt")}
    ca_names = {"ca", "front-proxy-ca", "etcd-ca"}
    expected = (pki_certs - {"ca", "front-proxy-ca", "etcd/ca"}) | ca_names | EXPECTED_KUBECONFIGS
    assert set(by_name) == expected
    assert len(rows) == len(expected)

    assert {r.name for r in rows if r.is_ca} == ca_names
    assert all(r.authority == "" for r in rows if r.is_ca)
    assert by_name["apiserver"].authority == "ca"
    assert by_name["apiserver-etcd-client"].authority == "etcd-ca"
    assert by_name["etcd/cp1/peer"].authority == "etcd-ca"
    assert by_name["front-proxy-client"].authority == "front-proxy-ca"
    assert by_name["admin.conf"].authority == "ca"
    assert by_name["kubelet/w1.conf"].subject == "system:node:w1"
    assert by_name["apiserver"].subject == "kube-apiserver"
    assert by_name["admin.conf"].path == state / "kubeconfigs" / "admin.conf"
    assert timedelta(days=364) < by_name["apiserver"].residual <= timedelta(days=365)
    assert timedelta(days=3649) < by_name["ca"].residual <= timedelta(days=3650)

    table = pki.format_expiration_table(rows)
    leaf_part, ca_part = table.split("\n\n")
    assert leaf_part.splitlines()[0].split() == [
        "CERTIFICATE", "EXPIRES", "RESIDUAL", "TIME", "CERTIFICATE", "AUTHORITY"
    ]
    admin_line = next(line for line in leaf_part.splitlines() if line.startswith("admin.conf "))
    assert "364d" in admin_line and admin_line.rstrip().endswith("ca")
    assert "UTC" in admin_line
    assert ca_part.splitlines()[0].split() == [
        "CERTIFICATE", "AUTHORITY", "EXPIRES", "RESIDUAL", "TIME"
    ]
    assert len(ca_part.strip().splitlines()) == 4
    assert all(line.split()[-1] == "9y" for line in ca_part.strip().splitlines()[1:])


def test_check_expiration_marks_expired(state):
    later = datetime.now(timezone.utc) + timedelta(days=400)
    rows = pki.check_expiration(state, now=later)
    apiserver = next(r for r in rows if r.name == "apiserver")
    assert apiserver.expired
    assert "<invalid>" in pki.format_expiration_table(rows)


# --------------------------------------------------------------------- distribution


def test_host_files_for_stacked_master(state):
    files = {f.remote: f for f in pki.host_files(state, CP1)}

    assert set(files) == {
        "/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/pki/ca.key",
        "/etc/kubernetes/pki/apiserver.crt", "/etc/kubernetes/pki/apiserver.key",
        "/etc/kubernetes/pki/apiserver-kubelet-client.crt",
        "/etc/kubernetes/pki/apiserver-kubelet-client.key",
        "/etc/kubernetes/pki/apiserver-etcd-client.crt",
        "/etc/kubernetes/pki/apiserver-etcd-client.key",
        "/etc/kubernetes/pki/front-proxy-ca.crt", "/etc/kubernetes/pki/front-proxy-ca.key",
        "/etc/kubernetes/pki/front-proxy-client.crt",
        "/etc/kubernetes/pki/front-proxy-client.key",
        "/etc/kubernetes/pki/sa.key", "/etc/kubernetes/pki/sa.pub",
        "/etc/kubernetes/pki/etcd/ca.crt",
        "/etc/kubernetes/pki/etcd/server.crt", "/etc/kubernetes/pki/etcd/server.key",
        "/etc/kubernetes/pki/etcd/peer.crt", "/etc/kubernetes/pki/etcd/peer.key",
        "/etc/kubernetes/pki/etcd/healthcheck-client.crt",
        "/etc/kubernetes/pki/etcd/healthcheck-client.key",
        "/etc/kubernetes/admin.conf", "/etc/kubernetes/super-admin.conf",
        "/etc/kubernetes/controller-manager.conf", "/etc/kubernetes/scheduler.conf",
        "/etc/kubernetes/kube-dns.conf",
        "/etc/kubernetes/kubelet.conf", "/etc/kubernetes/kube-proxy.conf",
        "/var/lib/kubelet/pki/kubelet.crt", "/var/lib/kubelet/pki/kubelet.key",
    }
    assert files["/etc/kubernetes/pki/etcd/server.crt"].local == (
        state / "pki" / "etcd" / "cp1" / "server.crt"
    )
    assert files["/etc/kubernetes/kubelet.conf"].local == state / "kubeconfigs/kubelet/cp1.conf"
    for remote, entry in files.items():
        assert entry.local.is_file()
        assert entry.secret == remote.endswith((".key", ".conf")), remote
        assert entry.mode == (0o600 if entry.secret else 0o644)


def test_host_files_for_worker(state):
    files = pki.host_files(state, W2)
    assert [(f.remote, f.local, f.secret) for f in files] == [
        ("/etc/kubernetes/kube-proxy.conf", state / "kubeconfigs/kube-proxy.conf", True),
        ("/etc/kubernetes/kubelet.conf", state / "kubeconfigs/kubelet/w2.conf", True),
        ("/etc/kubernetes/pki/ca.crt", state / "pki/ca.crt", False),
        ("/var/lib/kubelet/pki/kubelet.crt", state / "pki/nodes/w2/kubelet.crt", False),
        ("/var/lib/kubelet/pki/kubelet.key", state / "pki/nodes/w2/kubelet.key", True),
    ]


def test_host_files_before_generation(tmp_path):
    with pytest.raises(pki.PKIError, match="run ensure_pki first"):
        pki.host_files(tmp_path, W1)


# -------------------------------------------------------------------- real TLS use


def handshake(pki_dir: Path, server: str, client: str, ca: str, hostname: str) -> dict:
    """TLS handshake with mutual authentication over a socket pair; returns the
    client certificate as the server saw it."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki_dir / f"{server}.crt", pki_dir / f"{server}.key")
    server_ctx.load_verify_locations(pki_dir / f"{ca}.crt")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and hostname
    client_ctx.load_verify_locations(pki_dir / f"{ca}.crt")
    client_ctx.load_cert_chain(pki_dir / f"{client}.crt", pki_dir / f"{client}.key")
    for ctx in (server_ctx, client_ctx):
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT

    server_sock, client_sock = socket.socketpair()
    for sock in (server_sock, client_sock):
        sock.settimeout(10)
    seen: dict = {}

    def serve():
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True) as tls:
                seen["peer"] = tls.getpeercert()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            seen["error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(client_sock, server_hostname=hostname) as tls:
            assert tls.recv(2) == b"ok"
    finally:
        client_sock.close()
        thread.join(10)
    assert "error" not in seen, seen.get("error")
    return seen["peer"]


@pytest.mark.parametrize(
    "server,client,ca,hostname,client_cn",
    [
        ("apiserver", "admin", "ca", "kubernetes.default.svc", "kubernetes-admin"),
        ("apiserver", "nodes/w1/kubelet-client", "ca", "10.96.0.1", "system:node:w1"),
        ("apiserver", "controller-manager", "ca", "127.0.0.1", "system:kube-controller-manager"),
        ("etcd/cp2/server", "apiserver-etcd-client", "etcd/ca", "10.0.0.12",
         "kube-apiserver-etcd-client"),
        ("etcd/cp1/peer", "etcd/cp3/peer", "etcd/ca", "cp1", "cp3"),
        ("nodes/w1/kubelet", "apiserver-kubelet-client", "ca", "10.0.0.21",
         "kube-apiserver-kubelet-client"),
    ],
)
def test_tls_handshake(state, server, client, ca, hostname, client_cn):
    peer = handshake(state / "pki", server, client, ca, hostname)
    subject_fields = dict(item for rdn in peer["subject"] for item in rdn)
    assert subject_fields["commonName"] == client_cn


def test_tls_handshake_rejects_wrong_hostname(state):
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(state / "pki", "apiserver", "admin", "ca", "kubernetes.example.com")


def test_a_state_folder_from_before_the_dns_credential_gets_it_added(tmp_path):
    # Clusters made before the DNS add-on existed: the next run adds its certificate and
    # kubeconfig and changes nothing else.
    state = tmp_path / "state"
    pki.ensure_pki(state, SETTINGS, TOPOLOGY)
    for name in ("pki/kube-dns.crt", "pki/kube-dns.key", "kubeconfigs/kube-dns.conf"):
        (state / name).unlink()
    before = snapshot(state)
    pki.ensure_pki(state, SETTINGS, TOPOLOGY)
    after = snapshot(state)
    assert set(after) - set(before) == {
        "pki/kube-dns.crt", "pki/kube-dns.key", "kubeconfigs/kube-dns.conf"}
    assert {k: v for k, v in after.items() if k in before} == before
