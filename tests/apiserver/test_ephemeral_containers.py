"""pods/ephemeralcontainers against the real server: only additions, as upstream."""
from __future__ import annotations

import pytest

from tests.e2e.kubectl_versions import kubectl_builds

PODS = "/api/v1/namespaces/{ns}/pods"
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
BUILDS = kubectl_builds()


@pytest.fixture
def ns(cluster):
    return cluster.new_namespace("eph-", default_service_account=True)


def _pod(cluster, ns, name="p"):
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}}
    answer = cluster.request("POST", PODS.format(ns=ns), body)
    assert answer.status == 201, answer.body


def _debug(name, **extra):
    return {"name": name, "image": "busybox", "command": ["sleep", "30"], **extra}


def _add(cluster, ns, container, name="p", content_type=STRATEGIC):
    patch = {"spec": {"ephemeralContainers": [container]}}
    return cluster.request("PATCH", PODS.format(ns=ns) + f"/{name}/ephemeralcontainers", patch,
                           content_type=content_type)


def _ephemeral(cluster, ns, name="p"):
    pod = cluster.request("GET", PODS.format(ns=ns) + f"/{name}").json()
    return pod["spec"].get("ephemeralContainers") or []


def test_patch_adds_and_keeps_earlier_ones(cluster, ns):
    _pod(cluster, ns)
    answer = _add(cluster, ns, _debug("dbg", stdin=True, tty=True, targetContainerName="app"))
    assert answer.status == 200, answer.body
    added = answer.json()["spec"]["ephemeralContainers"]
    assert [c["name"] for c in added] == ["dbg"]
    assert added[0]["targetContainerName"] == "app" and added[0]["tty"] is True
    # Defaulted as any container.
    assert added[0]["terminationMessagePath"] == "/dev/termination-log"
    answer = _add(cluster, ns, _debug("dbg2"))
    assert answer.status == 200, answer.body
    # (a strategic merge patch without $setElementOrder says nothing of the order)
    assert sorted(c["name"] for c in _ephemeral(cluster, ns)) == ["dbg", "dbg2"]
    got = cluster.request("GET", PODS.format(ns=ns) + "/p/ephemeralcontainers")
    assert got.status == 200 and got.json()["kind"] == "Pod"
    assert sorted(c["name"] for c in got.json()["spec"]["ephemeralContainers"]) == \
        ["dbg", "dbg2"]


def test_remove_or_change_is_invalid(cluster, ns):
    _pod(cluster, ns)
    assert _add(cluster, ns, _debug("dbg")).status == 200
    path = PODS.format(ns=ns) + "/p/ephemeralcontainers"
    removed = cluster.request("PATCH", path, {"spec": {"ephemeralContainers": None}},
                              content_type=MERGE)
    assert removed.status == 422, removed.body
    assert 'existing ephemeral containers "dbg" may not be removed' in \
        removed.json()["message"]
    changed = cluster.request("PATCH", path, [
        {"op": "replace", "path": "/spec/ephemeralContainers/0/image", "value": "alpine"}],
        content_type=JSON_PATCH)
    assert changed.status == 422, changed.body
    assert 'existing ephemeral containers "dbg" may not be changed' in \
        changed.json()["message"]
    assert _ephemeral(cluster, ns)[0]["image"] == "busybox"


def test_put_adds_and_ignores_other_changes(cluster, ns):
    _pod(cluster, ns)
    path = PODS.format(ns=ns) + "/p"
    pod = cluster.request("GET", path).json()
    pod["spec"]["ephemeralContainers"] = [_debug("dbg")]
    pod["spec"]["containers"][0]["image"] = "alpine"
    pod["metadata"].setdefault("labels", {})["x"] = "y"
    answer = cluster.request("PUT", path + "/ephemeralcontainers", pod)
    assert answer.status == 200, answer.body
    stored = cluster.request("GET", path).json()
    assert [c["name"] for c in stored["spec"]["ephemeralContainers"]] == ["dbg"]
    assert stored["spec"]["containers"][0]["image"] == "busybox"
    assert "x" not in (stored["metadata"].get("labels") or {})


def test_validation_of_new_ones(cluster, ns):
    _pod(cluster, ns)
    for container, message in [
            ({"name": "app", "image": "busybox"}, "Duplicate value"),
            ({"name": "d"}, "spec.ephemeralContainers[0].image: Required value"),
            (_debug("d", ports=[{"containerPort": 80}]),
             "spec.ephemeralContainers[0].ports: Forbidden: cannot be set for an Ephemeral "
             "Container"),
            (_debug("d", readinessProbe={"exec": {"command": ["true"]}}),
             "readinessProbe: Forbidden"),
            (_debug("d", lifecycle={"preStop": {"exec": {"command": ["true"]}}}),
             "lifecycle: Forbidden"),
            (_debug("d", resources={"limits": {"cpu": "1"}}), "resources: Forbidden"),
            (_debug("d", targetContainerName="nope"),
             'spec.ephemeralContainers[0].targetContainerName: Not found: "nope"')]:
        answer = _add(cluster, ns, container)
        assert answer.status == 422, (container, answer.body)
        assert message in answer.json()["message"], answer.body
    assert _ephemeral(cluster, ns) == []


def test_main_resource_cannot_add_them(cluster, ns):
    _pod(cluster, ns)
    answer = cluster.request("PATCH", PODS.format(ns=ns) + "/p",
                             {"spec": {"ephemeralContainers": [_debug("dbg")]}},
                             content_type=STRATEGIC)
    assert answer.status == 422, answer.body
    assert _ephemeral(cluster, ns) == []


def test_a_pod_cannot_be_created_with_them(cluster, ns):
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "born-with"},
            "spec": {"containers": [{"name": "app", "image": "busybox"}],
                     "ephemeralContainers": [_debug("dbg")]}}
    answer = cluster.request("POST", PODS.format(ns=ns), body)
    assert answer.status == 422, answer.body
    assert "spec.ephemeralContainers: Forbidden: cannot be set on create" in \
        answer.json()["message"]


def test_discovery_lists_the_subresource(cluster):
    resources = cluster.request("GET", "/api/v1").json()["resources"]
    entry = next(r for r in resources if r["name"] == "pods/ephemeralcontainers")
    assert sorted(entry["verbs"]) == ["get", "patch", "update"]
    assert entry["kind"] == "Pod"


@pytest.mark.skipif(not BUILDS, reason="no kubectl on this machine")
@pytest.mark.parametrize("version", sorted(BUILDS))
def test_kubectl_debug_adds_a_container(cluster, ns, version):
    _pod(cluster, ns)
    result = cluster.kubectl("debug", "p", "-n", ns, "--image=busybox", "-c", "dbg",
                             "--", "true", binary=BUILDS[version], check=False)
    assert result.returncode == 0, result.stderr
    added = _ephemeral(cluster, ns)
    assert [c["name"] for c in added] == ["dbg"]
    assert added[0]["image"] == "busybox" and added[0]["command"] == ["true"]
