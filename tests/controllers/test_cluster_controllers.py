"""The cluster-wide controllers against a real API server: serviceaccount,
root-ca-cert-publisher, namespace, garbagecollector, podgc, nodeipam, nodelifecycle and
taint eviction. Unit tests of their pure parts at the end."""
from __future__ import annotations

import asyncio
import ipaddress
import time
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

from kubesmith.controllers import namespace as namespace_controller
from kubesmith.controllers import options as flags
from kubesmith.controllers.nodeipam import CIDRSet, CIDRSetFull, NodeIpamController
from kubesmith.controllers.nodelifecycle import (
    FULL_DISRUPTION,
    NORMAL,
    PARTIAL_DISRUPTION,
    TaintLimiter,
    min_toleration_seconds,
    needs_new_no_execute,
    reconcile_taints,
    tolerates,
    zone_state,
)
from kubesmith.controllers.rootca import CONFIG_MAP, DESCRIPTION, DESCRIPTION_ANNOTATION
from tests.controllers.conftest import CLUSTER_CIDR, wait_for

CM = "/api/v1/namespaces/{ns}/configmaps"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(timestamp: str) -> float:
    return datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=timezone.utc).timestamp()


def _gone(cluster, path: str):
    return lambda: cluster.request("GET", path).status == 404


def _get(cluster, path: str) -> dict:
    answer = cluster.request("GET", path)
    return answer.json() if answer.status == 200 else {}


def _config_map(cluster, ns: str, name: str, owners=(), finalizers=()) -> dict:
    meta: dict = {"name": name}
    if owners:
        meta["ownerReferences"] = list(owners)
    if finalizers:
        meta["finalizers"] = list(finalizers)
    answer = cluster.request("POST", CM.format(ns=ns), {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": name}})
    assert answer.status == 201, answer.body
    return answer.json()


def _owner_ref(obj: dict, block: bool = False) -> dict:
    ref = {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", "ConfigMap"),
           "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"]}
    if block:
        ref["blockOwnerDeletion"] = True
    return ref


# --- serviceaccount, root-ca-cert-publisher --------------------------------------------

def test_default_service_account_and_root_ca_appear_and_come_back(cluster, namespace):
    sa_path = f"/api/v1/namespaces/{namespace}/serviceaccounts/default"
    ca_path = f"{CM.format(ns=namespace)}/{CONFIG_MAP}"
    config_map = wait_for(lambda: _get(cluster, ca_path), what="kube-root-ca.crt")
    assert config_map["data"] == {"ca.crt": (cluster.pki / "ca.crt").read_text()}
    assert config_map["metadata"]["annotations"][DESCRIPTION_ANNOTATION] == DESCRIPTION

    old_uid = _get(cluster, sa_path)["metadata"]["uid"]
    assert cluster.request("DELETE", sa_path).status == 200
    wait_for(lambda: _get(cluster, sa_path).get("metadata", {}).get("uid") not in (None, old_uid),
             what="default ServiceAccount made again")

    edited = dict(config_map, data={"ca.crt": "not a CA"})
    edited["metadata"] = dict(config_map["metadata"], annotations={})
    assert cluster.request("PUT", ca_path, edited).status == 200
    wait_for(lambda: _get(cluster, ca_path).get("data") == config_map["data"] and
             _get(cluster, ca_path)["metadata"].get("annotations") ==
             config_map["metadata"]["annotations"], what="kube-root-ca.crt restored")

    assert cluster.request("DELETE", ca_path).status == 200
    wait_for(lambda: _get(cluster, ca_path).get("data") == config_map["data"],
             what="kube-root-ca.crt made again")


# --- namespace -------------------------------------------------------------------------

def test_namespace_deletion_empties_it_then_it_goes(cluster, namespace):
    ns = namespace
    _config_map(cluster, ns, "plain")
    held = _config_map(cluster, ns, "held", finalizers=["example.com/hold"])
    assert cluster.request("POST", f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
        "stringData": {"a": "b"}}).status == 201
    assert cluster.request("POST", f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}).status == 201
    assert cluster.request("POST", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "l"}, "spec": {}}).status == 201

    assert cluster.request("DELETE", f"/api/v1/namespaces/{ns}").status == 200

    def stuck_on_finalizer():
        status = _get(cluster, f"/api/v1/namespaces/{ns}").get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        remaining = conditions.get("NamespaceFinalizersRemaining", {})
        return status.get("phase") == "Terminating" and remaining.get("status") == "True" \
            and conditions
    conditions = wait_for(stuck_on_finalizer, timeout=15, what="finalizers remaining")
    assert "example.com/hold in 1 resource instances" in \
        conditions["NamespaceFinalizersRemaining"]["message"]
    assert conditions["NamespaceContentRemaining"]["reason"] == "SomeResourcesRemain"
    assert "configmaps has 1 resource instances" in \
        conditions["NamespaceContentRemaining"]["message"]
    assert conditions["NamespaceDeletionContentFailure"]["status"] == "False"
    # Everything else is gone already.
    for path in (f"/api/v1/namespaces/{ns}/secrets", f"/api/v1/namespaces/{ns}/pods",
                 f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"):
        assert _get(cluster, path)["items"] == []
    assert [c["metadata"]["name"] for c in _get(cluster, CM.format(ns=ns))["items"]] == ["held"]

    held = _get(cluster, f"{CM.format(ns=ns)}/held")
    held["metadata"]["finalizers"] = []
    assert cluster.request("PUT", f"{CM.format(ns=ns)}/held", held).status == 200
    wait_for(_gone(cluster, f"/api/v1/namespaces/{ns}"), timeout=15, what="namespace gone")


# --- garbage collector -------------------------------------------------------------------

def test_gc_background_deletes_dependents_of_deleted_owners(cluster, namespace):
    ns = namespace
    owner = _config_map(cluster, ns, "owner")
    other = _config_map(cluster, ns, "other-owner")
    child = _config_map(cluster, ns, "child", owners=[_owner_ref(owner)])
    grandchild = _config_map(cluster, ns, "grandchild", owners=[_owner_ref(child)])
    shared = _config_map(cluster, ns, "shared", owners=[_owner_ref(owner), _owner_ref(other)])
    ghost = {"apiVersion": "v1", "kind": "ConfigMap", "name": "never-was",
             "uid": str(uuid.uuid4())}
    orphan = _config_map(cluster, ns, "dangling", owners=[ghost])
    assert cluster.request("DELETE", f"{CM.format(ns=ns)}/owner").status == 200

    for name in ("child", "grandchild", "dangling"):
        wait_for(_gone(cluster, f"{CM.format(ns=ns)}/{name}"), timeout=15, what=name)
    # A dependent with an owner left keeps living, without the reference to the gone one.
    wait_for(lambda: [r["name"] for r in _get(cluster, f"{CM.format(ns=ns)}/shared")
                      ["metadata"].get("ownerReferences", [])] == ["other-owner"],
             timeout=15, what="dangling reference removed")
    assert _get(cluster, f"{CM.format(ns=ns)}/shared")["metadata"]["uid"] == \
        shared["metadata"]["uid"]
    assert grandchild and orphan


def test_gc_foreground_deletes_blocking_dependents_first(cluster, namespace):
    ns = namespace
    owner = _config_map(cluster, ns, "owner")
    held = _config_map(cluster, ns, "held", owners=[_owner_ref(owner, block=True)],
                       finalizers=["example.com/hold"])
    _config_map(cluster, ns, "free", owners=[_owner_ref(owner, block=True)])
    answer = cluster.request("DELETE", f"{CM.format(ns=ns)}/owner",
                             {"kind": "DeleteOptions", "apiVersion": "v1",
                              "propagationPolicy": "Foreground"})
    assert answer.status == 200
    assert "foregroundDeletion" in answer.json()["metadata"]["finalizers"]
    wait_for(_gone(cluster, f"{CM.format(ns=ns)}/free"), timeout=15, what="free dependent")
    wait_for(lambda: _get(cluster, f"{CM.format(ns=ns)}/held")["metadata"].get(
        "deletionTimestamp"), timeout=15, what="held dependent deleted")
    # The owner waits for its blocking dependent.
    time.sleep(1.0)
    still = _get(cluster, f"{CM.format(ns=ns)}/owner")
    assert still["metadata"]["finalizers"] == ["foregroundDeletion"]
    held = _get(cluster, f"{CM.format(ns=ns)}/held")
    held["metadata"]["finalizers"] = []
    assert cluster.request("PUT", f"{CM.format(ns=ns)}/held", held).status == 200
    wait_for(_gone(cluster, f"{CM.format(ns=ns)}/owner"), timeout=15, what="owner gone")
    assert held


def test_gc_orphan_keeps_dependents_without_the_reference(cluster, namespace):
    ns = namespace
    owner = _config_map(cluster, ns, "owner")
    other = _config_map(cluster, ns, "other")
    _config_map(cluster, ns, "child", owners=[_owner_ref(owner)])
    _config_map(cluster, ns, "child2", owners=[_owner_ref(owner), _owner_ref(other)])
    answer = cluster.request("DELETE", f"{CM.format(ns=ns)}/owner?propagationPolicy=Orphan")
    assert answer.status == 200
    wait_for(_gone(cluster, f"{CM.format(ns=ns)}/owner"), timeout=15, what="owner gone")
    child = _get(cluster, f"{CM.format(ns=ns)}/child")
    assert "ownerReferences" not in child["metadata"]
    child2 = _get(cluster, f"{CM.format(ns=ns)}/child2")
    assert [r["name"] for r in child2["metadata"]["ownerReferences"]] == ["other"]
    time.sleep(1.0)     # and the garbage collector leaves them alone
    assert _get(cluster, f"{CM.format(ns=ns)}/child")["metadata"]["uid"] == \
        child["metadata"]["uid"]


# --- nodes: podgc, nodeipam, nodelifecycle ------------------------------------------------

def _node(cluster, name: str, ready: bool | None = True) -> dict:
    answer = cluster.request("POST", "/api/v1/nodes", {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    assert answer.status == 201, answer.body
    node = answer.json()
    if ready is not None:
        _post_ready(cluster, name, ready)
    return node


def _post_ready(cluster, name: str, ready: bool = True) -> None:
    """What a kubelet posts: the Ready condition with a fresh heartbeat."""
    for _ in range(10):
        node = _get(cluster, f"/api/v1/nodes/{name}")
        now = _now()
        node["status"] = dict(node.get("status") or {}, conditions=[{
            "type": "Ready", "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now}])
        if cluster.request("PUT", f"/api/v1/nodes/{name}/status", node).status == 200:
            return
    raise AssertionError(f"cannot post the status of node {name}")


def _bound_pod(cluster, ns: str, name: str, node: str, tolerations=(), ready=False) -> dict:
    answer = cluster.request("POST", f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "tolerations": list(tolerations),
                 "containers": [{"name": "c", "image": "busybox"}]}})
    assert answer.status == 201, answer.body
    pod = answer.json()
    if ready:
        pod["status"] = dict(pod.get("status") or {}, phase="Running", conditions=[
            {"type": "Ready", "status": "True", "lastTransitionTime": _now()}])
        answer = cluster.request("PUT", f"/api/v1/namespaces/{ns}/pods/{name}/status", pod)
        assert answer.status == 200, answer.body
        pod = answer.json()
    return pod


def _delete_node(cluster, name: str) -> None:
    cluster.request("DELETE", f"/api/v1/nodes/{name}")


def test_podgc_force_deletes_pods_of_a_deleted_node(cluster, namespace):
    node = f"gone-{uuid.uuid4().hex[:6]}"
    created = _node(cluster, node)
    _bound_pod(cluster, namespace, "orphaned", node)
    # The kubelet's Lease is owned by its Node: the garbage collector takes it too.
    leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
    assert cluster.request("POST", leases, {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "ownerReferences": [_owner_ref(created)]},
        "spec": {"holderIdentity": node}}).status == 201
    pod_path = f"/api/v1/namespaces/{namespace}/pods/orphaned"
    _delete_node(cluster, node)
    wait_for(_gone(cluster, pod_path), timeout=15, what="pod of the deleted node")
    wait_for(_gone(cluster, f"{leases}/{node}"), timeout=15, what="lease of the deleted node")


def test_nodeipam_gives_distinct_pod_cidrs(cluster, controller_manager):
    names = [f"ipam-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    try:
        for name in names:
            _node(cluster, name, ready=None)
        specs = [wait_for(lambda n=name: (_get(cluster, f"/api/v1/nodes/{n}").get("spec") or {})
                          .get("podCIDR") and _get(cluster, f"/api/v1/nodes/{n}")["spec"],
                          what=f"podCIDR of {name}") for name in names]
        cidrs = [spec["podCIDR"] for spec in specs]
        assert len(set(cidrs)) == 3
        for spec in specs:
            assert spec["podCIDRs"] == [spec["podCIDR"]]
            net = ipaddress.ip_network(spec["podCIDR"])
            assert net.prefixlen == 24 and net.subnet_of(ipaddress.ip_network(CLUSTER_CIDR))
    finally:
        for name in names:
            _delete_node(cluster, name)


def test_silent_node_turns_unknown_is_tainted_and_its_pods_evicted(cluster, namespace):
    silent, leased = (f"{kind}-{uuid.uuid4().hex[:6]}" for kind in ("silent", "leased"))
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{leased}"
    try:
        _node(cluster, silent)
        _node(cluster, leased)
        assert cluster.request(
            "POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": leased},
                "spec": {"holderIdentity": leased, "leaseDurationSeconds": 40,
                         "renewTime": datetime.now(timezone.utc).strftime(
                             "%Y-%m-%dT%H:%M:%S.%fZ")}}).status in (201, 409)
        unreachable = {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                       "effect": "NoExecute"}
        _bound_pod(cluster, namespace, "default-tolerations", silent, ready=True)
        _bound_pod(cluster, namespace, "three-seconds", silent,
                   [dict(unreachable, tolerationSeconds=3)])
        _bound_pod(cluster, namespace, "for-ever", silent, [unreachable])
        pods = f"/api/v1/namespaces/{namespace}/pods"
        # The admission plugin gave the first pod upstream's 300 s tolerations.
        assert {(t["key"], t.get("tolerationSeconds")) for t in
                _get(cluster, f"{pods}/default-tolerations")["spec"]["tolerations"]} == {
            ("node.kubernetes.io/not-ready", 300), ("node.kubernetes.io/unreachable", 300)}

        def renew_lease():
            lease = _get(cluster, lease_path)
            lease["spec"]["renewTime"] = datetime.now(timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ")
            cluster.request("PUT", lease_path, lease)

        def tainted():
            renew_lease()
            node = _get(cluster, f"/api/v1/nodes/{silent}")
            return any(t["key"] == "node.kubernetes.io/unreachable" and
                       t["effect"] == "NoExecute" for t in node["spec"].get("taints", [])) \
                and node
        node = wait_for(tainted, timeout=15, interval=0.5, what="unreachable taint")
        ready = {c["type"]: c for c in node["status"]["conditions"]}["Ready"]
        assert (ready["status"], ready["reason"], ready["message"]) == (
            "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.")
        assert {(t["key"], t["effect"]) for t in node["spec"]["taints"]} == {
            ("node.kubernetes.io/unreachable", "NoExecute"),
            ("node.kubernetes.io/unreachable", "NoSchedule")}

        def deleting(name):
            return lambda: _get(cluster, f"{pods}/{name}").get("metadata", {}).get(
                "deletionTimestamp") or _get(cluster, f"{pods}/{name}") == {}
        wait_for(deleting("three-seconds"), timeout=10, what="evicted after 3 s")
        # Evicted tolerationSeconds after the taint came (both times the controller's,
        # to the second).
        evicted = _get(cluster, f"{pods}/three-seconds")
        if evicted:
            taint_time = next(t["timeAdded"] for t in node["spec"]["taints"]
                              if t["effect"] == "NoExecute")
            condition = next(c for c in evicted["status"]["conditions"]
                             if c["type"] == "DisruptionTarget")
            assert condition["reason"] == "DeletionByTaintManager"
            assert _seconds(condition["lastTransitionTime"]) - _seconds(taint_time) >= 2
        first = _get(cluster, f"{pods}/default-tolerations")
        assert not first["metadata"].get("deletionTimestamp")
        assert not _get(cluster, f"{pods}/for-ever")["metadata"].get("deletionTimestamp")
        wait_for(lambda: {c["type"]: c["status"] for c in _get(
            cluster, f"{pods}/default-tolerations")["status"]["conditions"]}.get("Ready")
            == "False", timeout=10, what="pod not ready")

        # The node renewing its lease all along is still healthy.
        healthy = _get(cluster, f"/api/v1/nodes/{leased}")
        assert {c["type"]: c["status"] for c in healthy["status"]["conditions"]} == \
            {"Ready": "True"}
        assert not healthy["spec"].get("taints")

        # The kubelet is back: the taints go.
        _post_ready(cluster, silent)
        wait_for(lambda: not _get(cluster, f"/api/v1/nodes/{silent}")["spec"].get("taints"),
                 timeout=10, what="taints removed")
    finally:
        _delete_node(cluster, silent)
        _delete_node(cluster, leased)
        cluster.request("DELETE", lease_path)


def test_untolerated_no_execute_taint_evicts_at_once(cluster, namespace):
    node = f"drain-{uuid.uuid4().hex[:6]}"
    try:
        _node(cluster, node)
        _bound_pod(cluster, namespace, "victim", node)
        _bound_pod(cluster, namespace, "tolerant", node, [
            {"key": "example.com/drain", "operator": "Exists", "effect": "NoExecute"}])
        live = _get(cluster, f"/api/v1/nodes/{node}")
        live["spec"]["taints"] = [{"key": "example.com/drain", "effect": "NoExecute"}]
        assert cluster.request("PUT", f"/api/v1/nodes/{node}", live).status == 200
        pods = f"/api/v1/namespaces/{namespace}/pods"
        victim = wait_for(lambda: (_get(cluster, f"{pods}/victim").get("metadata") or {}).get(
            "deletionTimestamp") and _get(cluster, f"{pods}/victim"), timeout=5,
            what="victim evicted")
        reasons = {c["type"]: c.get("reason") for c in victim["status"]["conditions"]}
        assert reasons.get("DisruptionTarget") == "DeletionByTaintManager"
        time.sleep(1.0)
        assert not _get(cluster, f"{pods}/tolerant")["metadata"].get("deletionTimestamp")
    finally:
        _delete_node(cluster, node)


# --- units -----------------------------------------------------------------------------

def test_cidr_set_allocates_round_robin_releases_and_fills_up():
    cidrs = CIDRSet(ipaddress.ip_network("10.0.0.0/22"), 24)
    cidrs.occupy(ipaddress.ip_network("10.0.1.0/24"))      # an existing node's
    got = [str(cidrs.allocate()) for _ in range(3)]
    assert got == ["10.0.0.0/24", "10.0.2.0/24", "10.0.3.0/24"]
    try:
        cidrs.allocate()
        raise AssertionError("a full set must refuse")
    except CIDRSetFull:
        pass
    cidrs.release(ipaddress.ip_network("10.0.2.0/24"))
    assert str(cidrs.allocate()) == "10.0.2.0/24"
    # A service range inside the cluster CIDR takes every subnet it covers.
    other = CIDRSet(ipaddress.ip_network("10.0.0.0/16"), 24)
    other.occupy(ipaddress.ip_network("10.0.0.0/23"))
    assert str(other.allocate()) == "10.0.2.0/24"


class _FakeInformer:
    def __init__(self, objects):
        self.lister = SimpleNamespace(list=lambda: objects,
                                      get=lambda name, namespace=None: next(
                                          (o for o in objects
                                           if o["metadata"]["name"] == name), None))

    def add_event_handler(self, **handlers):
        pass


def test_nodeipam_rebuilds_from_existing_nodes_and_releases():
    nodes = [{"metadata": {"name": "a"}, "spec": {"podCIDR": "10.1.0.0/24",
                                                  "podCIDRs": ["10.1.0.0/24", "fd00::/64"]}},
             {"metadata": {"name": "b"}, "spec": {"podCIDR": "10.1.2.0/24"}}]
    options = flags.parse(["--kubeconfig=k", "--allocate-node-cidrs",
                           "--cluster-cidr=10.1.0.0/22,fd00::/62",
                           "--service-cluster-ip-range=10.1.3.0/24"])
    ctx = SimpleNamespace(client=None, options=options,
                          informers=SimpleNamespace(informer=lambda *a, **k: _FakeInformer(nodes)),
                          recorder=lambda component: None)
    ipam = NodeIpamController(ctx)
    ipam.load_existing()
    v4, v6 = ipam.sets
    assert [str(v4.allocate())] == ["10.1.1.0/24"]     # .0 and .2 in use, .3 services
    try:
        v4.allocate()
        raise AssertionError("full")
    except CIDRSetFull:
        pass
    ipam._deleted(nodes[1])
    assert str(v4.allocate()) == "10.1.2.0/24"
    assert str(v6.allocate()) == "fd00:0:0:1::/64"


def test_gc_graph_follows_references_and_wakes_waiting_owners():
    from kubesmith.client.rest import resource_type
    from kubesmith.controllers.garbagecollector import GarbageCollector

    ctx = SimpleNamespace(client=None, informers=SimpleNamespace(
        informer=lambda rt: _FakeInformer([])))
    gc = GarbageCollector(ctx)
    cms = resource_type("v1 configmaps")

    def cm(name, uid, owners=(), **meta):
        return {"metadata": dict(name=name, namespace="n", uid=uid, ownerReferences=[
            {"apiVersion": "v1", "kind": "ConfigMap", "name": o, "uid": o, **extra}
            for o, extra in owners], **meta)}

    owner = cm("o", "o", finalizers=["foregroundDeletion"],
               deletionTimestamp="2026-01-01T00:00:00Z")
    gc._changed(cms, None, owner)
    child = cm("c", "c", [("o", {"blockOwnerDeletion": True})])
    gc._changed(cms, None, child)
    assert gc.dependents == {"o": {"c"}}
    assert [n.uid for n in gc.dependents_of("o")] == ["c"]

    def drained() -> set:
        async def take():
            items = set()
            while len(gc.queue):
                item = await gc.queue.get()
                gc.queue.done(item)
                items.add(item)
            return items
        return asyncio.run(take())

    assert drained() == {"o", "c"}
    # The dependent stops blocking: the waiting owner is looked at again.
    gc._changed(cms, child, cm("c", "c", [("o", {"blockOwnerDeletion": False})]))
    assert drained() == {"o"}
    # The owner goes: its dependents are queued, and the graph forgets it once they go.
    gc._deleted(cms, owner)
    assert drained() == {"c"}
    gc._deleted(cms, cm("c", "c", [("o", {})]))
    assert gc.dependents == {} and gc.nodes == {}


def test_toleration_matching_and_seconds():
    taint = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
    assert tolerates({"operator": "Exists"}, taint)
    assert tolerates({"key": taint["key"], "operator": "Exists", "effect": "NoExecute"}, taint)
    assert not tolerates({"key": taint["key"], "effect": "NoSchedule",
                          "operator": "Exists"}, taint)
    assert not tolerates({"key": taint["key"], "value": "x"}, taint)
    assert min_toleration_seconds([taint], []) == 0.0
    assert min_toleration_seconds([taint], [{"operator": "Exists"}]) is None
    assert min_toleration_seconds([taint], [
        {"key": taint["key"], "operator": "Exists", "tolerationSeconds": 30},
        {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]) == 5.0


def test_taints_follow_conditions():
    node = {"spec": {"taints": [{"key": "custom", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"},
                                      {"type": "DiskPressure", "status": "True"}]}}
    taints = reconcile_taints(node)
    assert {(t["key"], t["effect"]) for t in taints} == {
        ("custom", "NoSchedule"), ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/not-ready", "NoSchedule"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule")}
    assert all("timeAdded" in t for t in taints if t["effect"] == "NoExecute")
    node["spec"]["taints"] = taints
    assert reconcile_taints(node) is None
    node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    assert reconcile_taints(node) == [{"key": "custom", "effect": "NoSchedule"}]


def test_no_execute_taints_rationed_and_withheld():
    node = {"spec": {}, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
    assert needs_new_no_execute(node)
    held = reconcile_taints(node, new_no_execute=False)
    assert [(t["key"], t["effect"]) for t in held] == [
        ("node.kubernetes.io/unreachable", "NoSchedule")]
    # Swapping not-ready for unreachable needs no token.
    node["spec"]["taints"] = [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]
    assert not needs_new_no_execute(node)
    swapped = reconcile_taints(node, new_no_execute=False)
    assert {(t["key"], t["effect"]) for t in swapped} == {
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoSchedule")}
    # Master disruption mode: NoExecute taints go.
    node["spec"]["taints"] = swapped
    assert [(t["key"], t["effect"]) for t in reconcile_taints(node, no_execute=False)] == [
        ("node.kubernetes.io/unreachable", "NoSchedule")]


def test_zone_states_and_limiter():
    assert zone_state([True, True, False], 0.55) == NORMAL
    assert zone_state([False, False], 0.55) == FULL_DISRUPTION
    assert zone_state([True, False, False], 0.55) == NORMAL          # only 2 not ready
    assert zone_state([True, False, False, False], 0.55) == PARTIAL_DISRUPTION
    assert zone_state([True, True, False, False, False, True, True], 0.55) == NORMAL
    limiter = TaintLimiter(0.1)
    assert limiter.try_accept() and not limiter.try_accept()
    stopped = TaintLimiter(0.0)
    assert not stopped.try_accept()


def test_namespace_resources_and_estimates():
    plurals = [rt.plural for rt in namespace_controller.namespaced_resources()]
    assert "pods" in plurals and "configmaps" in plurals and "namespaces" not in plurals
    assert plurals.count("events") == 1 and "bindings" not in plurals
    assert namespace_controller.pod_termination_estimate([
        {"spec": {"terminationGracePeriodSeconds": 30}, "status": {"phase": "Running"}},
        {"spec": {"terminationGracePeriodSeconds": 90}, "status": {"phase": "Succeeded"}},
    ]) == 30
