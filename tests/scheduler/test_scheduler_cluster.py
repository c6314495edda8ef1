"""The scheduler against a real kube-apiserver: in this process for the scheduling
behaviour, and as two `kube-scheduler` processes for leader election."""
from __future__ import annotations

import asyncio
import functools
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime, timezone

from kubesmith.client.events import EventRecorder
from kubesmith.client.informers import InformerFactory
from kubesmith.client.rest import ApiClient
from kubesmith.scheduler.scheduler import Scheduler
from kubesmith.store.testing import free_port
from tests.client import helpers
from tests.scheduler.fakes import create_node, delete_node, make_node, make_pod

MESSAGE_TAIL = (" preemption: 0/{n} nodes are available: {n} Preemption is not helpful "
                "for scheduling.")

# Scheduling through a real API server takes longer than the client tests' default allows.
eventually = functools.partial(helpers.eventually, timeout=15.0, interval=0.05)


def bare_pod(name: str, **kwargs) -> dict:
    pod = make_pod(name, **kwargs)
    for field in ("uid", "creationTimestamp", "namespace"):
        pod["metadata"].pop(field)
    pod.pop("status")
    return pod


async def node_of(client: ApiClient, namespace: str, name: str) -> str:
    pod = await client.get("v1 pods", name, namespace)
    return (pod.get("spec") or {}).get("nodeName") or ""


async def events_of(client: ApiClient, namespace: str, name: str, reason: str) -> list[dict]:
    events = await client.list("v1 events", namespace,
                               field_selector=f"involvedObject.name={name}")
    return [e for e in events["items"] if e.get("reason") == reason]


def test_scheduling_against_the_api_server(cluster):
    suffix = uuid.uuid4().hex[:6]
    small, big, infra, huge = (f"{kind}-{suffix}" for kind in ("small", "big", "infra", "huge"))
    taint = {"key": "dedicated", "value": "infra", "effect": "NoSchedule"}
    nodes = [make_node(small, cpu="2", memory="4Gi"),
             make_node(big, cpu="4", memory="8Gi", labels={"disk": "ssd"}),
             make_node(infra, cpu="8", memory="16Gi", taints=[taint])]
    for node in nodes:
        create_node(cluster, node)
    namespace = cluster.new_namespace("sched-", default_service_account=True)

    async def scenario():
        async with ApiClient.from_kubeconfig(cluster.kubeconfig, component="test",
                                             qps=500, burst=1000) as client:
            factory = InformerFactory(client)
            scheduler = Scheduler(client, factory,
                                  EventRecorder(client, "default-scheduler"))
            factory.start()
            assert await factory.wait_for_sync(20)
            running = asyncio.create_task(scheduler.run())
            try:
                await exercise(client, scheduler)
            finally:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
                await scheduler.drain()
                await factory.shutdown()

    async def create(client, pod):
        await client.create("v1 pods", pod, namespace)

    async def exercise(client: ApiClient, scheduler: Scheduler):
        # Bound to a node that fits: never the tainted one.
        await create(client, bare_pod("fits", cpu="1500m", memory="1Gi"))
        assert await eventually(lambda: node_of(client, namespace, "fits")) in (small, big)
        scheduled = await eventually(lambda: events_of(client, namespace, "fits", "Scheduled"))
        node = await node_of(client, namespace, "fits")
        assert scheduled[0]["message"] == f"Successfully assigned {namespace}/fits to {node}"
        assert scheduled[0]["source"]["component"] == "default-scheduler"

        # nodeSelector honoured.
        await create(client, bare_pod("ssd", nodeSelector={"disk": "ssd"}))
        assert await eventually(lambda: node_of(client, namespace, "ssd")) == big

        # Only the tainted node has room for 6 CPUs: pending, unless tolerated.
        await create(client, bare_pod("needs-infra", cpu="6"))
        await create(client, bare_pod("tolerates-infra", cpu="6", tolerations=[
            {"key": "dedicated", "operator": "Equal", "value": "infra",
             "effect": "NoSchedule"}]))
        assert await eventually(lambda: node_of(client, namespace, "tolerates-infra")) == infra

        # More CPU than any node: FailedScheduling in upstream's words, and the
        # PodScheduled condition says the same.
        await create(client, bare_pod("too-big", cpu="16"))
        failed = await eventually(lambda: events_of(client, namespace, "too-big",
                                                    "FailedScheduling"))
        expected = ("0/3 nodes are available: 1 node(s) had untolerated taint "
                    "{dedicated: infra}, 2 Insufficient cpu." + MESSAGE_TAIL.format(n=3))
        assert failed[0]["message"] == expected
        assert failed[0]["type"] == "Warning"

        async def condition():
            pod = await client.get("v1 pods", "too-big", namespace)
            return next((c for c in pod["status"].get("conditions") or ()
                         if c["type"] == "PodScheduled"), None)
        scheduled_condition = await eventually(condition)
        assert (scheduled_condition["status"], scheduled_condition["reason"],
                scheduled_condition["message"]) == ("False", "Unschedulable", expected)
        assert await node_of(client, namespace, "needs-infra") == ""

        # A node that fits arrives: the pending pod is scheduled onto it.
        create_node(cluster, make_node(huge, cpu="32", memory="64Gi"))
        assert await eventually(lambda: node_of(client, namespace, "too-big")) == huge
        assert await eventually(lambda: node_of(client, namespace, "needs-infra")) == huge

        # A pod of another scheduler is left alone.
        await create(client, bare_pod("not-mine", schedulerName="other-scheduler"))
        await asyncio.sleep(0.5)
        assert await node_of(client, namespace, "not-mine") == ""

    try:
        asyncio.run(scenario())
    finally:
        for name in (small, big, infra, huge):
            delete_node(cluster, name)


# --- two processes, one leader ----------------------------------------------------------

def start_scheduler(cluster, log_path, port: int) -> subprocess.Popen:
    """A kube-scheduler process with kubeadm's flags and its own identity
    (system:kube-scheduler, so RBAC's bootstrap role is what lets it work)."""
    kubeconfig = cluster.state / "kubeconfigs" / "scheduler.conf"
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "kubesmith.scheduler.main",
             f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
             f"--authorization-kubeconfig={kubeconfig}",
             "--bind-address=127.0.0.1", f"--secure-port={port}", "--leader-elect=true",
             "--leader-elect-lease-duration=4s", "--leader-elect-renew-deadline=3s",
             "--leader-elect-retry-period=500ms", "--v=2"],
            stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (the lease is released for the next test), SIGKILL if that is not enough."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def lease_holder(cluster) -> str:
    answer = cluster.request(
        "GET", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-scheduler")
    if answer.status != 200:
        return ""
    return answer.json()["spec"].get("holderIdentity") or ""


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not after {timeout}s")


def healthz(port: int, path: str = "/healthz") -> str:
    """The answer of `path` on the scheduler's port ("" while nothing listens yet)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE     # a self-signed serving certificate
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", timeout=5,
                                    context=context) as answer:
            return answer.read().decode()
    except OSError:
        return ""


def test_two_schedulers_one_leader_and_takeover(cluster, tmp_path):
    node = f"le-{uuid.uuid4().hex[:6]}"
    create_node(cluster, make_node(node))
    namespace = cluster.new_namespace("sched-le-", default_service_account=True)
    ports = [free_port(), free_port()]
    logs = [tmp_path / "scheduler-0.log", tmp_path / "scheduler-1.log"]
    processes = [start_scheduler(cluster, logs[i], ports[i]) for i in range(2)]

    def pod_node(name: str) -> str:
        answer = cluster.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        return answer.json()["spec"].get("nodeName", "") if answer.status == 200 else ""

    def leading() -> list[int]:
        return [i for i in range(2) if "acquired lease" in logs[i].read_text()]

    try:
        first_holder = wait_for(lambda: lease_holder(cluster), 30, "a leader")
        leader = wait_for(leading, 10, "a leader's log")
        assert len(leader) == 1, [log.read_text()[-2000:] for log in logs]
        leader = leader[0]
        standby = 1 - leader
        assert wait_for(lambda: healthz(ports[standby]) == "ok", 10, "healthz")
        assert healthz(ports[leader]) == "ok"
        assert healthz(ports[leader], "/readyz") == "ok"
        assert 'leader_election_master_status{name="kube-scheduler"} 1' in healthz(
            ports[leader], "/metrics")
        assert 'leader_election_master_status{name="kube-scheduler"} 0' in healthz(
            ports[standby], "/metrics")

        body = bare_pod("first")
        assert cluster.request("POST", f"/api/v1/namespaces/{namespace}/pods",
                               body).status == 201
        assert wait_for(lambda: pod_node("first"), 20, "first pod bound") == node
        assert "scheduling pods" not in logs[standby].read_text()

        # The leader stops (SIGTERM): it releases the lease and exits 0; the standby
        # takes over and schedules.
        processes[leader].send_signal(signal.SIGTERM)
        assert processes[leader].wait(timeout=15) == 0
        second_holder = wait_for(
            lambda: (lease_holder(cluster) not in ("", first_holder)) and lease_holder(cluster),
            20, "a new leader")
        assert second_holder != first_holder
        body = bare_pod("second")
        assert cluster.request("POST", f"/api/v1/namespaces/{namespace}/pods",
                               body).status == 201
        assert wait_for(lambda: pod_node("second"), 20, "second pod bound") == node
        assert "scheduling pods" in logs[standby].read_text()
    finally:
        for process in processes:
            stop(process)
        delete_node(cluster, node)


def test_losing_the_lease_ends_the_process(cluster, tmp_path):
    log_path = tmp_path / "scheduler.log"
    process = start_scheduler(cluster, log_path, 0)
    path = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-scheduler"
    try:
        holder = wait_for(lambda: "acquired lease" in log_path.read_text()
                          and lease_holder(cluster), 30, "leading")

        def take_lease() -> bool:
            lease = cluster.request("GET", path).json()
            if lease["spec"].get("holderIdentity") != holder:
                return False
            lease["spec"].update(holderIdentity="intruder", leaseDurationSeconds=60,
                                 renewTime=datetime.now(timezone.utc).strftime(
                                     "%Y-%m-%dT%H:%M:%S.%fZ"))
            return cluster.request("PUT", path, lease).status == 200
        wait_for(take_lease, 10, "the lease taken")
        # It cannot renew for --leader-elect-renew-deadline (3s): it stops, status 1.
        assert process.wait(timeout=20) == 1
        assert "leaderelection lost" in log_path.read_text()
    finally:
        stop(process)
        # Free the lease for whoever comes next.
        lease = cluster.request("GET", path).json()
        lease["spec"].update(holderIdentity="", leaseDurationSeconds=1)
        cluster.request("PUT", path, lease)


def test_unknown_flag_exits_2():
    result = subprocess.run([sys.executable, "-m", "kubesmith.scheduler.main", "--bogus=1",
                             "--kubeconfig=x"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "unknown flag: --bogus" in result.stderr
