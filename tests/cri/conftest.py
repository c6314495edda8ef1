"""One throwaway containerd (kubesmith.cri.testing) for the folder, with the locally
built pause, busybox and python images imported (provision.images)."""
from __future__ import annotations

import asyncio

import pytest

from kubesmith.cri.testing import remove_cgroup_tree
from provision.images import BUSYBOX_IMAGE, PAUSE_IMAGE, PYTHON_IMAGE
from tests.cri.throwaway_containerd import build_test_images, containerd_with_images


def run(coro, timeout: float = 30):
    """Runs a coroutine to completion, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="session")
def image_tarballs(tmp_path_factory):
    return build_test_images(tmp_path_factory)


@pytest.fixture(scope="session")
def containerd(tmp_path_factory, image_tarballs):
    """A running containerd with the three images imported."""
    with containerd_with_images(tmp_path_factory, image_tarballs,
                                (PAUSE_IMAGE, BUSYBOX_IMAGE, PYTHON_IMAGE)) as running:
        yield running


@pytest.fixture
def cgroup_parent(containerd):
    """A cgroup parent of the test's own, removed after it (also on failure)."""
    parent = containerd.cgroup_parent()
    yield parent
    remove_cgroup_tree(parent)
