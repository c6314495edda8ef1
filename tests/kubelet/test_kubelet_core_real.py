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
from provision.images import BUSYBOX_IMAGE, PAUSE_IMAGE
from tests.cri.throwaway_containerd import containerd_fixture, containerd_missing

REPO = Path(__file__).resolve().parents[2]
POD_LOG_ROOT = Path("/var/log/pods")


def _missing() -> str | None:
    """Why these tests cannot run here (root, etcd, a throwaway containerd), or None."""
    if os.geteuid() != 0:
        return "needs root"
    if not etcd_available():
        return "needs /usr/bin/etcd (etcd-server)"
    return containerd_missing()


@pytest.fixture(scope="module")
def cluster():
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from tests.apiserver.harness import Cluster
    with Cluster() as running:
        yield running


@pytest.fixture(scope="module", autouse=True)
def pod_log_root():
    """/var/log/pods, made by containerd for the pods' logs: removed again when these
    tests made it (the kubelet removes each pod's folder)."""
    existed = POD_LOG_ROOT.exists()
    yield POD_LOG_ROOT
    if not existed:
        try:
            POD_LOG_ROOT.rmdir()
        except OSError:
            pass


# A throwaway containerd with the locally built pause and busybox images.
containerd = containerd_fixture(PAUSE_IMAGE, BUSYBOX_IMAGE, missing=_missing)


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


class RealKubelet:
    """`python -m kubesmith.kubelet.main` for node `node`, with a node's credentials;
    start() again after stop() is a kubelet restart."""

    def __init__(self, cluster, containerd, folder: Path, node: str, **config):
        self.node = node
        self.folder = folder
        self.root_dir = folder / "kubelet"
        self.config_path = folder / "config.yaml"
        self.cgroup_root = containerd.cgroup_parent()   # removed when containerd stops
        self.healthz_port = free_port()
        self.config_path.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": "127.0.0.1", "port": free_port(), "healthzPort": self.healthz_port,
            "cgroupRoot": self.cgroup_root, "cgroupDriver": "cgroupfs",
            "clusterDNS": ["10.96.0.10"], "clusterDomain": "cluster.local",
            "nodeStatusUpdateFrequency": "1s", "fileCheckFrequency": "1s",
            "containerRuntimeEndpoint": containerd.endpoint,
            "authentication": {"x509": {"clientCAFile": str(cluster.pki / "ca.crt")}},
            "evictionHard": {"memory.available": "100Mi"}, "failSwapOn": False, **config}))
        self.kubeconfig = _node_kubeconfig(cluster, node, folder)
        self.log_path = folder / "kubelet.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kubesmith.kubelet.main", "--config",
                 str(self.config_path), "--kubeconfig", str(self.kubeconfig),
                 "--hostname-override", self.node, "--node-ip", "127.0.0.1",
                 "--root-dir", str(self.root_dir), "--node-labels", "example.com/pool=test",
                 "--v", "4"],
                cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit code."""
        process, self.process = self.process, None
        if process is None:
            return 0
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return -9

    def kill(self) -> None:
        """Stop it however it is, and unmount the volumes it left (a failed test)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
        root = str(self.root_dir) + "/"
        with open("/proc/self/mountinfo") as mounts:
            points = [line.split()[4] for line in mounts]
        for point in sorted((p for p in points if p.startswith(root)), reverse=True):
            subprocess.run(["umount", "-l", point], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)

    def log_tail(self) -> str:
        try:
            return "\n--- kubelet log ---\n" + "\n".join(
                self.log_path.read_text(errors="replace").splitlines()[-60:])
        except OSError:
            return ""


def _runtime_leftovers(containerd, pod_uid: str):
    """(containers, sandboxes) the runtime still has of a pod."""
    import asyncio
    from kubesmith.cri import api

    async def query():
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
    return asyncio.run(query())


def _pod_running(cluster, path):
    def check():
        current = _get(cluster, path)
        return current if current and current.get("status", {}).get("phase") == "Running" \
            else None
    return check


def test_kubelet_runs_a_host_network_pod(cluster, containerd, tmp_path):
    node = f"ks-node-{uuid.uuid4().hex[:6]}"
    kubelet = RealKubelet(cluster, containerd, tmp_path, node)
    namespace = cluster.new_namespace("kubelet-", default_service_account=True)
    pod_uid = ""
    kubelet.start()
    try:
        # The Node: registered with the host's figures; NotReady while the runtime's
        # network (CNI) is not configured, with upstream's message.
        found = _wait("the Node", lambda: _get(cluster, f"/api/v1/nodes/{node}"), 30,
                      kubelet.log_tail)
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
            15, kubelet.log_tail)
        assert lease["spec"]["holderIdentity"] == node
        assert any(image["names"] for image in status.get("images") or [])

        def node_events():
            events = cluster.request("GET", "/api/v1/namespaces/default/events").json()
            return {e["reason"] for e in events["items"]
                    if e["involvedObject"].get("name") == node}
        _wait("the node's events", lambda: {"Starting", "NodeNotReady"} <= node_events(),
              10, lambda: str(node_events()))

        # A host-network pod runs (no CNI needed) and reports Running.
        hooks = tmp_path / "hooks"
        hooks.mkdir()
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web", "namespace": namespace},
               "spec": {"nodeName": node, "hostNetwork": True,
                        "automountServiceAccountToken": False,
                        "terminationGracePeriodSeconds": 10,
                        "volumes": [{"name": "hooks", "hostPath": {"path": str(hooks)}}],
                        "containers": [{
                            "volumeMounts": [{"name": "hooks", "mountPath": "/hooks"}],
                            "lifecycle": {"preStop": {"exec": {"command": [
                                "sh", "-c", "echo bye from $(hostname) > /hooks/pre-stop"]}}},
                            "name": "app", "image": "kubesmith.local/busybox:latest",
                            "command": ["sh", "-c",
                                        "echo hello from $(POD_NAME); trap 'exit 0' TERM; "
                                        "while true; do sleep 0.2; done"],
                            "env": [{"name": "POD_NAME", "valueFrom": {
                                "fieldRef": {"fieldPath": "metadata.name"}}}],
                            "resources": {"requests": {"cpu": "100m", "memory": "32Mi"},
                                          "limits": {"cpu": "500m", "memory": "64Mi"}}}]}}
        answer = cluster.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        assert answer.status == 201, answer.body
        pod_uid = answer.json()["metadata"]["uid"]
        path = f"/api/v1/namespaces/{namespace}/pods/web"
        current = _wait("the pod Running", _pod_running(cluster, path), 60, kubelet.log_tail)
        status = current["status"]
        assert status["podIP"] == "127.0.0.1" and status["hostIP"] == "127.0.0.1"
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions["Ready"] == "True" and conditions["Initialized"] == "True"
        [entry] = status["containerStatuses"]
        assert entry["name"] == "app" and entry["ready"] is True
        assert "running" in entry["state"] and entry["restartCount"] == 0
        assert entry["containerID"].startswith("containerd://")
        assert entry["image"] and entry["imageID"]

        # Resources as cgroup limits: the container's own, and the Burstable pod cgroup.
        container_id = entry["containerID"].split("//")[1]
        pod_cgroup = Path("/sys/fs/cgroup/memory") / kubelet.cgroup_root.strip("/") / \
            "kubepods" / "burstable" / f"pod{pod_uid}"
        assert pod_cgroup.is_dir()
        assert (pod_cgroup / container_id / "memory.limit_in_bytes").read_text().strip() \
            == str(64 * 2 ** 20)
        cpu = Path("/sys/fs/cgroup/cpu") / pod_cgroup.relative_to("/sys/fs/cgroup/memory")
        assert (cpu / container_id / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (cpu / container_id / "cpu.shares").read_text().strip() == "102"

        # The kubelet's plain-HTTP health check on localhost.
        import urllib.request
        with urllib.request.urlopen(
                f"http://127.0.0.1:{kubelet.healthz_port}/healthz", timeout=5) as answer:
            assert answer.read() == b"ok"

        # A running pod's status is written once, not again and again.
        version = _get(cluster, path)["metadata"]["resourceVersion"]
        time.sleep(2.5)
        assert _get(cluster, path)["metadata"]["resourceVersion"] == version

        # Its log, in the CRI format where the kubelet asked containerd to write it.
        log_file = POD_LOG_ROOT / f"{namespace}_web_{pod_uid}" / "app" / "0.log"
        _wait("the container's log", lambda: log_file.exists()
              and b"hello from web" in log_file.read_bytes(), 15, kubelet.log_tail)
        line = log_file.read_bytes().splitlines()[0].split(b" ", 3)
        assert line[1] == b"stdout" and line[2] == b"F" and line[3] == b"hello from web"

        # SIGTERM stops the kubelet, not the pod; a new kubelet adopts the container.
        assert kubelet.stop() == 0, kubelet.log_tail()
        containers, _ = _runtime_leftovers(containerd, pod_uid)
        assert [c.id for c in containers] == [entry["containerID"].split("//")[1]]
        assert containers[0].state == 1     # CONTAINER_RUNNING
        kubelet.start()
        _wait("the second kubelet started", lambda: kubelet.log_path.read_text(
            errors="replace").count(f"kubelet {node} started") == 2, 30, kubelet.log_tail)
        time.sleep(2)       # a few syncs and relists
        containers, _ = _runtime_leftovers(containerd, pod_uid)
        assert [c.id for c in containers] == [entry["containerID"].split("//")[1]]
        again = _get(cluster, path)["status"]["containerStatuses"][0]
        assert again["containerID"] == entry["containerID"] and again["restartCount"] == 0

        # Deleting it stops the container (SIGTERM: the trap exits 0) and the kubelet
        # deletes the pod for good.
        answer = cluster.request("DELETE", path)
        assert answer.status == 200, answer.body
        _wait("the pod gone", lambda: cluster.request("GET", path).status == 404, 30,
              kubelet.log_tail)
        assert (hooks / "pre-stop").read_text().startswith("bye from ")   # preStop ran
        containers, sandboxes = _runtime_leftovers(containerd, pod_uid)
        assert not containers and not sandboxes
        assert not (kubelet.root_dir / "pods" / pod_uid).exists()
        assert not log_file.parent.parent.exists()
        assert not pod_cgroup.exists()
        assert kubelet.stop() == 0, kubelet.log_tail()
    finally:
        kubelet.kill()
        if pod_uid:
            for folder in POD_LOG_ROOT.glob(f"*_{pod_uid}"):
                shutil.rmtree(folder, ignore_errors=True)


def test_static_pod_and_its_mirror(cluster, containerd, tmp_path):
    node = f"ks-static-{uuid.uuid4().hex[:6]}"
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "static-web.yaml").write_text(json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "static-web", "namespace": "default"},
        "spec": {"hostNetwork": True, "terminationGracePeriodSeconds": 5,
                 "containers": [{"name": "app", "image": "kubesmith.local/busybox:latest",
                                 "command": ["sh", "-c", "trap 'exit 0' TERM; "
                                             "while true; do sleep 0.2; done"]}]}}))
    kubelet = RealKubelet(cluster, containerd, tmp_path, node,
                          staticPodPath=str(manifests))
    path = f"/api/v1/namespaces/default/pods/static-web-{node}"
    static_uid = ""
    kubelet.start()
    try:
        # The mirror pod shows the static pod and its status.
        mirror = _wait("the mirror pod Running", _pod_running(cluster, path), 60,
                       kubelet.log_tail)
        annotations = mirror["metadata"]["annotations"]
        static_uid = annotations["kubernetes.io/config.mirror"]
        assert annotations["kubernetes.io/config.source"] == "file"
        assert mirror["metadata"]["uid"] != static_uid
        assert mirror["metadata"]["ownerReferences"][0]["kind"] == "Node"
        assert mirror["spec"]["nodeName"] == node
        containers, _ = _runtime_leftovers(containerd, static_uid)
        assert len(containers) == 1
        # Once written, the mirror's status is left alone (no rewrite on its own echo).
        time.sleep(1.5)
        version = _get(cluster, path)["metadata"]["resourceVersion"]
        time.sleep(2.5)
        assert _get(cluster, path)["metadata"]["resourceVersion"] == version
        # Deleting the mirror pod does not stop the static pod: the mirror comes back.
        answer = cluster.request("DELETE", path)
        assert answer.status == 200, answer.body
        _wait("a new mirror pod", lambda: (_get(cluster, path) or {}).get("metadata", {})
              .get("uid") not in (None, mirror["metadata"]["uid"]), 30, kubelet.log_tail)
        containers, _ = _runtime_leftovers(containerd, static_uid)
        assert len(containers) == 1 and containers[0].state == 1
        # Removing the manifest stops the pod and deletes its mirror.
        (manifests / "static-web.yaml").unlink()
        _wait("the mirror pod gone", lambda: cluster.request("GET", path).status == 404, 30,
              kubelet.log_tail)
        _wait("the static pod's containers gone",
              lambda: not any(_runtime_leftovers(containerd, static_uid)), 20,
              kubelet.log_tail)
        assert kubelet.stop() == 0, kubelet.log_tail()
    finally:
        kubelet.kill()
        if static_uid:
            for folder in POD_LOG_ROOT.glob(f"*_{static_uid}"):
                shutil.rmtree(folder, ignore_errors=True)


def test_pod_network_through_cni(cluster, containerd, tmp_path):
    """A pod on the pod network: containerd calls the bridge + host-local plugins
    (a bridge of the test's own, removed at the end), the Node turns Ready once the CNI
    config is there, the pod gets its IP, cluster DNS resolv.conf and managed hosts file,
    and serves HTTP to the host over the bridge."""
    import asyncio
    import random
    import urllib.request

    from kubesmith.cri import api
    node = f"ks-cni-{uuid.uuid4().hex[:6]}"
    bridge = f"kst{uuid.uuid4().hex[:8]}"
    subnet_octet = random.randint(16, 250)
    subnet = f"10.199.{subnet_octet}.0/24"
    conf = Path(containerd.cni_conf_dir) / "10-kubelet-test.conflist"
    conf.write_text(json.dumps({
        "cniVersion": "0.4.0", "name": "kubelet-test",
        "plugins": [{"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                              "dataDir": str(tmp_path / "ipam")}}]}))
    # The bridge plugin turns IPv4 forwarding on for a gateway; it is put back after.
    forwarding = Path("/proc/sys/net/ipv4/ip_forward")
    forwarding_before = forwarding.read_text()
    kubelet = RealKubelet(cluster, containerd, tmp_path, node)
    namespace = cluster.new_namespace("kubelet-cni-", default_service_account=True)
    path = f"/api/v1/namespaces/{namespace}/pods/web"
    pod_uid = ""
    kubelet.start()
    try:
        def node_ready():
            found = _get(cluster, f"/api/v1/nodes/{node}") or {}
            conditions = {c["type"]: c for c in found.get("status", {}).get("conditions", [])}
            return conditions.get("Ready", {}).get("status") == "True"
        _wait("the Node Ready", node_ready, 30, kubelet.log_tail)
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web", "namespace": namespace},
               "spec": {"nodeName": node, "automountServiceAccountToken": False,
                        "terminationGracePeriodSeconds": 5, "hostname": "web-host",
                        "securityContext": {"runAsUser": 65534, "runAsNonRoot": True},
                        "containers": [{
                            "name": "app", "image": "kubesmith.local/busybox:latest",
                            "command": ["sh", "-c", "mkdir -p /tmp/www && echo pod-says-hi "
                                        "> /tmp/www/index.html && "
                                        "exec httpd -f -p 8080 -h /tmp/www"],
                            "ports": [{"containerPort": 8080}]}]}}
        answer = cluster.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        assert answer.status == 201, answer.body
        pod_uid = answer.json()["metadata"]["uid"]
        current = _wait("the pod Running", _pod_running(cluster, path), 60, kubelet.log_tail)
        pod_ip = current["status"]["podIP"]
        assert pod_ip.startswith(f"10.199.{subnet_octet}.")
        assert current["status"]["podIPs"] == [{"ip": pod_ip}]
        container_id = current["status"]["containerStatuses"][0]["containerID"].split("//")[1]

        async def read(*command):
            client = containerd.client()
            try:
                code, out, err = await client.exec_sync(container_id, list(command), 10)
                assert code == 0, err
                return out.decode()
            finally:
                await client.close()
        resolv = asyncio.run(read("cat", "/etc/resolv.conf"))
        assert "nameserver 10.96.0.10" in resolv
        assert f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local" in resolv
        assert "options ndots:5" in resolv
        hosts = asyncio.run(read("cat", "/etc/hosts"))
        assert hosts.startswith("# Kubernetes-managed hosts file.")
        assert f"{pod_ip}\tweb-host" in hosts
        assert asyncio.run(read("hostname")).strip() == "web-host"
        assert asyncio.run(read("id", "-u")).strip() == "65534"

        def fetch():
            try:
                with urllib.request.urlopen(f"http://{pod_ip}:8080/index.html",
                                            timeout=2) as answer:
                    return answer.read()
            except OSError:
                return None
        assert _wait("HTTP from the pod", fetch, 15, kubelet.log_tail) == b"pod-says-hi\n"

        answer = cluster.request("DELETE", path)
        assert answer.status == 200, answer.body
        _wait("the pod gone", lambda: cluster.request("GET", path).status == 404, 30,
              kubelet.log_tail)
        assert not any(_runtime_leftovers(containerd, pod_uid))
        assert kubelet.stop() == 0, kubelet.log_tail()
    finally:
        kubelet.kill()
        if pod_uid:
            for folder in POD_LOG_ROOT.glob(f"*_{pod_uid}"):
                shutil.rmtree(folder, ignore_errors=True)
            # Sandboxes left by a failure: their network is torn down with them.
            async def remove_sandboxes():
                client = containerd.client()
                try:
                    for sandbox in await client.list_pod_sandbox(api.PodSandboxFilter(
                            label_selector={"io.kubernetes.pod.uid": pod_uid})):
                        await client.stop_pod_sandbox(sandbox.id)
                        await client.remove_pod_sandbox(sandbox.id)
                finally:
                    await client.close()
            try:
                asyncio.run(remove_sandboxes())
            except Exception:
                pass
        conf.unlink(missing_ok=True)
        subprocess.run(["ip", "link", "delete", bridge], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        if forwarding.read_text() != forwarding_before:
            forwarding.write_text(forwarding_before)


def test_volumes_env_and_probes(cluster, containerd, tmp_path):
    """The kubelet with the real volume, environment and probe managers: a ConfigMap
    and a Secret as files and as variables, the service-account token, readiness
    driving Ready, and a failed liveness probe restarting the container."""
    import asyncio
    import base64

    node = f"ks-probe-{uuid.uuid4().hex[:6]}"
    kubelet = RealKubelet(cluster, containerd, tmp_path, node)
    namespace = cluster.new_namespace("kubelet-vol-", default_service_account=True)
    # kube-root-ca.crt is the controller manager's (root CA publisher); made here.
    root_ca = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"},
               "data": {"ca.crt": (cluster.pki / "ca.crt").read_text()}}
    for kind, body in (("configmaps", root_ca), ("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                       "metadata": {"name": "cfg"},
                                       "data": {"greeting": "hello"}}),
                       ("secrets", {"apiVersion": "v1", "kind": "Secret",
                                    "metadata": {"name": "sec"},
                                    "data": {"password": base64.b64encode(b"s3cret").decode()}})):
        answer = cluster.request("POST", f"/api/v1/namespaces/{namespace}/{kind}", body)
        assert answer.status == 201, answer.body
    path = f"/api/v1/namespaces/{namespace}/pods/probed"
    pod_uid = ""
    kubelet.start()
    try:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "probed", "namespace": namespace},
               "spec": {"nodeName": node, "hostNetwork": True,
                        "terminationGracePeriodSeconds": 5,
                        "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}},
                                    {"name": "sec", "secret": {"secretName": "sec"}}],
                        "containers": [{
                            "name": "app", "image": "kubesmith.local/busybox:latest",
                            "command": ["sh", "-c", "touch /tmp/alive; trap 'exit 0' TERM; "
                                        "while true; do sleep 0.2; done"],
                            "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {
                                        "name": "cfg", "key": "greeting"}}},
                                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {
                                        "name": "sec", "key": "password"}}}],
                            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"},
                                             {"name": "sec", "mountPath": "/etc/sec"}],
                            "livenessProbe": {"exec": {"command": ["test", "-f", "/tmp/alive"]},
                                              "periodSeconds": 1, "failureThreshold": 1},
                            "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]},
                                               "periodSeconds": 1}}]}}
        answer = cluster.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        assert answer.status == 201, answer.body
        pod_uid = answer.json()["metadata"]["uid"]
        current = _wait("the pod Running", _pod_running(cluster, path), 60,
                        lambda: f"{_get(cluster, path)}\n{kubelet.log_tail()}\n" + str(
                            cluster.request("GET", f"/api/v1/namespaces/{namespace}/events")
                            .json()))
        conditions = {c["type"]: c["status"] for c in current["status"]["conditions"]}
        assert conditions["Ready"] == "False"       # no readiness success yet
        container_id = current["status"]["containerStatuses"][0]["containerID"].split("//")[1]

        def run(*command, cid=None):
            async def go():
                client = containerd.client()
                try:
                    return await client.exec_sync(cid or container_id, list(command), 10)
                finally:
                    await client.close()
            code, out, err = asyncio.run(go())
            assert code == 0, (command, err)
            return out.decode()
        assert run("cat", "/etc/cfg/greeting") == "hello"
        assert run("cat", "/etc/sec/password") == "s3cret"
        environment = run("env")
        assert "GREETING=hello" in environment and "PASSWORD=s3cret" in environment
        assert run("cat", "/var/run/secrets/kubernetes.io/serviceaccount/namespace") == namespace
        assert run("cat", "/var/run/secrets/kubernetes.io/serviceaccount/token").count(".") == 2
        assert run("cat", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt") == \
            root_ca["data"]["ca.crt"]

        # Readiness drives the Ready condition.
        run("touch", "/tmp/ready")

        def ready():
            found = _get(cluster, path) or {}
            conditions = {c["type"]: c["status"] for c in found.get("status", {}).get(
                "conditions", [])}
            return conditions.get("Ready") == "True"
        _wait("the pod Ready", ready, 15, kubelet.log_tail)

        # A failed liveness probe restarts the container.
        run("rm", "/tmp/alive")

        def restarted():
            found = _get(cluster, path) or {}
            entries = found.get("status", {}).get("containerStatuses") or [{}]
            entry = entries[0]
            return entry if entry.get("restartCount") == 1 and "running" in entry.get(
                "state", {}) else None
        entry = _wait("the container restarted", restarted, 30, kubelet.log_tail)
        assert entry["lastState"]["terminated"]["containerID"] == f"containerd://{container_id}"
        assert entry["containerID"] != f"containerd://{container_id}"

        def pod_events():
            events = cluster.request("GET", f"/api/v1/namespaces/{namespace}/events").json()
            return {e["reason"] for e in events["items"]
                    if e["involvedObject"].get("uid") == pod_uid}
        # Events are written in the background: wait (bounded) for them.
        _wait("the pod's events", lambda: {"Created", "Started", "Killing", "Unhealthy"}
              <= pod_events(), 10, lambda: str(pod_events()))

        answer = cluster.request("DELETE", path)
        assert answer.status == 200, answer.body
        _wait("the pod gone", lambda: cluster.request("GET", path).status == 404, 30,
              kubelet.log_tail)
        assert not any(_runtime_leftovers(containerd, pod_uid))
        assert not (kubelet.root_dir / "pods" / pod_uid).exists()
        assert kubelet.stop() == 0, kubelet.log_tail()
    finally:
        kubelet.kill()
        if pod_uid:
            for folder in POD_LOG_ROOT.glob(f"*_{pod_uid}"):
                shutil.rmtree(folder, ignore_errors=True)
