"""The Priority admission plugin's decisions, with priority classes from a fake source."""
from __future__ import annotations

import asyncio

import pytest

from kubesmith.api import REGISTRY
from kubesmith.api.kinds.scheduling import SYSTEM_PRIORITY_CLASSES
from kubesmith.apiserver import admission, errors
from kubesmith.apiserver.authn import UserInfo
from kubesmith.apiserver.priority import Priority, default_class

PODS = REGISTRY.get("", "v1", "pods")
CLASSES = REGISTRY.get("scheduling.k8s.io", "v1", "priorityclasses")


class FakeClasses:
    def __init__(self, *classes: dict):
        self.by_name = {c["metadata"]["name"]: c for c in classes}

    async def get(self, name):
        return self.by_name.get(name)

    async def list(self, *, fresh=False):
        return list(self.by_name.values())


def _pc(name, value, **fields):
    return {"metadata": {"name": name}, "value": value,
            "preemptionPolicy": "PreemptLowerPriority", **fields}


def _pod(name="p", **spec):
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": dict(spec)}


def _run(plugin, operation, rt, obj, old=None, name=None, subresource=""):
    name = name or ((obj or old or {}).get("metadata") or {}).get("name", "")
    request = admission.Request(operation, rt, subresource, "ns" if rt is PODS else "", name,
                                obj, old, UserInfo(name="admin"))
    asyncio.run(admission.Chain([plugin]).run(request))
    return request.obj


def _refusal(plugin, *args, **kwargs) -> str:
    with pytest.raises(errors.APIError) as caught:
        _run(plugin, *args, **kwargs)
    assert caught.value.code == 403
    return caught.value.message


def test_named_class_sets_priority_and_policy():
    plugin = Priority(FakeClasses(_pc("high", 1000, preemptionPolicy="Never")))
    spec = _run(plugin, admission.CREATE, PODS, _pod(priorityClassName="high"))["spec"]
    assert spec["priority"] == 1000 and spec["preemptionPolicy"] == "Never"


def test_missing_class_is_forbidden():
    message = _refusal(Priority(FakeClasses()), admission.CREATE, PODS,
                       _pod("x", priorityClassName="gone"))
    assert message == 'pods "x" is forbidden: no PriorityClass with name gone was found'


def test_a_different_priority_in_the_pod_is_forbidden():
    plugin = Priority(FakeClasses(_pc("high", 1000)))
    message = _refusal(plugin, admission.CREATE, PODS,
                       _pod("x", priorityClassName="high", priority=5))
    assert message == ('pods "x" is forbidden: the integer value of priority (5) must not be '
                       "provided in pod spec; priority admission controller computed 1000 "
                       "from the given PriorityClass name")
    # Without any class the computed priority is 0.
    message = _refusal(Priority(FakeClasses()), admission.CREATE, PODS, _pod("y", priority=5))
    assert "the integer value of priority (5)" in message and "computed 0" in message
    # The class's own value is accepted.
    spec = _run(plugin, admission.CREATE, PODS,
                _pod(priorityClassName="high", priority=1000))["spec"]
    assert spec["priority"] == 1000


def test_a_different_preemption_policy_is_forbidden():
    plugin = Priority(FakeClasses(_pc("calm", 10, preemptionPolicy="PreemptLowerPriority"),
                                  _pc("never", 10, preemptionPolicy="Never")))
    message = _refusal(plugin, admission.CREATE, PODS,
                       _pod("x", priorityClassName="calm", preemptionPolicy="Never"))
    assert message == ('pods "x" is forbidden: the string value of PreemptionPolicy (Never) '
                       "must not be provided in pod spec; priority admission controller "
                       "computed PreemptLowerPriority from the given PriorityClass name")


def test_global_default_applies_without_a_class_name():
    plugin = Priority(FakeClasses(_pc("plain", 5), _pc("fallback", 42, globalDefault=True,
                                                       preemptionPolicy="Never")))
    spec = _run(plugin, admission.CREATE, PODS, _pod())["spec"]
    assert spec == {"priority": 42, "preemptionPolicy": "Never",
                    "priorityClassName": "fallback"}
    spec = _run(Priority(FakeClasses(_pc("plain", 5))), admission.CREATE, PODS,
                {"metadata": {"name": "bare"}, "spec": {}})["spec"]
    assert spec == {"priority": 0, "preemptionPolicy": "PreemptLowerPriority"}


def test_lowest_default_wins_after_a_race():
    chosen = default_class([_pc("a", 50, globalDefault=True), _pc("b", 7, globalDefault=True),
                            _pc("c", 1)])
    assert chosen["metadata"]["name"] == "b"


def test_updates_keep_the_computed_priority():
    plugin = Priority(FakeClasses())
    old = _pod(priorityClassName="high", priority=1000, preemptionPolicy="Never")
    new = {"metadata": {"name": "p"}, "spec": {"priorityClassName": "high"}}
    spec = _run(plugin, admission.UPDATE, PODS, new, old=old)["spec"]
    assert spec["priority"] == 1000 and spec["preemptionPolicy"] == "Never"


def test_subresources_and_other_kinds_are_left_alone():
    plugin = Priority(FakeClasses())
    pod = _pod(priorityClassName="gone")
    _run(plugin, admission.CREATE, PODS, pod, subresource="binding")
    assert pod["spec"]["priorityClassName"] == "gone"
    configmaps = REGISTRY.get("", "v1", "configmaps")
    _run(plugin, admission.CREATE, configmaps, {"metadata": {"name": "c"}})


def test_only_one_global_default_class():
    plugin = Priority(FakeClasses(_pc("first", 1, globalDefault=True), _pc("second", 2)))
    message = _refusal(plugin, admission.CREATE, CLASSES,
                       _pc("third", 3, globalDefault=True))
    assert message == ('priorityclasses.scheduling.k8s.io "third" is forbidden: PriorityClass '
                       "first is already marked as default. Only one default can exist")
    message = _refusal(plugin, admission.UPDATE, CLASSES,
                       _pc("second", 2, globalDefault=True), old=_pc("second", 2))
    assert "PriorityClass first is already marked as default" in message
    # The default class itself may be updated, and non-default classes come freely.
    _run(plugin, admission.UPDATE, CLASSES, _pc("first", 1, globalDefault=True,
                                                 description="d"),
         old=_pc("first", 1, globalDefault=True))
    _run(plugin, admission.CREATE, CLASSES, _pc("fourth", 4))


def test_system_classes_cannot_be_deleted():
    plugin = Priority(FakeClasses())
    for name in SYSTEM_PRIORITY_CLASSES:
        message = _refusal(plugin, admission.DELETE, CLASSES, None, old=_pc(name, 1),
                           name=name)
        assert message == (f'priorityclasses.scheduling.k8s.io "{name}" is forbidden: this is '
                           "a system priority class and cannot be deleted")
    _run(plugin, admission.DELETE, CLASSES, None, old=_pc("mine", 1), name="mine")


def test_priority_class_validation():
    def problems(obj, old=None):
        return [f"{e.field}: {e.message}" for e in CLASSES.validate(obj, old)]

    def full(name, value, **fields):
        obj = dict(_pc(name, value, **fields), apiVersion="scheduling.k8s.io/v1",
                   kind="PriorityClass")
        CLASSES.apply_defaults(obj)
        return obj

    for obj in SYSTEM_PRIORITY_CLASSES.values():
        assert problems(full(obj["metadata"]["name"], obj["value"])) == []
    assert problems(full("ok", 1000000000)) == []
    assert problems(full("big", 1000000001)) == [
        "value: Forbidden: maximum allowed value of a user defined priority is 1000000000"]
    assert problems(full("system-node-critical", 5)) == [
        "metadata.name: Forbidden: priority class names with 'system-' prefix are reserved "
        "for system use only. error: value of system-node-critical PriorityClass must be "
        "2000001000"]
    assert "is not a known system priority class" in problems(full("system-x", 1))[0]
    assert problems(full("p", 1, preemptionPolicy="Sometimes")) == [
        'preemptionPolicy: Unsupported value: "Sometimes": supported values: '
        '"PreemptLowerPriority", "Never"']
    old = full("p", 1)
    assert problems(full("p", 2), old) == [
        "value: Forbidden: may not be changed in an update."]
    assert problems(full("p", 1, preemptionPolicy="Never"), old) == [
        'preemptionPolicy: Invalid value: "Never": field is immutable']


def test_an_explicit_zero_priority_differing_from_the_class_is_forbidden():
    plugin = Priority(FakeClasses(_pc("high", 1000)))
    with pytest.raises(errors.APIError) as caught:
        _run(plugin, admission.CREATE, PODS, _pod(priorityClassName="high", priority=0))
    assert caught.value.code == 403
    assert "the integer value of priority (0)" in caught.value.message
