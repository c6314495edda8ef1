"""LimitRanger and ResourceQuota admission, with the server's own quota accounting."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

PODS = "/api/v1/namespaces/{ns}/pods"


@pytest.fixture
def ns(cluster):
    return cluster.new_namespace("q-", default_service_account=True)


def pod(name: str, **resources) -> dict:
    container = {"name": "app", "image": "busybox"}
    if resources:
        container["resources"] = resources
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [container]}}


def post(cluster, ns, plural, body):
    return cluster.request("POST", f"/api/v1/namespaces/{ns}/{plural}", body)


def quota(name: str, **hard) -> dict:
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name},
            "spec": {"hard": hard}}


def wait_used(cluster, ns, name, key, value, timeout=10.0):
    deadline = time.monotonic() + timeout
    used = None
    while time.monotonic() < deadline:
        body = cluster.request("GET", f"/api/v1/namespaces/{ns}/resourcequotas/{name}").json()
        used = (body.get("status") or {}).get("used", {}).get(key)
        if used == value:
            return
        time.sleep(0.1)
    raise AssertionError(f"{key} used is {used}, wanted {value}")


def test_limit_range_defaults_and_bounds(cluster, ns):
    limits = {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "lr"},
              "spec": {"limits": [{"type": "Container",
                                   "default": {"cpu": "500m", "memory": "256Mi"},
                                   "defaultRequest": {"cpu": "100m"},
                                   "max": {"cpu": "1"}, "min": {"cpu": "50m"}}]}}
    assert post(cluster, ns, "limitranges", limits).status == 201
    answer = post(cluster, ns, "pods", pod("plain"))
    assert answer.status == 201, answer.body
    created = answer.json()
    resources = created["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "500m", "memory": "256Mi"}
    assert resources["requests"]["cpu"] == "100m"
    note = created["metadata"]["annotations"]["kubernetes.io/limit-ranger"]
    assert note.startswith("LimitRanger plugin set: cpu")
    assert "limit for container app" in note
    big = post(cluster, ns, "pods", pod("big", limits={"cpu": "2"}))
    assert big.status == 403
    body = big.json()
    assert body["reason"] == "Forbidden" and body["kind"] == "Status"
    assert body["message"] == ('pods "big" is forbidden: maximum cpu usage per Container is 1, '
                               'but limit is 2')
    small = post(cluster, ns, "pods", pod("small", requests={"cpu": "10m"}))
    assert small.status == 403
    assert "minimum cpu usage per Container is 50m, but request is 10m" in \
        small.json()["message"]


def test_ratio_and_pod_limits(cluster, ns):
    limits = {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "lr"},
              "spec": {"limits": [{"type": "Container", "maxLimitRequestRatio": {"cpu": "2"}},
                                  {"type": "Pod", "max": {"memory": "1Gi"}}]}}
    assert post(cluster, ns, "limitranges", limits).status == 201
    answer = post(cluster, ns, "pods", pod("r", requests={"cpu": "100m", "memory": "1Gi"},
                                           limits={"cpu": "300m", "memory": "1536Mi"}))
    assert answer.status == 403
    message = answer.json()["message"]
    assert message == ('pods "r" is forbidden: [cpu max limit to request ratio per Container '
                       'is 2, but provided ratio is 3.000000, maximum memory usage per Pod is '
                       '1Gi, but limit is 1536Mi]')


def test_quota_counts_and_refuses(cluster, ns):
    answer = post(cluster, ns, "resourcequotas", quota("q", pods="2", configmaps="10"))
    assert answer.status == 201, answer.body
    status = answer.json()["status"]
    assert status["hard"] == {"pods": "2", "configmaps": "10"}
    assert status["used"] == {"pods": "0", "configmaps": "0"}
    for name in ("a", "b"):
        assert post(cluster, ns, "pods", pod(name)).status == 201
    third = post(cluster, ns, "pods", pod("c"))
    assert third.status == 403
    assert third.json()["message"] == ('pods "c" is forbidden: exceeded quota: q, requested: '
                                       'pods=1, used: pods=2, limited: pods=2')
    wait_used(cluster, ns, "q", "pods", "2")
    assert cluster.request("DELETE", PODS.format(ns=ns) + "/a").status == 200
    wait_used(cluster, ns, "q", "pods", "1")
    assert post(cluster, ns, "pods", pod("c")).status == 201
    table = cluster.kubectl("get", "quota", "-n", ns).stdout
    assert "pods: 2/2" in table


def test_quota_is_never_overshot_by_concurrent_creates(cluster, ns):
    assert post(cluster, ns, "resourcequotas", quota("q", **{"count/configmaps": "5"})).status \
        == 201

    def make(i):
        return post(cluster, ns, "configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                                "metadata": {"name": f"cm{i}"}})
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(make, range(16)))
    codes = sorted(a.status for a in answers)
    assert codes == [201] * 5 + [403] * 11, codes
    listed = cluster.request("GET", f"/api/v1/namespaces/{ns}/configmaps").json()["items"]
    assert len(listed) == 5
    wait_used(cluster, ns, "q", "count/configmaps", "5")


def test_compute_quota(cluster, ns):
    body = quota("compute", **{"requests.cpu": "1", "limits.memory": "1Gi"})
    assert post(cluster, ns, "resourcequotas", body).status == 201
    bare = post(cluster, ns, "pods", pod("bare"))
    assert bare.status == 403
    assert bare.json()["message"] == ('pods "bare" is forbidden: failed quota: compute: must '
                                      'specify limits.memory for: app; requests.cpu for: app')
    ok = post(cluster, ns, "pods", pod("one", requests={"cpu": "600m"},
                                       limits={"memory": "512Mi"}))
    assert ok.status == 201, ok.body
    over = post(cluster, ns, "pods", pod("two", requests={"cpu": "600m"},
                                         limits={"memory": "512Mi"}))
    assert over.status == 403
    assert over.json()["message"] == ('pods "two" is forbidden: exceeded quota: compute, '
                                      'requested: requests.cpu=600m, used: requests.cpu=600m, '
                                      'limited: requests.cpu=1')
    wait_used(cluster, ns, "compute", "limits.memory", "512Mi")


def test_node_port_quota(cluster, ns):
    assert post(cluster, ns, "resourcequotas", quota("np", **{"services.nodeports": "1"})
                ).status == 201
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
           "spec": {"type": "NodePort", "ports": [{"name": "a", "port": 80},
                                                  {"name": "b", "port": 81}]}}
    answer = post(cluster, ns, "services", svc)
    assert answer.status == 403
    assert "exceeded quota: np, requested: services.nodeports=2, used: " \
           "services.nodeports=0, limited: services.nodeports=1" in answer.json()["message"]
    svc["spec"]["ports"].pop()
    assert post(cluster, ns, "services", svc).status == 201


def scoped_quota(name: str, hard: dict, scopes=None, expressions=None) -> dict:
    body = quota(name, **hard)
    if scopes:
        body["spec"]["scopes"] = scopes
    if expressions:
        body["spec"]["scopeSelector"] = {"matchExpressions": expressions}
    return body


def test_best_effort_scope_counts_only_best_effort_pods(cluster, ns):
    answer = post(cluster, ns, "resourcequotas",
                  scoped_quota("be", {"pods": "1"}, scopes=["BestEffort"]))
    assert answer.status == 201, answer.body
    assert post(cluster, ns, "pods", pod("plain")).status == 201
    refused = post(cluster, ns, "pods", pod("plain-2"))
    assert refused.status == 403 and "exceeded quota: be" in refused.json()["message"]
    # A pod with requests is out of the quota's scope.
    assert post(cluster, ns, "pods", pod("sized", requests={"cpu": "100m"})).status == 201
    wait_used(cluster, ns, "be", "pods", "1")


def test_terminating_and_not_terminating_scopes(cluster, ns):
    assert post(cluster, ns, "resourcequotas", scoped_quota(
        "short", {"requests.cpu": "1"}, scopes=["Terminating"])).status == 201
    assert post(cluster, ns, "resourcequotas", scoped_quota(
        "long", {"pods": "5"}, scopes=["NotTerminating", "NotBestEffort"])).status == 201

    def job_pod(name, cpu):
        body = pod(name, requests={"cpu": cpu})
        body["spec"]["activeDeadlineSeconds"] = 60
        return body
    assert post(cluster, ns, "pods", job_pod("j1", "600m")).status == 201
    refused = post(cluster, ns, "pods", job_pod("j2", "600m"))
    assert refused.status == 403 and "exceeded quota: short" in refused.json()["message"]
    # Without a deadline the 2-cpu pod is the other quota's.
    assert post(cluster, ns, "pods", pod("service", requests={"cpu": "2"})).status == 201
    wait_used(cluster, ns, "short", "requests.cpu", "600m")
    wait_used(cluster, ns, "long", "pods", "1")


@pytest.fixture
def priority_classes(cluster):
    """The classes the pods below name (the Priority admission plugin refuses unknown ones)."""
    path = "/apis/scheduling.k8s.io/v1/priorityclasses"
    for name, value in (("high", 1000), ("low", 10)):
        answer = cluster.request("POST", path, {
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value})
        assert answer.status in (201, 409), answer.body
    yield
    for name in ("high", "low"):
        cluster.request("DELETE", f"{path}/{name}")


def test_priority_class_scope_selector(cluster, ns, priority_classes):
    assert post(cluster, ns, "resourcequotas", scoped_quota(
        "high", {"pods": "1"}, expressions=[{"scopeName": "PriorityClass", "operator": "In",
                                             "values": ["high"]}])).status == 201

    def with_class(name, priority_class):
        body = pod(name)
        body["spec"]["priorityClassName"] = priority_class
        return body
    assert post(cluster, ns, "pods", with_class("h1", "high")).status == 201
    assert post(cluster, ns, "pods", with_class("h2", "high")).status == 403
    assert post(cluster, ns, "pods", with_class("l1", "low")).status == 201
    assert post(cluster, ns, "pods", pod("none")).status == 201
    wait_used(cluster, ns, "high", "pods", "1")


@pytest.mark.parametrize("spec,message", [
    ({"hard": {"services": "1"}, "scopes": ["BestEffort"]},
     "spec.scopes: Invalid value: [\"BestEffort\"]: unsupported scope applied to resource"),
    ({"hard": {"pods": "1"}, "scopes": ["Terminating", "NotTerminating"]},
     "conflicting scopes"),
    ({"hard": {"pods": "1"}, "scopeSelector": {"matchExpressions": [
        {"scopeName": "BestEffort", "operator": "In", "values": ["x"]}]}},
     "must be 'Exist' when scope is any of"),
    ({"hard": {"pods": "1"}, "scopeSelector": {"matchExpressions": [
        {"scopeName": "PriorityClass", "operator": "In"}]}},
     "must be at least one value when `operator` is 'In' or 'NotIn'"),
])
def test_invalid_scoped_quotas_are_refused(cluster, ns, spec, message):
    body = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "bad"},
            "spec": spec}
    answer = post(cluster, ns, "resourcequotas", body)
    assert answer.status == 422, answer.body
    assert message in answer.json()["message"], answer.json()["message"]
