"""One deployed 1-master 2-worker lab shared by the deploy and kubectl end-to-end modules.

test_deploy.py drives it from bare hosts (its first test needs an undeployed lab, and
pytest runs that module first); test_kubectl.py only needs it deployed and deploys it
itself when run alone (a re-deploy of a deployed lab changes nothing).
"""
from __future__ import annotations

import pytest

from labkit import DEPLOY_LAB_NAME, DEPLOY_LAB_SUBNET, missing_requirement, running_lab


@pytest.fixture(scope="session")
def deploy_lab(tmp_path_factory):
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    with running_lab(DEPLOY_LAB_NAME, tmp_path_factory.mktemp("deploy"), DEPLOY_LAB_SUBNET,
                     masters=1, workers=2) as lab:
        yield lab


@pytest.fixture(scope="session")
def deployed_lab(deploy_lab):
    results = deploy_lab.deploy_json()
    assert results["results"]["failed_hosts"] == []
    return deploy_lab
