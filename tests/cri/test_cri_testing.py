"""kubesmith.cri.testing: a containerd stopped with a pod still running leaves nothing behind
(no process, mount, shim socket or cgroup), and remove_cgroup_tree refuses foreign cgroups."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from kubesmith.cri.testing import import_image, remove_cgroup_tree, start_containerd
from provision.images import BUSYBOX_IMAGE, PAUSE_IMAGE
from tests.cri.conftest import run
from tests.cri.test_cri_runtime import container_config, sandbox_config


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def mounts_under(directory: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(directory) + "/")]


def test_stop_leaves_nothing_behind(image_tarballs, tmp_path):
    # A marker in the container's command line finds its processes from the host.
    marker = f"9{secrets.randbelow(10**8):08d}"
    running = start_containerd(tmp_path / "containerd")
    try:
        for ref in (PAUSE_IMAGE, BUSYBOX_IMAGE):
            import_image(running, image_tarballs[ref])
        parent = running.cgroup_parent()

        async def start_pod():
            async with running.client() as client:
                config = sandbox_config("leftover", parent, tmp_path)
                sandbox_id = await client.run_pod_sandbox(config)
                container_id = await client.create_container(sandbox_id, container_config(
                    config, "sleeper", BUSYBOX_IMAGE, ["sleep", marker]), config)
                await client.start_container(container_id)
                status = await client.pod_sandbox_status(sandbox_id, verbose=True)
                assert status.info                            # verbose: runtime's JSON details
                return container_id
        container_id = run(start_pod())
        assert processes_with(marker)
        assert mounts_under(tmp_path)                          # rootfs overlays, the sandbox's shm
        assert Path(f"/sys/fs/cgroup/memory{parent}/{container_id}").is_dir()
        shim_sockets = [p.read_text().strip().removeprefix("unix://")
                        for p in running.state.glob("io.containerd.runtime.v2.task/*/*/address")]
        assert shim_sockets and all(os.path.exists(s) for s in shim_sockets)
    finally:
        running.stop()

    assert running.process.poll() is not None
    assert processes_with(marker) == []
    assert processes_with(str(running.socket)) == []           # shims name the socket in -address
    assert mounts_under(tmp_path) == []
    assert not any(os.path.exists(s) for s in shim_sockets)
    assert not any(Path("/sys/fs/cgroup", h, parent.strip("/")).exists()
                   for h in os.listdir("/sys/fs/cgroup"))
    assert not running.root.exists() and not running.state.exists()
    running.stop()                                             # twice is harmless


def test_remove_cgroup_tree_refuses_foreign_cgroups():
    for parent in ("/", "", "/kubepods", "/system.slice", "/kubesmith-test-x/../kubepods"):
        with pytest.raises(ValueError):
            remove_cgroup_tree(parent)
    remove_cgroup_tree("/kubesmith-test-never-made")           # absent: nothing to do


def test_long_tmpdir_gets_short_socket_path(image_tarballs, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with start_containerd(deep) as running:
        assert len(str(running.socket)) < 100
        assert not str(running.socket).startswith(str(deep))

        async def version():
            async with running.client() as client:
                return await client.version()
        assert run(version()).runtime_name == "containerd"
    assert not running.socket.parent.exists()
