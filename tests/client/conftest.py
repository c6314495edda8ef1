"""One real etcd and one kube-apiserver process for the whole folder (tests/apiserver's
harness); `connect()` makes API clients with its admin kubeconfig."""
from __future__ import annotations

import pytest

from kubesmith.client.rest import ApiClient
from kubesmith.store.testing import etcd_available
from tests.apiserver.harness import Cluster


@pytest.fixture(scope="session")
def cluster():
    if not etcd_available():
        pytest.skip("needs /usr/bin/etcd (etcd-server)")
    with Cluster() as running:
        yield running


@pytest.fixture
def namespace(cluster) -> str:
    return cluster.new_namespace("client-")


@pytest.fixture
def connect(cluster):
    """connect(**options) -> an ApiClient with the admin kubeconfig (use `async with`)."""
    def make(**options) -> ApiClient:
        options.setdefault("component", "client-test")
        return ApiClient.from_kubeconfig(cluster.kubeconfig, **options)
    return make
