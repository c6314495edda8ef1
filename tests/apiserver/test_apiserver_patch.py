"""PATCH over HTTP and through every real kubectl build: strategic merge patch,
client-side and server-side apply, managedFields."""
from __future__ import annotations

import json
import os

import pytest
import yaml

from tests.e2e.kubectl_versions import kubectl_builds

SMP = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"


@pytest.fixture(scope="module")
def ns(cluster):
    name = "patching"
    cluster.request("POST", "/api/v1/namespaces",
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def deployment(name: str, replicas: int = 2, image: str = "nginx:1.27") -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         "containers": [{"name": "web", "image": image,
                                         "env": [{"name": "A", "value": "1"}]}]}}}}


def managers(obj: dict) -> list[tuple[str, str]]:
    return [(e["manager"], e["operation"]) for e in obj["metadata"].get("managedFields", [])]


# --- HTTP ------------------------------------------------------------------------------------

def test_strategic_merge_patch_over_http(cluster, ns):
    path = f"/apis/apps/v1/namespaces/{ns}/deployments"
    created = cluster.request("POST", path, deployment("smp"),
                              headers={"User-Agent": "robot/1.0 (linux)"})
    assert created.status == 201
    assert managers(created.json()) == [("robot", "Update")]
    answer = cluster.request("PATCH", path + "/smp?fieldManager=tuner", {
        "metadata": {"finalizers": ["x/y"]},
        "spec": {"template": {"spec": {"containers": [
            {"name": "web", "env": [{"name": "B", "value": "2"}]},
            {"name": "side", "image": "busybox"}]}}}}, content_type=SMP)
    assert answer.status == 200, answer.body
    obj = answer.json()
    web, side = obj["spec"]["template"]["spec"]["containers"]
    # Upstream's order: an item only the patch names goes before the server's items.
    assert web["image"] == "nginx:1.27" and [e["name"] for e in web["env"]] == ["B", "A"]
    assert side["name"] == "side" and side["imagePullPolicy"] == "Always"  # defaulted
    assert set(managers(obj)) == {("robot", "Update"), ("tuner", "Update")}
    answer = cluster.request("PATCH", path + "/smp", {"metadata": {"finalizers": None},
                                                      "spec": {"template": {"spec": {
                                                          "containers": [{"name": "side",
                                                                          "$patch": "delete"}]}}}},
                             content_type=SMP)
    obj = answer.json()
    assert [c["name"] for c in obj["spec"]["template"]["spec"]["containers"]] == ["web"]
    assert "finalizers" not in obj["metadata"]
    bad = cluster.request("PATCH", path + "/smp", {"spec": {"template": {"spec": {
        "containers": [{"image": "no-name"}]}}}}, content_type=SMP)
    assert bad.status == 422
    forced = cluster.request("PATCH", path + "/smp?force=true", {}, content_type=SMP)
    assert forced.status == 422
    assert "force: Forbidden: may not be specified for non-apply patch" in \
        forced.json()["message"]


def test_json_patch_may_test_resource_version(cluster, ns):
    path = f"/api/v1/namespaces/{ns}/configmaps"
    rv = cluster.request("POST", path, {"apiVersion": "v1", "kind": "ConfigMap",
                                        "metadata": {"name": "jp"}}).json()["metadata"][
        "resourceVersion"]
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
           {"op": "add", "path": "/data", "value": {"k": "v"}}]
    answer = cluster.request("PATCH", path + "/jp", ops,
                             content_type="application/json-patch+json")
    assert answer.status == 200 and answer.json()["data"] == {"k": "v"}
    stale = cluster.request("PATCH", path + "/jp", ops,
                            content_type="application/json-patch+json")
    assert stale.status == 422


def test_server_side_apply_over_http(cluster, ns):
    path = f"/apis/apps/v1/namespaces/{ns}/deployments"
    config = yaml.safe_dump(deployment("ssa")).encode()
    missing = cluster.request("PATCH", path + "/ssa", config, content_type=APPLY)
    assert missing.status == 422
    assert missing.json()["message"] == ('PatchOptions.meta.k8s.io "" is invalid: '
                                         "fieldManager: Required value: is required for "
                                         "apply patch")
    created = cluster.request("PATCH", path + "/ssa?fieldManager=ci", config,
                              content_type=APPLY)
    assert created.status == 201, created.body
    obj = created.json()
    assert managers(obj) == [("ci", "Apply")]
    entry = obj["metadata"]["managedFields"][0]
    assert entry["fieldsType"] == "FieldsV1" and entry["apiVersion"] == "apps/v1"
    assert "f:replicas" in entry["fieldsV1"]["f:spec"]
    assert obj["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"]

    again = cluster.request("PATCH", path + "/ssa?fieldManager=ci", config,
                            content_type=APPLY)
    assert again.status == 200
    assert again.json()["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]

    scaled = cluster.request("PATCH", path + "/ssa?fieldManager=scaler",
                             {"spec": {"replicas": 5}},
                             content_type="application/merge-patch+json").json()
    assert ("scaler", "Update") in managers(scaled)
    conflict = cluster.request("PATCH", path + "/ssa?fieldManager=ci",
                               yaml.safe_dump(deployment("ssa", replicas=3)).encode(),
                               content_type=APPLY)
    assert conflict.status == 409
    status = conflict.json()
    assert status["reason"] == "Conflict"
    assert status["message"] == ('Apply failed with 1 conflict: conflict with "scaler" using '
                                 "apps/v1: .spec.replicas")
    assert status["details"]["causes"] == [{"reason": "FieldManagerConflict",
                                            "message": 'conflict with "scaler" using apps/v1',
                                            "field": ".spec.replicas"}]
    forced = cluster.request("PATCH", path + "/ssa?fieldManager=ci&force=true",
                             yaml.safe_dump(deployment("ssa", replicas=3)).encode(),
                             content_type=APPLY)
    assert forced.status == 200 and forced.json()["spec"]["replicas"] == 3
    assert ("scaler", "Update") not in managers(forced.json())

    # A field dropped from the configuration and owned by nobody else goes away.
    smaller = deployment("ssa", replicas=3)
    del smaller["metadata"]["labels"]
    pruned = cluster.request("PATCH", path + "/ssa?fieldManager=ci",
                             json.dumps(smaller).encode(), content_type=APPLY).json()
    assert "labels" not in pruned["metadata"]

    wrong = cluster.request("PATCH", path + "/ssa?fieldManager=ci",
                            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\n",
                            content_type=APPLY)
    assert wrong.status == 400
    bad_yaml = cluster.request("PATCH", path + "/ssa?fieldManager=ci", b"a: [b",
                               content_type=APPLY)
    assert bad_yaml.status == 400


# --- kubectl ---------------------------------------------------------------------------------

def _unique_builds() -> dict[str, str]:
    seen: dict[str, str] = {}
    for version, binary in sorted(kubectl_builds().items()):
        real = os.path.realpath(binary)
        if real not in seen.values():
            seen[version] = real
    return seen


BUILDS = _unique_builds()

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
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 80
        env:
        - {name: A, value: "1"}
        - {name: B, value: "2"}
      volumes:
      - name: cache
        emptyDir: {}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
data:
  mode: fast
---
apiVersion: v1
kind: Secret
metadata:
  name: web-secret
data:
  password: aHVudGVyMg==
"""
CHANGED = MANIFEST.replace("replicas: 2", "replicas: 3").replace("mode: fast", "mode: slow")


@pytest.fixture(params=sorted(BUILDS), ids=lambda v: f"kubectl-{v}")
def kubectl(request, cluster, tmp_path):
    binary = BUILDS[request.param]

    def run(*args, **kwargs):
        return cluster.kubectl(*args, binary=binary, **kwargs)
    run.ns = "ap-" + request.param.replace(".", "-")
    run.manifest = tmp_path / "manifest.yaml"
    run.manifest.write_text(MANIFEST)
    run.changed = tmp_path / "changed.yaml"
    run.changed.write_text(CHANGED)
    return run


def _versions(kubectl) -> dict[str, str]:
    out = kubectl("get", "deployment,service,configmap,secret", "-n", kubectl.ns, "-o", "json")
    return {f"{i['kind']}/{i['metadata']['name']}": i["metadata"]["resourceVersion"]
            for i in json.loads(out.stdout)["items"]}


def _lines(result) -> list[str]:
    return sorted(result.stdout.split("\n")[:-1])


@pytest.mark.skipif(not BUILDS, reason="no kubectl on this machine")
def test_kubectl_apply_and_patch(kubectl):
    ns = kubectl.ns
    kubectl("create", "namespace", ns)
    apply = ("apply", "-n", ns, "-f")
    assert _lines(kubectl(*apply, str(kubectl.manifest))) == [
        "configmap/web-config created", "deployment.apps/web created",
        "secret/web-secret created", "service/web created"]
    before = _versions(kubectl)
    assert _lines(kubectl(*apply, str(kubectl.manifest))) == [
        "configmap/web-config unchanged", "deployment.apps/web unchanged",
        "secret/web-secret unchanged", "service/web unchanged"]
    assert _versions(kubectl) == before
    assert _lines(kubectl(*apply, str(kubectl.changed))) == [
        "configmap/web-config configured", "deployment.apps/web configured",
        "secret/web-secret unchanged", "service/web unchanged"]

    # Server-side: the client-side applier owns replicas=3, so 2 conflicts.
    ssa = ("apply", "--server-side", "-n", ns, "-f")
    conflict = kubectl(*ssa, str(kubectl.manifest), check=False)
    assert conflict.returncode != 0
    assert 'conflict with "kubectl-client-side-apply" using apps/v1: .spec.replicas' in \
        conflict.stderr
    forced = kubectl("apply", "--server-side", "--force-conflicts", "-n", ns, "-f",
                     str(kubectl.manifest))
    assert "deployment.apps/web serverside-applied" in forced.stdout
    before = _versions(kubectl)
    assert "deployment.apps/web serverside-applied" in kubectl(*ssa, str(kubectl.manifest)).stdout
    assert _versions(kubectl) == before
    dep = json.loads(kubectl("get", "deployment", "web", "-n", ns, "-o", "json",
                             "--show-managed-fields").stdout)
    assert dep["spec"]["replicas"] == 2
    assert ("kubectl", "Apply") in managers(dep)
    # Hidden by default (a client-side choice of kubectl).
    assert "managedFields" not in kubectl("get", "deployment", "web", "-n", ns, "-o",
                                          "yaml").stdout

    kubectl("set", "image", "deployment/web", "web=nginx:1.28", "-n", ns)
    kubectl("scale", "deployment/web", "--replicas=4", "-n", ns)
    kubectl("patch", "deployment", "web", "-n", ns, "--type=strategic", "-p",
            '{"spec":{"template":{"spec":{"containers":[{"name":"web","env":'
            '[{"name":"C","value":"3"}]}]}}}}')
    kubectl("patch", "deployment", "web", "-n", ns, "--type=merge", "-p",
            '{"metadata":{"labels":{"tier":"front"}}}')
    kubectl("patch", "deployment", "web", "-n", ns, "--type=json", "-p",
            '[{"op":"replace","path":"/spec/strategy/rollingUpdate/maxSurge","value":2}]')
    kubectl("label", "deployment", "web", "-n", ns, "app=other", "--overwrite")
    kubectl("annotate", "deployment", "web", "-n", ns, "note=b", "--overwrite")
    dep = json.loads(kubectl("get", "deployment", "web", "-n", ns, "-o", "json",
                             "--show-managed-fields").stdout)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "nginx:1.28"
    assert [e["name"] for e in container["env"]] == ["C", "A", "B"]   # upstream order
    assert dep["spec"]["replicas"] == 4
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 2
    assert dep["metadata"]["labels"] == {"app": "other", "tier": "front"}
    assert dep["metadata"]["annotations"]["note"] == "b"
    names = {m for m, _ in managers(dep)}
    assert {"kubectl-set", "kubectl-patch", "kubectl-label", "kubectl-annotate"} <= names


def test_empty_metadata_lists_are_not_stored(cluster):
    """ObjectMeta's lists and maps are omitempty upstream: removing the last owner
    reference or finalizer leaves no empty field behind."""
    ns = cluster.new_namespace("omit-")
    path = f"/api/v1/namespaces/{ns}/configmaps"
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "finalizers": ["example.com/hold"], "labels": {},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
                                              "name": "owner", "uid": "1234"}]}}
    created = cluster.request("POST", path, body)
    assert created.status == 201, created.body
    assert "labels" not in created.json()["metadata"]
    patched = cluster.request("PATCH", path + "/c", {"metadata": {
        "ownerReferences": [{"$patch": "delete", "uid": "1234"}],
        "finalizers": None}}, content_type="application/strategic-merge-patch+json")
    assert patched.status == 200, patched.body
    meta = patched.json()["metadata"]
    assert "ownerReferences" not in meta and "finalizers" not in meta
    assert cluster.request("DELETE", path + "/c").status == 200
