"""The kube-apiserver process: its flags, and what it answers while etcd is away."""
from __future__ import annotations

import subprocess
import time

from kubesmith.store.testing import free_port
from tests.apiserver.harness import PYTHON, REPO


def run_main(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "kubesmith.apiserver.main", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def test_unknown_and_missing_flags_are_errors(cluster):
    result = run_main("--etcd-servers=https://127.0.0.1:2379", "--insecure-port=8080")
    assert result.returncode == 1 and "unrecognized arguments: --insecure-port" in result.stderr
    result = run_main()
    assert result.returncode == 1 and "--etcd-servers must be specified" in result.stderr
    flags = cluster.flags() + ["--authorization-mode=ABAC"]
    result = run_main(*flags)
    assert result.returncode == 1 and "ABAC is not supported" in result.stderr


def test_etcd_unreachable_is_503(cluster):
    port = free_port()
    dead = f"https://127.0.0.1:{free_port()}"
    log = cluster.base / "apiserver-no-etcd.log"
    process = cluster.spawn(cluster.flags(etcd_servers=dead, port=port), log)
    super_admin = (str(cluster.pki / "super-admin.crt"), str(cluster.pki / "super-admin.key"))
    try:
        deadline = time.monotonic() + 20
        answer = None
        while time.monotonic() < deadline:
            try:
                answer = cluster.request("GET", "/livez", port=port, timeout=5)
                break
            except OSError:
                time.sleep(0.1)
        assert answer is not None, log.read_text()
        assert answer.status == 500 and b"[-]etcd failed" in answer.body
        ready = cluster.request("GET", "/readyz?verbose", port=port, timeout=10)
        assert ready.status == 500 and b"readyz check failed" in ready.body
        answer = cluster.request("GET", "/api/v1/namespaces", port=port, cert=super_admin,
                                 timeout=20)
        assert answer.status == 503
        body = answer.json()
        assert body["kind"] == "Status" and body["reason"] == "ServiceUnavailable"
        # RBAC data cannot load without etcd: others are told to come back, not denied.
        answer = cluster.request("GET", "/api/v1/namespaces", port=port, timeout=20)
        assert answer.status == 503
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
