"""Hollow nodes against a real kube-apiserver: registration with leases, heartbeats that
renew (and stop on request), bound pods that go Running and Ready with an IP, deletion
finalised, pods that run to completion, a restart that adopts what was running, and
the kubesmith-hollow command."""
from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import subprocess
import sys
import time
import uuid

from kubesmith.client.rest import ApiError, is_not_found
from kubesmith.hollow.nodes import HollowConfig, HollowNodes
from kubesmith.hollow.objects import SUCCEED_AFTER
from tests.apiserver.harness import REPO
from tests.client.helpers import eventually

LEASES = "leases.coordination.k8s.io"


def prefix() -> str:
    return f"hn-{uuid.uuid4().hex[:6]}-"


def pod_manifest(name: str, *, restart: str = "Always", annotations: dict | None = None,
                 host_network: bool = False) -> dict:
    spec = {"containers": [{"name": "app", "image": "registry.example/app:1"}],
            "restartPolicy": restart}
    if host_network:
        spec["hostNetwork"] = True
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}


async def bind(client, namespace: str, pod: str, node: str) -> None:
    await client.create("v1 pods", {"apiVersion": "v1", "kind": "Binding",
                                    "metadata": {"name": pod},
                                    "target": {"apiVersion": "v1", "kind": "Node",
                                               "name": node}},
                        namespace, name=pod, subresource="binding")


async def create_bound(client, namespace: str, name: str, node: str, **options) -> dict:
    created = await client.create("v1 pods", pod_manifest(name, **options), namespace)
    await bind(client, namespace, name, node)
    return created


def condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c.get("type") == kind), {})


async def running(client, namespace: str, name: str) -> dict | None:
    pod = await client.get("v1 pods", name, namespace)
    if pod["status"].get("phase") == "Running" and condition(pod, "Ready").get("status") == "True":
        return pod
    return None


async def gone(client, namespace: str, name: str) -> bool:
    try:
        await client.get("v1 pods", name, namespace)
    except ApiError as exc:
        return is_not_found(exc)
    return False


def test_nodes_register_with_leases_and_heartbeats(cluster, connect):
    async def main():
        async with connect() as client:
            config = HollowConfig(count=4, name_prefix=prefix(), heartbeat=0.5,
                                  labels={"zone": "z1"})
            nodes = HollowNodes(client, config)
            await nodes.start(timeout=30)
            try:
                for name in nodes.names:
                    node = await client.get("v1 nodes", name)
                    labels = node["metadata"]["labels"]
                    assert labels["kubernetes.io/hostname"] == name
                    assert labels["type"] == "hollow" and labels["zone"] == "z1"
                    assert node["status"]["allocatable"]["cpu"] == "4"
                    assert condition(node, "Ready")["status"] == "True"
                    assert condition(node, "MemoryPressure")["status"] == "False"
                    lease = await client.get(LEASES, name, "kube-node-lease")
                    assert lease["spec"]["holderIdentity"] == name
                    assert lease["spec"]["leaseDurationSeconds"] == 40
                    owner = lease["metadata"]["ownerReferences"][0]
                    assert (owner["kind"], owner["name"], owner["uid"]) == (
                        "Node", name, node["metadata"]["uid"])

                first, second = nodes.names[:2]
                renew = {}
                for name in (first, second):
                    renew[name] = (await client.get(LEASES, name, "kube-node-lease")
                                   )["spec"]["renewTime"]

                async def renewed(name):
                    lease = await client.get(LEASES, name, "kube-node-lease")
                    return lease["spec"]["renewTime"] != renew[name]
                await eventually(lambda: renewed(first), timeout=10)

                # A stopped heartbeat: that lease stands still, the other renews.
                nodes.stop_heartbeat(first)
                await asyncio.sleep(1.0)    # a renewal in flight lands
                renew[first] = (await client.get(LEASES, first, "kube-node-lease")
                                )["spec"]["renewTime"]
                renew[second] = (await client.get(LEASES, second, "kube-node-lease")
                                 )["spec"]["renewTime"]
                await eventually(lambda: renewed(second), timeout=10)
                await asyncio.sleep(1.0)
                assert not await renewed(first)
                nodes.start_heartbeat(first)
                await eventually(lambda: renewed(first), timeout=10)

                # Someone else marks the node Unknown (the lifecycle controller): the node
                # puts its own status back at the next heartbeat.
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                await client.patch("v1 nodes", second, {"status": {"conditions": [
                    {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                     "message": "Kubelet stopped posting node status.",
                     "lastHeartbeatTime": now, "lastTransitionTime": now}]}},
                    patch_type="strategic", subresource="status")

                async def ready_again():
                    node = await client.get("v1 nodes", second)
                    return condition(node, "Ready").get("status") == "True"
                await eventually(ready_again, timeout=10)
            finally:
                await nodes.stop()
    asyncio.run(main())


def test_bound_pods_run_and_deletion_is_finalised(cluster, connect):
    namespace = cluster.new_namespace("hollow-", default_service_account=True)

    async def main():
        async with connect() as client:
            nodes = HollowNodes(client, HollowConfig(count=2, name_prefix=prefix(),
                                                     heartbeat=1.0))
            await nodes.start(timeout=30)
            try:
                node = nodes.names[1]
                await create_bound(client, namespace, "web", node)
                pod = await eventually(lambda: running(client, namespace, "web"), timeout=15)
                status = pod["status"]
                spec = nodes.spec(node)
                assert ipaddress.ip_address(status["podIP"]) in ipaddress.ip_network(
                    spec.fallback_pod_cidr)
                assert status["podIPs"] == [{"ip": status["podIP"]}]
                assert status["hostIP"] == spec.address
                assert ipaddress.ip_address(spec.address) in ipaddress.ip_network(
                    "172.20.0.0/14")
                assert status["startTime"]
                assert all(condition(pod, kind).get("status") == "True" for kind in
                           ("PodScheduled", "Initialized", "ContainersReady", "Ready"))
                container = status["containerStatuses"][0]
                assert container["ready"] and "running" in container["state"]

                # The node-ipam controller's podCIDR is used from then on.
                await client.patch("v1 nodes", node, {"spec": {"podCIDR": "10.244.9.0/24",
                                                               "podCIDRs": ["10.244.9.0/24"]}})
                await eventually(lambda: (nodes.node_informer.lister.get(node) or {})
                                 .get("spec", {}).get("podCIDR"), timeout=10)
                await create_bound(client, namespace, "web-2", node)
                second = await eventually(lambda: running(client, namespace, "web-2"),
                                          timeout=15)
                assert second["status"]["podIP"] == "10.244.9.2"

                # hostNetwork pods have the node's address.
                await create_bound(client, namespace, "host", node, host_network=True)
                host = await eventually(lambda: running(client, namespace, "host"),
                                        timeout=15)
                assert host["status"]["podIP"] == spec.address

                # A graceful delete (30 s by default) ends at once: the node finalises it.
                started = time.monotonic()
                await client.delete("v1 pods", "web", namespace)
                await eventually(lambda: gone(client, namespace, "web"), timeout=15)
                assert time.monotonic() - started < 15
                assert nodes.counts["pods_deleted"] >= 1
            finally:
                await nodes.stop()
    asyncio.run(main())


def test_pods_run_to_completion(cluster, connect):
    namespace = cluster.new_namespace("hollow-", default_service_account=True)

    async def main():
        async with connect() as client:
            nodes = HollowNodes(client, HollowConfig(count=1, name_prefix=prefix()))
            await nodes.start(timeout=30)
            try:
                node = nodes.names[0]
                await create_bound(client, namespace, "job-ok", node, restart="Never",
                                   annotations={SUCCEED_AFTER: "1s"})
                await create_bound(client, namespace, "job-bad", node, restart="Never",
                                   annotations={"hollow.kubesmith.io/fail-after": "1s"})

                async def phase(name, wanted):
                    pod = await client.get("v1 pods", name, namespace)
                    return pod if pod["status"].get("phase") == wanted else None
                await eventually(lambda: phase("job-ok", "Running"), timeout=15)
                ok = await eventually(lambda: phase("job-ok", "Succeeded"), timeout=15)
                state = ok["status"]["containerStatuses"][0]["state"]["terminated"]
                assert (state["exitCode"], state["reason"]) == (0, "Completed")
                assert condition(ok, "Ready")["reason"] == "PodCompleted"
                bad = await eventually(lambda: phase("job-bad", "Failed"), timeout=15)
                assert bad["status"]["containerStatuses"][0]["state"]["terminated"][
                    "exitCode"] == 1
            finally:
                await nodes.stop()
    asyncio.run(main())


def test_pods_that_do_not_fit_are_rejected(cluster, connect):
    namespace = cluster.new_namespace("hollow-", default_service_account=True)

    async def main():
        async with connect() as client:
            nodes = HollowNodes(client, HollowConfig(count=1, name_prefix=prefix(), cpu="1",
                                                     pods="2"))
            await nodes.start(timeout=30)
            try:
                node = nodes.names[0]
                big = pod_manifest("big")
                big["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "2"}}
                await client.create("v1 pods", big, namespace)
                await bind(client, namespace, "big", node)
                for name in ("a", "b"):
                    await create_bound(client, namespace, name, node)
                    await eventually(lambda: running(client, namespace, name), timeout=15)
                await create_bound(client, namespace, "c", node)

                async def failed(name):
                    pod = await client.get("v1 pods", name, namespace)
                    return pod if pod["status"].get("phase") == "Failed" else None
                refused = await eventually(lambda: failed("big"), timeout=15)
                assert refused["status"]["reason"] == "OutOfcpu"
                assert "requested: 2000, used: 0, capacity: 1000" in refused["status"][
                    "message"]
                third = await eventually(lambda: failed("c"), timeout=15)
                assert third["status"]["reason"] == "OutOfpods"
                # A pod that ends gives its place back.
                await client.delete("v1 pods", "a", namespace)
                await eventually(lambda: gone(client, namespace, "a"), timeout=15)
                await create_bound(client, namespace, "d", node)
                await eventually(lambda: running(client, namespace, "d"), timeout=15)
            finally:
                await nodes.stop()
    asyncio.run(main())


def test_many_pods_and_a_restart_that_adopts_them(cluster, connect):
    namespace = cluster.new_namespace("hollow-", default_service_account=True)
    count = 60

    async def main():
        async with connect() as client:
            config = HollowConfig(count=3, name_prefix=prefix())
            nodes = HollowNodes(client, config)
            await nodes.start(timeout=30)
            try:
                names = [f"p-{i}" for i in range(count)]
                await asyncio.gather(*(client.create("v1 pods", pod_manifest(n), namespace)
                                       for n in names))
                await asyncio.gather(*(bind(client, namespace, n, nodes.names[i % 3])
                                       for i, n in enumerate(names)))

                async def all_running():
                    pods = (await client.list("v1 pods", namespace))["items"]
                    return sum(p["status"].get("phase") == "Running" for p in pods) == count
                await eventually(all_running, timeout=40, interval=0.2)
                before = {p["metadata"]["name"]: p["status"]["podIP"]
                          for p in (await client.list("v1 pods", namespace))["items"]}
                assert len(set(before.values())) == count   # no address given twice
            finally:
                await nodes.stop()

            # The same nodes in a new process: registered already, pods keep their IPs;
            # a new pod gets an address none of them has.
            again = HollowNodes(client, config)
            await again.start(timeout=30)
            try:
                assert again.counts["registered"] == 3
                assert again.counts["pods_started"] == 0
                await create_bound(client, namespace, "late", nodes.names[0])
                late = await eventually(lambda: running(client, namespace, "late"), timeout=15)
                assert late["status"]["podIP"] not in before.values()
                after = {p["metadata"]["name"]: p["status"].get("podIP")
                         for p in (await client.list("v1 pods", namespace))["items"]}
                assert all(after[name] == ip for name, ip in before.items())
            finally:
                await again.stop()
    asyncio.run(main())


def test_command_registers_nodes_and_stops_on_sigterm(cluster, tmp_path):
    name_prefix = prefix()
    log = tmp_path / "hollow.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "kubesmith.hollow.main", "--kubeconfig",
             str(cluster.kubeconfig), "--nodes", "2", "--name-prefix", name_prefix,
             "--heartbeat", "1s", "--labels", "pool=bench",
             "--register-with-taints", "dedicated=bench:NoSchedule"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=out, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            answer = cluster.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/"
                                            f"kube-node-lease/leases/{name_prefix}1")
            if answer.status == 200:
                break
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        node = cluster.request("GET", f"/api/v1/nodes/{name_prefix}0").json()
        assert node["metadata"]["labels"]["pool"] == "bench"
        assert node["spec"]["taints"] == [{"key": "dedicated", "value": "bench",
                                           "effect": "NoSchedule"}]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_command_rejects_bad_flags():
    result = subprocess.run([sys.executable, "-m", "kubesmith.hollow.main", "--kubeconfig",
                             os.devnull, "--heartbeat", "soon"],
                            capture_output=True, text=True, timeout=30, cwd=REPO)
    assert result.returncode == 2 and "invalid duration" in result.stderr
