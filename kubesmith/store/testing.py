"""A throwaway single-member etcd with client-certificate TLS, for tests and benchmarks.

    with LocalEtcd() as etcd:
        store = etcd.store()      # an EtcdStore with a valid client certificate

Listens on 127.0.0.1 only, on free ports, with its data and PKI in a temporary
folder that goes away with it. Needs the etcd binary (Debian's etcd-server).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubesmith.store.etcd import EtcdStore

ETCD_BINARY = "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestPKI:
    """A CA, a server certificate for 127.0.0.1/localhost and client certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_name = _name("test-etcd-ca")
        self.ca_file = self._write("ca.crt", self._sign(
            _builder(self._ca_name, self._ca_name, self._ca_key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)))
        self.server_cert, self.server_key = self.issue(
            "server", "127.0.0.1", server=True,
            sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
        self.client_cert, self.client_key = self.issue("client", "test-client")

    def issue(self, stem: str, common_name: str, *, server: bool = False,
              sans: list[x509.GeneralName] | None = None) -> tuple[str, str]:
        """A leaf certificate signed by the CA; (cert file, key file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        # A server certificate also allows client auth: etcd's built-in HTTP gateway
        # dials etcd's own gRPC port with it.
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
            else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (_builder(_name(common_name), self._ca_name, key)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert_file = self._write(f"{stem}.crt", self._sign(builder))
        key_file = self._write(f"{stem}.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return cert_file, key_file

    def _sign(self, builder: x509.CertificateBuilder) -> bytes:
        return builder.sign(self._ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def _write(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        path.chmod(0o600)
        return str(path)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


class LocalEtcd:
    """One etcd member on 127.0.0.1; start() and stop() may be called again (same data)."""

    def __init__(self, *, data_dir: str | None = None, progress_notify_interval: str = "",
                 binary: str = ETCD_BINARY, startup_timeout: float = 15.0):
        self._tmp = tempfile.mkdtemp(prefix="etcd-")
        self.base = Path(self._tmp)
        self.data_dir = data_dir or str(self.base / "data")
        self.pki = TestPKI(self.base / "pki")
        self.client_port, self.peer_port, self.metrics_port = free_port(), free_port(), free_port()
        self.progress_notify_interval = progress_notify_interval
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def store(self, **kwargs) -> EtcdStore:
        """A client authenticated with the test client certificate."""
        return EtcdStore(self.endpoint, self.pki.ca_file, self.pki.client_cert,
                         self.pki.client_key, **kwargs)

    def start(self) -> LocalEtcd:
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            self.binary, "--name", "test",
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}",
            "--initial-cluster-state", "new",
            "--listen-metrics-urls", self.metrics_url,
            "--client-cert-auth",
            "--trusted-ca-file", self.pki.ca_file,
            "--cert-file", self.pki.server_cert,
            "--key-file", self.pki.server_key,
            "--logger", "zap", "--log-level", "warn",
        ]
        if self.progress_notify_interval:
            argv += ["--experimental-watch-progress-notify-interval",
                     self.progress_notify_interval]
        log = open(self.base / "etcd.log", "ab")
        try:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        finally:
            log.close()
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.metrics_url}/health", timeout=1) as r:
                    if b'"true"' in r.read():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"etcd not healthy after {self.startup_timeout}s:\n{self.log_tail()}")

    def metric(self, name: str) -> float:
        """The value of an unlabelled metric from etcd's /metrics."""
        with urllib.request.urlopen(f"{self.metrics_url}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise KeyError(name)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.base / "etcd.log").read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> LocalEtcd:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc) -> None:
        self.cleanup()


def etcd_available(binary: str = ETCD_BINARY) -> bool:
    return os.access(binary, os.X_OK)
