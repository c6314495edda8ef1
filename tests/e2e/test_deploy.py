"""End to end: lab hosts, the real deploy over real SSH, etcd over TLS, a no-op re-deploy.

Brings up a 1-master 2-worker lab of its own (own name, subnet, lab folder and cluster
state folder, so an operator's lab is never touched), runs `pyinfra` exactly as the
README does, checks the result from inside the hosts, and tears everything down even
when a step fails. Timings are printed for the record, never asserted.
"""
from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from labkit import DEPLOY_LAB_MASTER_IP as MASTER_IP
from labkit import changed

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def lab(deploy_lab):
    return deploy_lab


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
    dry = lab.deploy("--dry")
    assert dry.returncode == 0
    assert "/etc/kubernetes/pki/etcd/server.crt" in dry.stdout + dry.stderr
    assert lab.ssh("master-1", "cat /etc/kubernetes/pki/etcd/server.crt").stdout == "tampered\n"
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


def test_operator_commands(lab):
    import subprocess
    from labkit import REPO

    def ctl(*args):
        return subprocess.run([str(REPO / "bin" / "kubesmithctl"), *args], env=lab.env,
                              capture_output=True, text=True, timeout=60, check=True).stdout

    assert ctl("kubeconfig").strip() == str(lab.state_dir / "kubeconfigs" / "admin.conf")
    assert ctl("state-dir").strip() == str(lab.state_dir)
    table = ctl("certs", "check-expiration")
    for name in ("apiserver", "apiserver-etcd-client", "admin.conf", "etcd-ca", "front-proxy-ca"):
        assert name in table
    assert "RESIDUAL TIME" in table
