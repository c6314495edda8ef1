"""End to end: the kube-scheduler and kube-controller-manager that the deploy runs on the
lab's master, driven with the real kubectl, over simulated nodes (kubesmith-hollow run on
this machine against the master's API server, as kubemark's hollow nodes would be).

The tests run in file order; the node-failure test stops one group of simulated nodes
for good, so it comes last.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubectl_versions import Kubectl, newest_kubectl

pytestmark = pytest.mark.e2e

# Pods tolerate their node's loss for this long (instead of the default 300 s).
TOLERATION_SECONDS = 5
HOLLOW_GROUPS = ("hollow-a-", "hollow-b-")    # two processes, two nodes each


def wait_for(check, what: str, timeout: float = 60.0, interval: float = 0.5):
    """check() until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def admin_conf(deployed_lab) -> Path:
    return deployed_lab.state_dir / "kubeconfigs" / "admin.conf"


@pytest.fixture(scope="module")
def kubectl(admin_conf, tmp_path_factory) -> Kubectl:
    binary = newest_kubectl()
    if not binary:
        pytest.skip("no kubectl on PATH")
    return Kubectl(binary, admin_conf, tmp_path_factory.mktemp("kubectl-home"))


@pytest.fixture(scope="module")
def hollow(admin_conf, kubectl, tmp_path_factory):
    """Two kubesmith-hollow processes of two nodes each; the nodes are removed after."""
    logs = tmp_path_factory.mktemp("hollow")
    processes: dict[str, subprocess.Popen] = {}
    try:
        for prefix in HOLLOW_GROUPS:
            log = open(logs / f"{prefix.strip('-')}.log", "w")
            processes[prefix] = subprocess.Popen(
                [sys.executable, "-m", "kubesmith.hollow.main", "--kubeconfig",
                 str(admin_conf), "--nodes", "2", "--name-prefix", prefix, "--cpu", "2",
                 "--memory", "8Gi", "--heartbeat", "2s"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
        names = [f"{prefix}{index}" for prefix in HOLLOW_GROUPS for index in range(2)]

        def all_ready():
            nodes = kubectl.json("get", "nodes")["items"]
            ready = {n["metadata"]["name"] for n in nodes if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", []))}
            return set(names) <= ready
        wait_for(all_ready, "the simulated nodes to be Ready", timeout=60)
        yield processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        kubectl("delete", "nodes", "-l", "type=hollow", "--wait=false", check=False)


@pytest.fixture
def namespace(kubectl, hollow, request):
    name = "e2e-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    kubectl("create", "namespace", name)
    # The controller-manager's serviceaccount controller makes `default`; pods need it.
    wait_for(lambda: kubectl("get", "serviceaccount", "default", "-n", name, check=False)
             .startswith("NAME"), "the default ServiceAccount", timeout=30)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def deployment(name: str, replicas: int, image: str, *, max_unavailable="1",
               max_surge="0", cpu: str = "100m") -> str:
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {
                "maxUnavailable": _int_or_percent(max_unavailable),
                "maxSurge": _int_or_percent(max_surge)}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    # Simulated nodes only: real nodes would pull the image.
                    "nodeSelector": {"type": "hollow"},
                    "containers": [{"name": "app", "image": image,
                                    "ports": [{"name": "http", "containerPort": 8080}],
                                    "resources": {"requests": {"cpu": cpu}}}],
                    "tolerations": [
                        {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                         "effect": "NoExecute", "tolerationSeconds": TOLERATION_SECONDS},
                        {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                         "effect": "NoExecute", "tolerationSeconds": TOLERATION_SECONDS}],
                }}}})


def _int_or_percent(value: str):
    return value if value.endswith("%") else int(value)


def _ready(pod: dict) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", []))


def pods(kubectl: Kubectl, namespace: str, selector: str) -> list[dict]:
    return kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]


def test_deployment_scales_rolls_out_and_undoes(kubectl, namespace):
    ns = ("-n", namespace)
    kubectl("apply", *ns, "-f", "-", input=deployment("web", 4, "registry.k8s.io/pause:3.9"))
    kubectl("rollout", "status", *ns, "deployment/web", "--timeout=90s", timeout=120)
    running = pods(kubectl, namespace, "app=web")
    assert len(running) == 4 and all(_ready(p) for p in running)
    assert all(p["spec"]["nodeName"].startswith("hollow-") for p in running)
    first_rs = kubectl.json("get", "replicasets", *ns, "-l", "app=web")["items"]
    assert len(first_rs) == 1
    first_rs_name = first_rs[0]["metadata"]["name"]

    # Scale up and down.
    kubectl("scale", *ns, "deployment/web", "--replicas=6")
    kubectl("rollout", "status", *ns, "deployment/web", "--timeout=90s", timeout=120)
    wait_for(lambda: len([p for p in pods(kubectl, namespace, "app=web") if _ready(p)]) == 6,
             "6 ready pods")
    kubectl("scale", *ns, "deployment/web", "--replicas=4")
    wait_for(lambda: len(pods(kubectl, namespace, "app=web")) == 4, "4 pods after scale down")

    # A new image rolls out with maxUnavailable=1, maxSurge=0: never fewer than 3 ready.
    kubectl("set", "image", *ns, "deployment/web", "app=registry.k8s.io/pause:3.10")
    fewest_ready, deadline = 4, time.monotonic() + 120
    while time.monotonic() < deadline:
        current = pods(kubectl, namespace, "app=web")
        fewest_ready = min(fewest_ready, sum(_ready(p) for p in current))
        images = {p["spec"]["containers"][0]["image"] for p in current if _ready(p)}
        if len(current) == 4 and images == {"registry.k8s.io/pause:3.10"} and \
                all(_ready(p) for p in current):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the new image did not roll out in 120 s")
    assert fewest_ready >= 3, f"{fewest_ready} ready pods during the rollout (maxUnavailable 1)"
    kubectl("rollout", "status", *ns, "deployment/web", "--timeout=60s", timeout=90)
    history = kubectl("rollout", "history", *ns, "deployment/web")
    assert re.search(r"^1\s", history, re.M) and re.search(r"^2\s", history, re.M), history

    # Undo: the first ReplicaSet is the current one again, with every replica.
    kubectl("rollout", "undo", *ns, "deployment/web")
    kubectl("rollout", "status", *ns, "deployment/web", "--timeout=90s", timeout=120)
    first = kubectl.json("get", "replicaset", *ns, first_rs_name)
    assert first["spec"]["replicas"] == 4
    assert first["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert kubectl("get", *ns, "deployment/web", "-o",
                   "jsonpath={.spec.template.spec.containers[0].image}") == \
        "registry.k8s.io/pause:3.9"

    # Deleting the Deployment (background propagation) removes its ReplicaSets and Pods.
    kubectl("delete", *ns, "deployment/web")
    wait_for(lambda: not kubectl.json("get", "replicasets", *ns)["items"],
             "the ReplicaSets to be collected")
    wait_for(lambda: not pods(kubectl, namespace, "app=web"), "the Pods to be collected")


def test_pod_larger_than_any_node_stays_pending(kubectl, namespace):
    ns = ("-n", namespace)
    kubectl("run", "huge", *ns, "--image=registry.k8s.io/pause:3.9", "--restart=Never",
            "--overrides", json.dumps({"spec": {"containers": [{
                "name": "huge", "image": "registry.k8s.io/pause:3.9",
                "resources": {"requests": {"cpu": "64"}}}]}}))

    def failed_scheduling():
        events = kubectl.json("get", "events", *ns, "--field-selector",
                              "involvedObject.name=huge,reason=FailedScheduling")["items"]
        return events[0]["message"] if events else None
    message = wait_for(failed_scheduling, "a FailedScheduling event")
    assert re.match(r"0/\d+ nodes are available: .*\d+ Insufficient cpu", message), message
    pod = kubectl.json("get", "pod", "huge", *ns)
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
    condition = [c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled"][0]
    assert condition["status"] == "False" and condition["reason"] == "Unschedulable"
    assert "FailedScheduling" in kubectl("describe", "pod", "huge", *ns)


def test_endpoints_follow_pod_readiness(kubectl, namespace):
    ns = ("-n", namespace)
    kubectl("apply", *ns, "-f", "-", input=deployment("api", 2, "registry.k8s.io/pause:3.9"))
    kubectl("expose", *ns, "deployment/api", "--port=80", "--target-port=http")
    kubectl("rollout", "status", *ns, "deployment/api", "--timeout=90s", timeout=120)

    def addresses() -> tuple[set, set]:
        subsets = kubectl.json("get", "endpoints", "api", *ns).get("subsets") or []
        ready = {a["ip"] for s in subsets for a in s.get("addresses", [])}
        unready = {a["ip"] for s in subsets for a in s.get("notReadyAddresses", [])}
        return ready, unready
    ips = {p["status"]["podIP"] for p in pods(kubectl, namespace, "app=api")}
    wait_for(lambda: addresses() == (ips, set()), "both pod IPs in the Endpoints")
    subsets = kubectl.json("get", "endpoints", "api", *ns)["subsets"]
    assert subsets[0]["ports"][0]["port"] == 8080      # the named targetPort, resolved

    # One pod turns unready (as its readiness probe would make the kubelet report).
    victim = pods(kubectl, namespace, "app=api")[0]
    kubectl("patch", "pod", victim["metadata"]["name"], *ns, "--subresource=status",
            "--type=merge", "-p", json.dumps({"status": {"conditions": [
                {"type": "Ready", "status": "False"}]}}))
    ip = victim["status"]["podIP"]
    wait_for(lambda: addresses() == (ips - {ip}, {ip}), "the unready pod's IP to move")
    slices = kubectl.json("get", "endpointslices", *ns, "-l",
                          "kubernetes.io/service-name=api")["items"]
    conditions = {e["addresses"][0]: e["conditions"]["ready"]
                  for s in slices for e in s.get("endpoints") or []}
    assert conditions == {address: address != ip for address in ips}


def test_node_heartbeat_loss_moves_pods(kubectl, namespace, hollow):
    ns = ("-n", namespace)
    kubectl("apply", *ns, "-f", "-", input=deployment("spread", 4, "registry.k8s.io/pause:3.9"))
    kubectl("rollout", "status", *ns, "deployment/spread", "--timeout=90s", timeout=120)
    lost = "hollow-b-"
    if not any(p["spec"]["nodeName"].startswith(lost)
               for p in pods(kubectl, namespace, "app=spread")):
        lost = "hollow-a-"      # spread over owners puts some on each group; be sure
    survivor = HOLLOW_GROUPS[1 - HOLLOW_GROUPS.index(lost)]

    # The simulated kubelets of one group stop: no more Lease renewals or status.
    process = hollow[lost]
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)

    def lost_not_ready():
        nodes = [n for n in kubectl.json("get", "nodes")["items"]
                 if n["metadata"]["name"].startswith(lost)]
        return all(any(c["type"] == "Ready" and c["status"] == "Unknown"
                       for c in n["status"]["conditions"]) and
                   any(t["key"] == "node.kubernetes.io/unreachable" and
                       t["effect"] == "NoExecute" for t in n["spec"].get("taints", []))
                   for n in nodes) and nodes
    # node-monitor-grace-period is 40 s upstream and here.
    wait_for(lost_not_ready, f"the {lost}* nodes to turn NotReady (Unknown)", timeout=90)
    assert " NotReady " in kubectl("get", "nodes")

    def moved():
        current = [p for p in pods(kubectl, namespace, "app=spread")
                   if not p["metadata"].get("deletionTimestamp")]
        return len(current) == 4 and all(
            _ready(p) and p["spec"]["nodeName"].startswith(survivor) for p in current)
    wait_for(moved, "the pods to be recreated on the nodes still up",
             timeout=TOLERATION_SECONDS + 60)


def test_namespace_deletion_empties_it(kubectl, hollow):
    name = "e2e-doomed"
    kubectl("create", "namespace", name)
    wait_for(lambda: kubectl("get", "serviceaccount", "default", "-n", name, check=False)
             .startswith("NAME"), "the default ServiceAccount", timeout=30)
    kubectl("create", "configmap", "one", "-n", name, "--from-literal=a=b")
    kubectl("create", "secret", "generic", "two", "-n", name, "--from-literal=a=b")
    kubectl("create", "deployment", "three", "-n", name, "--image=registry.k8s.io/pause:3.9")
    kubectl("delete", "namespace", name, "--timeout=90s", timeout=120)
    assert "NotFound" in kubectl("get", "namespace", name, check=False)
    for kind in ("configmaps", "secrets", "deployments", "replicasets", "pods"):
        assert kubectl("get", kind, "-n", name, "-o", "name").strip() == ""
