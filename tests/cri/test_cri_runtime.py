"""RuntimeClient against a real containerd (CRI v1): images, host-network sandboxes,
busybox and python containers, exec, logs, resources, stats."""
from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest

from kubesmith.cri import api
from kubesmith.cri.client import NotFoundError, RuntimeClient, RuntimeError_
from provision.images import BUSYBOX_IMAGE, PAUSE_IMAGE, PYTHON_IMAGE
from tests.cri.conftest import run

CRI_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d) (stdout|stderr) (F|P) (.*)$")


def sandbox_config(name: str, cgroup_parent: str, log_dir: Path) -> api.PodSandboxConfig:
    """A host-network sandbox (no CNI needed) labelled as the kubelet labels its pods."""
    uid = str(uuid.uuid4())
    labels = {"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": "default",
              "io.kubernetes.pod.uid": uid}
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, uid=uid, namespace="default", attempt=0),
        log_directory=str(log_dir / f"default_{name}_{uid}"),
        labels=labels,
        annotations={"io.kubernetes.pod.terminationGracePeriod": "2"},
        linux=api.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent,
            security_context=api.LinuxSandboxSecurityContext(
                namespace_options=api.NamespaceOption(network=api.NODE, pid=api.POD, ipc=api.POD))))


def container_config(sandbox: api.PodSandboxConfig, name: str, image: str, command: list[str],
                     **linux_resources) -> api.ContainerConfig:
    labels = dict(sandbox.labels, **{"io.kubernetes.container.name": name})
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name, attempt=0),
        image=api.ImageSpec(image=image),
        command=command,
        envs=[api.KeyValue(key="GREETING", value="hello from cri")],
        labels=labels,
        annotations={"io.kubernetes.container.restartCount": "0"},
        log_path=f"{name}/0.log",
        linux=api.LinuxContainerConfig(
            resources=api.LinuxContainerResources(**linux_resources),
            security_context=api.LinuxContainerSecurityContext(
                namespace_options=api.NamespaceOption(network=api.NODE, pid=api.CONTAINER, ipc=api.POD))))


@contextlib.asynccontextmanager
async def pod(client: RuntimeClient, config: api.PodSandboxConfig):
    """Runs the sandbox; stops and removes it (and so its containers) whatever happens."""
    sandbox_id = await client.run_pod_sandbox(config)
    try:
        yield sandbox_id
    finally:
        await client.stop_pod_sandbox(sandbox_id)
        await client.remove_pod_sandbox(sandbox_id)


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    give_up = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > give_up:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


# A shell that exits at once on TERM (busybox sh as PID 1 would ignore it otherwise).
def shell(script: str) -> list[str]:
    return ["sh", "-c", f"trap 'exit 0' TERM; {script}"]


def test_version_and_status(containerd):
    async def main():
        async with containerd.client() as client:
            version = await client.version()
            assert version.runtime_name == "containerd"
            assert version.runtime_api_version == "v1"
            status = await client.status()
            conditions = {c.type: c.status for c in status.status.conditions}
            assert conditions["RuntimeReady"] is True
            assert "NetworkReady" in conditions       # false: no CNI config in this folder
            assert await client.wait_ready(5) == version
    run(main())


def test_images(containerd):
    async def main():
        async with containerd.client() as client:
            tags = {tag for image in await client.list_images() for tag in image.repo_tags}
            assert {PAUSE_IMAGE, BUSYBOX_IMAGE, PYTHON_IMAGE} <= tags
            image = await client.image_status(BUSYBOX_IMAGE)
            assert image is not None and image.id.startswith("sha256:")
            assert BUSYBOX_IMAGE in image.repo_tags and image.size > 0
            assert (await client.image_status(image.id)).id == image.id
            assert await client.image_status("kubesmith.local/absent:latest") is None
            fs = await client.image_fs_info()
            assert fs.image_filesystems[0].fs_id.mountpoint.startswith(str(containerd.root))
    run(main())


def test_host_network_busybox_container_lifecycle(containerd, cgroup_parent, tmp_path):
    async def main():
        async with containerd.client() as client:
            config = sandbox_config("lifecycle", cgroup_parent, tmp_path)
            async with pod(client, config) as sandbox_id:
                status = await client.pod_sandbox_status(sandbox_id)
                assert status.status.state == api.SANDBOX_READY
                assert status.status.metadata.uid == config.metadata.uid
                assert status.status.linux.namespaces.options.network == api.NODE
                found = await client.list_pod_sandbox(api.PodSandboxFilter(
                    label_selector={"io.kubernetes.pod.uid": config.metadata.uid}))
                assert [s.id for s in found] == [sandbox_id]

                container = container_config(config, "main", BUSYBOX_IMAGE, shell(
                    'echo "$GREETING"; echo oops >&2; while :; do sleep 1; done'))
                container_id = await client.create_container(sandbox_id, container, config)
                assert (await client.container_status(container_id)).state == api.CONTAINER_CREATED
                await client.start_container(container_id)

                status = await client.container_status(container_id)
                assert status.state == api.CONTAINER_RUNNING
                assert status.labels["io.kubernetes.container.name"] == "main"
                assert status.annotations["io.kubernetes.container.restartCount"] == "0"
                assert status.image_ref.startswith("sha256:") and status.started_at > 0
                assert status.log_path == f"{config.log_directory}/main/0.log"
                listed = await client.list_containers(api.ContainerFilter(
                    pod_sandbox_id=sandbox_id,
                    state=api.ContainerStateValue(state=api.CONTAINER_RUNNING)))
                assert [c.id for c in listed] == [container_id]

                # exec_sync: output, exit codes, the host's UTS namespace (host network).
                assert await client.exec_sync(container_id, ["hostname"], 5) == (
                    0, (socket.gethostname() + "\n").encode(), b"")
                code, out, err = await client.exec_sync(container_id, ["sh", "-c", "echo out; echo err >&2; exit 3"], 5)
                assert (code, out, err) == (3, b"out\n", b"err\n")
                code, out, _ = await client.exec_sync(container_id, ["sh", "-c", "echo $GREETING"], 5)
                assert out == b"hello from cri\n"
                with pytest.raises(RuntimeError_) as timeout:
                    await client.exec_sync(container_id, ["sleep", "10"], 1)
                assert timeout.value.timed_out

                # Streaming sessions only hand out a URL of the runtime's stream server.
                url = await client.exec(container_id, ["sh"], stdin=True)
                assert re.match(r"^http://127\.0\.0\.1:\d+/exec/\S+$", url)
                assert "/attach/" in await client.attach(container_id, stdin=True)
                assert "/portforward/" in await client.port_forward(sandbox_id, [80])

                # Logs: CRI format lines at log_directory/log_path, written by containerd.
                log_file = Path(status.log_path)

                async def both_lines():
                    return log_file.exists() and len(log_file.read_text().splitlines()) >= 2
                await wait_for(both_lines)
                parsed = [CRI_LOG_LINE.match(line).groups()[1:] for line in log_file.read_text().splitlines()]
                assert sorted(parsed) == [("stderr", "F", "oops"), ("stdout", "F", "hello from cri")]

                await client.stop_container(container_id, 5)
                status = await client.container_status(container_id)
                assert status.state == api.CONTAINER_EXITED and status.exit_code == 0
                assert status.finished_at >= status.started_at
                await client.stop_container(container_id, 5)          # idempotent
                await client.remove_container(container_id)
                assert await client.container_status(container_id) is None
                await client.remove_container(container_id)           # idempotent
            with pytest.raises(NotFoundError):
                await client.pod_sandbox_status(sandbox_id)
    run(main())


def test_exit_code_and_reason(containerd, cgroup_parent, tmp_path):
    async def main():
        async with containerd.client() as client:
            config = sandbox_config("exits", cgroup_parent, tmp_path)
            async with pod(client, config) as sandbox_id:
                container_id = await client.create_container(
                    sandbox_id, container_config(config, "fails", BUSYBOX_IMAGE, ["sh", "-c", "exit 7"]), config)
                await client.start_container(container_id)

                async def exited():
                    status = await client.container_status(container_id)
                    return status if status.state == api.CONTAINER_EXITED else None
                status = await wait_for(exited)
                assert status.exit_code == 7 and status.reason == "Error"
                with pytest.raises(NotFoundError):
                    await client.start_container("0" * 64)
    run(main())


def test_resources_become_cgroup_limits(containerd, cgroup_parent, tmp_path):
    async def main():
        async with containerd.client() as client:
            config = sandbox_config("limits", cgroup_parent, tmp_path)
            async with pod(client, config) as sandbox_id:
                container = container_config(config, "limited", BUSYBOX_IMAGE, shell("while :; do sleep 1; done"),
                                             memory_limit_in_bytes=64 << 20, cpu_period=100_000,
                                             cpu_quota=50_000, cpu_shares=512)
                container_id = await client.create_container(sandbox_id, container, config)
                await client.start_container(container_id)
                memory = Path(f"/sys/fs/cgroup/memory{cgroup_parent}/{container_id}")
                cpu = Path(f"/sys/fs/cgroup/cpu{cgroup_parent}/{container_id}")
                assert int((memory / "memory.limit_in_bytes").read_text()) == 64 << 20
                assert int((cpu / "cpu.cfs_quota_us").read_text()) == 50_000
                assert int((cpu / "cpu.shares").read_text()) == 512

                await client.update_container_resources(container_id, api.LinuxContainerResources(
                    memory_limit_in_bytes=96 << 20, cpu_period=100_000, cpu_quota=20_000, cpu_shares=256))
                assert int((memory / "memory.limit_in_bytes").read_text()) == 96 << 20
                assert int((cpu / "cpu.cfs_quota_us").read_text()) == 20_000

                stats = await client.container_stats(container_id)
                assert stats.attributes.id == container_id
                assert stats.memory.working_set_bytes.value > 0
                listed = await client.list_container_stats(api.ContainerStatsFilter(pod_sandbox_id=sandbox_id))
                assert [s.attributes.id for s in listed] == [container_id]
                pods = await client.list_pod_sandbox_stats(api.PodSandboxStatsFilter(id=sandbox_id))
                assert [p.attributes.id for p in pods] == [sandbox_id]
    run(main())


def test_reopen_container_log_after_rotation(containerd, cgroup_parent, tmp_path):
    async def main():
        async with containerd.client() as client:
            config = sandbox_config("rotate", cgroup_parent, tmp_path)
            async with pod(client, config) as sandbox_id:
                container_id = await client.create_container(sandbox_id, container_config(
                    config, "ticker", BUSYBOX_IMAGE, shell("while :; do echo tick; sleep 0.1; done")), config)
                await client.start_container(container_id)
                log_file = Path(config.log_directory) / "ticker" / "0.log"

                async def has_output():
                    return log_file.exists() and log_file.stat().st_size > 0
                await wait_for(has_output)
                log_file.rename(log_file.with_name("0.log.20260101-000000"))
                await client.reopen_container_log(container_id)
                await wait_for(has_output)          # a new file, written from now on
                assert CRI_LOG_LINE.match(log_file.read_text().splitlines()[0]).group(4) == "tick"
    run(main())


def test_python_image_serves_http(containerd, cgroup_parent, tmp_path):
    """The python image: stdlib imports work and `python3 -m http.server` answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main():
        async with containerd.client() as client:
            config = sandbox_config("python", cgroup_parent, tmp_path)
            async with pod(client, config) as sandbox_id:
                container = container_config(config, "web", PYTHON_IMAGE, [
                    "python3", "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory", "/etc"])
                container_id = await client.create_container(sandbox_id, container, config)
                await client.start_container(container_id)
                code, out, err = await client.exec_sync(container_id, [
                    "python3", "-c", "import json, socket, ssl, urllib.request, hashlib, sqlite3; print('ok')"], 10)
                assert (code, out) == (0, b"ok\n"), err
                code, out, _ = await client.exec_sync(container_id, ["sh", "-c", "ls /bin/wget && id -un nobody"], 5)
                assert (code, out) == (0, b"/bin/wget\nnobody\n")

                def fetch():
                    give_up = time.monotonic() + 10
                    while True:
                        try:
                            with urllib.request.urlopen(f"http://127.0.0.1:{port}/passwd", timeout=2) as reply:
                                return reply.read()
                        except OSError:
                            if time.monotonic() > give_up:
                                raise
                            time.sleep(0.1)
                assert b"root:x:0:0" in await asyncio.to_thread(fetch)
    run(main())


def test_errors_are_mapped(tmp_path):
    async def main():
        async with RuntimeClient(f"unix://{tmp_path}/absent.sock", timeout=2) as client:
            with pytest.raises(RuntimeError_) as failure:
                await client.version()
            assert failure.value.code is grpc.StatusCode.UNAVAILABLE
            assert not isinstance(failure.value, NotFoundError)
            with pytest.raises(RuntimeError_):
                await client.wait_ready(0.5)
    run(main())
