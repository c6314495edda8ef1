"""RuntimeClient against an in-process fake runtime (grpc.aio server on a unix socket):
request shapes, unwrapped replies, deadlines and error mapping, without containerd."""
from __future__ import annotations

import grpc
import grpc.aio
import pytest

from kubesmith.cri import api
from kubesmith.cri.client import NotFoundError, RuntimeClient, RuntimeError_, _target
from kubesmith.cri.proto import api_pb2_grpc
from tests.cri.conftest import run


class FakeRuntime(api_pb2_grpc.RuntimeServiceServicer):
    def __init__(self):
        self.requests: list[tuple[str, object, float | None]] = []

    def _seen(self, name, request, context):
        self.requests.append((name, request, context.time_remaining()))

    async def Version(self, request, context):
        self._seen("Version", request, context)
        return api.VersionResponse(version=request.version, runtime_name="fake", runtime_api_version="v1")

    async def RunPodSandbox(self, request, context):
        self._seen("RunPodSandbox", request, context)
        return api.RunPodSandboxResponse(pod_sandbox_id="sandbox-1")

    async def ListPodSandbox(self, request, context):
        self._seen("ListPodSandbox", request, context)
        return api.ListPodSandboxResponse(items=[api.PodSandbox(id="sandbox-1", labels=request.filter.label_selector)])

    async def ContainerStatus(self, request, context):
        self._seen("ContainerStatus", request, context)
        if request.container_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "an error occurred when try to find container: not found")
        return api.ContainerStatusResponse(
            status=api.ContainerStatus(id=request.container_id, state=api.CONTAINER_RUNNING),
            info={"info": "{}"} if request.verbose else {})

    async def StopContainer(self, request, context):
        self._seen("StopContainer", request, context)
        return api.StopContainerResponse()

    async def ExecSync(self, request, context):
        self._seen("ExecSync", request, context)
        return api.ExecSyncResponse(stdout=b"out", stderr=b"err", exit_code=2)

    async def Exec(self, request, context):
        self._seen("Exec", request, context)
        return api.ExecResponse(url="http://127.0.0.1:1/exec/token")

    async def StartContainer(self, request, context):
        self._seen("StartContainer", request, context)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "container is in CONTAINER_EXITED state")


class FakeImages(api_pb2_grpc.ImageServiceServicer):
    async def ImageStatus(self, request, context):
        if request.image.image == "present":
            return api.ImageStatusResponse(image=api.Image(id="sha256:abc", repo_tags=["present"]))
        return api.ImageStatusResponse()

    async def PullImage(self, request, context):
        return api.PullImageResponse(image_ref="sha256:" + request.image.image)


@pytest.fixture
def fake(tmp_path):
    """(socket endpoint, FakeRuntime) served for the test's duration, inside run()."""
    runtime = FakeRuntime()
    endpoint = f"unix://{tmp_path}/fake.sock"

    def serving(body):
        async def main():
            server = grpc.aio.server()
            api_pb2_grpc.add_RuntimeServiceServicer_to_server(runtime, server)
            api_pb2_grpc.add_ImageServiceServicer_to_server(FakeImages(), server)
            server.add_insecure_port(endpoint)
            await server.start()
            try:
                async with RuntimeClient(endpoint, timeout=10) as client:
                    await body(client)
            finally:
                await server.stop(None)
        run(main(), timeout=20)
    return serving, runtime


def test_calls_and_deadlines(fake):
    serving, runtime = fake

    async def body(client: RuntimeClient):
        assert (await client.version()).runtime_name == "fake"
        assert runtime.requests[-1][1].version == "0.1.0"

        config = api.PodSandboxConfig(metadata=api.PodSandboxMetadata(name="p", uid="u", namespace="ns"))
        assert await client.run_pod_sandbox(config, runtime_handler="runc") == "sandbox-1"
        name, request, remaining = runtime.requests[-1]
        assert request.config.metadata.uid == "u" and request.runtime_handler == "runc"
        assert 15 < remaining <= 21                      # twice the usual deadline

        sandboxes = await client.list_pod_sandbox(api.PodSandboxFilter(label_selector={"a": "b"}))
        assert [(s.id, dict(s.labels)) for s in sandboxes] == [("sandbox-1", {"a": "b"})]

        await client.stop_container("c1", 30)
        assert 35 < runtime.requests[-1][2] <= 41        # the grace period on top

        assert await client.exec_sync("c1", ["true"], 5) == (2, b"out", b"err")
        name, request, remaining = runtime.requests[-1]
        assert list(request.cmd) == ["true"] and request.timeout == 5 and 10 < remaining <= 16
        await client.exec_sync("c1", ["true"], 0)
        assert runtime.requests[-1][2] is None            # no timeout: no deadline

        assert await client.exec("c1", ["sh"], tty=True, stdin=True) == "http://127.0.0.1:1/exec/token"
        request = runtime.requests[-1][1]
        assert request.tty and request.stdin and request.stdout and not request.stderr  # tty merges stderr
    serving(body)


def test_not_found_and_other_errors(fake):
    serving, _ = fake

    async def body(client: RuntimeClient):
        assert (await client.container_status("c1")).state == api.CONTAINER_RUNNING
        assert await client.container_status("missing") is None
        reply = await client.container_status_response("c1", verbose=True)
        assert reply.info == {"info": "{}"}
        with pytest.raises(RuntimeError_) as failure:
            await client.start_container("c1")
        assert failure.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "CONTAINER_EXITED" in failure.value.detail and failure.value.method == "StartContainer"
        assert not isinstance(failure.value, NotFoundError)
        with pytest.raises(RuntimeError_) as failure:
            await client.remove_container("c1")        # not implemented by the fake
        assert failure.value.code is grpc.StatusCode.UNIMPLEMENTED
        assert issubclass(NotFoundError, RuntimeError_)
    serving(body)


def test_images(fake):
    serving, _ = fake

    async def body(client: RuntimeClient):
        assert (await client.image_status("present")).id == "sha256:abc"
        assert await client.image_status("absent") is None
        assert await client.pull_image("x") == "sha256:x"
    serving(body)


def test_endpoints():
    assert _target("unix:///run/containerd/containerd.sock") == "unix:///run/containerd/containerd.sock"
    assert _target("unix:/run/c.sock") == "unix:///run/c.sock"
    assert _target("/run/c.sock") == "unix:///run/c.sock"
    with pytest.raises(ValueError):
        _target("tcp://127.0.0.1:1234")


def test_close_is_idempotent():
    async def main():
        client = RuntimeClient("unix:///nonexistent.sock", timeout=1)
        await client.close()
        with pytest.raises(RuntimeError_):
            await client.version()
        await client.close()
        await client.close()
    run(main())
