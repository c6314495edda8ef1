"""A real etcd + kube-apiserver (this folder's harness) of a test module's own, for
modules that must not share their folder's session-wide one. Bind the fixture at the
module's top level:

    from tests.apiserver import module_cluster
    cluster = module_cluster.cluster
"""
from __future__ import annotations

import pytest

from kubesmith.store.testing import etcd_available
from tests.apiserver.harness import Cluster


@pytest.fixture(scope="module")
def cluster():
    """A Cluster started for the module and stopped after its last test; skips the module
    when etcd is not installed."""
    if not etcd_available():
        pytest.skip("needs /usr/bin/etcd (etcd-server)")
    with Cluster() as running:
        yield running
