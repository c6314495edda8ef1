"""The add-ons manifest and the deploy's apply/label command against a real kube-apiserver
and etcd (tests/apiserver's harness), with the PKI the deploy makes: what the DNS add-on's
credential may then do, and what it may not."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from kubesmith.store.testing import etcd_available
from provision.settings import load_settings
from roles import addons
from tests.apiserver.harness import REPO, Cluster


@pytest.fixture(scope="module")
def cluster():
    if not etcd_available():
        pytest.skip("needs /usr/bin/etcd (etcd-server)")
    with Cluster() as running:
        yield running


def run_apply(cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubesmith.client.apply",
                           "--kubeconfig", str(cluster.kubeconfig), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def applied(cluster, tmp_path_factory):
    manifest = tmp_path_factory.mktemp("addons") / "kube-dns.yaml"
    manifest.write_text(addons.manifest(load_settings({})))
    result = run_apply(cluster, "-f", str(manifest))
    assert result.returncode == 0, result.stderr
    return manifest, result.stdout


def test_manifest_applies_server_side(cluster, applied):
    manifest, output = applied
    assert "service/kube-dns in kube-system serverside-applied" in output
    assert len(output.strip().splitlines()) == 5
    service = cluster.request("GET", "/api/v1/namespaces/kube-system/services/kube-dns").json()
    assert service["spec"]["clusterIP"] == "10.96.0.10"
    assert "selector" not in service["spec"]
    managers = {entry["manager"] for entry in service["metadata"]["managedFields"]}
    assert "kubesmith-deploy" in managers
    # Applying the same manifest again is fine (the deploy re-applies after a failure).
    again = run_apply(cluster, "-f", str(manifest))
    assert again.returncode == 0, again.stderr


def _as_dns(cluster, method: str, path: str, body=None) -> int:
    pki = cluster.pki
    return cluster.request(method, path, body,
                           cert=(str(pki / "kube-dns.crt"), str(pki / "kube-dns.key"))).status


def _slice(name: str) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "kube-dns"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.11"], "conditions": {"ready": True}}],
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}


def test_dns_credential_reads_everywhere_and_writes_slices_in_kube_system_only(
        cluster, applied):
    for path in ("/api/v1/services", "/api/v1/namespaces", "/api/v1/pods",
                 "/apis/discovery.k8s.io/v1/endpointslices"):
        assert _as_dns(cluster, "GET", path + "?watch=false") == 200, path
    kube_system = "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices"
    assert _as_dns(cluster, "POST", kube_system, _slice("kube-dns-test")) == 201
    assert _as_dns(cluster, "DELETE", f"{kube_system}/kube-dns-test") == 200
    default = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    assert _as_dns(cluster, "POST", default, _slice("kube-dns-test")) == 403
    assert _as_dns(cluster, "GET", "/api/v1/secrets") == 403


def test_label_node_waits_for_the_node_and_labels_it(cluster):
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "label-test-1"}}
    label = run_apply_in_background(cluster, "--timeout", "30", "--label-node", "label-test-1",
                                    "node-role.kubernetes.io/control-plane=", "stale-")
    try:
        time.sleep(1.5)   # the command is retrying while the Node is not there yet
        assert cluster.request("POST", "/api/v1/nodes", node).status == 201
        out, err = label.communicate(timeout=60)
    finally:
        if label.poll() is None:
            label.kill()
            label.wait()
    assert label.returncode == 0, err
    assert "node/label-test-1 labeled" in out
    labels = cluster.request("GET", "/api/v1/nodes/label-test-1").json()["metadata"]["labels"]
    assert labels == {"node-role.kubernetes.io/control-plane": ""}
    assert cluster.request("DELETE", "/api/v1/nodes/label-test-1").status == 200


def run_apply_in_background(cluster, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kubesmith.client.apply",
                             "--kubeconfig", str(cluster.kubeconfig), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_label_node_gives_up_on_a_node_that_never_registers(cluster):
    start = time.monotonic()
    result = run_apply(cluster, "--timeout", "2", "--label-node", "never-there", "a=b")
    assert result.returncode == 1
    assert "not found" in result.stderr.lower()
    assert time.monotonic() - start < 20
