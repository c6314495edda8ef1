"""One throwaway containerd (kubesmith.cri.testing) for the folder, with the locally
built pause, busybox and python images imported (provision.images)."""
from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from kubesmith.cri.testing import import_image, remove_cgroup_tree, start_containerd
from provision.images import BUSYBOX_IMAGE, PAUSE_IMAGE, PYTHON_IMAGE, build_images


def run(coro, timeout: float = 30):
    """Runs a coroutine to completion, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr"):
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            return f"needs {tool} (Debian's containerd and runc)"
    if not os.path.exists("/bin/busybox"):
        return "needs /bin/busybox (busybox-static)"
    return None


@pytest.fixture(scope="session")
def image_tarballs(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    return build_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def containerd(tmp_path_factory, image_tarballs):
    """A running containerd with the three images imported."""
    with start_containerd(tmp_path_factory.mktemp("containerd")) as running:
        for ref in (PAUSE_IMAGE, BUSYBOX_IMAGE, PYTHON_IMAGE):
            import_image(running, image_tarballs[ref])
        yield running


@pytest.fixture
def cgroup_parent(containerd):
    """A cgroup parent of the test's own, removed after it (also on failure)."""
    parent = containerd.cgroup_parent()
    yield parent
    remove_cgroup_tree(parent)
