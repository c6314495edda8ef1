"""A real etcd and a real kube-apiserver process on 127.0.0.1, with kubesmith's own PKI.

    with Cluster() as cluster:
        cluster.kubectl("get", "ns")                 # the admin kubeconfig
        cluster.request("GET", "/api/v1/namespaces") # HTTPS with the admin certificate

The API server runs as `python -m kubesmith.apiserver.main` with upstream flags and
kubeadm's file names (from provision.pki), its log in <tmp>/apiserver.log.
"""
from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import types
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubesmith.store.testing import LocalEtcd, free_port
from provision import pki
from provision.topology import Machine, Topology

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def _settings(port: int):
    return types.SimpleNamespace(
        cluster_name="kubesmith", dns_domain="cluster.local",
        service_cidr=ipaddress.ip_network("10.96.0.0/12"),
        first_service_ip=ipaddress.ip_address("10.96.0.1"), api_port=port,
        load_balancer_name=None, load_balancer_ip=None, key_algorithm="ecdsa-p256",
        ca_validity_days=3650, cert_validity_days=365)


def issue_client_cert(pki: Path, out_dir: Path, name: str, *groups: str) -> tuple[str, str]:
    """A client certificate signed by the CA in `pki` (cert file, key file in out_dir)."""
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
                        + [x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    stem = out_dir / f"user-{name.replace(':', '_')}"
    cert_file, key_file = Path(f"{stem}.crt"), Path(f"{stem}.key")
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return str(cert_file), str(key_file)


class Response:
    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


class Cluster:
    """`etcd`: an etcd already running (anything with .endpoint and .pki.ca_file,
    .client_cert, .client_key) to use instead of starting one; it is left running."""

    def __init__(self, extra_flags: list[str] | None = None, etcd=None):
        self.base = Path(tempfile.mkdtemp(prefix="apiserver-test-"))
        self.port = free_port()
        self.extra_flags = extra_flags or []
        self.given_etcd = etcd
        self.etcd: LocalEtcd | None = None
        self.process: subprocess.Popen | None = None
        self.home = self.base / "home"
        self.home.mkdir()

    # --- setup --------------------------------------------------------------------

    def start(self) -> "Cluster":
        master = Machine("cp1", "127.0.0.1", frozenset({"masters", "etcd"}))
        self.state = self.base / "state"
        pki.ensure_pki(self.state, _settings(self.port), Topology((master,)))
        self.pki = self.state / "pki"
        self.kubeconfig = self.state / "kubeconfigs" / "admin.conf"
        self.encryption_config = self.base / "encryption-config.yaml"
        key = base64.b64encode(os.urandom(32)).decode()
        self.encryption_config.write_text(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
            "resources:\n- resources: [secrets]\n  providers:\n"
            f"  - aescbc:\n      keys:\n      - name: key1\n        secret: {key}\n"
            "  - identity: {}\n")
        self.etcd = self.given_etcd or LocalEtcd().start()
        self.process = self.spawn(self.flags(), self.log_path)
        self.wait_ready()
        return self

    def spawn(self, flags: list[str], log_path: Path) -> subprocess.Popen:
        """A kube-apiserver process (the caller stops it)."""
        with open(log_path, "ab") as log:
            return subprocess.Popen([PYTHON, "-m", "kubesmith.apiserver.main", *flags],
                                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
                                    stdin=subprocess.DEVNULL)

    @property
    def log_path(self) -> Path:
        return self.base / "apiserver.log"

    def flags(self, etcd_servers: str | None = None, port: int | None = None) -> list[str]:
        p = self.pki
        return [
            f"--etcd-servers={etcd_servers or self.etcd.endpoint}",
            f"--etcd-cafile={self.etcd.pki.ca_file}",
            f"--etcd-certfile={self.etcd.pki.client_cert}",
            f"--etcd-keyfile={self.etcd.pki.client_key}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={port or self.port}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            "--service-cluster-ip-range=10.96.0.0/12",
            "--service-node-port-range=30000-32767",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NamespaceLifecycle,NodeRestriction",
            "--anonymous-auth=false", "--allow-privileged=true",
            f"--encryption-provider-config={self.encryption_config}",
            "--default-watch-cache-size=20", "--etcd-compaction-interval=0", "--v=3",
            *self.extra_flags,
        ]

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kube-apiserver exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                answer = self.request("GET", "/readyz", timeout=2)
                if answer.status == 200:
                    return
                last = answer.body.decode(errors="replace")
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise RuntimeError(f"kube-apiserver not ready after {timeout}s ({last}):\n"
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.etcd is not None and self.etcd is not self.given_etcd:
            self.etcd.cleanup()
        self.etcd = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # --- clients ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client_cert(self, name: str, *groups: str) -> tuple[str, str]:
        """A client certificate signed by the cluster CA (cert file, key file)."""
        return issue_client_cert(self.pki, self.base, name, *groups)

    def new_namespace(self, prefix: str, *, default_service_account: bool = False) -> str:
        """A namespace of a test's own. Pods need its `default` ServiceAccount (the
        ServiceAccount admission plugin refuses them otherwise), which a controller makes
        in a cluster; here the test asks for it."""
        name = prefix + uuid.uuid4().hex[:8]
        answer = self.request("POST", "/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        assert answer.status == 201, answer.body
        if default_service_account:
            account = {"apiVersion": "v1", "kind": "ServiceAccount",
                       "metadata": {"name": "default"}}
            answer = self.request("POST", f"/api/v1/namespaces/{name}/serviceaccounts", account)
            assert answer.status == 201, answer.body
        return name

    def ssl_context(self, cert: tuple[str, str] | None | bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        if cert is True:
            cert = (str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        if cert:
            context.load_cert_chain(*cert)
        return context

    def request(self, method: str, path: str, body=None, *, headers: dict | None = None,
                cert: tuple[str, str] | None | bool = True, timeout: float = 10,
                content_type: str = "application/json", port: int | None = None) -> Response:
        url = f"https://127.0.0.1:{port}" if port else self.url
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout,
                                        context=self.ssl_context(cert)) as answer:
                return Response(answer.status, answer.headers, answer.read())
        except urllib.error.HTTPError as exc:
            return Response(exc.code, exc.headers, exc.read())

    def watch(self, path: str, *, timeout: float = 10, cert=True, headers=None,
              until=None) -> list[dict]:
        """Events of a watch until the server ends it or `until(events)` is true."""
        request = urllib.request.Request(self.url + path)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        events = []
        with urllib.request.urlopen(request, timeout=timeout,
                                    context=self.ssl_context(cert)) as answer:
            for line in answer:
                if line.strip():
                    events.append(json.loads(line))
                    if until is not None and until(events):
                        break
        return events

    def kubectl(self, *args: str, binary: str = "kubectl", timeout: float = 20,
                check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, HOME=str(self.home), KUBECONFIG=str(self.kubeconfig))
        result = subprocess.run([binary, *args], capture_output=True, text=True, env=env,
                                timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"{binary} {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result
