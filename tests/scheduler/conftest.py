"""One real etcd and kube-apiserver for the folder (tests/apiserver's harness)."""
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
