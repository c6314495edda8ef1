"""End to end: real nodes. The deployed lab's kubelets run pods on containerd with the
standard CNI plugins; kube-proxy programs Services; the DNS add-on on the master answers
for them. Everything is driven with the real kubectl, as an operator would.

The tests run in file order and share the `web` Deployment; the node-failure test stops a
kubelet (and starts it again), so it comes last.
"""
from __future__ import annotations

import base64
import json
import re
import time
import urllib.request

import pytest

from kubectl_versions import Kubectl, kubectl_builds, newest_kubectl

pytestmark = pytest.mark.e2e

NAMESPACE = "nodes-e2e"
WORKERS = ("worker-1", "worker-2")
MASTER = "master-1"
PYTHON_IMAGE = "kubesmith.local/python:latest"
BUSYBOX_IMAGE = "kubesmith.local/busybox:latest"
# Pods leave a lost node after this long (instead of the default 300 s).
TOLERATION_SECONDS = 10


def wait_for(check, what: str, timeout: float = 90.0, interval: float = 1.0):
    """check() until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError as exc:  # a kubectl call that failed this time round
            last = str(exc)[-500:]
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def lab(deployed_lab):
    return deployed_lab


@pytest.fixture(scope="module")
def kubectl(lab, tmp_path_factory) -> Kubectl:
    binary = newest_kubectl()
    if not binary:
        pytest.skip("no kubectl on PATH")
    kubectl = Kubectl(binary, lab.state_dir / "kubeconfigs" / "admin.conf",
                      tmp_path_factory.mktemp("kubectl-home"))
    kubectl("create", "namespace", NAMESPACE, check=False)
    wait_for(lambda: kubectl.json("get", "serviceaccount", "default", "-n", NAMESPACE),
             "the namespace's default ServiceAccount", timeout=60)
    yield kubectl
    kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def pods(kubectl: Kubectl, selector: str) -> list[dict]:
    return kubectl.json("get", "pods", "-n", NAMESPACE, "-l", selector)["items"]


def running_and_ready(pod: dict) -> bool:
    status = pod.get("status", {})
    return status.get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def apply(kubectl: Kubectl, *objects: dict) -> None:
    kubectl("apply", "-n", NAMESPACE, "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def pod_on(node: str, name: str, command: str, **spec) -> dict:
    """A busybox pod pinned to `node`, running `command` in sh."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 5,
                     "containers": [{"name": "main", "image": BUSYBOX_IMAGE,
                                     "imagePullPolicy": "IfNotPresent",
                                     "command": ["sh", "-c", command]}], **spec}}


def web_objects() -> list[dict]:
    tolerations = [{"key": f"node.kubernetes.io/{key}", "operator": "Exists",
                    "effect": "NoExecute", "tolerationSeconds": TOLERATION_SECONDS}
                   for key in ("not-ready", "unreachable")]
    serve = "mkdir -p /srv && hostname > /srv/index.html && cd /srv && " \
            "exec python3 -m http.server 8080"
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {
                     "metadata": {"labels": {"app": "web"}},
                     "spec": {"tolerations": tolerations,
                              "terminationGracePeriodSeconds": 5,
                              "containers": [{
                                  "name": "web", "image": PYTHON_IMAGE,
                                  "imagePullPolicy": "IfNotPresent",
                                  "command": ["sh", "-c", serve],
                                  "ports": [{"containerPort": 8080, "name": "http"}],
                                  "readinessProbe": {"httpGet": {"path": "/", "port": "http"},
                                                     "periodSeconds": 2}}]}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"type": "NodePort", "selector": {"app": "web"},
                        "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    return [deployment, service]


def test_nodes_are_ready(lab, kubectl):
    def all_ready():
        nodes = kubectl.json("get", "nodes")["items"]
        # Ready, and the node lifecycle controller has lifted its not-ready taint (until
        # then the scheduler passes the node by).
        ready = {n["metadata"]["name"] for n in nodes if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", [])) and not any(
            t["key"].startswith("node.kubernetes.io/") for t in n["spec"].get("taints", []))}
        return {MASTER, *WORKERS} <= ready and nodes
    nodes = {n["metadata"]["name"]: n for n in wait_for(all_ready, "every node Ready", 120)}
    lab.timings.setdefault("lab up to nodes Ready", time.monotonic() - lab.started)
    master = nodes[MASTER]
    assert {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"} in [
        {k: t[k] for k in ("key", "effect")} for t in master["spec"].get("taints", [])]
    assert "node-role.kubernetes.io/control-plane" in master["metadata"]["labels"]
    for name in WORKERS:
        node = nodes[name]
        assert node["spec"]["podCIDR"]
        labels = node["metadata"]["labels"]
        assert labels["kubernetes.io/hostname"] == name and labels["kubernetes.io/os"] == "linux"
        assert int(node["status"]["capacity"]["cpu"]) >= 1
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    wide = kubectl("get", "nodes", "-o", "wide")
    assert "Ready" in wide and "containerd://" in wide


def test_web_deployment_spreads_over_the_workers(kubectl):
    apply(kubectl, *web_objects())
    kubectl("rollout", "status", "-n", NAMESPACE, "deployment/web", "--timeout=180s",
            timeout=200)
    web = wait_for(lambda: (lambda p: p if len(p) == 3 and all(map(running_and_ready, p))
                            else None)(pods(kubectl, "app=web")), "3 web pods Ready")
    assert {p["spec"]["nodeName"] for p in web} == set(WORKERS)
    ips = [p["status"]["podIP"] for p in web]
    assert len(set(ips)) == 3
    table = kubectl("get", "pods", "-n", NAMESPACE, "-l", "app=web", "-o", "wide")
    assert table.count("Running") == 3 and all(ip in table for ip in ips)


@pytest.fixture(scope="module")
def client_pod(kubectl):
    """A pod on worker-1 to run requests from inside the pod network (the python image:
    its glibc resolver applies the search list, as a pod's programs would)."""
    pod = pod_on("worker-1", "client", "trap 'exit 0' TERM; sleep 3600 & wait")
    pod["spec"]["containers"][0]["image"] = PYTHON_IMAGE
    apply(kubectl, pod)
    wait_for(lambda: running_and_ready(kubectl.json("get", "pod", "client", "-n", NAMESPACE)),
             "the client pod Running", timeout=120)
    return "client"


def exec_in(kubectl: Kubectl, pod: str, *command: str, timeout: float = 30) -> str:
    return kubectl("exec", "-n", NAMESPACE, pod, "--", *command, timeout=timeout)


def fetch(kubectl: Kubectl, pod: str, url: str) -> str:
    """The body of an HTTP GET made inside `pod` (Python's client: bounded in time)."""
    return exec_in(kubectl, pod, "python3", "-c",
                   "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                   f"{url!r}, timeout=5).read().decode())")


def test_pod_to_pod_http_across_nodes(kubectl, client_pod):
    web = pods(kubectl, "app=web")
    remote = [p for p in web if p["spec"]["nodeName"] == "worker-2"]
    assert remote, "no web pod on worker-2"
    for pod in remote:
        body = fetch(kubectl, client_pod, f"http://{pod['status']['podIP']}:8080/")
        assert body.strip() == pod["metadata"]["name"]


def test_cluster_ip_and_node_port_reach_every_endpoint(lab, kubectl, client_pod):
    service = kubectl.json("get", "service", "web", "-n", NAMESPACE)
    cluster_ip = service["spec"]["clusterIP"]
    node_port = service["spec"]["ports"][0]["nodePort"]
    names = {p["metadata"]["name"] for p in pods(kubectl, "app=web")}

    seen: set[str] = set()
    for _ in range(40):  # random balancing: 40 tries miss one of 3 pods with p ~ 1e-7
        seen.add(fetch(kubectl, client_pod, f"http://{cluster_ip}/").strip())
        if seen == names:
            break
    assert seen == names

    # From a node (not a pod) too: the ClusterIP works in the host's own network.
    from_node = lab.ssh(MASTER, f"wget -qO- -T 5 http://{cluster_ip}/ 2>/dev/null || "
                                f"python3 -c \"import urllib.request; print(urllib.request."
                                f"urlopen('http://{cluster_ip}/', timeout=5).read().decode())\"")
    assert from_node.stdout.strip() in names

    # The NodePort from this machine (the lab's bridge), on each worker's address.
    state = json.loads((lab.lab_dir / "state.json").read_text())
    addresses = {h["name"]: h["address"] for h in state["hosts"]}
    seen = set()
    for attempt in range(40):
        address = addresses[WORKERS[attempt % 2]]
        with urllib.request.urlopen(f"http://{address}:{node_port}/", timeout=5) as reply:
            seen.add(reply.read().decode().strip())
        if seen == names:
            break
    assert seen == names


def resolve(kubectl: Kubectl, pod: str, name: str) -> str:
    return exec_in(kubectl, pod, "python3", "-c",
                   f"import socket; print(socket.gethostbyname({name!r}))").strip()


def test_pods_resolve_service_names(kubectl, client_pod):
    service_ip = kubectl.json("get", "service", "web", "-n", NAMESPACE)["spec"]["clusterIP"]
    assert resolve(kubectl, client_pod, f"web.{NAMESPACE}.svc.cluster.local") == service_ip
    assert resolve(kubectl, client_pod, "web") == service_ip      # through the search list
    kubernetes_ip = kubectl.json("get", "service", "kubernetes", "-n", "default")["spec"][
        "clusterIP"]
    assert resolve(kubectl, client_pod, "kubernetes.default") == kubernetes_ip
    resolv = exec_in(kubectl, client_pod, "cat", "/etc/resolv.conf")
    assert f"search {NAMESPACE}.svc.cluster.local svc.cluster.local cluster.local" in resolv
    assert "ndots:5" in resolv


def test_logs_and_follow(kubectl, client_pod):
    pod = pods(kubectl, "app=web")[0]
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    fetch(kubectl, client_pod, f"http://{ip}:8080/?logs-marker")
    wait_for(lambda: "logs-marker" in kubectl("logs", "-n", NAMESPACE, name),
             "the request in kubectl logs", timeout=30)
    follower = kubectl.popen("logs", "-f", "-n", NAMESPACE, name, "--tail=1")
    try:
        time.sleep(2)
        fetch(kubectl, client_pod, f"http://{ip}:8080/?followed")
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline:
            line = follower.stdout.readline()
            lines.append(line)
            if "followed" in line:
                break
        assert any("followed" in line for line in lines), lines
    finally:
        follower.kill()
        follower.communicate(timeout=10)


@pytest.mark.parametrize("version", [v for v in kubectl_builds() if v != "default"])
def test_exec_hostname(lab, kubectl, version, tmp_path):
    """WebSocket (v5.channel.k8s.io) from kubectl 1.30 on, SPDY from the older builds."""
    other = Kubectl(kubectl_builds()[version], lab.state_dir / "kubeconfigs" / "admin.conf",
                    tmp_path)
    pod = pods(kubectl, "app=web")[0]["metadata"]["name"]
    assert other("exec", "-n", NAMESPACE, pod, "--", "hostname").strip() == pod
    # A failing command's exit code comes back.
    result = other("exec", "-n", NAMESPACE, pod, "--", "sh", "-c", "exit 3", check=False)
    assert "exit code 3" in result


def test_failing_liveness_probe_restarts_the_container(kubectl):
    # Healthy for the first seconds, then the probe's file is gone.
    pod = pod_on("worker-2", "liveness",
                 "touch /tmp/healthy; sleep 6; rm /tmp/healthy; sleep 3600",
                 )
    pod["spec"]["containers"][0]["livenessProbe"] = {
        "exec": {"command": ["cat", "/tmp/healthy"]},
        "periodSeconds": 2, "failureThreshold": 2}
    apply(kubectl, pod)

    def restarted():
        status = kubectl.json("get", "pod", "liveness", "-n", NAMESPACE).get("status", {})
        counts = [c.get("restartCount", 0) for c in status.get("containerStatuses", [])]
        return counts and counts[0] >= 1
    wait_for(restarted, "a restart after the liveness probe failed", timeout=120)
    row = kubectl("get", "pod", "liveness", "-n", NAMESPACE).splitlines()[1].split()
    assert int(row[3]) >= 1  # NAME READY STATUS RESTARTS AGE
    events = kubectl("get", "events", "-n", NAMESPACE,
                     "--field-selector", "involvedObject.name=liveness")
    assert "Unhealthy" in events and "Liveness probe failed" in events


def test_configmap_and_secret_as_files_and_env(kubectl):
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
              "data": {"greeting": "hello from a configmap"}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "credentials"},
              "data": {"password": base64.b64encode(b"s3cr3t-value").decode()}}
    pod = pod_on("worker-1", "consumer",
                 "cat /config/greeting; echo; cat /secret/password; echo; "
                 "echo \"env:$GREETING:$PASSWORD\"; sleep 3600")
    pod["spec"]["volumes"] = [{"name": "config", "configMap": {"name": "settings"}},
                              {"name": "secret", "secret": {"secretName": "credentials"}}]
    container = pod["spec"]["containers"][0]
    container["volumeMounts"] = [{"name": "config", "mountPath": "/config"},
                                 {"name": "secret", "mountPath": "/secret"}]
    container["env"] = [
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings",
                                                               "key": "greeting"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "credentials",
                                                            "key": "password"}}}]
    apply(kubectl, config, secret, pod)
    logs = wait_for(lambda: (lambda text: text if "env:" in text else None)(
        kubectl("logs", "-n", NAMESPACE, "consumer")), "the consumer's output", timeout=120)
    assert logs.splitlines()[:3] == ["hello from a configmap", "s3cr3t-value",
                                     "env:hello from a configmap:s3cr3t-value"]


def test_delete_runs_prestop_within_the_grace_period(lab, kubectl):
    marker = f"/var/tmp/prestop-{int(time.time())}"
    # The main process ignores SIGTERM, so only the grace period's SIGKILL ends it.
    pod = pod_on("worker-1", "stopper", "trap '' TERM; while :; do sleep 1; done",
                 terminationGracePeriodSeconds=8)
    pod["spec"]["volumes"] = [{"name": "host", "hostPath": {"path": "/var/tmp"}}]
    container = pod["spec"]["containers"][0]
    container["volumeMounts"] = [{"name": "host", "mountPath": "/host"}]
    container["lifecycle"] = {"preStop": {"exec": {"command": [
        "sh", "-c", f"echo stopped > /host/{marker.rsplit('/', 1)[1]}"]}}}
    apply(kubectl, pod)
    wait_for(lambda: running_and_ready(kubectl.json("get", "pod", "stopper", "-n", NAMESPACE)),
             "the stopper pod Running", timeout=120)
    start = time.monotonic()
    kubectl("delete", "pod", "stopper", "-n", NAMESPACE, "--wait=true", timeout=60)
    took = time.monotonic() - start
    assert took < 8 + 10, f"deletion took {took:.1f} s for an 8 s grace period"
    assert lab.ssh("worker-1", f"cat {marker}").stdout.strip() == "stopped"
    lab.ssh("worker-1", f"rm -f {marker}")
    gone = lab.ssh("worker-1", "ctr -n k8s.io containers ls -q", check=False).stdout
    assert all(len(line) == 64 for line in gone.split())  # only other pods' containers remain


def test_deployment_rollout_and_undo_on_real_nodes(kubectl):
    """Scale, a rolling update within maxUnavailable, undo and cascading delete, with
    containers really started and stopped (readiness from an exec probe)."""
    ns = ("-n", NAMESPACE)
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "roll"},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "roll"}},
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                 "template": {"metadata": {"labels": {"app": "roll"}}, "spec": {
                     "terminationGracePeriodSeconds": 2,
                     "containers": [{
                         "name": "app", "image": BUSYBOX_IMAGE,
                         "command": ["sh", "-c", "touch /tmp/ready; "
                                     "trap 'exit 0' TERM; sleep 3600 & wait"],
                         "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]},
                                            "periodSeconds": 1}}]}}}}
    apply(kubectl, deployment)
    kubectl("rollout", "status", *ns, "deployment/roll", "--timeout=120s", timeout=150)
    kubectl("scale", *ns, "deployment/roll", "--replicas=6")
    kubectl("rollout", "status", *ns, "deployment/roll", "--timeout=120s", timeout=150)
    kubectl("scale", *ns, "deployment/roll", "--replicas=4")
    wait_for(lambda: len([p for p in pods(kubectl, "app=roll")
                          if not p["metadata"].get("deletionTimestamp")]) == 4,
             "4 pods after scaling down")

    kubectl("set", "image", *ns, "deployment/roll", f"app={PYTHON_IMAGE}")
    fewest_ready = 4
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        current = [p for p in pods(kubectl, "app=roll")
                   if not p["metadata"].get("deletionTimestamp")]
        fewest_ready = min(fewest_ready, sum(map(running_and_ready, current)))
        images = {p["spec"]["containers"][0]["image"] for p in current}
        if images == {PYTHON_IMAGE} and len(current) == 4 and all(
                map(running_and_ready, current)):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the new image did not roll out in 180 s")
    assert fewest_ready >= 3, f"only {fewest_ready} ready pods during the rollout"
    assert "2" in kubectl("rollout", "history", *ns, "deployment/roll")

    kubectl("rollout", "undo", *ns, "deployment/roll")
    kubectl("rollout", "status", *ns, "deployment/roll", "--timeout=180s", timeout=200)
    assert {p["spec"]["containers"][0]["image"] for p in pods(kubectl, "app=roll")
            if not p["metadata"].get("deletionTimestamp")} == {BUSYBOX_IMAGE}

    kubectl("delete", *ns, "deployment/roll")
    wait_for(lambda: not kubectl.json("get", "replicasets", *ns, "-l", "app=roll")["items"]
             and not pods(kubectl, "app=roll"), "the ReplicaSets and Pods collected", 120)


def test_pod_asking_more_cpu_than_any_node_stays_pending(kubectl):
    pod = pod_on("", "huge", "sleep 3600")
    del pod["spec"]["nodeName"]
    pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "64"}}
    apply(kubectl, pod)

    def failed_scheduling():
        events = kubectl.json("get", "events", "-n", NAMESPACE, "--field-selector",
                              "involvedObject.name=huge,reason=FailedScheduling")["items"]
        return events[0]["message"] if events else None
    message = wait_for(failed_scheduling, "a FailedScheduling event")
    # The master is passed by for its taint, the workers for their cpu.
    assert message.startswith("0/3 nodes are available: "), message
    assert "1 node(s) had untolerated taint" in message and "2 Insufficient cpu" in message
    pod = kubectl.json("get", "pod", "huge", "-n", NAMESPACE)
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
    condition = [c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled"][0]
    assert condition["status"] == "False" and condition["reason"] == "Unschedulable"
    kubectl("delete", "pod", "huge", "-n", NAMESPACE, "--wait=false")


def test_endpoints_follow_the_kubelets_readiness_probes(kubectl):
    pod = pod_on("worker-1", "flip", "touch /tmp/ready; trap 'exit 0' TERM; "
                                     "sleep 3600 & wait")
    pod["spec"]["containers"][0]["readinessProbe"] = {
        "exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1, "failureThreshold": 1}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "flip"},
               "spec": {"selector": {"app": "flip"}, "ports": [{"port": 80}]}}
    apply(kubectl, pod, service)

    def addresses() -> tuple[set, set]:
        subsets = kubectl.json("get", "endpoints", "flip", "-n", NAMESPACE).get("subsets") or []
        return ({a["ip"] for s in subsets for a in s.get("addresses", [])},
                {a["ip"] for s in subsets for a in s.get("notReadyAddresses", [])})
    ip = wait_for(lambda: kubectl.json("get", "pod", "flip", "-n", NAMESPACE)
                  .get("status", {}).get("podIP"), "the pod's IP", timeout=120)
    wait_for(lambda: addresses() == ({ip}, set()), "the pod in the Endpoints' addresses")
    exec_in(kubectl, "flip", "rm", "/tmp/ready")
    wait_for(lambda: addresses() == (set(), {ip}), "the pod moved to notReadyAddresses", 60)
    exec_in(kubectl, "flip", "touch", "/tmp/ready")
    wait_for(lambda: addresses() == ({ip}, set()), "the pod back in the addresses", 60)


def test_namespace_deletion_stops_and_removes_everything_in_it(kubectl):
    doomed = f"{NAMESPACE}-doomed"
    kubectl("create", "namespace", doomed)
    wait_for(lambda: kubectl.json("get", "serviceaccount", "default", "-n", doomed),
             "the namespace's default ServiceAccount", timeout=60)
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                  "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "d"}},
                           "template": {"metadata": {"labels": {"app": "d"}},
                                        "spec": {"terminationGracePeriodSeconds": 2,
                                                 "containers": [{
                                                     "name": "main", "image": BUSYBOX_IMAGE,
                                                     "imagePullPolicy": "IfNotPresent",
                                                     "command": ["sleep", "3600"]}]}}}}
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
              "data": {"k": "v"}}
    kubectl("apply", "-n", doomed, "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List",
                              "items": [deployment, config]}))
    wait_for(lambda: (lambda p: len(p) == 2 and all(map(running_and_ready, p)))(
        kubectl.json("get", "pods", "-n", doomed)["items"]), "2 pods Running", timeout=120)

    kubectl("delete", "namespace", doomed, "--timeout=150s", timeout=180)
    gone = kubectl("get", "namespace", doomed, check=False)
    assert "NotFound" in gone or "not found" in gone, gone
    assert kubectl.json("get", "pods", "-n", doomed)["items"] == []


def test_stopped_kubelet_makes_node_not_ready_and_pods_move(lab, kubectl):
    lab.ssh("worker-2", "supervisorctl stop kubelet")
    try:
        def not_ready():
            node = kubectl.json("get", "node", "worker-2")
            return any(c["type"] == "Ready" and c["status"] != "True"
                       for c in node["status"].get("conditions", []))
        wait_for(not_ready, "worker-2 NotReady", timeout=120)

        def all_on_worker_1():
            web = pods(kubectl, "app=web")
            live = [p for p in web if not p["metadata"].get("deletionTimestamp")]
            return len(live) == 3 and all(
                p["spec"].get("nodeName") == "worker-1" and running_and_ready(p) for p in live)
        wait_for(all_on_worker_1, "the web pods back on worker-1", timeout=180)
    finally:
        lab.ssh("worker-2", "supervisorctl start kubelet", check=False)
    wait_for(lambda: any(c["type"] == "Ready" and c["status"] == "True" for c in kubectl.json(
        "get", "node", "worker-2")["status"]["conditions"]), "worker-2 Ready again", 120)
    assert re.search(r"worker-2\s+Ready", kubectl("get", "nodes"))
