"""One real etcd and one kube-apiserver process for the whole folder (see harness.py)."""
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
        # A dead server would fail every later test with a confusing error; say so here.
        assert running.process is not None and running.process.poll() is None, \
            running.log_tail()
