"""The real kubelet (`python -m kubesmith.kubelet.main`, a node's credentials) against
a real kube-apiserver + etcd and a throwaway containerd with the locally built
images: it registers its Node and Lease, runs a host-network busybox pod to Running
with its container's status and logs, stops it when the pod is deleted, and leaves on
SIGTERM. Everything started is stopped, and the cgroups, pod folders and pod logs
made are removed, also on failure."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kubesmith.store.testing import etcd_available, free_port

REPO = Path(__file__).resolve().parents[2]
POD_LOG_ROOT = Path("/var/log/pods")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not etcd_available():
        return "needs /usr/bin/etcd (etcd-server)"
    for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr"):
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            return f"needs {tool} (Debian's containerd and runc)"
    if not os.path.exists("/bin/busybox"):
        return "needs /bin/busybox (busybox-static)"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from tests.apiserver.harness import Cluster
    with Cluster() as running:
        yield running


@pytest.fixture(scope="module")
def containerd(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from kubesmith.cri.testing import import_image, start_containerd
    from provision.images import BUSYBOX_IMAGE, PAUSE_IMAGE, build_images
    images = build_images(tmp_path_factory.mktemp("images"))
    with start_containerd(tmp_path_factory.mktemp("containerd")) as running:
        for ref in (PAUSE_IMAGE, BUSYBOX_IMAGE):
            import_image(running, images[ref])
        yield running


def _node_kubeconfig(cluster, node: str, folder: Path) -> Path:
    cert, key = cluster.client_cert(f"system:node:{node}", "system:nodes")
    path = folder / "kubelet.conf"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "node",
        "clusters": [{"name": "c", "cluster": {"server": cluster.url,
                                               "certificate-authority": str(cluster.pki / "ca.crt")}}],
        "users": [{"name": "u", "user": {"client-certificate": cert, "client-key": key}}],
        "contexts": [{"name": "node", "context": {"cluster": "c", "user": "u"}}]}))
    return path


def _wait(what: str, predicate, timeout: float, describe=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not seen within {timeout:.0f}s {describe()}")


def _get(cluster, path: str):
    answer = cluster.request("GET", path)
    return answer.json() if answer.status == 200 else None


def test_kubelet_runs_a_host_network_pod(cluster, containerd, tmp_path):
    node = f"ks-node-{uuid.uuid4().hex[:6]}"
    root_dir = tmp_path / "kubelet"
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": "127.0.0.1", "port": free_port(), "healthzPort": free_port(),
        "cgroupRoot": containerd.cgroup_parent(), "cgroupDriver": "cgroupfs",
        "clusterDNS": ["10.96.0.10"], "clusterDomain": "cluster.local",
        "nodeStatusUpdateFrequency": "1s", "containerRuntimeEndpoint": containerd.endpoint,
        "authentication": {"x509": {"clientCAFile": str(cluster.pki / "ca.crt")}},
        "evictionHard": {"memory.available": "100Mi"}, "failSwapOn": False}))
    kubeconfig = _node_kubeconfig(cluster, node, tmp_path)
    log_path = tmp_path / "kubelet.log"
    namespace = cluster.new_namespace("kubelet-", default_service_account=True)
    pod_uid = ""
    with open(log_path, "wb") as log_file:
        kubelet = subprocess.Popen(
            [sys.executable, "-m", "kubesmith.kubelet.main", "--config", str(config),
             "--kubeconfig", str(kubeconfig), "--hostname-override", node,
             "--node-ip", "127.0.0.1", "--root-dir", str(root_dir),
             "--node-labels", "example.com/pool=test", "--v", "4"],
            cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log_tail() -> str:
        try:
            return "\n--- kubelet log ---\n" + "\n".join(
                log_path.read_text(errors="replace").splitlines()[-60:])
        except OSError:
            return ""
    try:
        # The Node: registered with the host's figures; NotReady while the runtime's
        # network (CNI) is not configured, with upstream's message.
        found = _wait("the Node", lambda: _get(cluster, f"/api/v1/nodes/{node}"), 30, log_tail)
        labels = found["metadata"]["labels"]
        assert labels["kubernetes.io/hostname"] == node
        assert labels["kubernetes.io/os"] == "linux" and labels["example.com/pool"] == "test"
        status = found["status"]
        assert int(status["capacity"]["cpu"]) == os.cpu_count()
        assert status["capacity"]["pods"] == "110"
        assert {"type": "InternalIP", "address": "127.0.0.1"} in status["addresses"]
        assert status["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
        ready = {c["type"]: c for c in status["conditions"]}["Ready"]
        assert ready["status"] == "False"
        assert ready["message"].startswith("container runtime network not ready: "
                                           "NetworkReady=false")
        lease = _wait("the Lease", lambda: _get(
            cluster, f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"),
            15, log_tail)
        assert lease["spec"]["holderIdentity"] == node

        # A host-network pod runs (no CNI needed) and reports Running.
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web", "namespace": namespace},
               "spec": {"nodeName": node, "hostNetwork": True,
                        "automountServiceAccountToken": False,
                        "terminationGracePeriodSeconds": 10,
                        "containers": [{
                            "name": "app", "image": "kubesmith.local/busybox:latest",
                            "command": ["sh", "-c",
                                        "echo hello from $(POD_NAME); trap 'exit 0' TERM; "
                                        "while true; do sleep 0.2; done"],
                            "env": [{"name": "POD_NAME", "valueFrom": {
                                "fieldRef": {"fieldPath": "metadata.name"}}}]}]}}
        answer = cluster.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        assert answer.status == 201, answer.body
        pod_uid = answer.json()["metadata"]["uid"]
        path = f"/api/v1/namespaces/{namespace}/pods/web"

        def running():
            current = _get(cluster, path)
            return current if current and current.get("status", {}).get("phase") == "Running" \
                else None
        current = _wait("the pod Running", running, 60, log_tail)
        status = current["status"]
        assert status["podIP"] == "127.0.0.1" and status["hostIP"] == "127.0.0.1"
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions["Ready"] == "True" and conditions["Initialized"] == "True"
        [entry] = status["containerStatuses"]
        assert entry["name"] == "app" and entry["ready"] is True
        assert "running" in entry["state"] and entry["restartCount"] == 0
        assert entry["containerID"].startswith("containerd://")
        assert entry["image"] and entry["imageID"]

        # Its log, in the CRI format where the kubelet asked containerd to write it.
        log_file = POD_LOG_ROOT / f"{namespace}_web_{pod_uid}" / "app" / "0.log"
        _wait("the container's log", lambda: log_file.exists()
              and b"hello from web" in log_file.read_bytes(), 15, log_tail)
        line = log_file.read_bytes().splitlines()[0].split(b" ", 3)
        assert line[1] == b"stdout" and line[2] == b"F" and line[3] == b"hello from web"

        # Deleting it stops the container (SIGTERM: the trap exits 0) and the kubelet
        # deletes the pod for good.
        answer = cluster.request("DELETE", path)
        assert answer.status == 200, answer.body
        _wait("the pod gone", lambda: cluster.request("GET", path).status == 404, 30, log_tail)
        import asyncio
        from kubesmith.cri import api

        async def leftovers():
            client = containerd.client()
            try:
                selector = {"io.kubernetes.pod.uid": pod_uid}
                containers = await client.list_containers(api.ContainerFilter(
                    label_selector=selector))
                sandboxes = await client.list_pod_sandbox(api.PodSandboxFilter(
                    label_selector=selector))
                return containers, sandboxes
            finally:
                await client.close()
        containers, sandboxes = asyncio.run(leftovers())
        assert not containers and not sandboxes
        assert not (root_dir / "pods" / pod_uid).exists()
        assert not log_file.parent.parent.exists()

        # SIGTERM: the kubelet leaves at once (pods would keep running).
        kubelet.send_signal(signal.SIGTERM)
        assert kubelet.wait(timeout=15) == 0, log_tail()
    finally:
        if kubelet.poll() is None:
            kubelet.kill()
            kubelet.wait()
        if pod_uid:
            for folder in POD_LOG_ROOT.glob(f"*_{pod_uid}"):
                shutil.rmtree(folder, ignore_errors=True)
