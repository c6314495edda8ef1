"""The node and add-ons roles' pieces that can be checked without a host: the add-ons
manifest, the wait commands (run in a real shell), the apply command's parsing, and the
lab's cgroup bookkeeping."""
from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from kubesmith.client import apply
from provision import components, lab
from provision.settings import load_settings
from roles import addons, node


# --------------------------------------------------------------------- add-ons manifest


def _manifest(**settings) -> list[dict]:
    return list(yaml.safe_load_all(addons.manifest(load_settings(settings))))


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in docs}


def test_manifest_objects_are_all_known_to_the_apply_command():
    text = addons.manifest(load_settings({}))
    objects = apply.documents(text)
    assert sorted(o["kind"] for o in objects) == [
        "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service"]


def test_kube_dns_service_is_selectorless_on_the_dns_ip():
    service = _by_kind(_manifest(dns_ip="10.96.0.53"))["Service"]
    assert service["metadata"] == {
        "name": "kube-dns", "namespace": "kube-system",
        "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                   "kubernetes.io/name": "KubeDNS"}}
    spec = service["spec"]
    assert spec["clusterIP"] == "10.96.0.53"
    assert "selector" not in spec
    assert [(p["name"], p["port"], p["protocol"]) for p in spec["ports"]] == [
        ("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")]


def _allows(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               for r in rules)


def test_rbac_grants_the_dns_server_what_it_documents():
    kinds = _by_kind(_manifest())
    cluster_rules = kinds["ClusterRole"]["rules"]
    for group, resource in (("", "services"), ("", "namespaces"),
                            ("discovery.k8s.io", "endpointslices")):
        for verb in ("list", "watch"):
            assert _allows(cluster_rules, group, resource, verb), (resource, verb)
    assert not _allows(cluster_rules, "discovery.k8s.io", "endpointslices", "create")
    role = kinds["Role"]
    assert role["metadata"]["namespace"] == "kube-system"
    for verb in ("create", "update", "delete"):
        assert _allows(role["rules"], "discovery.k8s.io", "endpointslices", verb)
    for binding, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        doc = kinds[binding]
        assert doc["roleRef"]["kind"] == role_kind
        assert doc["roleRef"]["name"] == kinds[role_kind]["metadata"]["name"]
        assert doc["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                    "name": "system:kube-dns"}]
    # Upstream's system:kube-dns role and binding belong to the API server's bootstrap
    # policy (reconciled at every start); the add-on's names must not collide with them.
    for doc in kinds.values():
        if doc["kind"] != "Service":
            assert not doc["metadata"]["name"].startswith("system:")


def test_manifest_is_the_same_for_the_same_settings():
    assert addons.manifest(load_settings({})) == addons.manifest(load_settings({}))
    assert addons.manifest(load_settings({})) != addons.manifest(
        load_settings({"dns_ip": "10.96.0.11"}))


# ------------------------------------------------------------------------ apply command


def test_apply_documents_reads_lists_and_skips_empty_documents():
    text = """
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ConfigMap, metadata: {name: a, namespace: default}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b}
"""
    assert [o["metadata"]["name"] for o in apply.documents(text)] == ["a", "b"]


@pytest.mark.parametrize("text, message", [
    ("apiVersion: v1\nkind: Frobnicator\nmetadata: {name: x}\n", "unknown kind"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", "metadata.name"),
    ("- just\n- a list\n", "not an object"),
])
def test_apply_documents_refuses_what_it_cannot_apply(text, message):
    with pytest.raises(apply.ApplyError, match=message):
        apply.documents(text)


def test_label_arguments_as_kubectl():
    assert apply.labels_from(["node-role.kubernetes.io/control-plane=", "a=b=c", "gone-"]) == {
        "node-role.kubernetes.io/control-plane": "", "a": "b=c", "gone": None}
    with pytest.raises(apply.ApplyError):
        apply.labels_from(["novalue"])


def test_apply_command_without_work_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        apply.main(["--kubeconfig", "/nonexistent"])
    assert exc.value.code == 2


def test_the_deploy_commands_name_the_master_own_api_server():
    label = node.label_command("master-1", 6443)
    assert "kubesmith.client.apply" in label and "--server https://127.0.0.1:6443" in label
    assert "--label-node master-1 node-role.kubernetes.io/control-plane=" in label
    command = addons.apply_command(6443, "abc")
    assert f"-f {addons.MANIFEST}" in command
    # The digest is recorded only after the apply succeeded.
    assert command.endswith(f"&& echo abc > {addons.APPLIED_MARKER}")


# ------------------------------------------------------------------------ wait commands


@pytest.fixture
def fake_supervisorctl(tmp_path, monkeypatch):
    """A supervisorctl on PATH answering `status` with the contents of a file."""
    answer = tmp_path / "status"
    script = tmp_path / "bin" / "supervisorctl"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\ncat {answer}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(components, "LOG_DIR", str(tmp_path))
    return answer


def test_running_wait_passes_for_a_running_program(fake_supervisorctl):
    fake_supervisorctl.write_text("kube-proxy  RUNNING   pid 12, uptime 0:00:09\n")
    command = node.running_command("kube-proxy", "supervisor", timeout=2)
    assert subprocess.run(["sh", "-c", command], timeout=30).returncode == 0


def test_running_wait_fails_with_the_programs_log(fake_supervisorctl, tmp_path):
    fake_supervisorctl.write_text("kube-proxy  BACKOFF   Exited too quickly\n")
    (tmp_path / "kube-proxy.log").write_text("ModuleNotFoundError: No module named x\n")
    command = node.running_command("kube-proxy", "supervisor", timeout=1)
    failed = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    assert failed.returncode == 1
    assert "kube-proxy is not running after 1s" in failed.stderr
    assert "ModuleNotFoundError" in failed.stderr


def test_running_wait_on_systemd_asks_systemctl():
    command = node.running_command("kubesmith-dns", "systemd")
    assert "systemctl is-active --quiet kubesmith-dns" in command
    assert "journalctl -u kubesmith-dns" in command


@pytest.fixture
def healthz(monkeypatch):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(components, "VENV", str(Path(sys.executable).parent.parent))
    monkeypatch.setattr(node, "KUBELET_TIMEOUT_SECONDS", 1)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_kubelet_healthz_wait(healthz, monkeypatch, tmp_path):
    monkeypatch.setattr(components, "KUBELET_HEALTHZ_PORT", healthz)
    assert subprocess.run(["sh", "-c", node.kubelet_healthy_command()],
                          timeout=30).returncode == 0
    monkeypatch.setattr(components, "KUBELET_HEALTHZ_PORT", healthz + 1 if healthz < 65535 else 1)
    monkeypatch.setattr(components, "LOG_DIR", str(tmp_path))
    (tmp_path / "kubelet.log").write_text("cannot reach the runtime\n")
    failed = subprocess.run(["sh", "-c", node.kubelet_healthy_command()], capture_output=True,
                            text=True, timeout=30)
    assert failed.returncode == 1
    assert "kubelet not healthy within 1s" in failed.stderr
    assert "cannot reach the runtime" in failed.stderr


def test_sysctls_the_node_needs():
    lines = [line for line in node.sysctl_conf().splitlines() if not line.startswith("#")]
    assert lines == ["net.ipv4.ip_forward = 1", "net.bridge.bridge-nf-call-iptables = 1"]


# ----------------------------------------------------------------------------- lab


def test_lab_cgroup_roots_are_per_lab_and_host():
    assert lab.cgroup_root("lab", "worker-1") == "/kubesmith-lab-lab-worker-1"
    assert lab.cgroup_root("e2e", "master-2") != lab.cgroup_root("e2e2", "master-2")


def test_lab_down_finds_only_its_own_cgroups(tmp_path, monkeypatch):
    monkeypatch.setattr(lab, "CGROUP_MOUNT", tmp_path)
    for hierarchy in ("pids", "memory"):
        for name in ("kubesmith-lab-a-worker-1", "kubesmith-lab-a-master-3",
                     "kubesmith-lab-a-b-worker-1", "kubesmith-lab-ab-worker-1", "other"):
            (tmp_path / hierarchy / name / "kubepods" / "pod1").mkdir(parents=True)
    (tmp_path / "unrelated-file").write_text("")
    found = lab._lab_cgroups("a", ["worker-1"])
    assert sorted(str(p.relative_to(tmp_path)) for p in found) == [
        "memory/kubesmith-lab-a-master-3", "memory/kubesmith-lab-a-worker-1",
        "pids/kubesmith-lab-a-master-3", "pids/kubesmith-lab-a-worker-1"]
    for path in found:
        lab._remove_cgroup_tree(path)
    assert not (tmp_path / "pids" / "kubesmith-lab-a-worker-1").exists()
    assert (tmp_path / "pids" / "kubesmith-lab-a-b-worker-1" / "kubepods" / "pod1").is_dir()
    assert (tmp_path / "memory" / "other").is_dir()
