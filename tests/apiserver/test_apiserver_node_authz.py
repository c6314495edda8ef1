"""The Node authorizer and NodeRestriction against the real server: a kubelet's identity
(system:node:<name> in system:nodes) reaches only what its pods use and writes only its
own objects."""
from __future__ import annotations

import time
import uuid

import pytest

NODE_LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


@pytest.fixture(scope="module")
def world(cluster):
    """Two nodes, a namespace with pods on n1 and n2 and what they reference."""
    ns = f"nodeauthz-{uuid.uuid4().hex[:6]}"
    n1, n2 = f"n1-{ns}", f"n2-{ns}"
    admin = cluster.request

    def create(path, body):
        answer = admin("POST", path, body)
        assert answer.status == 201, answer.body
        return answer.json()

    create("/api/v1/namespaces", {"metadata": {"name": ns}})
    for name in ("default", "robot", "other"):
        create(f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": name}})
    for name in ("s1", "s2", "s-env"):
        create(f"/api/v1/namespaces/{ns}/secrets", {"metadata": {"name": name},
                                                     "stringData": {"k": "v"}})
    for name in ("cm1", "cm2"):
        create(f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": name}})
    for name in (n1, n2):
        create("/api/v1/nodes", {"metadata": {"name": name,
                                              "labels": {"kubernetes.io/hostname": name}}})
    pods = {}
    pods["a"] = create(f"/api/v1/namespaces/{ns}/pods", {
        "metadata": {"name": "a"},
        "spec": {"nodeName": n1, "serviceAccountName": "robot",
                 "containers": [{"name": "c", "image": "busybox", "env": [
                     {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s-env", "key": "k"}}}]}],
                 "volumes": [{"name": "s", "secret": {"secretName": "s1"}},
                             {"name": "c", "configMap": {"name": "cm1"}}]}})
    pods["b"] = create(f"/api/v1/namespaces/{ns}/pods", {
        "metadata": {"name": "b"},
        "spec": {"nodeName": n2, "serviceAccountName": "other",
                 "containers": [{"name": "c", "image": "busybox"}],
                 "volumes": [{"name": "s", "secret": {"secretName": "s2"}}]}})
    kubelet1 = cluster.client_cert(f"system:node:{n1}", "system:nodes")
    kubelet2 = cluster.client_cert(f"system:node:{n2}", "system:nodes")
    yield {"ns": ns, "n1": n1, "n2": n2, "k1": kubelet1, "k2": kubelet2, "pods": pods}
    admin("DELETE", f"/api/v1/namespaces/{ns}")
    for name in (n1, n2):
        admin("DELETE", f"/api/v1/nodes/{name}")


def _until(call, wanted, timeout=3.0):
    """The graph follows the pods watch cache, a moment behind the write."""
    deadline = time.monotonic() + timeout
    while True:
        answer = call()
        if answer.status == wanted or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def test_node_reads_only_what_its_pods_use(cluster, world):
    ns, k1, k2 = world["ns"], world["k1"], world["k2"]

    def get(path, cert):
        return cluster.request("GET", f"/api/v1/namespaces/{ns}/{path}", cert=cert)
    assert _until(lambda: get("secrets/s1", k1), 200).status == 200
    assert get("secrets/s-env", k1).status == 200
    assert get("configmaps/cm1", k1).status == 200
    denied = get("secrets/s2", k1)
    assert denied.status == 403
    assert denied.json()["message"].endswith(
        f"no relationship found between node '{world['n1']}' and this object")
    assert get("configmaps/cm2", k1).status == 403
    assert _until(lambda: get("secrets/s2", k2), 200).status == 200
    assert get("secrets/s1", k2).status == 403
    assert get("secrets", k1).status == 403                   # no listing
    assert get("secrets?fieldSelector=metadata.name%3Ds1", k1).status == 200
    assert cluster.request("PUT", f"/api/v1/namespaces/{ns}/secrets/s1",
                           {"metadata": {"name": "s1"}}, cert=k1).status == 403
    # Everything a kubelet reads at large is there.
    for path in ("/api/v1/pods", "/api/v1/nodes", "/api/v1/services",
                 f"/api/v1/nodes/{world['n2']}", "/api/v1/namespaces/default/endpoints/kubernetes"):
        assert cluster.request("GET", path, cert=k1).status == 200, path
    assert cluster.request("GET", "/api/v1/namespaces", cert=k1).status == 403


def test_node_tokens_only_for_its_pods(cluster, world):
    ns, k1 = world["ns"], world["k1"]
    pod_a, pod_b = world["pods"]["a"]["metadata"], world["pods"]["b"]["metadata"]

    def token(account, ref=None):
        spec = {"expirationSeconds": 3607}
        if ref is not None:
            spec["boundObjectRef"] = ref
        return cluster.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{account}/token",
                               {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                "spec": spec}, cert=k1)
    ref_a = {"kind": "Pod", "apiVersion": "v1", "name": "a", "uid": pod_a["uid"]}
    assert _until(lambda: token("robot", ref_a), 201).status == 201
    assert token("other", {"kind": "Pod", "apiVersion": "v1", "name": "b",
                           "uid": pod_b["uid"]}).status == 403       # not its pod's account
    unbound = token("robot")
    assert unbound.status == 403 and "not bound to a pod" in unbound.json()["message"]
    no_uid = token("robot", {"kind": "Pod", "apiVersion": "v1", "name": "a"})
    assert no_uid.status == 403 and "without a uid" in no_uid.json()["message"]


def test_node_writes_only_its_own_node(cluster, world):
    n1, n2, k1 = world["n1"], world["n2"], world["k1"]

    def patch(name, body, sub=""):
        return cluster.request("PATCH", f"/api/v1/nodes/{name}{sub}", body, cert=k1,
                               content_type="application/merge-patch+json")
    assert patch(n1, {"metadata": {"labels": {"topology.kubernetes.io/zone": "z1",
                                              "example.com/team": "a"}}}).status == 200
    assert patch(n1, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                 "/status").status == 200
    other = patch(n2, {"metadata": {"labels": {"example.com/x": "y"}}})
    assert other.status == 403
    assert f'node "{n1}" is not allowed to modify node "{n2}"' in other.json()["message"]
    assert patch(n2, {"status": {"phase": "x"}}, "/status").status == 403
    label = patch(n1, {"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}})
    assert label.status == 403
    assert "is not allowed to modify labels: node-role.kubernetes.io/control-plane" in \
        label.json()["message"]
    restricted = patch(n1, {"metadata": {"labels": {"node-restriction.kubernetes.io/a": "b"}}})
    assert restricted.status == 403
    taint = patch(n1, {"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}})
    assert taint.status == 403 and "not allowed to modify taints" in taint.json()["message"]
    assert cluster.request("DELETE", f"/api/v1/nodes/{n2}", cert=k1).status == 403
    # Registering: only itself, only the kubelet's labels.
    k3 = cluster.client_cert("system:node:n3-new", "system:nodes")
    bad = cluster.request("POST", "/api/v1/nodes", {"metadata": {
        "name": "n3-new", "labels": {"node-role.kubernetes.io/master": ""}}}, cert=k3)
    assert bad.status == 403 and "not allowed to set the following labels" in bad.json()["message"]
    assert cluster.request("POST", "/api/v1/nodes", {"metadata": {"name": "n4-other"}},
                           cert=k3).status == 403
    assert cluster.request("POST", "/api/v1/nodes", {"metadata": {
        "name": "n3-new", "labels": {"kubernetes.io/hostname": "n3-new"}}}, cert=k3).status == 201
    cluster.request("DELETE", "/api/v1/nodes/n3-new")


def test_node_leases(cluster, world):
    n1, k1 = world["n1"], world["k1"]

    def lease(name):
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name}, "spec": {"holderIdentity": name}}
    assert cluster.request("POST", NODE_LEASES, lease(n1), cert=k1).status == 201
    renewed = lease(n1)
    renewed["spec"]["leaseDurationSeconds"] = 40
    assert cluster.request("PUT", f"{NODE_LEASES}/{n1}", renewed, cert=k1).status == 200
    assert cluster.request("POST", NODE_LEASES, lease(world["n2"]), cert=k1).status == 403
    assert cluster.request("GET", f"{NODE_LEASES}/{world['n2']}", cert=k1).status == 403
    assert cluster.request("POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases",
                           lease(n1), cert=k1).status == 403


def test_node_pods(cluster, world):
    ns, n1, k1 = world["ns"], world["n1"], world["k1"]
    pods = f"/api/v1/namespaces/{ns}/pods"
    mirror = {"metadata": {"name": f"static-{n1}",
                           "annotations": {"kubernetes.io/config.mirror": "hash"},
                           "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": n1,
                                                "uid": "x", "controller": True}]},
              "spec": {"nodeName": n1, "containers": [{"name": "c", "image": "busybox"}]}}
    created = cluster.request("POST", pods, mirror, cert=k1)
    assert created.status == 201, created.body
    assert "volumes" not in created.json()["spec"]       # no token for a mirror pod
    plain = cluster.request("POST", pods, {"metadata": {"name": "plain"}, "spec": {
        "nodeName": n1, "containers": [{"name": "c", "image": "busybox"}]}}, cert=k1)
    assert plain.status == 403 and "can only create mirror pods" in plain.json()["message"]
    elsewhere = dict(mirror, metadata=dict(mirror["metadata"], name="static-elsewhere",
                                           ownerReferences=[]),
                     spec=dict(mirror["spec"], nodeName=world["n2"]))
    assert cluster.request("POST", pods, elsewhere, cert=k1).status == 403
    secret_ref = dict(mirror, metadata=dict(mirror["metadata"], name="static-secret"),
                      spec=dict(mirror["spec"], volumes=[{"name": "s", "secret":
                                                          {"secretName": "s1"}}]))
    refused = cluster.request("POST", pods, secret_ref, cert=k1)
    assert refused.status == 403 and "reference secrets" in refused.json()["message"]

    def status(name, cert):
        return cluster.request("PATCH", f"{pods}/{name}/status",
                               {"status": {"phase": "Running"}}, cert=cert,
                               content_type="application/merge-patch+json")
    assert status("a", k1).status == 200
    denied = status("b", k1)
    assert denied.status == 403 and "can only update pod status for pods with spec.nodeName " \
        "set to itself" in denied.json()["message"]
    assert cluster.request("PATCH", f"{pods}/a", {"metadata": {"labels": {"x": "y"}}}, cert=k1,
                           content_type="application/merge-patch+json").status == 403
    assert cluster.request("DELETE", f"{pods}/b", cert=k1).status == 403
    evict = cluster.request("POST", f"{pods}/b/eviction",
                            {"apiVersion": "policy/v1", "kind": "Eviction",
                             "metadata": {"name": "b"}}, cert=k1)
    assert evict.status == 403
    assert "can only evict pods with spec.nodeName set to itself" in evict.json()["message"]
    assert cluster.request("DELETE", f"{pods}/static-{n1}?gracePeriodSeconds=0",
                           cert=k1).status == 200
