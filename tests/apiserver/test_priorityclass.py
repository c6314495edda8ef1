"""scheduling.k8s.io/v1 PriorityClass and the Priority admission plugin against the real
API server (and the real kubectl, every build on this machine)."""
from __future__ import annotations

import time
import uuid

import pytest

from tests.e2e.kubectl_versions import kubectl_builds

PCS = "/apis/scheduling.k8s.io/v1/priorityclasses"
BUILDS = kubectl_builds()


def _pc(name: str, value: int, **fields) -> dict:
    return {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value, **fields}


def _pod(name: str, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec}}


def _unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:8]


@pytest.fixture
def classes(cluster):
    """Priority classes a test creates, removed afterwards (a leftover globalDefault class
    would give every later test's pods its priority)."""
    names: list[str] = []

    def create(name: str, value: int, **fields) -> dict:
        answer = cluster.request("POST", PCS, _pc(name, value, **fields))
        assert answer.status == 201, answer.body
        names.append(name)
        return answer.json()
    yield create
    for name in names:
        cluster.request("DELETE", f"{PCS}/{name}")


@pytest.fixture(scope="module")
def namespace(cluster):
    name = cluster.new_namespace("prio-", default_service_account=True)
    yield name
    cluster.request("DELETE", f"/api/v1/namespaces/{name}")


def _create_pod(cluster, namespace: str, pod: dict):
    return cluster.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)


def test_system_classes_exist_and_cannot_be_deleted(cluster):
    for name, value in (("system-node-critical", 2000001000),
                        ("system-cluster-critical", 2000000000)):
        answer = cluster.request("GET", f"{PCS}/{name}")
        assert answer.status == 200, answer.body
        pc = answer.json()
        assert pc["value"] == value
        assert pc["preemptionPolicy"] == "PreemptLowerPriority"
        assert not pc.get("globalDefault")
        assert pc["description"].startswith("Used for system critical pods")
        answer = cluster.request("DELETE", f"{PCS}/{name}")
        assert answer.status == 403, answer.body
        assert answer.json()["message"] == (
            f'priorityclasses.scheduling.k8s.io "{name}" is forbidden: this is a system '
            "priority class and cannot be deleted")


def test_create_validate_and_immutable_value(cluster, classes):
    name = _unique("pc-")
    created = classes(name, 1000, description="x")
    assert created["value"] == 1000 and created["preemptionPolicy"] == "PreemptLowerPriority"
    # value and preemptionPolicy are fixed once created.
    changed = dict(created, value=2000)
    answer = cluster.request("PUT", f"{PCS}/{name}", changed)
    assert answer.status == 422, answer.body
    assert "value: Forbidden: may not be changed in an update." in answer.json()["message"]
    changed = dict(created, preemptionPolicy="Never")
    answer = cluster.request("PUT", f"{PCS}/{name}", changed)
    assert answer.status == 422, answer.body
    assert "preemptionPolicy" in answer.json()["message"]
    # description may change.
    answer = cluster.request("PUT", f"{PCS}/{name}", dict(created, description="y"))
    assert answer.status == 200, answer.body
    # User classes stay at or below one billion; system- names are reserved.
    answer = cluster.request("POST", PCS, _pc(_unique("big-"), 1000000001))
    assert answer.status == 422, answer.body
    assert "maximum allowed value of a user defined priority is 1000000000" in \
        answer.json()["message"]
    answer = cluster.request("POST", PCS, _pc("system-mine", 10))
    assert answer.status == 422, answer.body
    assert "reserved for system use only" in answer.json()["message"]
    answer = cluster.request("POST", PCS, _pc(_unique("bad-"), 1, preemptionPolicy="Sometimes"))
    assert answer.status == 422, answer.body


def test_only_one_global_default(cluster, classes):
    first = _unique("default-a-")
    classes(first, 100, globalDefault=True)
    answer = cluster.request("POST", PCS, _pc(_unique("default-b-"), 200, globalDefault=True))
    assert answer.status == 403, answer.body
    assert answer.json()["message"].endswith(
        f"is forbidden: PriorityClass {first} is already marked as default. "
        "Only one default can exist")
    # Marking another existing class default is refused too; the default itself may be
    # updated.
    other = classes(_unique("plain-"), 300)
    answer = cluster.request("PUT", f"{PCS}/{other['metadata']['name']}",
                             dict(other, globalDefault=True))
    assert answer.status == 403, answer.body
    current = cluster.request("GET", f"{PCS}/{first}").json()
    answer = cluster.request("PUT", f"{PCS}/{first}", dict(current, description="d"))
    assert answer.status == 200, answer.body


def test_pods_get_their_class_priority(cluster, classes, namespace):
    name = _unique("high-")
    classes(name, 1000, preemptionPolicy="Never")
    answer = _create_pod(cluster, namespace, _pod("with-class", priorityClassName=name))
    assert answer.status == 201, answer.body
    spec = answer.json()["spec"]
    assert spec["priority"] == 1000 and spec["preemptionPolicy"] == "Never"
    # The same priority given explicitly is fine, another one is not.
    answer = _create_pod(cluster, namespace,
                         _pod("same", priorityClassName=name, priority=1000))
    assert answer.status == 201, answer.body
    answer = _create_pod(cluster, namespace, _pod("other", priorityClassName=name, priority=7))
    assert answer.status == 403, answer.body
    assert answer.json()["message"] == (
        'pods "other" is forbidden: the integer value of priority (7) must not be provided '
        "in pod spec; priority admission controller computed 1000 from the given "
        "PriorityClass name")
    # A system class resolves like any other.
    answer = _create_pod(cluster, namespace,
                         _pod("critical", priorityClassName="system-node-critical"))
    assert answer.status == 201, answer.body
    assert answer.json()["spec"]["priority"] == 2000001000


def test_unknown_class_is_forbidden(cluster, namespace):
    answer = _create_pod(cluster, namespace, _pod("lost", priorityClassName="no-such-class"))
    assert answer.status == 403, answer.body
    status = answer.json()
    assert status["reason"] == "Forbidden"
    assert status["message"] == ('pods "lost" is forbidden: no PriorityClass with name '
                                 "no-such-class was found")


def test_default_class_applies_to_pods_without_one(cluster, classes, namespace):
    answer = _create_pod(cluster, namespace, _pod("before"))
    assert answer.status == 201, answer.body
    spec = answer.json()["spec"]
    assert spec["priority"] == 0 and "priorityClassName" not in spec
    name = _unique("fallback-")
    classes(name, 42, globalDefault=True)
    # The plugin reads the watch cache, which follows etcd within moments.
    deadline, spec = time.monotonic() + 5, {}
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        answer = _create_pod(cluster, namespace, _pod(f"after-{attempt}"))
        assert answer.status == 201, answer.body
        spec = answer.json()["spec"]
        if spec.get("priorityClassName") == name:
            break
        time.sleep(0.1)
    assert spec["priorityClassName"] == name and spec["priority"] == 42, spec
    assert spec["preemptionPolicy"] == "PreemptLowerPriority"


# --- the real kubectl ----------------------------------------------------------------------

@pytest.mark.skipif(not BUILDS, reason="no kubectl on this machine")
def test_kubectl_create_and_get_priorityclass(cluster, kubectl):
    name = "high-" + kubectl.version.replace(".", "-")
    try:
        out = kubectl("create", "priorityclass", name, "--value=1000", "--description=x").stdout
        assert f"priorityclass.scheduling.k8s.io/{name} created" in out
        pc = cluster.request("GET", f"{PCS}/{name}").json()
        assert pc["value"] == 1000 and pc["description"] == "x"
        assert pc["preemptionPolicy"] == "PreemptLowerPriority" and not pc.get("globalDefault")
        lines = kubectl("get", "pc").stdout.splitlines()
        assert lines[0].split() == ["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE",
                                    "PREEMPTIONPOLICY"]
        rows = {line.split()[0]: line.split() for line in lines[1:]}
        assert rows[name][1:3] == ["1000", "false"]
        assert rows[name][4] == "PreemptLowerPriority"
        assert rows["system-node-critical"][1:3] == ["2000001000", "false"]
        assert rows["system-cluster-critical"][1] == "2000000000"
        kubectl("create", "priorityclass", name + "-never", "--value=5",
                "--preemption-policy=Never")
        pc = cluster.request("GET", f"{PCS}/{name}-never").json()
        assert pc["value"] == 5 and pc["preemptionPolicy"] == "Never"
    finally:
        for victim in (name, name + "-never"):
            cluster.request("DELETE", f"{PCS}/{victim}")
