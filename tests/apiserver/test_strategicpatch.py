"""Strategic merge patch, field sets and server-side apply as pure functions."""
from __future__ import annotations

import copy

import pytest

from kubesmith.api import schema
from kubesmith.api.registry import REGISTRY
from kubesmith.apiserver import apply as ssa, managedfields as mf, patch, strategicpatch as sp

DEPLOYMENTS = REGISTRY.get("apps", "v1", "deployments")
CONFIGMAPS = REGISTRY.get("", "v1", "configmaps")
DEP = schema.root(DEPLOYMENTS)


def deployment(**spec_extra) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a", "b"]},
        "spec": {
            "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "containers": [
                    {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}],
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "side", "image": "busybox"}],
                "volumes": [{"name": "cache", "emptyDir": {}}]}},
            **spec_extra},
    }


def containers(obj: dict) -> list:
    return obj["spec"]["template"]["spec"]["containers"]


# --- strategic merge patch ----------------------------------------------------------------------

def test_lists_merge_by_key_and_maps_by_field():
    original = deployment()
    result = sp.apply(original, {"spec": {"template": {"spec": {"containers": [
        {"name": "side", "image": "busybox:2"},
        {"name": "new", "image": "x"}]}}}}, DEP)
    assert [c["name"] for c in containers(result)] == ["web", "side", "new"]
    assert containers(result)[1] == {"name": "side", "image": "busybox:2"}
    assert containers(result)[0] == containers(original)[0]
    assert original == deployment()   # inputs untouched


def test_nested_lists_env_and_ports_merge():
    result = sp.apply(deployment(), {"spec": {"template": {"spec": {"containers": [
        {"name": "web", "env": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}],
         "ports": [{"containerPort": 443}]}]}}}}, DEP)
    web = containers(result)[0]
    assert web["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "20"},
                          {"name": "C", "value": "3"}]
    assert [p["containerPort"] for p in web["ports"]] == [443, 80]


def test_null_deletes_and_primitive_lists_union():
    result = sp.apply(deployment(), {"metadata": {"labels": {"app": None, "tier": "x"},
                                                  "finalizers": ["b", "c"]}}, DEP)
    assert result["metadata"]["labels"] == {"tier": "x"}
    assert sorted(result["metadata"]["finalizers"]) == ["a", "b", "c"]
    removed = sp.apply(deployment(), {"metadata": {
        "$deleteFromPrimitiveList/finalizers": ["a"]}}, DEP)
    assert removed["metadata"]["finalizers"] == ["b"]


def test_patch_directives():
    deleted = sp.apply(deployment(), {"spec": {"template": {"spec": {"containers": [
        {"name": "side", "$patch": "delete"}]}}}}, DEP)
    assert [c["name"] for c in containers(deleted)] == ["web"]
    replaced = sp.apply(deployment(), {"spec": {"template": {"spec": {"containers": [
        {"$patch": "replace"}, {"name": "only", "image": "z"}]}}}}, DEP)
    assert containers(replaced) == [{"name": "only", "image": "z"}]
    map_replace = sp.apply(deployment(), {"spec": {"strategy": {
        "$patch": "replace", "type": "Recreate"}}}, DEP)
    assert map_replace["spec"]["strategy"] == {"type": "Recreate"}
    map_delete = sp.apply(deployment(), {"metadata": {"labels": {"$patch": "delete"}}}, DEP)
    assert map_delete["metadata"]["labels"] == {}
    with pytest.raises(sp.StrategicPatchError):
        sp.apply(deployment(), {"metadata": {"labels": {"$patch": "bogus"}}}, DEP)
    with pytest.raises(sp.StrategicPatchError):
        sp.apply(deployment(), {"spec": {"template": {"spec": {"containers": [
            {"image": "no-name"}]}}}}, DEP)


def test_retain_keys_and_set_element_order():
    result = sp.apply(deployment(), {"spec": {"strategy": {
        "$retainKeys": ["type"], "type": "Recreate"}}}, DEP)
    assert result["spec"]["strategy"] == {"type": "Recreate"}
    with pytest.raises(sp.StrategicPatchError):
        sp.apply(deployment(), {"spec": {"strategy": {"$retainKeys": ["x"], "type": "R"}}}, DEP)
    ordered = sp.apply(deployment(), {"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "side"}, {"name": "web"}],
        "containers": [{"name": "web", "image": "nginx:2"}]}}}}, DEP)
    assert [c["name"] for c in containers(ordered)] == ["side", "web"]
    assert containers(ordered)[1]["image"] == "nginx:2"


def test_unknown_lists_replace_and_types_replace():
    result = sp.apply({"data": {"a": "1"}, "x": [1, 2]}, {"x": [3], "data": "s"}, None)
    assert result == {"data": "s", "x": [3]}
    # Atomic lists (command) replace even inside merged containers.
    original = deployment()
    containers(original)[0]["command"] = ["a", "b"]
    result = sp.apply(original, {"spec": {"template": {"spec": {"containers": [
        {"name": "web", "command": ["c"]}]}}}}, DEP)
    assert containers(result)[0]["command"] == ["c"]


def test_directives_never_reach_new_fields():
    result = sp.apply({"spec": {}}, {"spec": {"template": {"spec": {"containers": [
        {"name": "a", "image": "i", "env": [{"name": "X", "$patch": "delete"}]}]}}}}, DEP)
    assert containers(result) == [{"name": "a", "image": "i", "env": []}]


def test_patch_module_routes_errors():
    with pytest.raises(patch.PatchError):
        patch.strategic_patch({}, ["not", "an", "object"], DEPLOYMENTS)
    assert patch.strategic_patch({"data": {"a": "1"}}, {"data": {"b": "2"}}, CONFIGMAPS) == \
        {"data": {"a": "1", "b": "2"}}


# --- field sets ---------------------------------------------------------------------------------

def test_field_set_and_fieldsv1_round_trip():
    fields = mf.scoped(DEPLOYMENTS, "", mf.field_set(DEP, deployment()))
    rendered = {mf.path_string(p) for p in fields}
    assert ".spec.replicas" in rendered
    assert ".spec.selector" in rendered                   # atomic struct: one leaf
    assert '.spec.template.spec.containers[name="web"]' in rendered
    assert '.spec.template.spec.containers[name="web"].env[name="B"].value' in rendered
    assert '.spec.template.spec.containers[name="web"].ports[containerPort=80,' \
           'protocol="TCP"]' in rendered
    assert '.metadata.finalizers[="a"]' in rendered
    assert ".metadata.name" not in rendered and ".apiVersion" not in rendered
    encoded = mf.encode(fields)
    assert encoded["f:spec"]["f:replicas"] == {}
    item = encoded["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"web"}']
    assert item["."] == {} and item["f:image"] == {}
    assert mf.decode(encoded) == fields


def test_compare_reports_added_modified_removed():
    old = deployment()
    new = copy.deepcopy(old)
    new["spec"]["replicas"] = 3
    del new["metadata"]["labels"]
    containers(new).append({"name": "extra", "image": "e"})
    added, modified, removed = mf.compare(DEP, old, new)
    assert ("f:spec", "f:replicas") in modified
    assert ("f:metadata", "f:labels") in removed
    assert ("f:metadata", "f:labels", "f:app") in removed
    item = ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"extra"}')
    assert item in added and item + ("f:image",) in added
    assert mf.compare(DEP, old, copy.deepcopy(old)) == (set(), set(), set())


def test_update_ownership_moves_to_the_writer():
    obj = deployment()
    mf.record_update(DEPLOYMENTS, "creator", "", None, obj)
    assert [e["manager"] for e in obj["metadata"]["managedFields"]] == ["creator"]
    changed = copy.deepcopy(obj)
    changed["spec"]["replicas"] = 5
    mf.record_update(DEPLOYMENTS, "scaler", "", obj, changed)
    entries = {e.manager: e for e in mf.decode_entries(changed["metadata"]["managedFields"])}
    assert ("f:spec", "f:replicas") in entries["scaler"].fields
    assert ("f:spec", "f:replicas") not in entries["creator"].fields
    # Nothing changed: managedFields stay exactly as they were.
    same = copy.deepcopy(changed)
    mf.record_update(DEPLOYMENTS, "other", "", changed, same)
    assert same["metadata"]["managedFields"] == changed["metadata"]["managedFields"]
    # An explicit empty list clears them.
    reset = copy.deepcopy(changed)
    reset["metadata"]["managedFields"] = []
    mf.record_update(DEPLOYMENTS, "other", "", changed, reset)
    assert "managedFields" not in reset["metadata"]


# --- server-side apply ---------------------------------------------------------------------------

def test_apply_conflicts_force_and_removal():
    config = deployment()
    live = ssa.apply_config(DEPLOYMENTS, None, config, "ci", False)
    entries = live["metadata"]["managedFields"]
    assert [(e["manager"], e["operation"]) for e in entries] == [("ci", "Apply")]
    assert "." not in entries[0]["fieldsV1"]["f:metadata"]["f:labels"]
    scaled = copy.deepcopy(live)
    scaled["spec"]["replicas"] = 7
    mf.record_update(DEPLOYMENTS, "hpa", "", live, scaled)

    wanted = copy.deepcopy(config)
    wanted["spec"]["replicas"] = 3
    with pytest.raises(ssa.Conflicts) as caught:
        ssa.apply_config(DEPLOYMENTS, scaled, wanted, "ci", False)
    error = ssa.conflict_error(DEPLOYMENTS, "web", caught.value.conflicts)
    assert error.code == 409 and error.reason == "Conflict"
    assert error.message == ('Apply failed with 1 conflict: conflict with "hpa" using '
                             "apps/v1: .spec.replicas")
    assert error.details["causes"] == [{"reason": "FieldManagerConflict",
                                        "message": 'conflict with "hpa" using apps/v1',
                                        "field": ".spec.replicas"}]
    # The same value is shared ownership, not a conflict.
    ssa.apply_config(DEPLOYMENTS, scaled, dict(config, spec=dict(config["spec"], replicas=7)),
                     "ci", False)
    forced = ssa.apply_config(DEPLOYMENTS, scaled, wanted, "ci", True)
    assert forced["spec"]["replicas"] == 3
    assert [e["manager"] for e in forced["metadata"]["managedFields"]] == ["ci"]

    # Fields dropped from the configuration and owned by nobody else are removed.
    smaller = copy.deepcopy(wanted)
    del smaller["metadata"]["labels"]
    containers(smaller).pop()
    pruned = ssa.apply_config(DEPLOYMENTS, forced, smaller, "ci", False)
    assert "labels" not in pruned["metadata"]
    assert [c["name"] for c in containers(pruned)] == ["web"]
    # Applying the same configuration again changes nothing.
    assert ssa.apply_config(DEPLOYMENTS, pruned, smaller, "ci", False) == pruned


def test_apply_keeps_fields_of_other_managers_and_merges_lists():
    live = ssa.apply_config(DEPLOYMENTS, None, deployment(), "a", False)
    other = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
             "spec": {"template": {"spec": {"containers": [
                 {"name": "web", "env": [{"name": "Z", "value": "z"}]}]}}}}
    both = ssa.apply_config(DEPLOYMENTS, live, other, "b", False)
    web = containers(both)[0]
    assert [e["name"] for e in web["env"]] == ["A", "B", "Z"] and web["image"] == "nginx:1"
    # a drops its container "web": b still owns part of it, so it stays.
    config = deployment()
    containers(config).pop(0)
    kept = ssa.apply_config(DEPLOYMENTS, both, config, "a", False)
    assert "web" in [c["name"] for c in containers(kept)]


def test_multiple_conflicts_message():
    live = ssa.apply_config(DEPLOYMENTS, None, deployment(), "a", False)
    config = deployment()
    config["spec"]["replicas"] = 9
    config["metadata"]["labels"]["app"] = "changed"
    with pytest.raises(ssa.Conflicts) as caught:
        ssa.apply_config(DEPLOYMENTS, live, config, "b", False)
    error = ssa.conflict_error(DEPLOYMENTS, "web", caught.value.conflicts)
    assert error.message.startswith('Apply failed with 2 conflicts: conflicts with "a":\n- ')
    assert {c["field"] for c in error.details["causes"]} == {".spec.replicas",
                                                             ".metadata.labels.app"}
