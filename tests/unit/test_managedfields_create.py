"""A create's managedFields, built straight as FieldsV1, equal the general comparison's."""
from __future__ import annotations

import copy
import random

import pytest

import kubesmith.apiserver.server  # noqa: F401  (registers the kinds)
from bench.apiserver import make_pod
from kubesmith.api.registry import REGISTRY
from kubesmith.apiserver import managedfields


def general(rt, obj):
    """The create through record_update's general path (an update from nothing)."""
    out = copy.deepcopy(obj)
    managedfields.record_update(rt, "maker", "", {}, out)
    return out


def direct(rt, obj):
    out = copy.deepcopy(obj)
    managedfields.record_update(rt, "maker", "", None, out)
    return out


def fields(obj):
    entries = obj["metadata"].get("managedFields")
    return [dict(e, time=None) for e in entries] if entries else entries


DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "ns", "labels": {"app": "web"},
                 "finalizers": ["a/b", "a/b", "c/d"]},
    "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
             "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
             "template": {"metadata": {"labels": {"app": "web"}},
                          "spec": {"containers": [{"name": "web", "image": "nginx",
                                                   "ports": [{"containerPort": 80}]},
                                                  {"name": "web", "image": "dup"}]}}},
    "status": {"replicas": 9},
}
SERVICE = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "ns"},
    "spec": {"selector": {"app": "web"}, "type": "NodePort",
             "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"},
                       {"port": 80, "protocol": "UDP"}, {"port": 53, "name": "dns"}]},
}
NODE = {
    "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {}},
    "spec": {"podCIDR": "10.0.0.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}]},
    "status": {"capacity": {"cpu": "2"}, "conditions": [{"type": "Ready", "status": "True"}],
               "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]},
}
CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
             "data": {"a": "1", "b": ""}, "binaryData": {}}
SAMPLES = [("pods", "v1", "", make_pod("p", "ns")), ("deployments", "v1", "apps", DEPLOYMENT),
           ("services", "v1", "", SERVICE), ("nodes", "v1", "", NODE),
           ("configmaps", "v1", "", CONFIGMAP)]


@pytest.mark.parametrize("plural,version,group,obj", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_direct_create_fields_equal_the_general_path(plural, version, group, obj):
    rt = REGISTRY.get(group, version, plural)
    assert fields(direct(rt, obj)) == fields(general(rt, obj))
    assert fields(direct(rt, obj))[0]["fieldsV1"]


def _mutations(value, rng: random.Random):
    """value with random parts dropped, nulled, emptied or given unknown fields."""
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            roll = rng.random()
            if roll < 0.1:
                continue
            if roll < 0.15:
                out[key] = None
            elif roll < 0.2:
                out[key] = {} if isinstance(sub, dict) else [] if isinstance(sub, list) else sub
            else:
                out[key] = _mutations(sub, rng)
        if rng.random() < 0.05:
            out["unknownField"] = {"x": [1, {"y": None}]}
        return out
    if isinstance(value, list):
        items = [_mutations(v, rng) for v in value if rng.random() > 0.1]
        if items and rng.random() < 0.2:
            items.append(copy.deepcopy(items[0]))
        return items
    return value


def test_direct_create_fields_equal_the_general_path_on_mutated_objects():
    rng = random.Random(7)
    for plural, version, group, obj in SAMPLES:
        rt = REGISTRY.get(group, version, plural)
        for _ in range(150):
            mutated = _mutations(obj, rng)
            mutated.setdefault("metadata", {})
            if not isinstance(mutated["metadata"], dict):
                continue
            assert fields(direct(rt, mutated)) == fields(general(rt, mutated)), mutated


def test_managed_fields_given_on_create_take_the_general_path():
    rt = REGISTRY.get("", "v1", "configmaps")
    obj = copy.deepcopy(CONFIGMAP)
    obj["metadata"]["managedFields"] = [{"manager": "other", "operation": "Update",
                                         "apiVersion": "v1", "fieldsType": "FieldsV1",
                                         "fieldsV1": {"f:data": {"f:gone": {}}}}]
    out = direct(rt, obj)
    assert sorted(e["manager"] for e in out["metadata"]["managedFields"]) == ["maker", "other"]
    assert fields(out) == fields(general(rt, obj))
