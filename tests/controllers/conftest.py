"""One real etcd and kube-apiserver for the folder, and one kube-controller-manager
running every controller against it (in this process, on a thread of its own, with
short periods so that tests take seconds).

Fixtures: `cluster` (tests/apiserver's harness), `controller_manager` (the running
ManagerThread), `connect(**options)` -> ApiClient with the admin kubeconfig (use
`async with`), `namespace` -> a fresh namespace whose `default` ServiceAccount the
serviceaccount controller has made.
"""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from kubesmith.client.rest import ApiClient
from kubesmith.controllers import options as flags
from kubesmith.store.testing import etcd_available
from tests.apiserver.harness import Cluster

CLUSTER_CIDR = "10.244.0.0/16"
NODE_MONITOR_GRACE_PERIOD = 4.0


def manager_flags(cluster: Cluster, *extra: str) -> list[str]:
    """The command line of a controller manager for `cluster`: kubeadm's flags with
    leader election off and periods of seconds."""
    pki = cluster.pki
    # The deploy's identity (system:kube-controller-manager), so RBAC is as on a cluster:
    # the manager lists and watches, each controller writes as its own ServiceAccount.
    kubeconfig = cluster.state / "kubeconfigs" / "controller-manager.conf"
    return [f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--secure-port=0",
            f"--root-ca-file={pki / 'ca.crt'}", f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            "--use-service-account-credentials=true", "--cluster-name=kubesmith",
            "--allocate-node-cidrs=true", f"--cluster-cidr={CLUSTER_CIDR}",
            "--node-cidr-mask-size=24", "--service-cluster-ip-range=10.96.0.0/12",
            f"--node-monitor-grace-period={NODE_MONITOR_GRACE_PERIOD:g}s",
            "--node-monitor-period=1s", "--kube-api-qps=200", "--kube-api-burst=400",
            *extra]


class ManagerThread:
    """A ControllerManager on a thread with its own event loop (start() / stop())."""

    def __init__(self, argv: list[str]):
        self.options = flags.parse(argv)
        self.manager = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="controller-manager",
                                        daemon=True)

    def start(self, timeout: float = 30.0) -> "ManagerThread":
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"controller manager not started after {timeout}s")
        if self.error is not None:
            raise RuntimeError("controller manager failed") from self.error
        return self

    def stop(self, timeout: float = 15.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:     # reported to start()
            self.error = exc
        finally:
            self._ready.set()

    async def _run(self) -> None:
        from kubesmith.controllers.manager import ControllerManager, make_client
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        client = make_client(self.options)
        self.manager = ControllerManager(client, self.options, host="test")
        task = asyncio.create_task(self.manager.run())
        started = asyncio.create_task(self.manager.started.wait())
        try:
            await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
            self._ready.set()
            stopping = asyncio.create_task(self._stop.wait())
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if task.done():
                task.result()
        finally:
            started.cancel()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()


@pytest.fixture(scope="session")
def cluster():
    if not etcd_available():
        pytest.skip("needs /usr/bin/etcd (etcd-server)")
    with Cluster() as running:
        yield running


def fast_periods() -> None:
    """Controller periods upstream fixes in code, shortened for tests."""
    from kubesmith.controllers import podgc
    podgc.GC_CHECK_PERIOD = 1.0
    podgc.ORPHAN_QUARANTINE = 1.0


@pytest.fixture(scope="session")
def controller_manager(cluster):
    """Every controller, running against `cluster` for the whole session."""
    fast_periods()
    manager = ManagerThread(manager_flags(cluster)).start()
    yield manager
    manager.stop()


@pytest.fixture
def connect(cluster):
    """connect(**options) -> an ApiClient with the admin kubeconfig (use `async with`)."""
    def make(**options) -> ApiClient:
        options.setdefault("component", "controllers-test")
        return ApiClient.from_kubeconfig(cluster.kubeconfig, **options)
    return make


def wait_for(check, timeout: float = 10.0, interval: float = 0.1, what: str = ""):
    """Poll `check()` until it returns something truthy; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true after {timeout}s: {what or check}")
        time.sleep(interval)


@pytest.fixture
def namespace(cluster, controller_manager) -> str:
    """A fresh namespace with its `default` ServiceAccount (made by the controller)."""
    name = cluster.new_namespace("ctrl-")
    wait_for(lambda: cluster.request(
        "GET", f"/api/v1/namespaces/{name}/serviceaccounts/default").status == 200,
        what=f"ServiceAccount {name}/default")
    return name
