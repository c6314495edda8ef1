"""One deployed 1-master 2-worker lab shared by the deploy, kubectl and workload
end-to-end modules.

test_deploy.py drives it from bare hosts (its first test needs an undeployed lab, so
that module is run first, whatever the file names); the others only need it deployed
and deploy it themselves when run alone (a re-deploy of a deployed lab changes nothing).
"""
from __future__ import annotations

from pathlib import Path

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


def pytest_collection_modifyitems(items):
    """test_deploy.py before the other end-to-end modules, in the slots the end-to-end
    tests already hold (the hook sees the whole session's items)."""
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if item.path.parent == here]
    ordered = sorted((items[i] for i in slots), key=lambda item: item.path.name != "test_deploy.py")
    for slot, item in zip(slots, ordered):
        items[slot] = item
