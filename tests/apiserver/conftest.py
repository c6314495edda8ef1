"""One real etcd and one kube-apiserver process for the whole folder (see harness.py)."""
from __future__ import annotations

import pytest

from kubesmith.store.testing import etcd_available
from tests.apiserver.harness import Cluster
from tests.e2e.kubectl_versions import kubectl_builds

KUBECTL_BUILDS = kubectl_builds()


@pytest.fixture(scope="session")
def cluster():
    if not etcd_available():
        pytest.skip("needs /usr/bin/etcd (etcd-server)")
    with Cluster() as running:
        yield running
        # A dead server would fail every later test with a confusing error; say so here.
        assert running.process is not None and running.process.poll() is None, \
            running.log_tail()


@pytest.fixture(params=sorted(KUBECTL_BUILDS), ids=lambda v: f"kubectl-{v}")
def kubectl(request, cluster):
    """kubectl against the cluster, once with every kubectl build on this machine:
    `kubectl(*args, check=True)`; `.version` and `.binary` name the build."""
    binary = KUBECTL_BUILDS[request.param]

    def run(*args, **kwargs):
        return cluster.kubectl(*args, binary=binary, **kwargs)
    run.version = request.param
    run.binary = binary
    return run
