"""Ephemeral containers on the real kubelet (real API server + a throwaway containerd):
one added to a running pod starts in the pod's own sandbox, reports its status in
ephemeralContainerStatuses and has its log; one with targetContainerName sees the
target's processes; an exited one is not restarted. Everything started is removed."""
from __future__ import annotations

import shutil
import time
import uuid

from tests.kubelet import test_kubelet_core_real as core
from tests.kubelet.test_kubelet_core_real import (POD_LOG_ROOT, RealKubelet, _get,
                                                  _pod_running, _runtime_leftovers, _wait)

# The real API server, the throwaway containerd and the pod log root of the core tests.
cluster, containerd, pod_log_root = core.cluster, core.containerd, core.pod_log_root

IMAGE = "kubesmith.local/busybox:latest"
STRATEGIC = "application/strategic-merge-patch+json"


def _log(namespace: str, pod_uid: str, name: str) -> str:
    path = POD_LOG_ROOT / f"{namespace}_web_{pod_uid}" / name / "0.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _ephemeral_status(cluster, path: str, name: str) -> dict:
    pod = _get(cluster, path) or {}
    for status in pod.get("status", {}).get("ephemeralContainerStatuses") or []:
        if status["name"] == name:
            return status
    return {}


def test_ephemeral_containers_run_in_the_pod(cluster, containerd, tmp_path):
    node = f"ks-eph-{uuid.uuid4().hex[:6]}"
    kubelet = RealKubelet(cluster, containerd, tmp_path, node)
    namespace = cluster.new_namespace("eph-", default_service_account=True)
    path = f"/api/v1/namespaces/{namespace}/pods/web"
    pod_uid = ""
    kubelet.start()
    try:
        _wait("the Node", lambda: _get(cluster, f"/api/v1/nodes/{node}"), 30, kubelet.log_tail)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
               "spec": {"nodeName": node, "hostNetwork": True,
                        "automountServiceAccountToken": False,
                        "terminationGracePeriodSeconds": 2,
                        "containers": [{"name": "app", "image": IMAGE, "command": [
                            "sh", "-c", "readlink /proc/self/ns/ipc; trap 'exit 0' TERM; "
                            "while true; do sleep 0.2; done # app-marker"]}]}}
        answer = cluster.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        assert answer.status == 201, answer.body
        pod_uid = answer.json()["metadata"]["uid"]
        _wait("the pod Running", _pod_running(cluster, path), 60, kubelet.log_tail)
        _wait("the app's log", lambda: "ipc:[" in _log(namespace, pod_uid, "app"), 15,
              kubelet.log_tail)
        app_ipc = _log(namespace, pod_uid, "app").split("ipc:[")[1].split("]")[0]

        # A debug container in the running pod: the pod's sandbox (its IPC namespace),
        # running, its log there; the app container untouched.
        debug = {"name": "dbg", "image": IMAGE, "stdin": True, "tty": False, "command": [
            "sh", "-c", "echo hi; readlink /proc/self/ns/ipc; sleep 30"]}
        answer = cluster.request("PATCH", path + "/ephemeralcontainers",
                                 {"spec": {"ephemeralContainers": [debug]}},
                                 content_type=STRATEGIC)
        assert answer.status == 200, answer.body
        _wait("dbg running", lambda: "running" in _ephemeral_status(
            cluster, path, "dbg").get("state", {}), 30, kubelet.log_tail)
        entry = _ephemeral_status(cluster, path, "dbg")
        assert entry["ready"] is False and entry["restartCount"] == 0
        assert entry["containerID"].startswith("containerd://") and entry["imageID"]
        _wait("dbg's log", lambda: "ipc:[" in _log(namespace, pod_uid, "dbg"), 15,
              kubelet.log_tail)
        text = _log(namespace, pod_uid, "dbg")
        assert " hi\n" in text
        assert f"ipc:[{app_ipc}]" in text       # the same sandbox as the app container
        current = _get(cluster, path)
        assert current["status"]["phase"] == "Running"
        assert current["status"]["containerStatuses"][0]["restartCount"] == 0

        # kubectl logs and exec -c <ephemeral> through the API server and the kubelet.
        result = cluster.kubectl("logs", "web", "-n", namespace, "-c", "dbg", check=False)
        assert result.returncode == 0 and "hi" in result.stdout, result.stderr
        result = cluster.kubectl("exec", "web", "-n", namespace, "-c", "dbg", "--",
                                 "echo", "exec-ok", check=False)
        assert result.returncode == 0 and "exec-ok" in result.stdout, result.stderr

        # One targeting the app container sees its processes; it exits and stays exited.
        target = {"name": "peek", "image": IMAGE, "targetContainerName": "app",
                  "command": ["sh", "-c", "ps"]}
        answer = cluster.request("PATCH", path + "/ephemeralcontainers",
                                 {"spec": {"ephemeralContainers": [debug, target]}},
                                 content_type=STRATEGIC)
        assert answer.status == 200, answer.body
        _wait("peek terminated", lambda: "terminated" in _ephemeral_status(
            cluster, path, "peek").get("state", {}), 30, kubelet.log_tail)
        assert "app-marker" in _log(namespace, pod_uid, "peek")
        time.sleep(3)       # a few syncs: no restart
        peek = _ephemeral_status(cluster, path, "peek")
        assert peek["restartCount"] == 0 and peek["state"]["terminated"]["exitCode"] == 0
        containers, _ = _runtime_leftovers(containerd, pod_uid)
        assert [c.metadata.name for c in containers].count("peek") == 1

        answer = cluster.request("DELETE", path)
        assert answer.status == 200, answer.body
        _wait("the pod gone", lambda: cluster.request("GET", path).status == 404, 30,
              kubelet.log_tail)
        containers, sandboxes = _runtime_leftovers(containerd, pod_uid)
        assert not containers and not sandboxes
        assert kubelet.stop() == 0, kubelet.log_tail()
    finally:
        kubelet.kill()
        if pod_uid:
            for folder in POD_LOG_ROOT.glob(f"*_{pod_uid}"):
                shutil.rmtree(folder, ignore_errors=True)
