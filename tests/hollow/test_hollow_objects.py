"""What hollow nodes write, in process: node, lease and pod status shapes, addresses,
durations and labels."""
from __future__ import annotations

import pytest

from kubesmith.scheduler.resources import Resources

from kubesmith.hollow.objects import (FAIL_AFTER, SUCCEED_AFTER, NodeSpec, PodIPs,
                                      address_slot, admission_failure, completion_after, lease_manifest, node_conditions,
                                      node_manifest, parse_duration, parse_labels,
                                      parse_taints,
                                      running_pod_status, terminated_pod_status)


def test_parse_duration():
    assert parse_duration("10s") == 10.0
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2") == 2.0
    assert parse_duration("1h") == 3600.0
    for bad in ("", "10x", "s", "-1"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_parse_labels():
    assert parse_labels("a=b, zone=z1,") == {"a": "b", "zone": "z1"}
    assert parse_labels("") == {}
    with pytest.raises(ValueError):
        parse_labels("novalue")


def test_parse_taints():
    assert parse_taints("node-role.kubernetes.io/control-plane:NoSchedule,a=b:NoExecute") == [
        {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
        {"key": "a", "value": "b", "effect": "NoExecute"}]
    for bad in ("a=b", "a:Never", ":NoSchedule"):
        with pytest.raises(ValueError):
            parse_taints(bad)
    node = node_manifest(NodeSpec("n", 0), taints=parse_taints("a:NoSchedule"))
    assert node["spec"]["taints"] == [{"key": "a", "effect": "NoSchedule"}]


def test_node_manifest_is_a_registered_kubelet_node():
    spec = NodeSpec("hollow-node-7", 7, cpu="8", memory="32Gi", pods="50")
    node = node_manifest(spec, {"zone": "a"}, now="2026-01-01T00:00:00Z")
    labels = node["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == "hollow-node-7"
    assert labels["kubernetes.io/os"] == "linux" and labels["type"] == "hollow"
    assert labels["zone"] == "a" and "kubernetes.io/arch" in labels
    status = node["status"]
    assert status["capacity"] == status["allocatable"]
    assert status["capacity"]["cpu"] == "8" and status["capacity"]["pods"] == "50"
    kinds = [c["type"] for c in status["conditions"]]
    assert kinds == ["NetworkUnavailable", "MemoryPressure", "DiskPressure", "PIDPressure",
                     "Ready"]
    ready = status["conditions"][-1]
    assert (ready["status"], ready["reason"]) == ("True", "KubeletReady")
    assert {"type": "InternalIP", "address": "172.20.0.8"} in status["addresses"]
    assert {"type": "Hostname", "address": "hollow-node-7"} in status["addresses"]
    assert status["nodeInfo"]["kubeletVersion"].startswith("v1.")
    assert status["nodeInfo"]["operatingSystem"] == "linux"
    assert spec.fallback_pod_cidr == "100.64.7.0/24"


def test_address_slots_are_consecutive_per_prefix():
    assert [address_slot("hollow-node-", i) for i in range(3)] == [0, 1, 2]
    other = [address_slot("pool-b-", i) for i in range(3)]
    assert other[1] == other[0] + 1 and other[2] == other[0] + 2
    assert other[0] != 0
    last = NodeSpec("n", 16383)
    assert last.fallback_pod_cidr == "100.127.255.0/24" and last.address == "172.20.64.0"


def test_conditions_keep_their_transition_time():
    earlier = node_conditions("2026-01-01T00:00:00Z")
    later = node_conditions("2026-01-01T00:01:00Z", earlier)
    ready = {c["type"]: c for c in later}["Ready"]
    assert ready["lastHeartbeatTime"] == "2026-01-01T00:01:00Z"
    assert ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    unknown = [dict(c, status="Unknown") if c["type"] == "Ready" else c for c in earlier]
    back = {c["type"]: c for c in node_conditions("2026-01-01T00:02:00Z", unknown)}
    assert back["Ready"]["lastTransitionTime"] == "2026-01-01T00:02:00Z"


def test_lease():
    lease = lease_manifest("n1", "uid-1", "2026-01-01T00:00:00.000000Z", 40)
    assert lease["metadata"]["namespace"] == "kube-node-lease"
    assert lease["spec"] == {"holderIdentity": "n1", "leaseDurationSeconds": 40,
                             "renewTime": "2026-01-01T00:00:00.000000Z"}
    assert lease["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "uid-1"}]


def test_pod_ips_lowest_free_first_and_reuse():
    ips = PodIPs("10.244.3.0/29")
    taken = [ips.take() for _ in range(5)]
    assert taken == ["10.244.3.2", "10.244.3.3", "10.244.3.4", "10.244.3.5", "10.244.3.6"]
    with pytest.raises(RuntimeError):
        ips.take()
    ips.release("10.244.3.4")
    assert ips.take() == "10.244.3.4"
    assert "10.244.3.9" not in ips and "10.244.3.6" in ips


def _pod(**spec) -> dict:
    base = {"containers": [{"name": "web", "image": "nginx:1.25"},
                           {"name": "agent", "image": "agent:1"}],
            "restartPolicy": "Always"}
    base.update(spec)
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "annotations": {}},
            "spec": base,
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}


def test_running_status():
    pod = _pod(initContainers=[{"name": "init", "image": "busybox"}])
    status = running_pod_status(pod, "10.244.0.2", "172.20.0.1", "2026-01-01T00:00:05Z")
    assert status["phase"] == "Running" and status["podIP"] == "10.244.0.2"
    assert status["podIPs"] == [{"ip": "10.244.0.2"}] and status["hostIP"] == "172.20.0.1"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert all(c["status"] == "True" for c in conditions.values())
    assert set(conditions) == {"PodReadyToStartContainers", "Initialized", "Ready",
                               "ContainersReady", "PodScheduled"}
    # The scheduler's condition keeps its transition time.
    assert conditions["PodScheduled"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    names = [c["name"] for c in status["containerStatuses"]]
    assert names == ["agent", "web"]
    web = status["containerStatuses"][1]
    assert web["ready"] and web["started"] and "running" in web["state"]
    assert web["containerID"].startswith("containerd://")
    init = status["initContainerStatuses"][0]
    assert init["state"]["terminated"]["reason"] == "Completed"


def test_readiness_gates_hold_ready():
    pod = _pod(readinessGates=[{"conditionType": "example.com/lb"}])
    status = running_pod_status(pod, "10.0.0.2", "172.20.0.1", "2026-01-01T00:00:05Z")
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "ReadinessGatesNotReady"


def test_completion_annotations():
    pod = _pod(restartPolicy="Never")
    assert completion_after(pod) is None
    pod["metadata"]["annotations"][SUCCEED_AFTER] = "2s"
    assert completion_after(pod) == (2.0, True)
    always = _pod()
    always["metadata"]["annotations"][SUCCEED_AFTER] = "2s"
    assert completion_after(always) is None
    failing = _pod(restartPolicy="Never")
    failing["metadata"]["annotations"][FAIL_AFTER] = "1s"
    assert completion_after(failing) == (1.0, False)
    on_failure = _pod(restartPolicy="OnFailure")
    on_failure["metadata"]["annotations"][FAIL_AFTER] = "1s"
    assert completion_after(on_failure) is None


def test_terminated_status():
    pod = _pod(restartPolicy="Never")
    pod["status"].update(phase="Running", podIP="10.0.0.2", startTime="2026-01-01T00:00:05Z")
    done = terminated_pod_status(pod, True, "2026-01-01T00:00:05Z", "2026-01-01T00:00:07Z")
    assert done["phase"] == "Succeeded" and done["podIP"] == "10.0.0.2"
    assert all(s["state"]["terminated"]["exitCode"] == 0 for s in done["containerStatuses"])
    ready = {c["type"]: c for c in done["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "PodCompleted")
    failed = terminated_pod_status(pod, False, "2026-01-01T00:00:05Z", "2026-01-01T00:00:07Z",
                                   exit_code=143)
    assert failed["phase"] == "Failed"
    assert failed["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143


def test_admission_like_the_kubelet():
    allocatable = Resources.from_list({"cpu": "4", "memory": "16Gi",
                                       "example.com/gpu": "1"})
    small = Resources.from_list({"cpu": "500m", "memory": "1Gi"})
    assert admission_failure(small, Resources(), 0, allocatable, 110) is None
    assert admission_failure(Resources(), Resources(), 110, allocatable, 110) == (
        "OutOfpods", "Pod was rejected: Node didn't have enough resource: pods, "
                     "requested: 1, used: 110, capacity: 110")
    used = Resources.from_list({"cpu": "3800m"})
    reason, message = admission_failure(small, used, 5, allocatable, 110)
    assert reason == "OutOfcpu"
    assert message.endswith("cpu, requested: 500, used: 3800, capacity: 4000")
    big = Resources.from_list({"memory": "17Gi"})
    assert admission_failure(big, Resources(), 0, allocatable, 110)[0] == "OutOfmemory"
    gpus = Resources.from_list({"example.com/gpu": "2"})
    assert admission_failure(gpus, Resources(), 0, allocatable, 110)[0] == \
        "OutOfexample.com/gpu"
