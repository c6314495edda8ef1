"""One real etcd and one kube-apiserver process for the whole folder (the harness of
tests/apiserver); `connect()` makes API clients with its admin kubeconfig."""
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
def connect(cluster):
    """connect(**options) -> an ApiClient with the admin kubeconfig (use `async with`)."""
    def make(**options) -> ApiClient:
        options.setdefault("component", "hollow-test")
        options.setdefault("qps", 0)
        return ApiClient.from_kubeconfig(cluster.kubeconfig, **options)
    return make
