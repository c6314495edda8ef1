"""Which pods a scoped ResourceQuota applies to (upstream's scope rules)."""
from __future__ import annotations

import pytest

import kubesmith.apiserver.server  # noqa: F401  (registers the kinds)
from kubesmith.api.registry import REGISTRY
from kubesmith.apiserver.quota import in_scope

PODS = REGISTRY.get("", "v1", "pods")
CONFIGMAPS = REGISTRY.get("", "v1", "configmaps")


def pod(**spec) -> dict:
    return {"spec": {"containers": [{"name": "a"}], **spec}}


def sized() -> dict:
    return pod(containers=[{"name": "a", "resources": {"limits": {"memory": "1Gi"}}}])


def affinity(term: dict) -> dict:
    return pod(affinity={"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "podAffinityTerm": {"topologyKey": "zone", **term}}]}})


def quota(scopes=(), expressions=()) -> dict:
    return {"spec": {"scopes": list(scopes),
                     "scopeSelector": {"matchExpressions": list(expressions)}}}


@pytest.mark.parametrize("scopes,expressions,obj,expected", [
    ((), (), pod(), True),
    (("BestEffort",), (), pod(), True),
    (("BestEffort",), (), sized(), False),
    (("NotBestEffort",), (), sized(), True),
    (("Terminating",), (), pod(activeDeadlineSeconds=30), True),
    (("Terminating",), (), pod(), False),
    (("NotTerminating",), (), pod(), True),
    (("NotTerminating", "BestEffort"), (), pod(activeDeadlineSeconds=0), False),
    (("PriorityClass",), (), pod(priorityClassName="high"), True),
    (("PriorityClass",), (), pod(), False),
    ((), ({"scopeName": "PriorityClass", "operator": "NotIn", "values": ["high"]},),
     pod(priorityClassName="low"), True),
    ((), ({"scopeName": "PriorityClass", "operator": "DoesNotExist"},), pod(), True),
    ((), ({"scopeName": "CrossNamespacePodAffinity", "operator": "Exists"},),
     affinity({"namespaces": ["other"]}), True),
    ((), ({"scopeName": "CrossNamespacePodAffinity", "operator": "Exists"},),
     affinity({"namespaceSelector": {}}), True),
    ((), ({"scopeName": "CrossNamespacePodAffinity", "operator": "Exists"},),
     affinity({}), False),
])
def test_pod_scopes(scopes, expressions, obj, expected):
    assert in_scope(quota(scopes, expressions), PODS, obj) is expected


def test_a_scoped_quota_matches_no_other_kind():
    assert in_scope(quota(), CONFIGMAPS, {}) is True
    assert in_scope(quota(("NotTerminating",)), CONFIGMAPS, {}) is False
