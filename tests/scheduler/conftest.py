"""One real etcd and kube-apiserver for the folder (tests/apiserver's harness), and
helpers to make nodes the way a kubelet registers them."""
from __future__ import annotations

import pytest

from kubesmith.store.testing import etcd_available
from tests.apiserver.harness import Cluster


@pytest.fixture(scope="session")
def cluster():
    if not etcd_available():
        pytest.skip("needs /usr/bin/etcd (etcd-server)")
    with Cluster() as running:
        yield running


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
