"""End to end: the real kubectl (every build on the machine) and the official Python client
against the kube-apiserver that the deploy installed on the lab's master.

Everything goes over the lab's private bridge to the master, with the kubeconfigs and PKI
from the deploy's cluster state folder, exactly as an operator would use them.
"""
from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kubectl_versions import Kubectl, kubectl_builds
from labkit import DEPLOY_LAB_MASTER_IP as MASTER_IP
from tests.apiserver.harness import issue_client_cert

pytestmark = pytest.mark.e2e

API = f"https://{MASTER_IP}:6443"

MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.k8s.io/pause:3.9
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 80
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
data:
  greeting: hello
---
apiVersion: v1
kind: Secret
metadata:
  name: web-secret
data:
  # With stringData kubectl reports every re-apply as "configured", as upstream does.
  password: bm90LWluLWV0Y2QtYXMtcGxhaW50ZXh0
"""

SERVER_SIDE = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: applied
data:
  owner: server-side
"""


def _builds() -> list[tuple[str, str]]:
    builds = kubectl_builds()
    versions = {k: v for k, v in builds.items() if k != "default"}
    return sorted(versions.items()) or sorted(builds.items())


@pytest.fixture(scope="module")
def admin_conf(deployed_lab) -> Path:
    return deployed_lab.state_dir / "kubeconfigs" / "admin.conf"


@pytest.fixture(params=_builds(), ids=lambda build: build[0])
def kubectl(request, admin_conf, tmp_path) -> Kubectl:
    if not request.param:
        pytest.skip("no kubectl on PATH")
    return Kubectl(request.param[1], admin_conf, tmp_path)


def _read_line(process: subprocess.Popen, deadline: float) -> str:
    """One line of a watching kubectl's output, or fail once the deadline passes."""
    import selectors
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
            raise AssertionError("kubectl get -w printed nothing in time")
    return process.stdout.readline()


def test_kubectl_workflow(kubectl):
    namespace = "kc-" + re.sub(r"[^0-9a-z]", "-", os.path.basename(kubectl.binary).lower())
    namespace = namespace.replace("kubectl-", "").strip("-")[:40]
    ns = ("-n", namespace)

    listed = kubectl("get", "ns")
    assert "default" in listed and "kube-system" in listed
    if namespace not in kubectl("get", "ns", "-o", "name"):
        assert f"namespace/{namespace} created" in kubectl("create", "ns", namespace)
    resources = kubectl("api-resources")
    assert re.search(r"deployments\s+deploy\s+apps/v1\s+true\s+Deployment", resources)
    assert "image" in kubectl("explain", "pod.spec.containers")

    # Client-side apply: created (or configured on a re-run), then unchanged.
    first = kubectl("apply", *ns, "-f", "-", input=MANIFEST)
    for name in ("deployment.apps/web", "service/web", "configmap/web-config",
                 "secret/web-secret"):
        assert name in first
    again = kubectl("apply", *ns, "-f", "-", input=MANIFEST)
    assert again.count("unchanged") == 4, again

    assert "labeled" in kubectl("label", *ns, "deployment", "web", "tier=front", "--overwrite")
    # kubectl 1.27 itself prints "annotate" (the wording is the client's, not the server's).
    assert "deployment.apps/web annotate" in kubectl("annotate", *ns, "deployment", "web",
                                                     "note=e2e", "--overwrite")
    assert kubectl("get", *ns, "deployment", "web",
                   "-o", "jsonpath={.metadata.annotations.note}") == "e2e"
    assert "scaled" in kubectl("scale", *ns, "deployment", "web", "--replicas=3")
    assert kubectl("get", *ns, "deployment", "web", "-o", "jsonpath={.spec.replicas}") == "3"
    assert "image updated" in kubectl("set", "image", *ns, "deployment/web",
                                      "web=registry.k8s.io/pause:3.10")

    kubectl("patch", *ns, "configmap", "web-config", "--type=merge", "-p", '{"data":{"b":"2"}}')
    kubectl("patch", *ns, "configmap", "web-config", "--type=json",
            "-p", '[{"op":"add","path":"/data/c","value":"3"}]')
    kubectl("patch", *ns, "deployment", "web", "--type=strategic", "-p",
            '{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"A","value":"1"}]}]}}}}')
    deployment = json.loads(kubectl("get", *ns, "deployment", "web", "-o", "json"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.k8s.io/pause:3.10", "merged by name, not replaced"
    assert container["env"] == [{"name": "A", "value": "1"}]
    data = json.loads(kubectl("get", *ns, "configmap", "web-config", "-o", "json"))["data"]
    assert data == {"greeting": "hello", "b": "2", "c": "3"}

    assert "serverside-applied" in kubectl("apply", "--server-side", *ns, "-f", "-",
                                           input=SERVER_SIDE)
    assert "serverside-applied" in kubectl("apply", "--server-side", *ns, "-f", "-",
                                           input=SERVER_SIDE)
    managers = kubectl("get", *ns, "configmap", "applied", "--show-managed-fields",
                       "-o", "jsonpath={.metadata.managedFields[*].manager}")
    assert "kubectl" in managers

    # A watch sees a change made by another client.
    watcher = kubectl.popen("get", *ns, "configmap", "web-config", "-w", "-o",
                            "jsonpath={.metadata.labels.seen}{\"\\n\"}")
    try:
        deadline = time.monotonic() + 30
        _read_line(watcher, deadline)            # the current state
        kubectl("label", *ns, "configmap", "web-config", "seen=yes", "--overwrite")
        assert _read_line(watcher, deadline).strip() == "yes"
    finally:
        watcher.kill()
        watcher.communicate(timeout=10)

    assert kubectl("auth", "can-i", "create", "deployments", *ns).strip() == "yes"
    refused = kubectl("auth", "can-i", "create", "deployments", *ns, "--as", "nobody",
                      check=False)
    assert refused.splitlines()[0].strip() == "no"

    wide = kubectl("get", *ns, "deployment", "-o", "wide")
    assert re.search(r"NAME\s+READY\s+UP-TO-DATE\s+AVAILABLE\s+AGE\s+CONTAINERS\s+IMAGES\s+"
                     r"SELECTOR", wide), wide
    services = kubectl("get", *ns, "service", "web", "-o", "wide")
    assert re.search(r"web\s+ClusterIP\s+10\.\d+\.\d+\.\d+\s+<none>\s+80/TCP", services), services
    described = kubectl("describe", *ns, "deployment", "web")
    assert re.search(r"Name:\s+web", described) and re.search(r"Replicas:\s+3 desired", described)
    assert re.search(r"Image:\s+registry.k8s.io/pause:3.10",
                     kubectl("describe", *ns, "deployment", "web"))

    deleted = kubectl("delete", *ns, "-f", "-", "--wait", input=MANIFEST)
    assert deleted.count("deleted") == 4, deleted
    gone = kubectl("get", *ns, "configmap", "web-config", check=False)
    assert "NotFound" in gone


def test_official_python_client(admin_conf):
    from kubernetes import client, config, watch

    api = client.CoreV1Api(config.new_client_from_config(config_file=str(admin_conf)))
    names = [ns.metadata.name for ns in api.list_namespace().items]
    assert {"default", "kube-system", "kube-public"} <= set(names)

    listed = api.list_namespaced_config_map("default")
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(generate_name="pyclient-"),
                              data={"from": "python"})
    created = api.create_namespaced_config_map("default", body)
    assert created.metadata.uid and created.metadata.name.startswith("pyclient-")
    try:
        events = watch.Watch().stream(api.list_namespaced_config_map, "default",
                                      resource_version=listed.metadata.resource_version,
                                      timeout_seconds=20)
        seen = None
        for event in events:
            if event["object"].metadata.name == created.metadata.name:
                seen = event
                break
        assert seen is not None and seen["type"] == "ADDED"
        assert seen["object"].data == {"from": "python"}
    finally:
        api.delete_namespaced_config_map(created.metadata.name, "default")


def _get(path: str, context: ssl.SSLContext, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(API + path)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=15) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_authentication_and_authorization(deployed_lab, admin_conf, tmp_path):
    pki = deployed_lab.state_dir / "pki"
    anonymous = ssl.create_default_context(cafile=str(pki / "ca.crt"))

    status, body = _get("/api/v1/namespaces", anonymous)
    assert (status, body["kind"], body["reason"]) == (401, "Status", "Unauthorized")

    nobody = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    nobody.load_cert_chain(*issue_client_cert(pki, tmp_path, "nobody"))
    status, body = _get("/api/v1/namespaces/default/pods", nobody)
    assert (status, body["reason"]) == (403, "Forbidden")
    assert 'User "nobody" cannot list resource "pods"' in body["message"]

    kubectl = Kubectl(_builds()[-1][1], admin_conf, tmp_path)
    kubectl("create", "serviceaccount", "robot", check=False)
    kubectl("create", "rolebinding", "robot-view", "--clusterrole=view",
            "--serviceaccount=default:robot", check=False)
    token = kubectl("create", "token", "robot").strip()
    status, body = _get("/api/v1/namespaces/default/pods", anonymous, token)
    assert (status, body["kind"]) == (200, "PodList")
    status, _ = _get("/api/v1/namespaces/kube-system/secrets", anonymous, token)
    assert status == 403, "view in default grants nothing in kube-system"

    header, payload, signature = token.split(".")
    forged_signature = ("A" if signature[0] != "A" else "B") + signature[1:]
    for forged in (f"{header}.{payload}.{forged_signature}", f"{header}.{payload}.",
                   "not-a-token"):
        status, body = _get("/api/v1/namespaces/default/pods", anonymous, forged)
        assert (status, body["reason"]) == (401, "Unauthorized"), forged


def test_secrets_are_encrypted_in_etcd(deployed_lab, admin_conf, tmp_path):
    kubectl = Kubectl(_builds()[-1][1], admin_conf, tmp_path)
    kubectl("delete", "secret", "at-rest", "--ignore-not-found")
    kubectl("create", "secret", "generic", "at-rest", "--from-literal=word=plaintext-canary")
    raw = deployed_lab.ssh("master-1", (
        "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 "
        "--cacert=/etc/kubernetes/pki/etcd/ca.crt "
        "--cert=/etc/kubernetes/pki/apiserver-etcd-client.crt "
        "--key=/etc/kubernetes/pki/apiserver-etcd-client.key "
        "get --print-value-only /registry/secrets/default/at-rest | head -c 40")).stdout
    assert raw.startswith("k8s:enc:aescbc:v1:"), raw
    full = deployed_lab.ssh("master-1", (
        "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 "
        "--cacert=/etc/kubernetes/pki/etcd/ca.crt "
        "--cert=/etc/kubernetes/pki/apiserver-etcd-client.crt "
        "--key=/etc/kubernetes/pki/apiserver-etcd-client.key "
        "get --print-value-only /registry/secrets/default/at-rest | grep -c plaintext-canary"),
        check=False).stdout.strip()
    assert full == "0"
    assert kubectl("get", "secret", "at-rest", "-o", "jsonpath={.data.word}") == \
        "cGxhaW50ZXh0LWNhbmFyeQ=="
