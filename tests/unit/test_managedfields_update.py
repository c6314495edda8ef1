"""An update's managedFields, with entries decoded only when touched and status writes
compared on status alone, equal those of decoding and comparing everything."""
from __future__ import annotations

import copy
import random

import kubesmith.apiserver.server  # noqa: F401  (registers the kinds)
from bench.apiserver import make_pod
from kubesmith.api.registry import REGISTRY
from kubesmith.apiserver import managedfields as mf

PODS = REGISTRY.get("", "v1", "pods")


def reference_update(rt, manager, subresource, old, new):
    """Every entry decoded, the whole objects compared (the definition)."""
    node = mf.root_of(rt)
    entries = mf._base_entries(old, new)
    for entry in entries:
        entry.fields  # noqa: B018
    added, modified, removed = mf.compare(node, mf._body(old) or {}, mf._body(new))
    changed = mf.scoped(rt, subresource, added | modified)
    removed = mf.without(removed, mf._STRIPPED)
    mine = mf.Entry(manager, mf.UPDATE, rt.api_version, subresource=subresource)
    for entry in entries:
        if entry.key == mine.key:
            mine = entry
            entry.fields -= removed
        else:
            entry.fields -= changed | removed
    if changed:
        if mine not in entries:
            entries.append(mine)
        mine.fields |= changed
        mine.time = "T"
    mf.set_entries(new, entries)


def without_times(obj):
    return [dict(e, time=None) for e in obj["metadata"].get("managedFields") or []]


def both(manager, subresource, old, new):
    """(lazy result, reference result) of the same update, at the same time."""
    lazy, ref = copy.deepcopy(new), copy.deepcopy(new)
    timestamp = mf.objectmeta.timestamp
    mf.objectmeta.timestamp = lambda: "T"
    try:
        mf.record_update(PODS, manager, subresource, copy.deepcopy(old), lazy)
    finally:
        mf.objectmeta.timestamp = timestamp
    reference_update(PODS, manager, subresource, copy.deepcopy(old), ref)
    return lazy, ref


def status_write(old, status):
    """What a status write stores: the old object with the new status."""
    new = copy.deepcopy(old)
    new["status"] = status
    return new


RUNNING = {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}],
           "conditions": [{"type": t, "status": "True"} for t in
                          ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
           "containerStatuses": [{"name": "web", "ready": True, "restartCount": 0,
                                  "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}]}


def created_pod():
    pod = make_pod("p", "ns")
    pod["status"] = {}
    PODS.apply_defaults(pod)
    mf.record_update(PODS, "kube-controller-manager", "", None, pod)
    return pod


def test_status_writes_and_spec_updates_equal_the_reference():
    rng = random.Random(3)
    pod = created_pod()
    for step in range(60):
        if step % 3 == 2:
            new = copy.deepcopy(pod)    # a main-resource update by someone else
            labels = new["metadata"].setdefault("labels", {})
            labels[f"k{rng.randrange(4)}"] = str(step)
            if rng.random() < 0.5 and labels:
                labels.pop(rng.choice(sorted(labels)))
            new["spec"]["activeDeadlineSeconds"] = step
            manager, subresource = rng.choice(["kubectl", "kube-controller-manager"]), ""
        else:
            status = copy.deepcopy(RUNNING)
            status["conditions"] = [c for c in status["conditions"] if rng.random() > 0.2]
            if rng.random() < 0.3:
                status.pop("podIPs")
            status["containerStatuses"][0]["restartCount"] = step
            new = status_write(pod, status)
            manager, subresource = rng.choice(["kubelet", "hollow"]), "status"
        lazy, ref = both(manager, subresource, pod, new)
        assert without_times(lazy) == without_times(ref), step
        pod = lazy


def test_entries_a_status_write_does_not_touch_are_written_back_as_stored():
    pod = created_pod()
    creator = copy.deepcopy(pod["metadata"]["managedFields"][0]["fieldsV1"])
    new = status_write(pod, RUNNING)
    mf.record_update(PODS, "kubelet", "status", pod, new)
    entries = new["metadata"]["managedFields"]
    assert [e["manager"] for e in entries] == ["kube-controller-manager", "kubelet"]
    assert entries[0]["fieldsV1"] == creator
    assert set(entries[1]["fieldsV1"]) == {"f:status"}


def test_managed_fields_a_client_sends_are_re_encoded():
    pod = created_pod()
    new = copy.deepcopy(pod)
    # The same fields in another order: written back in upstream's order.
    fields = new["metadata"]["managedFields"][0]["fieldsV1"]
    new["metadata"]["managedFields"][0]["fieldsV1"] = dict(reversed(list(fields.items())))
    new["metadata"]["labels"]["extra"] = "1"
    lazy, ref = both("kubectl", "", pod, new)
    assert without_times(lazy) == without_times(ref)
    assert list(lazy["metadata"]["managedFields"][0]["fieldsV1"]) == list(fields)
