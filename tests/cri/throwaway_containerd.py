"""The throwaway containerd of kubesmith.cri.testing as test fixtures, for tests/cri and
tests/kubelet: what this machine lacks to run one, the locally built images
(provision.images), and one running with some of them imported.

    containerd = containerd_fixture(PAUSE_IMAGE, BUSYBOX_IMAGE)   # a module's fixture
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from kubesmith.cri.testing import RunningContainerd, import_image, start_containerd
from provision.images import build_images


def containerd_missing() -> str | None:
    """Why no throwaway containerd can run here (not root, Debian's containerd, runc or
    busybox-static not installed), or None when one can."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr"):
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            return f"needs {tool} (Debian's containerd and runc)"
    if not os.path.exists("/bin/busybox"):
        return "needs /bin/busybox (busybox-static)"
    return None


def build_test_images(tmp_path_factory, missing: Callable[[], str | None] = containerd_missing
                      ) -> dict[str, Path]:
    """The locally built images' tarballs by ref, in a fresh temporary folder; skips the
    test with `missing()`'s reason when it gives one."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    return build_images(tmp_path_factory.mktemp("images"))


@contextlib.contextmanager
def containerd_with_images(tmp_path_factory, image_tarballs: dict[str, Path],
                           refs: tuple[str, ...]) -> Iterator[RunningContainerd]:
    """A throwaway containerd in a fresh temporary folder with the images `refs` imported
    from `image_tarballs`; stopped (and everything it started removed) on leaving."""
    with start_containerd(tmp_path_factory.mktemp("containerd")) as running:
        for ref in refs:
            import_image(running, image_tarballs[ref])
        yield running


def containerd_fixture(*refs: str, missing: Callable[[], str | None] = containerd_missing):
    """A module-scoped `containerd` fixture: a throwaway containerd with the locally built
    images `refs` imported; skips the module's tests that use it with `missing()`'s reason
    when it gives one."""
    @pytest.fixture(scope="module")
    def containerd(tmp_path_factory):
        images = build_test_images(tmp_path_factory, missing)
        with containerd_with_images(tmp_path_factory, images, refs) as running:
            yield running
    return containerd
