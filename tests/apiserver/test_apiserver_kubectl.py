"""The real kubectl, every build on this machine, against kube-apiserver."""
from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time

import pytest
import yaml

from tests.e2e.kubectl_versions import kubectl_builds

BUILDS = kubectl_builds()
pytestmark = pytest.mark.skipif(not BUILDS, reason="no kubectl on this machine")


def _ns(kubectl) -> str:
    return "kv-" + kubectl.version.replace(".", "-")


def test_namespaces_and_configmaps(kubectl):
    out = kubectl("get", "ns").stdout
    for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
        assert name in out
    assert out.splitlines()[0].split() == ["NAME", "STATUS", "AGE"]
    ns = _ns(kubectl)
    kubectl("create", "ns", ns)
    doc = yaml.safe_load(kubectl("get", "ns", ns, "-o", "yaml").stdout)
    assert doc["kind"] == "Namespace" and doc["metadata"]["name"] == ns
    assert doc["status"]["phase"] == "Active"
    assert doc["spec"]["finalizers"] == ["kubernetes"]
    assert doc["metadata"]["uid"] and doc["metadata"]["resourceVersion"].isdigit()

    assert "configmap/a created" in kubectl("create", "configmap", "a", "--from-literal=k=v",
                                            "-n", ns).stdout
    rows = kubectl("get", "cm", "-n", ns).stdout.splitlines()
    assert rows[0].split() == ["NAME", "DATA", "AGE"]
    assert rows[1].split()[:2] == ["a", "1"]
    cm = json.loads(kubectl("get", "cm", "a", "-n", ns, "-o", "json").stdout)
    assert cm["data"] == {"k": "v"} and cm["metadata"]["namespace"] == ns

    kubectl("label", "cm", "a", "-n", ns, "tier=web")
    kubectl("annotate", "cm", "a", "-n", ns, "note=hello")
    cm2 = json.loads(kubectl("get", "cm", "a", "-n", ns, "-o", "json").stdout)
    assert cm2["metadata"]["labels"] == {"tier": "web"}
    assert cm2["metadata"]["annotations"]["note"] == "hello"
    assert int(cm2["metadata"]["resourceVersion"]) > int(cm["metadata"]["resourceVersion"])
    assert "a" in kubectl("get", "cm", "-n", ns, "-l", "tier=web").stdout
    assert "No resources found" in kubectl("get", "cm", "-n", ns, "-l", "tier=db").stderr

    assert 'configmap "a" deleted' in kubectl("delete", "cm", "a", "-n", ns).stdout
    result = kubectl("get", "cm", "a", "-n", ns, check=False)
    assert result.returncode != 0 and "NotFound" in result.stderr


def test_create_generators(kubectl):
    """The typed-client writes (protobuf bodies from kubectl 1.32 on)."""
    ns = _ns(kubectl) + "-gen"
    kubectl("create", "ns", ns)
    kubectl("create", "deployment", "web", "--image=nginx:1.27", "--replicas=2", "-n", ns)
    kubectl("create", "service", "clusterip", "web", "--tcp=80:8080", "-n", ns)
    kubectl("create", "secret", "generic", "creds", "--from-literal=user=admin", "-n", ns)
    kubectl("create", "serviceaccount", "robot", "-n", ns)
    kubectl("create", "role", "reader", "--verb=get,list", "--resource=pods", "-n", ns)
    kubectl("create", "rolebinding", "robot-reads", "--role=reader",
            f"--serviceaccount={ns}:robot", "-n", ns)
    deployment = json.loads(kubectl("get", "deployment", "web", "-n", ns, "-o", "json").stdout)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"
    service = json.loads(kubectl("get", "svc", "web", "-n", ns, "-o", "json").stdout)
    assert service["spec"]["ports"][0]["targetPort"] == 8080
    secret = json.loads(kubectl("get", "secret", "creds", "-n", ns, "-o", "json").stdout)
    assert secret["data"] == {"user": "YWRtaW4="}
    # The other generators for kinds this server serves.
    kubectl("create", "pdb", "web-min", "--selector=app=web", "--min-available=1", "-n", ns)
    kubectl("create", "pdb", "web-max", "--selector=app=web", "--max-unavailable=50%",
            "-n", ns)
    kubectl("create", "quota", "small", "--hard=pods=5,requests.cpu=2",
            "--scopes=NotTerminating", "-n", ns)
    kubectl("create", "configmap", "settings", "--from-literal=a=1", "-n", ns)
    kubectl("create", "secret", "docker-registry", "pull", "--docker-server=r.example",
            "--docker-username=u", "--docker-password=p", "-n", ns)
    kubectl("create", "service", "nodeport", "np", "--tcp=81:8081", "-n", ns)
    kubectl("create", "service", "externalname", "ext", "--external-name=db.example", "-n", ns)
    kubectl("create", "job", "once", "--image=busybox", "-n", ns, "--", "true")
    kubectl("create", "cronjob", "nightly", "--image=busybox", "--schedule=0 3 * * *",
            "-n", ns, "--", "true")
    kubectl("create", "job", "now", "--from=cronjob/nightly", "-n", ns)
    kubectl("create", "clusterrole", f"{ns}-viewer", "--verb=get", "--resource=pods")
    kubectl("create", "clusterrolebinding", f"{ns}-viewer", f"--clusterrole={ns}-viewer",
            f"--serviceaccount={ns}:robot")
    pdbs = json.loads(kubectl("get", "pdb", "-n", ns, "-o", "json").stdout)["items"]
    assert {p["metadata"]["name"]: (p["spec"].get("minAvailable"),
                                    p["spec"].get("maxUnavailable")) for p in pdbs} == {
        "web-min": (1, None), "web-max": (None, "50%")}
    assert all(p["spec"]["selector"] == {"matchLabels": {"app": "web"}} for p in pdbs)
    small = json.loads(kubectl("get", "quota", "small", "-n", ns, "-o", "json").stdout)
    assert small["spec"] == {"hard": {"pods": "5", "requests.cpu": "2"},
                             "scopes": ["NotTerminating"]}
    now = json.loads(kubectl("get", "job", "now", "-n", ns, "-o", "json").stdout)
    assert now["metadata"]["ownerReferences"][0]["name"] == "nightly"
    kubectl("delete", "clusterrolebinding,clusterrole", f"{ns}-viewer")
    robot = f"--as=system:serviceaccount:{ns}:robot"
    assert kubectl("auth", "can-i", "list", "pods", "-n", ns, robot).stdout.strip() == "yes"
    denied = kubectl("auth", "can-i", "delete", "pods", "-n", ns, robot, check=False)
    assert denied.stdout.strip() == "no"


def test_errors_as_kubectl_prints_them(kubectl, cluster):
    result = kubectl("get", "cm", "nope", "-n", "default", check=False)
    assert 'configmaps "nope" not found' in result.stderr
    result = kubectl("create", "ns", "default", check=False)
    assert 'namespaces "default" already exists' in result.stderr
    result = kubectl("create", "configmap", "x", "-n", "no-such-namespace", check=False)
    assert 'namespaces "no-such-namespace" not found' in result.stderr
    result = kubectl("delete", "ns", "kube-system", "--wait=false", check=False)
    assert "this namespace may not be deleted" in result.stderr
    # kubectl debug adds an ephemeral container through pods/ephemeralcontainers.
    ns = cluster.new_namespace("debug-", default_service_account=True)
    kubectl("run", "p", "-n", ns, "--image=busybox", "--restart=Never", "--", "sleep", "60")
    result = kubectl("debug", "p", "-n", ns, "--image=busybox", "-c", "dbg", "--", "true",
                     check=False)
    assert result.returncode == 0 and "panic" not in result.stderr, result.stderr
    pod = json.loads(kubectl("get", "pod", "p", "-n", ns, "-o", "json").stdout)
    assert [c["name"] for c in pod["spec"]["ephemeralContainers"]] == ["dbg"]


def test_discovery_commands(kubectl):
    out = kubectl("api-resources").stdout
    assert "namespaces" in out and "configmaps" in out and "clusterroles" in out
    assert "v1" in kubectl("api-versions").stdout.split()
    assert kubectl("auth", "can-i", "create", "deployments").stdout.strip() == "yes"
    version = kubectl("version", "-o", "json").stdout
    assert json.loads(version)["serverVersion"]["minor"] == "33"


def test_get_watch_sees_new_namespace(kubectl, cluster):
    ns = _ns(kubectl) + "-w"
    env = dict(os.environ, HOME=str(cluster.home), KUBECONFIG=str(cluster.kubeconfig))
    proc = subprocess.Popen([kubectl.binary, "get", "ns", "-w"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any("kube-system" in l for l in lines):
            time.sleep(0.05)
        time.sleep(0.3)  # the list is printed; let the watch open
        kubectl("create", "ns", ns)
        while time.monotonic() < deadline and not any(ns in l for l in lines):
            time.sleep(0.05)
        assert any(line.split()[:2] == [ns, "Active"] for line in lines), lines
        assert lines[0].split()[:2] == ["NAME", "STATUS"]
    finally:
        proc.kill()
        proc.wait(timeout=5)


def test_explain_reads_the_openapi_document(kubectl):
    # Older builds fetch /openapi/v2 as protobuf, newer ones /openapi/v3 as JSON.
    out = kubectl("explain", "pod.spec.containers").stdout
    assert "containers <[]Container>" in out
    assert re.search(r"\bimage\s+<string>", out), out
