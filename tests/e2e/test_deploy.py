"""End to end: lab hosts, the real deploy over real SSH, etcd over TLS, a no-op re-deploy.

Brings up a 1-master 2-worker lab of its own (own name, subnet, lab folder and cluster
state folder, so an operator's lab is never touched), runs `pyinfra` exactly as the
README does, checks the result from inside the hosts, and tears everything down even
when a step fails. Timings are printed for the record, never asserted.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
LAB_NAME = "e2edeploy"
SUBNET = "10.241.7.0/24"
MASTER_IP = "10.241.7.11"

pytestmark = pytest.mark.e2e


def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, mounts)"
    for tool in ("ip", "unshare", "/usr/sbin/sshd", "/usr/bin/etcd", "/usr/bin/etcdctl",
                 "/usr/bin/supervisord"):
        if not shutil.which(tool):
            return f"{tool} is not installed (./setup.sh deps installs it)"
    return None


if _requirements():
    pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=_requirements())]


class Lab:
    def __init__(self, lab_dir: Path, state_root: Path):
        self.lab_dir = lab_dir
        self.state_root = state_root
        self.env = dict(os.environ, KUBESMITH_LAB_DIR=str(lab_dir),
                        KUBESMITH_STATE_DIR=str(state_root),
                        PYTHONPATH=str(REPO))
        self.timings: dict[str, float] = {}

    @property
    def state_dir(self) -> Path:
        return self.state_root / "kubesmith"

    def lab(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "provision.lab", *args, "--name", LAB_NAME],
                              cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=300, check=check)

    def deploy(self, *extra: str, timed: str | None = None) -> subprocess.CompletedProcess:
        start = time.monotonic()
        result = subprocess.run([PYINFRA, "-y", *extra, "inventories/lab.py", "deploy.py"],
                                cwd=REPO, env=self.env, capture_output=True, text=True,
                                timeout=900)
        if timed:
            self.timings[timed] = time.monotonic() - start
        return result

    def deploy_json(self, *extra: str, timed: str | None = None) -> dict:
        result = self.deploy("--json", *extra, timed=timed)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        return json.loads(result.stdout)

    def ssh(self, host: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
        from provision import lab
        argv = lab.ssh_command(host, command, lab_dir=self.lab_dir)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if check:
            assert result.returncode == 0, f"{host}: {command}\n{result.stdout}\n{result.stderr}"
        return result

    def copy_to(self, host: str, local: Path, remote: str) -> None:
        self.ssh(host, f"mkdir -p {os.path.dirname(remote)} && cat > {remote}")  # ensure dir
        from provision import lab
        argv = lab.ssh_command(host, f"cat > {remote}", lab_dir=self.lab_dir)
        subprocess.run(argv, input=local.read_bytes(), capture_output=True, timeout=60, check=True)


def changed(results: dict) -> list[str]:
    """Operations that changed something, as 'name on host' lines."""
    return [f"{op['name']} on {', '.join(op['success'])}"
            for op in results["results"]["operations"] if op["success"]]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("deploy")
    env_lab = Lab(base / "lab", base / "state")
    try:
        start = time.monotonic()
        up = env_lab.lab("up", "--masters", "1", "--workers", "2", "--subnet", SUBNET)
        env_lab.timings["lab up"] = time.monotonic() - start
        assert "master-1" in up.stdout + up.stderr
        yield env_lab
    finally:
        env_lab.lab("down", check=False)
        print("\ntimings: " + ", ".join(f"{k} {v:.1f}s" for k, v in env_lab.timings.items()))


def test_bad_setting_stops_before_any_host_is_touched(lab):
    result = lab.deploy("--data", "dns_ip=10.200.0.10")
    assert result.returncode != 0
    assert "dns_ip 10.200.0.10 is outside service_cidr" in result.stdout + result.stderr
    for host in ("master-1", "worker-1", "worker-2"):
        assert lab.ssh(host, "test -e /etc/kubernetes", check=False).returncode == 1
    assert not (lab.state_dir / "pki").exists(), "nothing generated either"


def test_first_deploy(lab):
    results = lab.deploy_json(timed="first deploy")
    assert results["results"]["failed_hosts"] == []
    assert changed(results), "a first deploy changes things"


def test_etcd_healthy_over_tls_from_a_worker(lab):
    pki = lab.state_dir / "pki" / "etcd"
    for name in ("ca.crt", "master-1/healthcheck-client.crt", "master-1/healthcheck-client.key"):
        lab.copy_to("worker-1", pki / name, f"/root/etcd-check/{Path(name).name}")
    check = ("ETCDCTL_API=3 etcdctl --endpoints=https://{ip}:2379 --cacert=/root/etcd-check/ca.crt "
             "--cert=/root/etcd-check/healthcheck-client.crt "
             "--key=/root/etcd-check/healthcheck-client.key --command-timeout=5s ").format(ip=MASTER_IP)
    health = lab.ssh("worker-1", check + "endpoint health")
    assert "is healthy" in health.stdout + health.stderr
    # A write and a read through the same authenticated client.
    lab.ssh("worker-1", check + "put /kubesmith-e2e ok")
    assert lab.ssh("worker-1", check + "get --print-value-only /kubesmith-e2e").stdout.strip() == "ok"


def test_etcd_refuses_clients_without_a_certificate(lab):
    ca = lab.state_dir / "pki" / "etcd" / "ca.crt"
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        with socket.create_connection((MASTER_IP, 2379), timeout=5) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"GET /health HTTP/1.1\r\nHost: etcd\r\n\r\n")
                if not tls.recv(1024):
                    raise ConnectionError("closed without an answer")
    lab.copy_to("worker-2", ca, "/root/etcd-ca.crt")
    refused = lab.ssh("worker-2", f"ETCDCTL_API=3 etcdctl --endpoints=https://{MASTER_IP}:2379 "
                      "--cacert=/root/etcd-ca.crt --command-timeout=3s endpoint health", check=False)
    assert refused.returncode != 0


def test_hosts_have_wheel_keys_and_services(lab):
    for host in ("master-1", "worker-1", "worker-2"):
        version = lab.ssh(host, "/opt/kubesmith/venv/bin/python -m kubesmith").stdout
        assert version.startswith("kubesmith ")
        assert lab.ssh(host, "test -e /etc/kubernetes/kubelet.conf && echo ok").stdout.strip() == "ok"
        modes = lab.ssh(host, "find /etc/kubernetes /var/lib/kubelet/pki -name '*.key' "
                              "-o -name '*.conf' | xargs stat -c '%a %U %n'").stdout.split("\n")
        for line in filter(None, modes):
            assert line.startswith("600 "), f"{host}: {line}"
    master_keys = lab.ssh("master-1", "stat -c '%a %U %n' /etc/kubernetes/pki/etcd/server.key "
                                      "/etc/kubernetes/pki/ca.key /etc/kubernetes/pki/sa.key").stdout
    assert "600 etcd /etc/kubernetes/pki/etcd/server.key" in master_keys
    assert "600 root /etc/kubernetes/pki/ca.key" in master_keys
    status = lab.ssh("master-1", "supervisorctl status etcd").stdout
    assert "RUNNING" in status
    assert lab.ssh("master-1", "ps -o user= -C etcd").stdout.split() == ["etcd"]


def test_second_deploy_changes_nothing(lab):
    results = lab.deploy_json(timed="no-op re-deploy")
    assert changed(results) == [], changed(results)


def test_dry_run_and_limit(lab):
    dry = lab.deploy("--dry")
    assert dry.returncode == 0, dry.stderr[-3000:]
    limited = lab.deploy_json("--limit", "worker-1")
    assert changed(limited) == []
    hosts = {h for op in limited["results"]["operations"] for h in op["no_change"]}
    assert hosts == {"worker-1"}


def test_changed_file_is_restored_and_restarts_etcd(lab):
    before = lab.ssh("master-1", "supervisorctl pid etcd").stdout.strip()
    lab.ssh("master-1", "echo tampered > /etc/kubernetes/pki/etcd/server.crt")
    results = lab.deploy_json()
    assert any("server.crt" in line for line in changed(results))
    assert any("Restart etcd" in line for line in changed(results))
    after = lab.ssh("master-1", "supervisorctl pid etcd").stdout.strip()
    assert after != before
    assert changed(lab.deploy_json()) == []


def test_stopped_component_is_started_again(lab):
    lab.ssh("master-1", "supervisorctl stop etcd")
    results = lab.deploy_json()
    assert any("Start etcd" in line for line in changed(results))
    assert "RUNNING" in lab.ssh("master-1", "supervisorctl status etcd").stdout
