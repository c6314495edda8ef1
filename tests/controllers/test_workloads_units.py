"""The workload controllers' pure parts: cron schedules, rollout arithmetic, hashes,
pod ordering, expectations, node eligibility."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from kubesmith.controllers import CONTROLLERS
from kubesmith.controllers.common import (
    Expectations,
    compute_hash,
    deletion_rank,
    find_port,
    resolve_int_or_percent,
    safe_encode,
    slow_start_batches,
)
from kubesmith.controllers.cronjob import (
    Schedule,
    ScheduleError,
    job_name,
    most_recent_due,
    parse_schedule,
)
from kubesmith.controllers.daemonset import node_should_run, pod_node
from kubesmith.controllers.deployment import equal_ignore_hash, fenceposts, new_rs_replicas
from kubesmith.controllers.job import format_indexes


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def test_registered_names_are_upstreams():
    import kubesmith.controllers.cronjob  # noqa: F401
    import kubesmith.controllers.daemonset  # noqa: F401
    import kubesmith.controllers.deployment  # noqa: F401
    import kubesmith.controllers.endpoints  # noqa: F401
    import kubesmith.controllers.endpointslice  # noqa: F401
    import kubesmith.controllers.job  # noqa: F401
    import kubesmith.controllers.replicaset  # noqa: F401
    import kubesmith.controllers.statefulset  # noqa: F401
    assert {"replicaset", "replicationcontroller", "deployment", "daemonset", "statefulset",
            "job", "cronjob", "endpoint", "endpointslice", "ttl-after-finished"} \
        <= set(CONTROLLERS)


# --- cron -----------------------------------------------------------------------------

@pytest.mark.parametrize("schedule, after, expected", [
    ("* * * * *", utc(2024, 1, 1, 10, 0, 30), utc(2024, 1, 1, 10, 1)),
    ("*/15 * * * *", utc(2024, 1, 1, 10, 1), utc(2024, 1, 1, 10, 15)),
    ("0 9-17/4 * * *", utc(2024, 1, 1, 10, 0), utc(2024, 1, 1, 13, 0)),
    ("30 2 1,15 * *", utc(2024, 1, 2, 0, 0), utc(2024, 1, 15, 2, 30)),
    ("0 0 * * mon-fri", utc(2024, 1, 5, 12, 0), utc(2024, 1, 8, 0, 0)),   # Fri -> Mon
    ("0 0 * * 7", utc(2024, 1, 1, 0, 0), utc(2024, 1, 7, 0, 0)),          # 7 is Sunday
    ("0 0 1 feb *", utc(2024, 3, 1), utc(2025, 2, 1)),
    ("0 0 29 2 *", utc(2024, 3, 1), utc(2028, 2, 29)),
    ("@hourly", utc(2024, 1, 1, 10, 30), utc(2024, 1, 1, 11, 0)),
    ("@weekly", utc(2024, 1, 1), utc(2024, 1, 7)),
    ("@yearly", utc(2024, 6, 1), utc(2025, 1, 1)),
    # Both day fields restricted: either matches (the 13th, or any Friday).
    ("0 0 13 * 5", utc(2024, 1, 1), utc(2024, 1, 5)),
    ("0 0 13 * 5", utc(2024, 1, 12, 1), utc(2024, 1, 13)),
    # Day of month restricted, weekday "*": only the day of month.
    ("0 0 13 * *", utc(2024, 1, 1), utc(2024, 1, 13)),
])
def test_schedule_next(schedule, after, expected):
    assert Schedule(schedule).next(after) == expected


@pytest.mark.parametrize("bad", ["* * * *", "60 * * * *", "* 24 * * *", "* * 0 * *",
                                 "* * * 13 *", "*/0 * * * *", "a * * * *", "@often",
                                 "5-1 * * * *", "1,,2 * * * *"])
def test_schedule_rejects(bad):
    with pytest.raises(ScheduleError):
        Schedule(bad)


def test_most_recent_due():
    every5 = Schedule("*/5 * * * *")
    created = utc(2024, 1, 1, 10, 2).timestamp()
    # Nothing due yet: the next time is 10:05.
    assert most_recent_due(every5, created, utc(2024, 1, 1, 10, 4).timestamp()) == (
        None, 0, utc(2024, 1, 1, 10, 5).timestamp())
    # Two passed (10:05, 10:10): the latest one is run, once.
    due, missed, upcoming = most_recent_due(every5, created,
                                            utc(2024, 1, 1, 10, 12).timestamp())
    assert (due, missed, upcoming) == (utc(2024, 1, 1, 10, 10).timestamp(), 2,
                                       utc(2024, 1, 1, 10, 15).timestamp())
    # A long gap is quick and counts as too many.
    due, missed, _ = most_recent_due(Schedule("* * * * *"), utc(2023, 1, 1).timestamp(),
                                     utc(2024, 1, 1, 0, 0, 30).timestamp())
    assert due == utc(2024, 1, 1).timestamp() and missed > 100
    assert job_name({"metadata": {"name": "tick"}}, utc(2024, 1, 1).timestamp()) == \
        f"tick-{int(utc(2024, 1, 1).timestamp()) // 60}"


# --- rollout arithmetic ---------------------------------------------------------------

def _deploy(replicas, surge, unavailable):
    return {"spec": {"replicas": replicas, "strategy": {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}}}


def _rs(replicas):
    return {"spec": {"replicas": replicas}}


def test_fenceposts_round_like_upstream():
    assert fenceposts(_deploy(10, "25%", "25%")) == (3, 2)      # surge up, unavailable down
    assert fenceposts(_deploy(3, "10%", "10%")) == (1, 0)
    assert fenceposts(_deploy(3, 0, 0)) == (0, 1)               # both 0 would block
    assert fenceposts(_deploy(4, 2, 1)) == (2, 1)
    assert resolve_int_or_percent("50%", 5, True) == 3
    assert resolve_int_or_percent("50%", 5, False) == 2


def test_new_rs_replicas():
    d = _deploy(4, 1, 1)
    # 4 old + 0 new: one over the limit is allowed.
    assert new_rs_replicas(d, [_rs(4), _rs(0)], _rs(0)) == 1
    # At the limit already: no more.
    assert new_rs_replicas(d, [_rs(4), _rs(1)], _rs(1)) == 1
    # Old ones scaled down: room again, never past spec.replicas.
    assert new_rs_replicas(d, [_rs(1), _rs(3)], _rs(3)) == 4
    recreate = {"spec": {"replicas": 3, "strategy": {"type": "Recreate"}}}
    assert new_rs_replicas(recreate, [], None) == 3


def test_template_hash_is_stable_and_safe():
    template = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
        {"name": "a", "image": "x"}]}}
    same = {"spec": {"containers": [{"image": "x", "name": "a"}]},
            "metadata": {"labels": {"app": "web"}}}
    assert compute_hash(template) == compute_hash(same)
    assert compute_hash(template) != compute_hash(template, 1)
    assert set(compute_hash(template)) <= set("bcdfghjklmnpqrstvwxz2456789")
    assert safe_encode("0123456789") == "456789bcdf"    # byte % 27, as upstream
    labelled = {"metadata": {"labels": {"app": "web", "pod-template-hash": "abc"},
                             "creationTimestamp": None}, "spec": template["spec"]}
    assert equal_ignore_hash(labelled, template)


def test_slow_start_batches():
    assert slow_start_batches(0) == []
    assert slow_start_batches(1) == [1]
    assert slow_start_batches(10) == [1, 2, 4, 3]


# --- pods -----------------------------------------------------------------------------

def _pod(name, node=None, phase="Pending", ready=False, created="2024-01-01T00:00:00Z"):
    return {"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"nodeName": node} if node else {},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": "True" if ready else "False",
                 "lastTransitionTime": created}]}}


def test_deletion_order_like_upstream_active_pods():
    pods = [_pod("ready", "n", "Running", True), _pod("unscheduled"),
            _pod("pending", "n"), _pod("running-not-ready", "n", "Running"),
            _pod("ready-newer", "n", "Running", True, "2024-01-02T00:00:00Z")]
    order = [p["metadata"]["name"] for p in sorted(pods, key=deletion_rank)]
    assert order == ["unscheduled", "pending", "running-not-ready", "ready-newer", "ready"]


def test_expectations():
    now = [0.0]
    expectations = Expectations(timeout=300, clock=lambda: now[0])
    assert expectations.satisfied("ns/a")
    expectations.expect("ns/a", adds=2)
    assert not expectations.satisfied("ns/a")
    expectations.creation_observed("ns/a")
    expectations.creation_observed("ns/a")
    assert expectations.satisfied("ns/a")
    expectations.expect("ns/a", deletes=1, uids=["u1"])
    expectations.deletion_observed("ns/a", "other")
    assert not expectations.satisfied("ns/a")
    expectations.deletion_observed("ns/a", "u1")
    expectations.deletion_observed("ns/a", "u1")      # seen twice, counted once
    assert expectations.satisfied("ns/a")
    expectations.expect("ns/a", adds=1)
    now[0] = 301
    assert expectations.satisfied("ns/a")             # expired


def test_find_port():
    pod = {"spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080},
                                              {"name": "dns", "containerPort": 53,
                                               "protocol": "UDP"}]}]}}
    assert find_port(pod, {"port": 80, "targetPort": "http"}) == 8080
    assert find_port(pod, {"port": 53, "targetPort": "dns", "protocol": "UDP"}) == 53
    assert find_port(pod, {"port": 53, "targetPort": "dns"}) is None   # TCP asked
    assert find_port(pod, {"port": 80, "targetPort": 9000}) == 9000
    assert find_port(pod, {"port": 80}) == 80


def test_format_indexes():
    assert format_indexes(set()) == ""
    assert format_indexes({0, 1, 2, 4, 6, 7}) == "0-2,4,6-7"


# --- daemon sets ----------------------------------------------------------------------

def _node(name, labels=None, taints=None):
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"taints": taints or []}}


def test_daemon_node_eligibility():
    spec = {"containers": [{"name": "a"}]}
    assert node_should_run(spec, _node("a"))
    # Default daemon tolerations: not-ready NoExecute and unschedulable NoSchedule.
    assert node_should_run(spec, _node("a", taints=[
        {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]))
    tainted = _node("a", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
    assert not node_should_run(spec, tainted)
    assert node_should_run(dict(spec, tolerations=[{"key": "dedicated", "operator": "Equal",
                                                    "value": "db"}]), tainted)
    assert node_should_run(spec, _node("a", taints=[{"key": "x", "effect": "PreferNoSchedule"}]))
    # network-unavailable is tolerated for host-network pods only.
    network = _node("a", taints=[{"key": "node.kubernetes.io/network-unavailable",
                                  "effect": "NoSchedule"}])
    assert not node_should_run(spec, network)
    assert node_should_run(dict(spec, hostNetwork=True), network)
    selective = dict(spec, nodeSelector={"pool": "x"})
    assert node_should_run(selective, _node("a", {"pool": "x"}))
    assert not node_should_run(selective, _node("a", {"pool": "y"}))
    affinity = dict(spec, affinity={"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n9"]}]},
        ]}}})
    assert node_should_run(affinity, _node("n1", {"zone": "b"}))
    assert node_should_run(affinity, _node("n9"))
    assert not node_should_run(affinity, _node("n1", {"zone": "c"}))


def test_pod_node():
    pinned = {"spec": {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}}}
    assert pod_node(pinned) == "n1"
    assert pod_node({"spec": {"nodeName": "n2"}}) == "n2"
    assert pod_node({"spec": {}}) is None


def test_most_recent_due_in_a_time_zone():
    from zoneinfo import ZoneInfo
    try:
        zone = ZoneInfo("America/New_York")
    except Exception:     # no tz database on this host
        pytest.skip("no tz database")
    nine_daily = Schedule("0 9 * * *")
    # 09:00 in New York in January is 14:00 UTC.
    due, missed, upcoming = most_recent_due(nine_daily, utc(2024, 1, 10, 12).timestamp(),
                                            utc(2024, 1, 10, 15).timestamp(), zone)
    assert due == utc(2024, 1, 10, 14).timestamp() and missed == 1
    assert upcoming == utc(2024, 1, 11, 14).timestamp()


def test_every_schedule():
    every = parse_schedule("@every 1h30m")
    assert every.next(utc(2024, 1, 1, 10, 0, 0)) == utc(2024, 1, 1, 11, 30)
    assert parse_schedule("@every 90s").next(utc(2024, 1, 1)) == utc(2024, 1, 1, 0, 1, 30)
    due, missed, upcoming = most_recent_due(parse_schedule("@every 10m"),
                                            utc(2024, 1, 1).timestamp(),
                                            utc(2024, 1, 1, 0, 25).timestamp())
    assert (due, missed) == (utc(2024, 1, 1, 0, 20).timestamp(), 2)
    assert upcoming == utc(2024, 1, 1, 0, 30).timestamp()
    for bad in ("@every", "@every 5x", "@every 5m junk"):
        with pytest.raises(ScheduleError):
            parse_schedule(bad)


def test_endpoints_truncated_past_capacity():
    from kubesmith.controllers.endpoints import truncate
    subsets = [{"addresses": [{"ip": f"10.0.0.{i}"} for i in range(6)],
                "notReadyAddresses": [{"ip": f"10.0.1.{i}"} for i in range(2)],
                "ports": [{"port": 80}]},
               {"addresses": [{"ip": f"10.0.2.{i}"} for i in range(4)],
                "ports": [{"port": 81}]}]
    assert truncate(subsets, limit=12) == (subsets, False)
    trimmed, truncated = truncate(subsets, limit=6)
    assert truncated
    assert [len(s.get("addresses", [])) for s in trimmed] == [4, 2]
    assert all("notReadyAddresses" not in s for s in trimmed)     # ready ones first
