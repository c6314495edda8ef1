"""An asyncio client for a CRI v1 runtime (containerd's CRI plugin) over its unix socket.

One coroutine per CRI RPC, named as the RPC in snake_case; they take and return
the runtime.v1 protobuf messages of ``kubesmith.cri.api`` and unwrap the
responses where a single value is all a caller wants (an id, a URL, a list).

Every call carries a deadline, as upstream's kubelet does: ``timeout`` (its
runtime-request-timeout, 2 minutes by default) for ordinary calls, twice that
for RunPodSandbox (it sets up the network), the call's own timeout on top for
StopContainer and ExecSync, and none for PullImage unless asked for (pulls are
bounded by their progress, not by a clock).

Errors: the runtime's NotFound becomes ``NotFoundError``; every other gRPC
failure (the runtime down, a deadline, a refused request) becomes
``RuntimeError_`` carrying the gRPC status code and the runtime's detail
message. ``NotFoundError`` is a ``RuntimeError_``, so one ``except`` catches both.
"""
from __future__ import annotations

import asyncio
import time

import grpc
import grpc.aio

from kubesmith import __version__
from kubesmith.cri import api
from kubesmith.cri.proto import api_pb2_grpc

DEFAULT_ENDPOINT = "unix:///run/containerd/containerd.sock"

# The CRI API version the kubelet announces in VersionRequest (upstream's
# kubeRuntimeAPIVersion); runtimes answer with their own.
KUBELET_RUNTIME_API_VERSION = "0.1.0"

# Upstream's kubelet caps CRI messages at 16 MiB each way; ExecSync output is
# capped by the runtime at the same size.
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    # A restarted containerd should be found again quickly.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.primary_user_agent", f"kubesmith-kubelet/{__version__}"),
]


class RuntimeError_(Exception):
    """A CRI call failed. ``code`` is the grpc.StatusCode, ``detail`` the runtime's message.

    The trailing underscore keeps it apart from Python's builtin RuntimeError.
    """

    def __init__(self, method: str, code: grpc.StatusCode | None, detail: str):
        self.method = method
        self.code = code
        self.detail = detail
        super().__init__(f"{method}: {getattr(code, 'name', code)}: {detail}")

    @property
    def timed_out(self) -> bool:
        """True when the call's deadline passed (or the runtime's own, e.g. ExecSync's)."""
        return self.code is grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(RuntimeError_):
    """The runtime has no such sandbox, container or image."""


def _target(endpoint: str) -> str:
    """gRPC target for an endpoint given as unix:///path, unix:/path or a bare path."""
    if endpoint.startswith("unix://"):
        return endpoint
    if endpoint.startswith("unix:"):
        return "unix://" + endpoint[len("unix:"):]
    if endpoint.startswith("/"):
        return "unix://" + endpoint
    raise ValueError(f"unsupported CRI endpoint {endpoint!r}: only unix sockets are")


class RuntimeClient:
    """The kubelet's connection to the container runtime and image service.

    The gRPC channel is opened on first use (inside the running event loop, so a
    client belongs to that loop) and reconnects by itself when the runtime
    restarts; ``close()`` releases it.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout: float = 120.0):
        self.endpoint = endpoint
        self.timeout = timeout
        self._target = _target(endpoint)
        self._channel: grpc.aio.Channel | None = None
        self._runtime: api_pb2_grpc.RuntimeServiceStub | None = None
        self._images: api_pb2_grpc.ImageServiceStub | None = None

    # --- connection ---

    def _stubs(self) -> tuple[api_pb2_grpc.RuntimeServiceStub, api_pb2_grpc.ImageServiceStub]:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._target, options=_CHANNEL_OPTIONS)
            self._runtime = api_pb2_grpc.RuntimeServiceStub(self._channel)
            self._images = api_pb2_grpc.ImageServiceStub(self._channel)
        return self._runtime, self._images

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    async def __aenter__(self) -> RuntimeClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, method: str, request, deadline: float | None | bool = True):
        """Runs one unary RPC. deadline True: self.timeout; a number: that many seconds;
        None: no deadline."""
        runtime, images = self._stubs()
        stub = images if method in _IMAGE_METHODS else runtime
        timeout = self.timeout if deadline is True else deadline
        try:
            return await getattr(stub, method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            cls = NotFoundError if err.code() is grpc.StatusCode.NOT_FOUND else RuntimeError_
            raise cls(method, err.code(), err.details() or "") from None

    async def wait_ready(self, timeout: float) -> api.VersionResponse:
        """Version() until the runtime answers, for at most ``timeout`` seconds.

        For start-up, when the runtime's socket may not exist yet. Raises the last
        RuntimeError_ when time runs out.
        """
        give_up = time.monotonic() + timeout
        while True:
            left = give_up - time.monotonic()
            try:
                return await self._call(
                    "Version", api.VersionRequest(version=KUBELET_RUNTIME_API_VERSION),
                    deadline=max(0.1, min(left, 2.0)))
            except RuntimeError_:
                if time.monotonic() + 0.2 >= give_up:
                    raise
                await asyncio.sleep(0.2)

    # --- runtime ---

    async def version(self) -> api.VersionResponse:
        return await self._call("Version", api.VersionRequest(version=KUBELET_RUNTIME_API_VERSION))

    async def status(self, verbose: bool = False) -> api.StatusResponse:
        return await self._call("Status", api.StatusRequest(verbose=verbose))

    async def update_runtime_config(self, pod_cidr: str) -> None:
        await self._call("UpdateRuntimeConfig", api.UpdateRuntimeConfigRequest(
            runtime_config=api.RuntimeConfig(network_config=api.NetworkConfig(pod_cidr=pod_cidr))))

    # --- sandboxes ---

    async def run_pod_sandbox(self, config: api.PodSandboxConfig, runtime_handler: str = "") -> str:
        """Creates and starts the pod's sandbox (its namespaces and network); returns its id."""
        # Twice the usual deadline, as upstream: CNI setup can be slow.
        reply = await self._call("RunPodSandbox", api.RunPodSandboxRequest(
            config=config, runtime_handler=runtime_handler), deadline=self.timeout * 2)
        return reply.pod_sandbox_id

    async def stop_pod_sandbox(self, pod_sandbox_id: str) -> None:
        await self._call("StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id=pod_sandbox_id))

    async def remove_pod_sandbox(self, pod_sandbox_id: str) -> None:
        await self._call("RemovePodSandbox", api.RemovePodSandboxRequest(pod_sandbox_id=pod_sandbox_id))

    async def pod_sandbox_status(self, pod_sandbox_id: str, verbose: bool = False) -> api.PodSandboxStatusResponse:
        """Raises NotFoundError for an unknown sandbox."""
        return await self._call("PodSandboxStatus", api.PodSandboxStatusRequest(
            pod_sandbox_id=pod_sandbox_id, verbose=verbose))

    async def list_pod_sandbox(self, filter: api.PodSandboxFilter | None = None) -> list[api.PodSandbox]:
        reply = await self._call("ListPodSandbox", api.ListPodSandboxRequest(filter=filter))
        return list(reply.items)

    # --- containers ---

    async def create_container(self, pod_sandbox_id: str, config: api.ContainerConfig,
                               sandbox_config: api.PodSandboxConfig) -> str:
        reply = await self._call("CreateContainer", api.CreateContainerRequest(
            pod_sandbox_id=pod_sandbox_id, config=config, sandbox_config=sandbox_config))
        return reply.container_id

    async def start_container(self, container_id: str) -> None:
        await self._call("StartContainer", api.StartContainerRequest(container_id=container_id))

    async def stop_container(self, container_id: str, timeout: int) -> None:
        """Stops with SIGTERM (or the image's stop signal), SIGKILL after ``timeout`` s."""
        await self._call("StopContainer", api.StopContainerRequest(
            container_id=container_id, timeout=timeout), deadline=self.timeout + timeout)

    async def remove_container(self, container_id: str) -> None:
        await self._call("RemoveContainer", api.RemoveContainerRequest(container_id=container_id))

    async def list_containers(self, filter: api.ContainerFilter | None = None) -> list[api.Container]:
        reply = await self._call("ListContainers", api.ListContainersRequest(filter=filter))
        return list(reply.containers)

    async def container_status(self, container_id: str, verbose: bool = False) -> api.ContainerStatus | None:
        """The container's status, or None when the runtime does not know it."""
        reply = await self.container_status_response(container_id, verbose)
        return reply.status if reply is not None else None

    async def container_status_response(self, container_id: str,
                                        verbose: bool = False) -> api.ContainerStatusResponse | None:
        """As container_status, with the runtime's verbose ``info`` (JSON strings) kept."""
        try:
            return await self._call("ContainerStatus", api.ContainerStatusRequest(
                container_id=container_id, verbose=verbose))
        except NotFoundError:
            return None

    async def update_container_resources(self, container_id: str,
                                         linux_resources: api.LinuxContainerResources) -> None:
        await self._call("UpdateContainerResources", api.UpdateContainerResourcesRequest(
            container_id=container_id, linux=linux_resources))

    async def reopen_container_log(self, container_id: str) -> None:
        await self._call("ReopenContainerLog", api.ReopenContainerLogRequest(container_id=container_id))

    # --- exec, attach, port-forward ---

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: int) -> tuple[int, bytes, bytes]:
        """Runs ``cmd`` in the container; returns (exit code, stdout, stderr).

        ``timeout`` seconds bound the command (0: no bound); when it passes the
        runtime fails the call and RuntimeError_.timed_out is true.
        """
        deadline = self.timeout + timeout if timeout > 0 else None
        reply = await self._call("ExecSync", api.ExecSyncRequest(
            container_id=container_id, cmd=cmd, timeout=timeout), deadline=deadline)
        return reply.exit_code, reply.stdout, reply.stderr

    async def exec(self, container_id: str, cmd: list[str], tty: bool = False, stdin: bool = False,
                   stdout: bool = True, stderr: bool = True) -> str:
        """URL of the runtime's streaming server for an interactive exec session."""
        reply = await self._call("Exec", api.ExecRequest(
            container_id=container_id, cmd=cmd, tty=tty, stdin=stdin,
            stdout=stdout, stderr=stderr and not tty))
        return reply.url

    async def attach(self, container_id: str, tty: bool = False, stdin: bool = False,
                     stdout: bool = True, stderr: bool = True) -> str:
        """URL of the runtime's streaming server for attaching to the container's process."""
        reply = await self._call("Attach", api.AttachRequest(
            container_id=container_id, tty=tty, stdin=stdin,
            stdout=stdout, stderr=stderr and not tty))
        return reply.url

    async def port_forward(self, pod_sandbox_id: str, ports: list[int]) -> str:
        reply = await self._call("PortForward", api.PortForwardRequest(
            pod_sandbox_id=pod_sandbox_id, port=ports))
        return reply.url

    # --- stats ---

    async def container_stats(self, container_id: str) -> api.ContainerStats:
        reply = await self._call("ContainerStats", api.ContainerStatsRequest(container_id=container_id))
        return reply.stats

    async def list_container_stats(self, filter: api.ContainerStatsFilter | None = None) -> list[api.ContainerStats]:
        reply = await self._call("ListContainerStats", api.ListContainerStatsRequest(filter=filter))
        return list(reply.stats)

    async def pod_sandbox_stats(self, pod_sandbox_id: str) -> api.PodSandboxStats:
        reply = await self._call("PodSandboxStats", api.PodSandboxStatsRequest(pod_sandbox_id=pod_sandbox_id))
        return reply.stats

    async def list_pod_sandbox_stats(self, filter: api.PodSandboxStatsFilter | None = None) -> list[api.PodSandboxStats]:
        reply = await self._call("ListPodSandboxStats", api.ListPodSandboxStatsRequest(filter=filter))
        return list(reply.stats)

    # --- images ---

    async def list_images(self, filter: api.ImageFilter | None = None) -> list[api.Image]:
        reply = await self._call("ListImages", api.ListImagesRequest(filter=filter))
        return list(reply.images)

    async def image_status(self, image_ref: str) -> api.Image | None:
        """The image, or None when it is not present on the node."""
        reply = await self._call("ImageStatus", api.ImageStatusRequest(image=api.ImageSpec(image=image_ref)))
        return reply.image if reply.HasField("image") else None

    async def pull_image(self, image_ref: str, sandbox_config: api.PodSandboxConfig | None = None,
                         auth: api.AuthConfig | None = None, timeout: float | None = None) -> str:
        """Pulls the image; returns the runtime's reference to it (the image id)."""
        reply = await self._call("PullImage", api.PullImageRequest(
            image=api.ImageSpec(image=image_ref), auth=auth, sandbox_config=sandbox_config),
            deadline=timeout)
        return reply.image_ref

    async def remove_image(self, image_ref: str) -> None:
        await self._call("RemoveImage", api.RemoveImageRequest(image=api.ImageSpec(image=image_ref)))

    async def image_fs_info(self) -> api.ImageFsInfoResponse:
        return await self._call("ImageFsInfo", api.ImageFsInfoRequest())


_IMAGE_METHODS = frozenset({"ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo"})
