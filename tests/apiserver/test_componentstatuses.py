"""core/v1 componentstatuses: computed per request (scheduler, controller-manager, one
etcd-<i> per --etcd-servers member), read-only, with upstream's deprecation warning."""
from __future__ import annotations

import datetime
import http.server
import json
import shutil
import socket
import ssl
import tempfile
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PATH = "/api/v1/componentstatuses"
WARNING = '299 - "v1 ComponentStatus is deprecated in v1.19+"'
SCHEDULER_PORT = 10259
CONTROLLER_MANAGER_PORT = 10257
URLS = {"scheduler": f"https://127.0.0.1:{SCHEDULER_PORT}/healthz",
        "controller-manager": f"https://127.0.0.1:{CONTROLLER_MANAGER_PORT}/healthz"}


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _condition(item: dict) -> dict:
    conditions = item["conditions"]
    assert len(conditions) == 1 and conditions[0]["type"] == "Healthy", item
    return conditions[0]


def _assert_unhealthy(item: dict) -> None:
    name = item["metadata"]["name"]
    condition = _condition(item)
    assert condition["status"] == "False", item
    assert "message" not in condition, item
    assert condition["error"] == (f'Get "{URLS[name]}": dial tcp 127.0.0.1:'
                                  f'{URLS[name].split(":")[2].split("/")[0]}: connect: '
                                  "connection refused"), item


def _self_signed(folder: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-scheduler-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "healthz.crt", folder / "healthz.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok" if self.path == "/healthz" else b"not found"
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class HealthzServer:
    """A tiny HTTPS server answering "ok" on /healthz (a stand-in kube-scheduler)."""

    def __init__(self, port: int):
        self.folder = Path(tempfile.mkdtemp(prefix="healthz-"))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*_self_signed(self.folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Healthz)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HealthzServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        shutil.rmtree(self.folder, ignore_errors=True)


def test_list_without_scheduler_or_controller_manager(cluster):
    answer = cluster.request("GET", PATH)
    assert answer.status == 200, answer.body
    assert WARNING in answer.headers.get_all("Warning"), answer.headers
    body = answer.json()
    assert body["kind"] == "ComponentStatusList" and body["apiVersion"] == "v1"
    items = body["items"]
    assert [i["metadata"]["name"] for i in items] == \
        ["scheduler", "controller-manager", "etcd-0"]
    for item in items:
        assert item["kind"] == "ComponentStatus" and item["apiVersion"] == "v1"
    etcd = _condition(items[2])
    assert etcd == {"type": "Healthy", "status": "True", "message": "ok"}
    for item, port in ((items[0], SCHEDULER_PORT), (items[1], CONTROLLER_MANAGER_PORT)):
        if not _listening(port):
            _assert_unhealthy(item)


def test_scheduler_turns_healthy(cluster):
    if _listening(SCHEDULER_PORT):
        pytest.skip(f"something listens on 127.0.0.1:{SCHEDULER_PORT}; not starting a "
                    "stand-in scheduler")
    try:
        server = HealthzServer(SCHEDULER_PORT)
    except OSError as exc:
        pytest.skip(f"cannot listen on 127.0.0.1:{SCHEDULER_PORT}: {exc}")
    with server:
        answer = cluster.request("GET", f"{PATH}/scheduler")
        assert answer.status == 200, answer.body
        assert WARNING in answer.headers.get_all("Warning")
        assert _condition(answer.json()) == {"type": "Healthy", "status": "True",
                                             "message": "ok"}
        listed = cluster.request("GET", PATH).json()["items"]
        assert _condition(listed[0])["status"] == "True"
    answer = cluster.request("GET", f"{PATH}/scheduler")
    _assert_unhealthy(answer.json())


def test_get_one_and_missing_and_read_only(cluster):
    answer = cluster.request("GET", f"{PATH}/etcd-0")
    assert answer.status == 200, answer.body
    body = answer.json()
    assert body["kind"] == "ComponentStatus" and body["metadata"] == {"name": "etcd-0"}
    assert _condition(body) == {"type": "Healthy", "status": "True", "message": "ok"}

    answer = cluster.request("GET", f"{PATH}/etcd-7")
    assert answer.status == 404, answer.body
    status = answer.json()
    assert status["kind"] == "Status" and status["reason"] == "NotFound"
    assert status["message"] == 'componentstatuses "etcd-7" not found'

    created = cluster.request("POST", PATH, {"apiVersion": "v1", "kind": "ComponentStatus",
                                             "metadata": {"name": "mine"}})
    assert created.status == 405, created.body
    assert created.json()["reason"] == "MethodNotAllowed"
    for method, path in (("DELETE", f"{PATH}/etcd-0"), ("DELETE", PATH),
                         ("PUT", f"{PATH}/etcd-0")):
        answer = cluster.request(method, path, {} if method == "PUT" else None)
        assert answer.status == 405, (method, path, answer.body)
    assert cluster.request("GET", f"{PATH}?watch=1").status == 405


def test_table(cluster):
    answer = cluster.request("GET", PATH, headers={
        "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    assert answer.status == 200, answer.body
    table = answer.json()
    assert [c["name"] for c in table["columnDefinitions"]] == \
        ["Name", "Status", "Message", "Error"]
    rows = {r["cells"][0]: r["cells"] for r in table["rows"]}
    assert rows["etcd-0"] == ["etcd-0", "Healthy", "ok", ""]


needs_kubectl = pytest.mark.skipif(not shutil.which("kubectl"), reason="no kubectl on PATH")


@needs_kubectl
def test_kubectl_get_cs(cluster):
    result = cluster.kubectl("get", "cs")
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "MESSAGE", "ERROR"], result.stdout
    assert any(line.split()[:3] == ["etcd-0", "Healthy", "ok"] for line in lines[1:]), \
        result.stdout
    assert "Warning: v1 ComponentStatus is deprecated in v1.19+" in result.stderr

    result = cluster.kubectl("get", "componentstatuses", "-o", "json")
    body = json.loads(result.stdout)
    names = [i["metadata"]["name"] for i in body["items"]]
    assert names == ["scheduler", "controller-manager", "etcd-0"]
    assert "Warning: v1 ComponentStatus is deprecated in v1.19+" in result.stderr


@needs_kubectl
def test_kubectl_api_resources(cluster):
    result = cluster.kubectl("api-resources", "--api-group=")
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["componentstatuses", "cs", "v1", "false", "ComponentStatus"] in rows, \
        result.stdout
