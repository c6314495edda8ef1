"""Node and pod dicts for the scheduler's tests, and nodes registered with a real API
server the way a kubelet registers them."""
from __future__ import annotations

import itertools
from typing import Any

from tests.apiserver.harness import Cluster

_uid = itertools.count(1)


def make_node(name: str, cpu: str = "4", memory: str = "8Gi", pods: int = 110, *,
              labels: dict | None = None, taints: list | None = None,
              unschedulable: bool = False, ephemeral: str = "100Gi") -> dict[str, Any]:
    resources = {"cpu": cpu, "memory": memory, "pods": str(pods),
                 "ephemeral-storage": ephemeral}
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name,
                         "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {},
            "status": {"capacity": dict(resources), "allocatable": dict(resources),
                       "conditions": [{"type": "Ready", "status": "True"}]}}
    if taints:
        node["spec"]["taints"] = taints
    if unschedulable:
        node["spec"]["unschedulable"] = True
    return node


def make_pod(name: str, namespace: str = "default", *, cpu: str | None = None,
             memory: str | None = None, labels: dict | None = None, node: str = "",
             **spec: Any) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    container: dict[str, Any] = {"name": "c", "image": "busybox"}
    if requests:
        container["resources"] = {"requests": requests}
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{next(_uid)}",
                         "labels": labels or {},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [container], **spec}, "status": {"phase": "Pending"}}
    if node:
        body["spec"]["nodeName"] = node
    return body


def create_node(cluster: Cluster, node: dict) -> None:
    """POST a node, then its status (allocatable, Ready) through /status, which is what
    counts if the create dropped it."""
    answer = cluster.request("POST", "/api/v1/nodes", node)
    assert answer.status == 201, answer.body
    name = node["metadata"]["name"]
    answer = cluster.request("PATCH", f"/api/v1/nodes/{name}/status",
                             {"status": node["status"]},
                             content_type="application/merge-patch+json")
    assert answer.status == 200, answer.body


def delete_node(cluster: Cluster, name: str) -> None:
    cluster.request("DELETE", f"/api/v1/nodes/{name}")
