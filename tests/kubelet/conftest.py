"""Fakes for the kubelet's unit tests: an in-memory CRI runtime, API client, event
recorder, volume and probe managers. The real tests use kubesmith.cri.testing's
throwaway containerd and the apiserver harness instead."""
from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from kubesmith.cri import api
from kubesmith.cri.client import NotFoundError

Obj = dict[str, Any]


def _matches(labels, selector) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


class FakeRuntime:
    """A CRI runtime in memory: sandboxes and containers change state only when the
    test says so (`exit(id, code)`), images are those in `images`."""

    def __init__(self):
        self.ids = itertools.count(1)
        self.sandboxes: dict[str, Obj] = {}
        self.containers: dict[str, Obj] = {}
        self.images: dict[str, api.Image] = {}
        self.calls: list[tuple] = []
        self.exec_results: dict[str, tuple[int, bytes, bytes]] = {}
        self.pod_ip = "10.244.0.5"
        self.network_ready = True
        self.pull_error: Exception | None = None
        self.pull_auths: list = []

    def add_image(self, ref: str, uid: int | None = 0, username: str = "") -> None:
        image = api.Image(id=f"sha256:{abs(hash(ref)):x}", repo_tags=[ref], size=1000,
                          username=username)
        if uid is not None:
            image.uid.value = uid
        self.images[ref] = image

    # --- runtime service ----------------------------------------------------------------
    async def wait_ready(self, timeout: float):
        return await self.version()

    async def version(self):
        return api.VersionResponse(version="0.1.0", runtime_name="containerd",
                                   runtime_version="1.6.20", runtime_api_version="v1")

    async def status(self, verbose: bool = False):
        return api.StatusResponse(status=api.RuntimeStatus(conditions=[
            api.RuntimeCondition(type="RuntimeReady", status=True),
            api.RuntimeCondition(type="NetworkReady", status=self.network_ready,
                                 reason="" if self.network_ready else "NetworkPluginNotReady",
                                 message="" if self.network_ready else
                                 "Network plugin returns error: cni plugin not initialized")]))

    async def update_runtime_config(self, pod_cidr: str) -> None:
        self.calls.append(("update_runtime_config", pod_cidr))

    async def run_pod_sandbox(self, config, runtime_handler: str = "") -> str:
        sandbox_id = f"sandbox{next(self.ids)}"
        self.sandboxes[sandbox_id] = {"config": config, "state": api.SANDBOX_READY,
                                      "created": time.time_ns()}
        self.calls.append(("run_pod_sandbox", sandbox_id))
        return sandbox_id

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self.calls.append(("stop_pod_sandbox", sandbox_id))
        if sandbox_id in self.sandboxes:
            self.sandboxes[sandbox_id]["state"] = api.SANDBOX_NOTREADY
            for container in self.containers.values():
                if container["sandbox"] == sandbox_id and \
                        container["state"] == api.CONTAINER_RUNNING:
                    self._exit(container, 137)

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self.calls.append(("remove_pod_sandbox", sandbox_id))
        self.sandboxes.pop(sandbox_id, None)

    async def pod_sandbox_status(self, sandbox_id: str, verbose: bool = False):
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise NotFoundError("PodSandboxStatus", None, "not found")
        host = sandbox["config"].linux.security_context.namespace_options.network == api.NODE
        return api.PodSandboxStatusResponse(status=api.PodSandboxStatus(
            id=sandbox_id, state=sandbox["state"], metadata=sandbox["config"].metadata,
            network=api.PodSandboxNetworkStatus(ip="" if host else self.pod_ip)))

    async def list_pod_sandbox(self, filter=None) -> list:
        out = []
        for sandbox_id, sandbox in self.sandboxes.items():
            config = sandbox["config"]
            if filter is not None and not _matches(dict(config.labels), filter.label_selector):
                continue
            out.append(api.PodSandbox(id=sandbox_id, metadata=config.metadata,
                                      state=sandbox["state"], created_at=sandbox["created"],
                                      labels=dict(config.labels)))
        return out

    async def create_container(self, pod_sandbox_id, config, sandbox_config) -> str:
        container_id = f"container{next(self.ids)}"
        self.containers[container_id] = {"config": config, "sandbox": pod_sandbox_id,
                                         "state": api.CONTAINER_CREATED,
                                         "created": time.time_ns(), "started": 0,
                                         "finished": 0, "exit_code": 0}
        self.calls.append(("create_container", config.metadata.name, container_id))
        return container_id

    async def start_container(self, container_id: str) -> None:
        container = self.containers[container_id]
        container["state"] = api.CONTAINER_RUNNING
        container["started"] = time.time_ns()
        self.calls.append(("start_container", container_id))

    def _exit(self, container: Obj, code: int) -> None:
        container["state"] = api.CONTAINER_EXITED
        container["finished"] = time.time_ns()
        container["exit_code"] = code

    def exit(self, container_id: str, code: int) -> None:
        """The container's process ends (test helper)."""
        self._exit(self.containers[container_id], code)

    async def stop_container(self, container_id: str, timeout: int) -> None:
        self.calls.append(("stop_container", container_id, timeout))
        container = self.containers.get(container_id)
        if container is None:
            raise NotFoundError("StopContainer", None, "not found")
        if container["state"] == api.CONTAINER_RUNNING:
            self._exit(container, 143)

    async def remove_container(self, container_id: str) -> None:
        self.calls.append(("remove_container", container_id))
        self.containers.pop(container_id, None)

    async def list_containers(self, filter=None) -> list:
        out = []
        for container_id, container in self.containers.items():
            config = container["config"]
            if filter is not None and not _matches(dict(config.labels), filter.label_selector):
                continue
            out.append(api.Container(id=container_id, pod_sandbox_id=container["sandbox"],
                                     metadata=config.metadata, image=config.image,
                                     state=container["state"], created_at=container["created"],
                                     labels=dict(config.labels),
                                     annotations=dict(config.annotations)))
        return out

    async def container_status(self, container_id: str, verbose: bool = False):
        container = self.containers.get(container_id)
        if container is None:
            return None
        config = container["config"]
        return api.ContainerStatus(
            id=container_id, metadata=config.metadata, state=container["state"],
            created_at=container["created"], started_at=container["started"],
            finished_at=container["finished"], exit_code=container["exit_code"],
            image=config.image, image_ref=config.image.image,
            labels=dict(config.labels), annotations=dict(config.annotations),
            log_path=config.log_path)

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: int):
        self.calls.append(("exec_sync", container_id, list(cmd)))
        return self.exec_results.get(container_id, (0, b"", b""))

    # --- image service ------------------------------------------------------------------
    async def image_status(self, image_ref: str):
        return self.images.get(image_ref)

    async def pull_image(self, image_ref: str, sandbox_config=None, auth=None, **_) -> str:
        self.calls.append(("pull_image", image_ref))
        self.pull_auths.append(auth)
        if self.pull_error is not None:
            raise self.pull_error
        self.add_image(image_ref)
        return self.images[image_ref].id

    # --- helpers for tests --------------------------------------------------------------
    def running(self, name: str | None = None) -> list[str]:
        return [cid for cid, c in self.containers.items()
                if c["state"] == api.CONTAINER_RUNNING
                and (name is None or c["config"].metadata.name == name)]

    def named(self, name: str) -> list[str]:
        return [cid for cid, c in self.containers.items()
                if c["config"].metadata.name == name]


class FakeRecorder:
    def __init__(self):
        self.events: list[tuple[str, str, str]] = []

    def emit(self, obj, event_type, reason, message, *, field_path=""):
        self.events.append((event_type, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]

    async def flush(self):
        pass


class FakeVolumes:
    def __init__(self):
        self.setups: list[str] = []
        self.teardowns: list[str] = []
        self.fail: Exception | None = None
        self.node_allocatable = None

    async def setup(self, pod):
        if self.fail is not None:
            raise self.fail
        self.setups.append(pod["metadata"]["uid"])
        return {}

    async def refresh(self, pod):
        pass

    def mounts(self, pod, container, volume_paths, *, env=None):
        return []

    async def teardown(self, uid):
        self.teardowns.append(uid)


class FakeProbes:
    def __init__(self):
        self.live_failure: dict[tuple[str, str], str] = {}
        self.unready: set[tuple[str, str]] = set()
        self.updates: list[tuple] = []
        self.removed: list[str] = []
        self.resets: list[tuple[str, str]] = []

    def update(self, pod, pod_ip, containers):
        self.updates.append((pod["metadata"]["uid"], pod_ip, dict(containers)))

    def remove(self, uid):
        self.removed.append(uid)

    def ready(self, uid, name):
        return (uid, name) not in self.unready

    def started(self, uid, name):
        return True

    def liveness_failed(self, uid, name):
        return self.live_failure.get((uid, name))

    def reset(self, uid, name):
        self.resets.append((uid, name))
        self.live_failure.pop((uid, name), None)


class FakeClient:
    """Records the API writes of the kubelet's pod workers; `objects` answers gets."""

    def __init__(self):
        self.patches: list[tuple] = []
        self.deletes: list[tuple] = []
        self.objects: dict[tuple[str, str, str], dict] = {}

    async def get(self, resource, name, namespace=None, **kw):
        from kubesmith.client.rest import ApiError
        found = self.objects.get((resource, namespace, name))
        if found is None:
            raise ApiError({"reason": "NotFound", "code": 404, "message": "not found"})
        return found

    async def patch(self, resource, name, body, namespace=None, **kw):
        self.patches.append((resource, name, namespace, body, kw))
        return body

    async def delete(self, resource, name, namespace=None, **kw):
        self.deletes.append((resource, name, namespace, kw))
        return {}


async def fake_env(pod, container, *, client, services, node_name, host_ip, pod_ip,
                   node_allocatable=None):
    return [api.KeyValue(key=e["name"], value=str(e.get("value", "")))
            for e in container.get("env") or [] if "value" in e]


@pytest.fixture
def fake_runtime():
    runtime = FakeRuntime()
    runtime.add_image("busybox:1.36")
    return runtime


def make_pod(name="web", uid="uid-1", namespace="default", **spec) -> Obj:
    containers = spec.pop("containers", None) or [
        {"name": "app", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent"}]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "uid": uid},
           "spec": {"nodeName": "node-1", "containers": containers,
                    "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst", **spec},
           "status": {"phase": "Pending"}}
    return pod


async def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Poll `predicate` until true (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")
