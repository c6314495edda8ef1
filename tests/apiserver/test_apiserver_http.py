"""kube-apiserver over HTTPS with client certificates: statuses, semantics, watches."""
from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

CM = "/api/v1/namespaces/{ns}/configmaps"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def status_of(answer) -> dict:
    body = answer.json()
    assert body["kind"] == "Status" and body["apiVersion"] == "v1", body
    assert body["code"] == answer.status
    return body


@pytest.fixture
def ns(cluster):
    """A fresh namespace for one test."""
    return cluster.new_namespace("t-")


def configmap(name: str, labels: dict | None = None, **data) -> dict:
    meta = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def compact(cluster, revision: int) -> None:
    async def run():
        store = cluster.etcd.store()
        try:
            await store.compact(revision, physical=True)
        finally:
            await store.close()
    asyncio.run(asyncio.wait_for(run(), 10))


# --- authentication and authorization -------------------------------------------------

def test_no_credentials_is_401(cluster):
    answer = cluster.request("GET", "/api/v1/namespaces", cert=None)
    assert answer.status == 401
    assert status_of(answer)["reason"] == "Unauthorized"


def test_user_without_bindings_is_403(cluster):
    cert = cluster.client_cert("nobody", "some-team")
    answer = cluster.request("GET", "/api/v1/namespaces", cert=cert)
    assert answer.status == 403
    body = status_of(answer)
    assert body["reason"] == "Forbidden"
    assert body["message"] == ('namespaces is forbidden: User "nobody" cannot list resource '
                               '"namespaces" in API group "" at the cluster scope')
    answer = cluster.request("GET", "/api/v1/namespaces/default/configmaps/x", cert=cert)
    assert status_of(answer)["message"] == (
        'configmaps "x" is forbidden: User "nobody" cannot get resource "configmaps" in API '
        'group "" in the namespace "default"')
    assert status_of(answer)["details"] == {"name": "x", "group": "", "kind": "configmaps"}
    # Every authenticated user may discover the API and read /version.
    assert cluster.request("GET", "/api", cert=cert).status == 200
    assert cluster.request("GET", "/version", cert=cert).status == 200
    answer = cluster.request("GET", "/metrics", cert=cert)
    assert status_of(answer)["message"] == ('forbidden: User "nobody" cannot get path '
                                            '"/metrics"')


def test_rbac_role_binding_grants_in_its_namespace(cluster, ns):
    cert = cluster.client_cert("alice", "dev")
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "cm-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]},
                      {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
                      {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                       "resourceNames": ["visible"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "dev-reads"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                           "name": "cm-reader"},
               "subjects": [{"kind": "Group", "name": "dev",
                             "apiGroup": "rbac.authorization.k8s.io"}]}
    base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
    assert cluster.request("POST", f"{base}/roles", role).status == 201
    assert cluster.request("POST", f"{base}/rolebindings", binding).status == 201

    def allowed(path, method="GET"):
        deadline = time.monotonic() + 5
        while True:   # the authorizer reads the watch cache: allow for its delay
            status = cluster.request(method, path, cert=cert).status
            if status != 403 or time.monotonic() > deadline:
                return status
            time.sleep(0.05)

    assert allowed(CM.format(ns=ns)) == 200
    assert cluster.request("GET", CM.format(ns="default"), cert=cert).status == 403
    assert cluster.request("DELETE", CM.format(ns=ns) + "/x", cert=cert).status == 403
    assert allowed(f"/api/v1/namespaces/{ns}/secrets/visible") == 404   # allowed, absent
    assert cluster.request("GET", f"/api/v1/namespaces/{ns}/secrets/hidden",
                           cert=cert).status == 403
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"namespace": ns, "verb": "get",
                                              "resource": "pods", "subresource": "log"}}}
    answer = cluster.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                             review, cert=cert)
    assert answer.status == 201 and answer.json()["status"]["allowed"] is True
    review["spec"]["resourceAttributes"]["subresource"] = "exec"
    answer = cluster.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                             review, cert=cert)
    assert answer.json()["status"]["allowed"] is False


def test_bootstrap_policy(cluster):
    roles = cluster.request("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles").json()
    names = {r["metadata"]["name"] for r in roles["items"]}
    for name in ("cluster-admin", "admin", "edit", "view", "system:discovery",
                 "system:basic-user", "system:public-info-viewer", "system:kube-scheduler",
                 "system:kube-controller-manager", "system:node", "system:node-proxier"):
        assert name in names
    binding = cluster.request(
        "GET", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/kubeadm:cluster-admins")
    assert binding.json()["roleRef"]["name"] == "cluster-admin"
    svc = cluster.request("GET", "/api/v1/namespaces/default/services/kubernetes").json()
    assert svc["spec"]["clusterIP"] == "10.96.0.1"
    assert svc["spec"]["ports"][0]["targetPort"] == cluster.port
    # The scheduler's identity may bind pods, not read secrets.
    cert = cluster.client_cert("system:kube-scheduler")
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"namespace": "default", "verb": "create",
                                              "resource": "pods", "subresource": "binding"}}}
    path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    assert cluster.request("POST", path, review, cert=cert).json()["status"]["allowed"]
    assert cluster.request("GET", "/api/v1/namespaces/default/secrets",
                           cert=cert).status == 403


# --- create, read, update, delete ------------------------------------------------------

def test_create_get_and_metadata(cluster, ns):
    answer = cluster.request("POST", CM.format(ns=ns), configmap("a", k="v"))
    assert answer.status == 201
    created = answer.json()
    meta = created["metadata"]
    assert created["kind"] == "ConfigMap" and created["apiVersion"] == "v1"
    assert meta["namespace"] == ns and len(meta["uid"]) == 36
    assert meta["creationTimestamp"].endswith("Z") and len(meta["creationTimestamp"]) == 20
    assert "generation" not in meta     # configmaps do not track generations
    got = cluster.request("GET", CM.format(ns=ns) + "/a").json()
    assert got == created
    # generateName: prefix plus five random characters
    answer = cluster.request("POST", CM.format(ns=ns),
                             {"metadata": {"generateName": "gen-"}, "data": {}})
    name = answer.json()["metadata"]["name"]
    assert answer.status == 201 and name.startswith("gen-") and len(name) == 9


def test_status_errors(cluster, ns):
    path = CM.format(ns=ns)
    missing = cluster.request("GET", path + "/nope")
    assert missing.status == 404
    assert status_of(missing)["details"] == {"name": "nope", "group": "", "kind": "configmaps"}
    assert status_of(missing)["message"] == 'configmaps "nope" not found'

    assert cluster.request("POST", path, configmap("dup")).status == 201
    again = cluster.request("POST", path, configmap("dup"))
    assert again.status == 409 and status_of(again)["reason"] == "AlreadyExists"

    invalid = cluster.request("POST", path, configmap("Bad_Name"))
    body = status_of(invalid)
    assert invalid.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["kind"] == "ConfigMap"
    assert any(c["field"] == "metadata.name" for c in body["details"]["causes"])

    wrong_ns = configmap("w")
    wrong_ns["metadata"]["namespace"] = "other"
    answer = cluster.request("POST", path, wrong_ns)
    assert answer.status == 400 and "does not match the namespace" in status_of(answer)["message"]

    answer = cluster.request("PUT", path + "/dup", configmap("other-name"))
    assert answer.status == 400 and status_of(answer)["reason"] == "BadRequest"

    answer = cluster.request("PATCH", path + "/dup", {"data": {"x": "y"}},
                             content_type="application/x-unknown-patch+json")
    assert answer.status == 415 and status_of(answer)["reason"] == "UnsupportedMediaType"

    answer = cluster.request("POST", path, b"{not json")
    assert answer.status == 400 and status_of(answer)["reason"] == "BadRequest"
    answer = cluster.request("GET", "/api/v1/nosuchthings")
    assert answer.status == 404 and status_of(answer)["reason"] == "NotFound"
    answer = cluster.request("POST", path + "/dup", configmap("dup"))
    assert answer.status == 405 and status_of(answer)["reason"] == "MethodNotAllowed"
    answer = cluster.request("GET", path + "?labelSelector=a+in+(")
    assert answer.status == 400
    answer = cluster.request("GET", path + "?fieldSelector=spec.nothing%3Dx")
    assert status_of(answer)["message"] == "field label not supported: spec.nothing"


def test_field_validation(cluster, ns):
    path = CM.format(ns=ns)
    body = configmap("strict")
    body["extra"] = 1
    answer = cluster.request("POST", path + "?fieldValidation=Strict", body)
    assert answer.status == 400
    assert 'strict decoding error: unknown field "extra"' in status_of(answer)["message"]
    dup = b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"d","name":"d"}}'
    answer = cluster.request("POST", path + "?fieldValidation=Strict", dup)
    assert answer.status == 400 and 'duplicate field "metadata.name"' in answer.json()["message"]
    answer = cluster.request("POST", path + "?fieldValidation=Warn", body)
    assert answer.status == 201
    assert answer.headers.get("Warning") == '299 - "unknown field \\"extra\\""'
    body["metadata"]["name"] = "ignored"
    answer = cluster.request("POST", path + "?fieldValidation=Ignore", body)
    assert answer.status == 201 and "Warning" not in answer.headers
    assert "extra" not in answer.json()


def test_update_conflict_and_patches(cluster, ns):
    path = CM.format(ns=ns)
    created = cluster.request("POST", path, configmap("u", k="1")).json()
    rv = created["metadata"]["resourceVersion"]
    updated = dict(created, data={"k": "2"})
    answer = cluster.request("PUT", path + "/u", updated)
    assert answer.status == 200 and answer.json()["data"] == {"k": "2"}
    assert answer.json()["metadata"]["uid"] == created["metadata"]["uid"]
    stale = cluster.request("PUT", path + "/u", dict(created, data={"k": "3"}))
    assert stale.status == 409 and status_of(stale)["reason"] == "Conflict"
    assert status_of(stale)["message"] == (
        'Operation cannot be fulfilled on configmaps "u": the object has been modified; '
        "please apply your changes to the latest version and try again")
    assert rv != answer.json()["metadata"]["resourceVersion"]
    # No resourceVersion: an unconditional update.
    plain = configmap("u", k="4")
    assert cluster.request("PUT", path + "/u", plain).json()["data"] == {"k": "4"}
    merge = cluster.request("PATCH", path + "/u", {"data": {"m": "x", "k": None}},
                            content_type="application/merge-patch+json")
    assert merge.status == 200 and merge.json()["data"] == {"m": "x"}
    ops = [{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}},
           {"op": "replace", "path": "/data/m", "value": "y"}]
    jp = cluster.request("PATCH", path + "/u", ops, content_type="application/json-patch+json")
    assert jp.status == 200 and jp.json()["metadata"]["labels"] == {"a": "b"}
    failing = [{"op": "test", "path": "/data/m", "value": "nope"}]
    answer = cluster.request("PATCH", path + "/u", failing,
                             content_type="application/json-patch+json")
    assert answer.status == 422
    # An update that changes nothing writes nothing.
    same = cluster.request("GET", path + "/u").json()
    again = cluster.request("PUT", path + "/u", same).json()
    assert again["metadata"]["resourceVersion"] == same["metadata"]["resourceVersion"]


def test_dry_run_and_delete_options(cluster, ns):
    path = CM.format(ns=ns)
    answer = cluster.request("POST", path + "?dryRun=All", configmap("dry"))
    assert answer.status == 201 and answer.json()["metadata"]["name"] == "dry"
    assert cluster.request("GET", path + "/dry").status == 404
    created = cluster.request("POST", path, configmap("del")).json()
    wrong = {"kind": "DeleteOptions", "apiVersion": "v1",
             "preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}}
    answer = cluster.request("DELETE", path + "/del", wrong)
    assert answer.status == 409 and "Precondition failed" in status_of(answer)["message"]
    answer = cluster.request("DELETE", path + "/del?dryRun=All")
    assert answer.status == 200 and cluster.request("GET", path + "/del").status == 200
    right = {"preconditions": {"uid": created["metadata"]["uid"],
                               "resourceVersion": created["metadata"]["resourceVersion"]}}
    answer = cluster.request("DELETE", path + "/del", right)
    assert answer.status == 200 and answer.json()["status"] == "Success"
    assert answer.json()["details"]["uid"] == created["metadata"]["uid"]
    assert cluster.request("GET", path + "/del").status == 404
    assert cluster.request("DELETE", path + "/del").status == 404


def test_finalizers_keep_an_object_until_removed(cluster, ns):
    path = CM.format(ns=ns)
    body = configmap("fin")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    cluster.request("POST", path, body)
    answer = cluster.request("DELETE", path + "/fin?propagationPolicy=Foreground")
    marked = answer.json()
    assert answer.status == 200 and marked["metadata"]["deletionTimestamp"]
    assert marked["metadata"]["finalizers"] == ["example.com/hold", "foregroundDeletion"]
    assert cluster.request("GET", path + "/fin").status == 200
    answer = cluster.request("PATCH", path + "/fin", {"metadata": {"finalizers": None}},
                             content_type="application/merge-patch+json")
    assert answer.status == 200
    assert cluster.request("GET", path + "/fin").status == 404


def test_namespace_lifecycle(cluster):
    name = "term-" + uuid.uuid4().hex[:6]
    cluster.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    answer = cluster.request("DELETE", f"/api/v1/namespaces/{name}")
    assert answer.status == 200
    assert answer.json()["status"]["phase"] == "Terminating"
    answer = cluster.request("POST", CM.format(ns=name), configmap("late"))
    assert answer.status == 403
    assert "because it is being terminated" in status_of(answer)["message"]
    ns_obj = cluster.request("GET", f"/api/v1/namespaces/{name}").json()
    ns_obj["spec"]["finalizers"] = []
    answer = cluster.request("PUT", f"/api/v1/namespaces/{name}/finalize", ns_obj)
    assert answer.status == 200
    assert cluster.request("GET", f"/api/v1/namespaces/{name}").status == 404
    answer = cluster.request("DELETE", "/api/v1/namespaces/default")
    assert answer.status == 403 and "may not be deleted" in status_of(answer)["message"]


def test_status_subresource(cluster, ns):
    path = f"/api/v1/namespaces/{ns}/resourcequotas"
    quota = {"metadata": {"name": "q"}, "spec": {"hard": {"pods": "3"}},
             "status": {"hard": {"pods": "99"}}}
    created = cluster.request("POST", path, quota).json()
    # status is the server's on create (a quota's: its own accounting)
    assert created["status"] == {"hard": {"pods": "3"}, "used": {"pods": "0"}}
    created["status"] = {"hard": {"pods": "3"}, "used": {"pods": "1"}}
    created["spec"]["hard"]["pods"] = "4"
    updated = cluster.request("PUT", path + "/q", created).json()
    assert updated["status"] == {"hard": {"pods": "4"}, "used": {"pods": "0"}}
    assert updated["spec"]["hard"]["pods"] == "4"
    updated["status"] = {"hard": {"pods": "4"}, "used": {"pods": "1"}}
    updated["spec"]["hard"]["pods"] = "5"
    answer = cluster.request("PUT", path + "/q/status", updated).json()
    assert answer["status"]["used"] == {"pods": "1"} and answer["spec"]["hard"]["pods"] == "4"


def test_generation_and_scale(cluster, ns):
    path = f"/api/v1/namespaces/{ns}/replicationcontrollers"
    rc = {"metadata": {"name": "rc"},
          "spec": {"replicas": 1, "selector": {"app": "x"},
                   "template": {"metadata": {"labels": {"app": "x"}},
                                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}
    answer = cluster.request("POST", path, rc)
    assert answer.status == 201, answer.body
    created = answer.json()
    assert created["metadata"]["generation"] == 1
    labelled = cluster.request("PATCH", path + "/rc", {"metadata": {"labels": {"l": "1"}}},
                               content_type="application/merge-patch+json").json()
    assert labelled["metadata"]["generation"] == 1
    scale = cluster.request("GET", path + "/rc/scale").json()
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 1
    assert scale["status"]["selector"] == "app=x"
    answer = cluster.request("PATCH", path + "/rc/scale", {"spec": {"replicas": 3}},
                             content_type="application/merge-patch+json")
    assert answer.status == 200 and answer.json()["spec"]["replicas"] == 3
    after = cluster.request("GET", path + "/rc").json()
    assert after["spec"]["replicas"] == 3 and after["metadata"]["generation"] == 2


# --- lists ---------------------------------------------------------------------------------

def test_list_pagination_and_compaction(cluster, ns):
    path = CM.format(ns=ns)
    for i in range(5):
        cluster.request("POST", path, configmap(f"p{i}"))
    first = cluster.request("GET", path + "?limit=2").json()
    assert [i["metadata"]["name"] for i in first["items"]] == ["p0", "p1"]
    assert first["metadata"]["remainingItemCount"] == 3
    token = first["metadata"]["continue"]
    second = cluster.request("GET", path + f"?limit=2&continue={token}").json()
    assert [i["metadata"]["name"] for i in second["items"]] == ["p2", "p3"]
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    last = cluster.request("GET", path + f"?limit=2&continue={second['metadata']['continue']}")
    assert [i["metadata"]["name"] for i in last.json()["items"]] == ["p4"]
    assert "continue" not in last.json()["metadata"]
    answer = cluster.request("GET", path + "?continue=garbage")
    assert answer.status == 400
    # A continue token whose revision etcd has compacted away: 410 Expired.
    cluster.request("POST", path, configmap("later"))
    current = int(cluster.request("GET", path).json()["metadata"]["resourceVersion"])
    compact(cluster, current)
    answer = cluster.request("GET", path + f"?limit=2&continue={token}")
    assert answer.status == 410 and status_of(answer)["reason"] == "Expired"


def test_label_and_field_selectors(cluster, ns):
    path = CM.format(ns=ns)
    cluster.request("POST", path, configmap("web", {"tier": "web", "env": "prod"}))
    cluster.request("POST", path, configmap("db", {"tier": "db", "env": "prod"}))
    cluster.request("POST", path, configmap("plain"))

    def names(query):
        answer = cluster.request("GET", path + "?" + query)
        assert answer.status == 200, answer.body
        return sorted(i["metadata"]["name"] for i in answer.json()["items"])

    assert names("labelSelector=tier%3Dweb") == ["web"]
    assert names("labelSelector=tier%3D%3Dweb") == ["web"]
    assert names("labelSelector=tier!%3Dweb") == ["db", "plain"]
    assert names("labelSelector=tier+in+(web,db)") == ["db", "web"]
    assert names("labelSelector=tier+notin+(web)") == ["db", "plain"]
    assert names("labelSelector=tier") == ["db", "web"]
    assert names("labelSelector=!tier") == ["plain"]
    assert names("labelSelector=env%3Dprod,tier%3Ddb") == ["db"]
    assert names("fieldSelector=metadata.name%3Dplain") == ["plain"]
    assert names("fieldSelector=metadata.name!%3Dplain&labelSelector=env") == ["db", "web"]
    assert names("labelSelector=tier&limit=1") == ["db"]
    assert names("resourceVersion=0&labelSelector=tier%3Dweb") == ["web"]
    # deletecollection honours the selector
    answer = cluster.request("DELETE", path + "?labelSelector=env%3Dprod")
    assert answer.status == 200
    assert names("") == ["plain"]


def test_tables(cluster, ns):
    path = CM.format(ns=ns)
    cluster.request("POST", path, configmap("t", a="1", b="2"))
    table = cluster.request("GET", path, headers={"Accept": TABLE}).json()
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Data", "Age"]
    row = table["rows"][0]
    assert row["cells"][:2] == ["t", 2]
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == "t"
    none = cluster.request("GET", path + "?includeObject=None", headers={"Accept": TABLE}).json()
    assert "object" not in none["rows"][0]
    one = cluster.request("GET", path + "/t", headers={"Accept": TABLE}).json()
    assert one["kind"] == "Table" and len(one["rows"]) == 1
    namespaces = cluster.request("GET", "/api/v1/namespaces",
                                 headers={"Accept": TABLE + ",application/json"}).json()
    assert [c["name"] for c in namespaces["columnDefinitions"]] == ["Name", "Status", "Age"]
    answer = cluster.request("GET", path, headers={"Accept": "application/vnd.kubernetes.protobuf"})
    assert answer.status == 406


# --- watches -------------------------------------------------------------------------------

def _watch_async(cluster, path, count, timeout=10):
    result: dict = {}

    def run():
        try:
            result["events"] = cluster.watch(path, timeout=timeout,
                                             until=lambda events: len(events) >= count)
        except Exception as exc:  # reported by the caller
            result["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_watch_from_resource_version(cluster, ns):
    path = CM.format(ns=ns)
    created = cluster.request("POST", path, configmap("w1", {"app": "a"})).json()
    rv = created["metadata"]["resourceVersion"]
    cluster.request("PATCH", path + "/w1", {"data": {"k": "v"}},
                    content_type="application/merge-patch+json")
    cluster.request("POST", path, configmap("w2"))
    cluster.request("DELETE", path + "/w1")
    events = cluster.watch(f"{path}?watch=1&resourceVersion={rv}&timeoutSeconds=5",
                           until=lambda e: len(e) >= 3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "w1"), ("ADDED", "w2"), ("DELETED", "w1")]
    assert events[0]["object"]["kind"] == "ConfigMap"
    revisions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert revisions == sorted(revisions) and revisions[0] > int(rv)
    # Without a resourceVersion: the current state first, then changes.
    thread, result = _watch_async(cluster, f"{path}?watch=true&timeoutSeconds=5", 2)
    time.sleep(0.5)
    cluster.request("POST", path, configmap("w3"))
    thread.join(10)
    assert [(e["type"], e["object"]["metadata"]["name"])
            for e in result["events"]] == [("ADDED", "w2"), ("ADDED", "w3")]


def test_watch_selector_transitions_and_table(cluster, ns):
    path = CM.format(ns=ns)
    created = cluster.request("POST", path, configmap("s", {"app": "x"})).json()
    rv = created["metadata"]["resourceVersion"]
    for labels in ({"app": "y"}, {"app": "x"}):
        cluster.request("PATCH", path + "/s", {"metadata": {"labels": labels}},
                        content_type="application/merge-patch+json")
    events = cluster.watch(f"{path}?watch=1&resourceVersion={rv}&labelSelector=app%3Dx"
                           "&timeoutSeconds=3", until=lambda e: len(e) >= 2)
    assert [e["type"] for e in events] == ["DELETED", "ADDED"]
    events = cluster.watch(f"{path}?watch=1&resourceVersion={rv}&timeoutSeconds=3",
                           headers={"Accept": TABLE}, until=lambda e: len(e) >= 2)
    assert events[0]["object"]["kind"] == "Table"
    assert [c["name"] for c in events[0]["object"]["columnDefinitions"]] == [
        "Name", "Data", "Age"]
    assert events[0]["object"]["rows"][0]["cells"][0] == "s"
    assert not events[1]["object"]["columnDefinitions"]


def test_watch_bookmarks_and_timeout(cluster, ns):
    path = CM.format(ns=ns)
    rv = cluster.request("GET", path).json()["metadata"]["resourceVersion"]
    started = time.monotonic()
    events = cluster.watch(f"{path}?watch=1&resourceVersion={rv}&allowWatchBookmarks=true"
                           "&timeoutSeconds=3")
    elapsed = time.monotonic() - started
    assert 2.5 < elapsed < 6
    assert events and all(e["type"] == "BOOKMARK" for e in events)
    assert int(events[-1]["object"]["metadata"]["resourceVersion"]) >= int(rv)


def test_watch_too_old_resource_version_is_410(cluster, ns):
    path = CM.format(ns=ns)
    created = cluster.request("POST", path, configmap("old")).json()
    old_rv = created["metadata"]["resourceVersion"]
    # Push the revision out of the watch cache's window (--default-watch-cache-size=20),
    # then compact etcd past it.
    for i in range(25):
        cluster.request("PATCH", path + "/old", {"data": {"i": str(i)}},
                        content_type="application/merge-patch+json")
    current = int(cluster.request("GET", path + "/old").json()["metadata"]["resourceVersion"])
    compact(cluster, current)
    events = cluster.watch(f"{path}?watch=1&resourceVersion={old_rv}&timeoutSeconds=5")
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert status["code"] == 410 and status["reason"] == "Expired"
    # A recent resourceVersion is still served from the cache's window.
    recent = cluster.watch(f"{path}?watch=1&resourceVersion={current - 1}&timeoutSeconds=2",
                           until=lambda e: len(e) >= 1)
    assert recent[0]["type"] == "MODIFIED"


# --- non-resource endpoints ------------------------------------------------------------

def test_discovery(cluster):
    api = cluster.request("GET", "/api").json()
    assert api["kind"] == "APIVersions" and api["versions"] == ["v1"]
    v1 = cluster.request("GET", "/api/v1").json()
    names = {r["name"] for r in v1["resources"]}
    assert {"pods", "pods/status", "namespaces", "namespaces/finalize", "configmaps"} <= names
    groups = cluster.request("GET", "/apis").json()
    assert "rbac.authorization.k8s.io" in {g["name"] for g in groups["groups"]}
    rbac = cluster.request("GET", "/apis/rbac.authorization.k8s.io/v1").json()
    assert "clusterroles" in {r["name"] for r in rbac["resources"]}
    accept = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
              "application/json")
    answer = cluster.request("GET", "/apis", headers={"Accept": accept})
    assert answer.headers["Content-Type"] == \
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    assert answer.json()["kind"] == "APIGroupDiscoveryList"
    assert cluster.request("GET", "/apis/nothing.example.com").status == 404


def test_version_health_metrics(cluster):
    version = cluster.request("GET", "/version").json()
    assert version["major"] == "1" and version["gitVersion"].startswith("v1.")
    for path in ("/healthz", "/livez", "/readyz"):
        answer = cluster.request("GET", path)
        assert answer.status == 200 and answer.body == b"ok"
    verbose = cluster.request("GET", "/readyz?verbose").body.decode()
    assert "[+]etcd ok" in verbose and verbose.strip().endswith("readyz check passed")
    assert cluster.request("GET", "/readyz/etcd").body == b"ok"
    metrics = cluster.request("GET", "/metrics").body.decode()
    assert "apiserver_request_total" in metrics
    assert cluster.request("GET", "/nothing-here").status == 404


def test_whoami_and_token_review(cluster):
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    answer = cluster.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
    info = answer.json()["status"]["userInfo"]
    assert info["username"] == "kubernetes-admin"
    assert "kubeadm:cluster-admins" in info["groups"]
    assert "system:authenticated" in info["groups"]
    token = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
             "spec": {"token": "not-a-token"}}
    answer = cluster.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", token)
    assert answer.status == 201 and answer.json()["status"]["authenticated"] is False
    answer = cluster.request("GET", "/api/v1/namespaces", cert=None,
                             headers={"Authorization": "Bearer not-a-token"})
    assert answer.status == 401


def test_protobuf_body(cluster, ns):
    """What kubectl 1.32+ sends: the k8s protobuf envelope around a ConfigMap."""
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload
    meta = field(1, b"pb")
    entry = field(1, b"k") + field(2, b"v")
    raw = field(1, meta) + field(2, entry)
    envelope = field(1, field(1, b"v1") + field(2, b"ConfigMap")) + field(2, raw)
    answer = cluster.request("POST", CM.format(ns=ns), b"k8s\x00" + envelope,
                             content_type="application/vnd.kubernetes.protobuf")
    assert answer.status == 201, answer.body
    assert answer.json()["data"] == {"k": "v"}


def test_secrets_are_encrypted_at_rest(cluster, ns):
    secret = {"metadata": {"name": "s"}, "stringData": {"password": "hunter2"}}
    answer = cluster.request("POST", f"/api/v1/namespaces/{ns}/secrets", secret)
    assert answer.status == 201, answer.body

    async def raw():
        store = cluster.etcd.store()
        try:
            return await store.get(f"/registry/secrets/{ns}/s".encode())
        finally:
            await store.close()
    stored = asyncio.run(asyncio.wait_for(raw(), 10))
    assert stored.value.startswith(b"k8s:enc:aescbc:v1:key1:")
    assert b"hunter2" not in stored.value and b"aHVudGVyMg" not in stored.value
    got = cluster.request("GET", f"/api/v1/namespaces/{ns}/secrets/s").json()
    assert got["data"] == {"password": "aHVudGVyMg=="} and got["type"] == "Opaque"


def test_pod_binding(cluster, ns):
    # The ServiceAccount admission plugin needs the account (the controller-manager's job).
    cluster.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts",
                    {"metadata": {"name": "default"}})
    pod = {"metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    answer = cluster.request("POST", f"/api/v1/namespaces/{ns}/pods", pod)
    assert answer.status == 201, answer.body
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
               "target": {"kind": "Node", "name": "node-1"}}
    answer = cluster.request("POST", f"/api/v1/namespaces/{ns}/pods/p/binding", binding)
    assert answer.status == 201
    bound = cluster.request("GET", f"/api/v1/namespaces/{ns}/pods/p").json()
    assert bound["spec"]["nodeName"] == "node-1"
    again = cluster.request("POST", f"/api/v1/namespaces/{ns}/pods/p/binding", binding)
    assert again.status == 409
    # A pod on a node is deleted gracefully: marked, left for its kubelet.
    answer = cluster.request("DELETE", f"/api/v1/namespaces/{ns}/pods/p")
    assert answer.status == 200 and answer.json()["metadata"]["deletionGracePeriodSeconds"] == 30
    answer = cluster.request("DELETE", f"/api/v1/namespaces/{ns}/pods/p?gracePeriodSeconds=0")
    assert answer.status == 200
    assert cluster.request("GET", f"/api/v1/namespaces/{ns}/pods/p").status == 404


def test_a_node_is_created_with_its_status(cluster):
    """As upstream: a kubelet registers its Node with capacity and conditions at once;
    other kinds' status on create is dropped (it is the status subresource's)."""
    name = "status-on-create"
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"capacity": {"cpu": "2", "pods": "110"},
                       "allocatable": {"cpu": "2", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}
    created = cluster.request("POST", "/api/v1/nodes", node)
    assert created.status == 201, created.body
    try:
        assert created.json()["status"]["allocatable"] == {"cpu": "2", "pods": "110"}
        ns = cluster.new_namespace("status-")
        service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                   "spec": {"ports": [{"port": 80}]},
                   "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}
        answer = cluster.request("POST", f"/api/v1/namespaces/{ns}/services", service)
        assert answer.status == 201, answer.body
        assert not answer.json().get("status", {}).get("loadBalancer", {}).get("ingress")
    finally:
        cluster.request("DELETE", f"/api/v1/nodes/{name}")
