"""Fuzzing the API server: whatever a client sends, the answer is a Status (never a 5xx,
never a dropped connection), and the server stays ready."""
from __future__ import annotations

import json
import string
import uuid
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
RESOURCES = ["/api/v1/namespaces/{ns}/configmaps", "/api/v1/namespaces/{ns}/pods",
             "/api/v1/namespaces/{ns}/services", "/apis/apps/v1/namespaces/{ns}/deployments",
             "/api/v1/namespaces/{ns}/resourcequotas", "/api/v1/namespaces/{ns}/limitranges",
             "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets", "/api/v1/namespaces",
             "/api/v1/nodes", "/apis/rbac.authorization.k8s.io/v1/clusterroles"]
CONTENT_TYPES = ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf",
                 "application/merge-patch+json", "application/json-patch+json",
                 "application/strategic-merge-patch+json", "application/apply-patch+yaml",
                 "text/plain", ""]
PATCH_TYPES = ["application/json-patch+json", "application/merge-patch+json",
               "application/strategic-merge-patch+json"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["metadata", "spec", "status", "name", "labels", "data", "op",
                         "path", "value", "from", "containers", "ports", "kind",
                         "apiVersion", "$patch", "$retainKeys", "selector", "replicas",
                         "template", "image", "x"]) | st.text(max_size=6), inner,
        max_size=5),
    max_leaves=20)


def json_body(value) -> bytes:
    return json.dumps(value).encode()


bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(json_body),
    st.builds(lambda v, cut: json_body(v)[:cut], json_values, st.integers(0, 50)),
    st.builds(lambda v: b"k8s\x00" + v, st.binary(max_size=100)),
    st.text(alphabet=string.printable, max_size=120).map(str.encode),
    st.builds(lambda meta, spec: json_body({"apiVersion": "v1", "kind": "ConfigMap",
                                            "metadata": meta, "spec": spec}),
              json_values, json_values),
)


@pytest.fixture(scope="module")
def ns(cluster):
    name = cluster.new_namespace("fz-")
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "target"},
          "data": {"a": "1"}}
    assert cluster.request("POST", f"/api/v1/namespaces/{name}/configmaps", cm).status == 201
    yield name
    assert cluster.request("GET", "/readyz").status == 200
    cluster.request("DELETE", f"/api/v1/namespaces/{name}")


def check(answer, allow_ok: bool = True) -> None:
    assert answer.status < 500, (answer.status, answer.body[:500])
    if answer.status >= 400:
        body = json.loads(answer.body)
        assert body["kind"] == "Status" and body["code"] == answer.status, body
    else:
        assert allow_ok, answer.status


@SETTINGS
@given(resource=st.sampled_from(RESOURCES), method=st.sampled_from(["POST", "PUT"]),
       content_type=st.sampled_from(CONTENT_TYPES), body=bodies)
def test_malformed_bodies(cluster, ns, resource, method, content_type, body):
    path = resource.format(ns=ns)
    if method == "PUT":
        path += "/target"
    check(cluster.request(method, path, body, content_type=content_type))


segment = st.text(alphabet=string.ascii_letters + string.digits + "-._~:%@!$&'()*+,;= ",
                  min_size=0, max_size=12)


@SETTINGS
@given(prefix=st.sampled_from(["/api", "/api/v1", "/apis", "/apis/apps/v1", "/apis/x/y",
                               "/api/v1/namespaces/{ns}", "/api/v1/watch", ""]),
       segments=st.lists(segment, max_size=6),
       method=st.sampled_from(["GET", "DELETE", "PATCH", "POST", "PUT", "HEAD", "OPTIONS"]))
def test_random_paths(cluster, ns, prefix, segments, method):
    path = prefix.format(ns=ns) + "".join("/" + quote(s, safe="") for s in segments)
    if not path.startswith("/"):
        path = "/" + path
    params = {"timeoutSeconds": "1"} if "watch" in path else {}
    query = ("?" + urlencode(params)) if params else ""
    answer = cluster.request(method, path + query, b"{}" if method in ("POST", "PUT", "PATCH")
                             else None, content_type="application/json")
    assert answer.status < 500, (method, path, answer.status, answer.body[:300])
    if answer.status >= 400 and method != "HEAD":
        body = json.loads(answer.body)
        assert body["kind"] == "Status", body


selector_text = st.text(alphabet=string.ascii_letters + string.digits + "=!,()-._/ ~\\\"'in",
                        max_size=30)
query_values = st.one_of(st.text(max_size=12), st.integers(-5, 10**12).map(str),
                         st.sampled_from(["0", "-1", "true", "false", "All", "Exact",
                                          "NotOlderThan", "Table", "1s", "abc"]))


@SETTINGS
@given(resource=st.sampled_from(RESOURCES), label=selector_text, field=selector_text,
       extra=st.dictionaries(st.sampled_from(["limit", "continue", "resourceVersion",
                                              "resourceVersionMatch", "timeout", "dryRun",
                                              "fieldValidation", "pretty", "includeObject",
                                              "allowWatchBookmarks", "sendInitialEvents",
                                              "propagationPolicy", "gracePeriodSeconds",
                                              "orphanDependents", "fieldManager", "force"]),
                             query_values, max_size=4),
       method=st.sampled_from(["GET", "GET", "DELETE"]))
def test_selectors_and_query_params(cluster, ns, resource, label, field, extra, method):
    params = dict(extra, labelSelector=label, fieldSelector=field)
    path = resource.format(ns=ns)
    if method == "DELETE":
        # Only against a selector that matches nothing, so the fixture's objects stay.
        params["labelSelector"] = "fuzz-nothing=" + uuid.uuid4().hex
        path = f"/api/v1/namespaces/{ns}/configmaps"
    check(cluster.request(method, path + "?" + urlencode(params)))


patches = st.one_of(
    json_values.map(json_body),
    st.lists(st.fixed_dictionaries(
        {"op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test", "bad"]),
         "path": st.sampled_from(["", "/", "/data", "/data/a", "/data/b", "/metadata",
                                  "/metadata/name", "/metadata/labels/x", "/kind",
                                  "/data/~1x", "/data/~2", "/spec/0", "/a/b/c", "/-"])},
        optional={"value": json_values, "from": st.sampled_from(["/data/a", "/x", ""])}),
        max_size=4).map(json_body),
    st.binary(max_size=80),
)


@SETTINGS
@given(content_type=st.sampled_from(PATCH_TYPES), body=patches,
       target=st.sampled_from(["configmaps/target", "configmaps/missing", "pods/missing"]),
       dry=st.booleans())
def test_patches(cluster, ns, content_type, body, target, dry):
    path = f"/api/v1/namespaces/{ns}/{target}"
    if target == "configmaps/target":
        dry = True          # keep the object as it is for the next example
    check(cluster.request("PATCH", path + ("?dryRun=All" if dry else ""), body,
                          content_type=content_type))


def test_server_still_ready(cluster, ns):
    assert cluster.request("GET", "/readyz").status == 200
