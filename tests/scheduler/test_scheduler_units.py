"""Filters, scores, the fit-error message, the queue, the cache and the command line,
on fake objects."""
from __future__ import annotations

import asyncio
import random
import re

import pytest

from kubesmith.scheduler.cache import PodInfo, SchedulerCache
from kubesmith.scheduler.framework import (
    FitError,
    Framework,
    NoNodesAvailable,
    fit_error_message,
    num_feasible_nodes_to_find,
)
from kubesmith.scheduler.main import UsageError, main, parse
from kubesmith.scheduler.plugins import CycleState, run_filters, tolerates
from kubesmith.scheduler.queue import SchedulingQueue
from kubesmith.scheduler.resources import Resources, pod_non_zero_requests, pod_requests
from tests.scheduler.fakes import make_node, make_pod

CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}


def cluster(*nodes, pods=()) -> Framework:
    cache = SchedulerCache()
    for node in nodes:
        cache.add_node(node)
    for pod in pods:
        cache.add_pod(pod)
    return Framework(cache, rng=random.Random(7))


def reasons(framework: Framework, pod: dict) -> dict:
    with pytest.raises(FitError) as caught:
        framework.schedule(PodInfo(pod))
    return caught.value.reasons


# --- resources ------------------------------------------------------------------------

def test_requests_sum_containers_max_init_containers_plus_overhead():
    spec = {"containers": [{"resources": {"requests": {"cpu": "100m", "memory": "1Gi"}}},
                           {"resources": {"requests": {"cpu": "0.2", "memory": "1e3"}}}],
            "initContainers": [{"resources": {"requests": {"cpu": "1", "memory": "10Mi"}}}],
            "overhead": {"cpu": "10m", "memory": "1k"}}
    assert pod_requests(spec) == Resources(1010, 2**30 + 1000 + 1000, 0)


def test_restartable_init_containers_add_to_the_sum():
    spec = {"containers": [{"resources": {"requests": {"cpu": "500m"}}}],
            "initContainers": [{"restartPolicy": "Always",
                                "resources": {"requests": {"cpu": "250m"}}},
                               {"resources": {"requests": {"cpu": "600m"}}}]}
    assert pod_requests(spec).milli_cpu == 850


def test_quantities_round_up_and_extended_resources_count():
    spec = {"containers": [{"resources": {"requests": {
        "cpu": "1m", "memory": "0.5", "example.com/gpu": "2", "ephemeral-storage": "1Ki"}}}]}
    requests = pod_requests(spec)
    assert (requests.milli_cpu, requests.memory, requests.ephemeral) == (1, 1, 1024)
    assert requests.scalars == {"example.com/gpu": 2}


def test_non_zero_requests_default_for_scoring():
    assert pod_non_zero_requests({"containers": [{}]}) == (100, 200 * 1024 * 1024)
    assert pod_non_zero_requests({"containers": [
        {"resources": {"requests": {"cpu": "0"}}}]}) == (0, 200 * 1024 * 1024)


# --- filters --------------------------------------------------------------------------

def test_fit_error_message_is_upstreams():
    framework = cluster(make_node("cp", taints=[CONTROL_PLANE_TAINT]),
                        make_node("w1", cpu="1"), make_node("w2", cpu="1"))
    err_reasons = reasons(framework, make_pod("big", cpu="2"))
    assert fit_error_message(3, err_reasons) == (
        "0/3 nodes are available: 1 node(s) had untolerated taint "
        "{node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu. preemption: "
        "0/3 nodes are available: 3 Preemption is not helpful for scheduling.")


def test_every_insufficient_resource_is_a_reason():
    framework = cluster(make_node("n1", cpu="1", memory="1Gi", pods=1),
                        pods=[make_pod("x", node="n1")])
    assert reasons(framework, make_pod("p", cpu="2", memory="2Gi")) == {
        "n1": ("Too many pods", "Insufficient cpu", "Insufficient memory")}


def test_no_nodes():
    with pytest.raises(NoNodesAvailable, match="no nodes available to schedule pods"):
        cluster().schedule(PodInfo(make_pod("p")))


def test_requests_of_bound_and_assumed_pods_count():
    framework = cluster(make_node("n1", cpu="2"), pods=[make_pod("a", cpu="1", node="n1")])
    framework.cache.assume_pod(PodInfo(make_pod("b", cpu="500m")), "n1")
    assert framework.schedule(PodInfo(make_pod("c", cpu="500m"))) == "n1"
    assert reasons(framework, make_pod("d", cpu="501m")) == {"n1": ("Insufficient cpu",)}
    framework.cache.forget_pod("default/b")
    assert framework.schedule(PodInfo(make_pod("d", cpu="1"))) == "n1"


def test_finished_pods_hold_nothing():
    done = make_pod("a", cpu="2", node="n1")
    done["status"]["phase"] = "Succeeded"
    framework = cluster(make_node("n1", cpu="2"), pods=[done])
    assert framework.schedule(PodInfo(make_pod("b", cpu="2"))) == "n1"


def test_taints_and_tolerations():
    taint = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    framework = cluster(make_node("n1", taints=[taint]))
    assert reasons(framework, make_pod("p")) == {
        "n1": ("node(s) had untolerated taint {dedicated: gpu}",)}
    tolerated = make_pod("q", tolerations=[{"key": "dedicated", "operator": "Equal",
                                            "value": "gpu", "effect": "NoSchedule"}])
    assert framework.schedule(PodInfo(tolerated)) == "n1"
    assert tolerates({"operator": "Exists"}, taint)
    assert not tolerates({"key": "dedicated", "value": "cpu"}, taint)
    assert not tolerates({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"},
                         taint)


def test_prefer_no_schedule_only_scores():
    soft = {"key": "spot", "effect": "PreferNoSchedule"}
    framework = cluster(make_node("a", taints=[soft]), make_node("b"))
    assert {framework.schedule(PodInfo(make_pod(f"p{i}"))) for i in range(10)} == {"b"}


def test_unschedulable_node_and_its_toleration():
    framework = cluster(make_node("n1", unschedulable=True))
    assert reasons(framework, make_pod("p")) == {"n1": ("node(s) were unschedulable",)}
    tolerant = make_pod("q", tolerations=[{"key": "node.kubernetes.io/unschedulable",
                                           "operator": "Exists", "effect": "NoSchedule"}])
    assert framework.schedule(PodInfo(tolerant)) == "n1"


def test_node_selector_and_required_node_affinity():
    framework = cluster(make_node("a", labels={"disk": "ssd", "gen": "3"}),
                        make_node("b", labels={"disk": "hdd", "gen": "5"}))
    assert framework.schedule(PodInfo(make_pod("p", nodeSelector={"disk": "hdd"}))) == "b"
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "gen", "operator": "Gt",
                                                     "values": ["4"]}]}]}}}
    assert framework.schedule(PodInfo(make_pod("q", affinity=affinity))) == "b"
    by_name = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                "values": ["a"]}]}]}}}
    assert framework.schedule(PodInfo(make_pod("r", affinity=by_name))) == "a"
    assert reasons(framework, make_pod("s", nodeSelector={"disk": "nvme"})) == {
        "a": ("node(s) didn't match Pod's node affinity/selector",),
        "b": ("node(s) didn't match Pod's node affinity/selector",)}


def test_preferred_node_affinity_scores():
    framework = cluster(make_node("a"), make_node("b", labels={"fast": "yes"}))
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "preference": {"matchExpressions": [
            {"key": "fast", "operator": "Exists"}]}}]}}
    assert {framework.schedule(PodInfo(make_pod(f"p{i}", affinity=affinity)))
            for i in range(10)} == {"b"}


def test_host_ports():
    def with_port(name, port, ip=None):
        pod = make_pod(name)
        entry = {"containerPort": 80, "hostPort": port}
        if ip:
            entry["hostIP"] = ip
        pod["spec"]["containers"][0]["ports"] = [entry]
        return pod
    framework = cluster(make_node("n1"), pods=[{**with_port("a", 8080), "spec": {
        **with_port("a", 8080)["spec"], "nodeName": "n1"}}])
    assert reasons(framework, with_port("b", 8080)) == {
        "n1": ("node(s) didn't have free ports for the requested pod ports",)}
    assert framework.schedule(PodInfo(with_port("c", 8081))) == "n1"


def test_least_allocated_spreads_load():
    framework = cluster(make_node("a"), make_node("b"),
                        pods=[make_pod("x", cpu="3", memory="6Gi", node="a")])
    assert framework.schedule(PodInfo(make_pod("p", cpu="100m"))) == "b"


def test_pods_of_one_owner_spread_over_nodes():
    framework = cluster(*(make_node(f"n{i}") for i in range(3)))
    owner = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-1",
              "controller": True}]
    placed = []
    for i in range(6):
        pod = make_pod(f"p{i}")
        pod["metadata"]["ownerReferences"] = owner
        info = PodInfo(pod)
        node = framework.schedule(info)
        framework.cache.assume_pod(info, node)
        placed.append(node)
    assert sorted(placed.count(n) for n in ("n0", "n1", "n2")) == [2, 2, 2]


def _anti_affinity(topology_key="kubernetes.io/hostname", app="web"):
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": topology_key}]}}


def test_pod_anti_affinity_by_hostname_and_zone():
    nodes = [make_node("a", labels={"topology.kubernetes.io/zone": "z1"}),
             make_node("b", labels={"topology.kubernetes.io/zone": "z1"}),
             make_node("c", labels={"topology.kubernetes.io/zone": "z2"})]
    framework = cluster(*nodes, pods=[make_pod("w0", labels={"app": "web"}, node="a")])
    pod = make_pod("w1", labels={"app": "web"}, affinity=_anti_affinity())
    assert reasons(cluster(nodes[0], pods=[make_pod("w0", labels={"app": "web"}, node="a")]),
                   pod) == {"a": ("node(s) didn't match pod anti-affinity rules",)}
    zone_pod = make_pod("w2", labels={"app": "web"},
                        affinity=_anti_affinity("topology.kubernetes.io/zone"))
    assert {framework.schedule(PodInfo(zone_pod)) for _ in range(5)} == {"c"}


def test_existing_pods_anti_affinity_is_honoured():
    existing = make_pod("db", labels={"app": "db"}, node="a",
                        affinity=_anti_affinity(app="web"))
    framework = cluster(make_node("a"), make_node("b"), pods=[existing])
    assert {framework.schedule(PodInfo(make_pod(f"w{i}", labels={"app": "web"})))
            for i in range(5)} == {"b"}
    only_a = cluster(make_node("a"), pods=[existing])
    assert reasons(only_a, make_pod("w", labels={"app": "web"})) == {
        "a": ("node(s) didn't satisfy existing pods anti-affinity rules",)}


def test_pod_affinity():
    affinity = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "cache"}},
         "topologyKey": "kubernetes.io/hostname"}]}}
    framework = cluster(make_node("a"), make_node("b"),
                        pods=[make_pod("cache", labels={"app": "cache"}, node="b")])
    assert {framework.schedule(PodInfo(make_pod(f"p{i}", affinity=affinity)))
            for i in range(5)} == {"b"}
    lonely = cluster(make_node("a"))
    assert reasons(lonely, make_pod("p", affinity=affinity)) == {
        "a": ("node(s) didn't match pod affinity rules",)}
    # The first pod of a group that selects itself may go anywhere.
    first = make_pod("c0", labels={"app": "cache"}, affinity=affinity)
    assert lonely.schedule(PodInfo(first)) == "a"


def test_topology_spread_do_not_schedule():
    constraint = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                   "whenUnsatisfiable": "DoNotSchedule",
                   "labelSelector": {"matchLabels": {"app": "web"}}}]
    nodes = [make_node("a", labels={"topology.kubernetes.io/zone": "z1"}),
             make_node("b", labels={"topology.kubernetes.io/zone": "z2"}),
             make_node("c")]
    framework = cluster(*nodes, pods=[make_pod("w0", labels={"app": "web"}, node="a")])
    pod = make_pod("w1", labels={"app": "web"}, topologySpreadConstraints=constraint)
    assert framework.schedule(PodInfo(pod)) == "b"
    # z2's only node is tainted, yet its zone counts (nodeTaintsPolicy Ignore): z1 is full.
    nodes[1]["spec"]["taints"] = [{"key": "k", "effect": "NoSchedule"}]
    framework = cluster(*nodes, pods=[make_pod("w0", labels={"app": "web"}, node="a")])
    assert reasons(framework, pod) == {
        "a": ("node(s) didn't match pod topology spread constraints",),
        "b": ("node(s) had untolerated taint {k: }",),
        "c": ("node(s) didn't match pod topology spread constraints (missing required label)",)}


def test_adaptive_share_of_nodes_examined():
    assert num_feasible_nodes_to_find(50) == 50
    assert num_feasible_nodes_to_find(100) == 100
    assert num_feasible_nodes_to_find(500) == 230
    assert num_feasible_nodes_to_find(5000) == 500
    assert num_feasible_nodes_to_find(10000) == 500
    assert num_feasible_nodes_to_find(300, 10) == 100


def test_filters_stop_at_the_first_failing_plugin():
    node = make_node("n", cpu="1", taints=[{"key": "k", "effect": "NoExecute"}])
    cache = SchedulerCache()
    info = cache.add_node(node)
    state = CycleState(PodInfo(make_pod("p", cpu="2")), cache.node_infos())
    assert run_filters(state, info) == ("node(s) had untolerated taint {k: }",)


# --- queue ----------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_queue_orders_by_priority_then_age_and_backs_off():
    async def scenario():
        clock = Clock()
        queue = SchedulingQueue(clock=clock)
        old = make_pod("old")
        old["metadata"]["creationTimestamp"] = "2025-01-01T00:00:00Z"
        queue.add(PodInfo(make_pod("young")))
        queue.add(PodInfo(old))
        queue.add(PodInfo(make_pod("vip", priority=1000)))
        order = [(await queue.pop()).key for _ in range(3)]
        assert order == ["default/vip", "default/old", "default/young"]
        # "vip" and "old" are being tried; "young" fails.
        young = queue._in_flight["default/young"]
        queue.add_unschedulable(young)
        assert queue.counts()["unschedulable"] == 1
        # A cluster event within its backoff (1 s after the first attempt) -> backoff.
        queue.move_all_to_active_or_backoff()
        assert queue.counts()["backoff"] == 1
        clock.now += 1.01
        queue.flush_backoff()
        entry = await asyncio.wait_for(queue.pop(), 1)
        assert entry.key == "default/young" and entry.attempts == 2
        assert queue.backoff_duration(entry) == 2.0
        entry.attempts = 10
        assert queue.backoff_duration(entry) == 10.0
    asyncio.run(scenario())


def test_queue_event_during_cycle_sends_pod_to_backoff():
    async def scenario():
        clock = Clock()
        queue = SchedulingQueue(clock=clock)
        queue.add(PodInfo(make_pod("p")))
        entry = await queue.pop()
        queue.move_all_to_active_or_backoff()    # e.g. a node was added meanwhile
        queue.add_unschedulable(entry)
        assert queue.counts()["backoff"] == 1
        queue.add(PodInfo(make_pod("q")))
        second = await queue.pop()
        queue.add_unschedulable(second)
        assert queue.counts()["unschedulable"] == 1
        clock.now += 59
        queue.flush_unschedulable()
        assert queue.counts()["unschedulable"] == 1
        clock.now += 1
        queue.flush_unschedulable()
        assert queue.counts()["unschedulable"] == 0
        # Deleted while waiting: gone from every set.
        queue.delete("default/q")
        queue.delete("default/p")
        assert queue.counts() == {"active": 0, "backoff": 0, "unschedulable": 0,
                                  "in_flight": 0}
    asyncio.run(scenario())


def test_queue_ignores_status_only_updates_of_unschedulable_pods():
    async def scenario():
        queue = SchedulingQueue(clock=Clock())
        pod = make_pod("p")
        queue.add(PodInfo(pod))
        queue.add_unschedulable(await queue.pop())
        queue.update(PodInfo(pod), spec_changed=False)
        assert queue.counts()["unschedulable"] == 1
        queue.update(PodInfo(pod), spec_changed=True)
        assert queue.counts()["unschedulable"] == 0
    asyncio.run(scenario())


def test_cache_node_removed_before_its_pods():
    cache = SchedulerCache()
    cache.add_node(make_node("n1"))
    cache.add_pod(make_pod("a", cpu="1", node="n1"))
    cache.remove_node("n1")
    assert len(cache) == 0 and "n1" in cache.nodes
    cache.remove_pod("default/a")
    assert "n1" not in cache.nodes


def test_anti_affinity_namespaces_and_namespace_selector():
    existing = make_pod("w0", namespace="team-a", labels={"app": "web"}, node="a")
    labels = {"team-a": {"tier": "prod"}, "team-b": {"tier": "dev"}}
    cache = SchedulerCache()
    cache.add_node(make_node("a"))
    cache.add_pod(existing)
    framework = Framework(cache, namespace_labels=lambda name: labels.get(name, {}))

    def pod_with(term_extra):
        term = {"labelSelector": {"matchLabels": {"app": "web"}},
                "topologyKey": "kubernetes.io/hostname", **term_extra}
        return make_pod("p", namespace="team-b", labels={"app": "web"}, affinity={
            "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}})

    # Own namespace only (neither field): the web pod of team-a does not count.
    assert framework.schedule(PodInfo(pod_with({}))) == "a"
    assert framework.schedule(PodInfo(pod_with(
        {"namespaceSelector": {"matchLabels": {"tier": "qa"}}}))) == "a"
    for extra in ({"namespaces": ["team-a"]}, {"namespaceSelector": {}},
                  {"namespaceSelector": {"matchLabels": {"tier": "prod"}}}):
        assert reasons(framework, pod_with(extra)) == {
            "a": ("node(s) didn't match pod anti-affinity rules",)}


def test_topology_spread_schedule_anyway_scores_the_emptier_zone():
    soft = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
             "whenUnsatisfiable": "ScheduleAnyway",
             "labelSelector": {"matchLabels": {"app": "web"}}}]
    zone = "topology.kubernetes.io/zone"
    framework = cluster(make_node("a", labels={zone: "z1"}),
                        make_node("b", labels={zone: "z1"}), make_node("c", labels={zone: "z2"}),
                        pods=[make_pod("w0", labels={"app": "web"}, node="a"),
                              make_pod("w1", labels={"app": "web"}, node="a"),
                              make_pod("batch", cpu="3", node="c")])
    # b is the emptiest node, but c's zone has none of the web pods.
    pod = make_pod("w2", labels={"app": "web"}, topologySpreadConstraints=soft)
    assert {framework.schedule(PodInfo(pod)) for _ in range(5)} == {"c"}


def test_nodes_are_examined_zone_by_zone_in_turn():
    cache = SchedulerCache()
    zone = "topology.kubernetes.io/zone"
    for name, z in (("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("c1", "c"),
                    ("c2", "c")):
        cache.add_node(make_node(name, labels={zone: z}))
    assert [n.name for n in cache.node_infos()] == ["a1", "b1", "c1", "a2", "c2", "a3"]
    cache.update_node(make_node("a3", labels={zone: "b"}))
    assert [n.name for n in cache.node_infos()] == ["a1", "a3", "c1", "a2", "b1", "c2"]


def test_command_line():
    options = parse(["--kubeconfig=/etc/kubernetes/scheduler.conf",
                     "--authentication-kubeconfig=/etc/kubernetes/scheduler.conf",
                     "--authorization-kubeconfig=/etc/kubernetes/scheduler.conf",
                     "--bind-address=127.0.0.1", "--leader-elect=true",
                     "--leader-elect-lease-duration=1m", "--leader-elect-renew-deadline=30s",
                     "--leader-elect-retry-period=500ms", "-v=2"])
    assert (options.bind_address, options.secure_port, options.leader_elect) == (
        "127.0.0.1", 10259, True)
    assert (options.leader_elect_lease_duration, options.leader_elect_renew_deadline,
            options.leader_elect_retry_period, options.v) == (60.0, 30.0, 0.5, 2)
    defaults = parse(["--kubeconfig=k", "--leader-elect"])
    assert (defaults.bind_address, defaults.leader_elect_lease_duration,
            defaults.leader_elect_resource_namespace, defaults.leader_elect_resource_name) == (
        "0.0.0.0", 15.0, "kube-system", "kube-scheduler")
    for bad, message in ((["--kubeconfig=k", "--no-such-flag"], "unknown flag: --no-such-flag"),
                         ([], "--kubeconfig is required"),
                         (["--kubeconfig=k", "--leader-elect-renew-deadline=20s"],
                          "leaseDuration must be greater than renewDeadline"),
                         (["--kubeconfig=k", "--leader-elect-retry-period=9s"],
                          "renewDeadline must be greater than retryPeriod*JitterFactor")):
        with pytest.raises(UsageError, match=re.escape(message)):
            parse(bad)
    assert main(["--kubeconfig=k", "--bogus"]) == 2
