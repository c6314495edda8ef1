"""The workload controllers as the kube-controller-manager runs them (the folder's
`controller_manager` fixture, every controller on): a Deployment rolled out and shown
by kubectl, its Service's Endpoints and EndpointSlice, and the garbage collector
removing its ReplicaSet and pods after it."""
from __future__ import annotations

import json
import time

from tests.controllers.conftest import wait_for


def _items(cluster, path: str) -> list[dict]:
    answer = cluster.request("GET", path)
    assert answer.status == 200, answer.body
    return answer.json()["items"]


def _start(cluster, pod: dict, ip: str) -> None:
    """Report the pod Running and Ready, as its kubelet would. The pod stays unbound:
    a node without a kubelet would be found silent by the node lifecycle controller,
    which would then mark the pod not ready again."""
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    answer = cluster.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status", {
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True",
                                   "lastTransitionTime": now}]}},
        content_type="application/merge-patch+json")
    assert answer.status == 200, answer.body


def test_deployment_service_and_cleanup_through_the_manager(cluster, namespace):
    manifest = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
         "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                      "terminationGracePeriodSeconds": 0,
                      "containers": [{"name": "web", "image": "registry.k8s.io/pause:3.9",
                                      "ports": [{"name": "http", "containerPort": 8080}]}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}]}
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(manifest))
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    pods = wait_for(lambda: (lambda items: items if len(items) == 2 else None)(
        _items(cluster, pods_path + "?labelSelector=app%3Dweb")), timeout=20, what="2 pods")
    for i, pod in enumerate(pods):
        _start(cluster, pod, f"10.9.0.{i + 2}")
    rollout = cluster.kubectl("-n", namespace, "rollout", "status", "deployment/web",
                              "--timeout=30s", timeout=40)
    assert "successfully rolled out" in rollout.stdout

    def endpoints():
        answer = cluster.request("GET", f"/api/v1/namespaces/{namespace}/endpoints/web")
        if answer.status != 200:
            return None
        subsets = answer.json().get("subsets") or []
        ips = sorted(a["ip"] for s in subsets for a in s.get("addresses") or [])
        return subsets if ips == ["10.9.0.2", "10.9.0.3"] else None
    [subset] = wait_for(endpoints, timeout=20, what="endpoints")
    assert subset["ports"] == [{"port": 8080, "protocol": "TCP"}]

    def slice_endpoints():
        slices = _items(cluster, f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/"
                                 "endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dweb")
        endpoints = [e for s in slices for e in s.get("endpoints") or []]
        return endpoints if len(endpoints) == 2 else None
    endpoints = wait_for(slice_endpoints, timeout=20, what="slice endpoints")
    assert all(e["conditions"]["ready"] for e in endpoints)

    # Deleting the Deployment: the garbage collector takes its ReplicaSet and pods.
    cluster.kubectl("-n", namespace, "delete", "deployment", "web")
    wait_for(lambda: not _items(cluster, f"/apis/apps/v1/namespaces/{namespace}/replicasets"),
             timeout=30, what="replica sets collected")
    wait_for(lambda: not _items(cluster, pods_path), timeout=30, what="pods collected")
