"""Schemas, unknown-field detection, patch metadata and the OpenAPI documents."""
from __future__ import annotations

import json

import pytest

from kubesmith.api import REGISTRY
from kubesmith.api import schema
from kubesmith.api.openapi import gv_path, v2_document, v3_document, v3_index
from kubesmith.api.openapi_pb import v2_protobuf

PODS = REGISTRY.get("", "v1", "pods")
DEPLOYMENTS = REGISTRY.get("apps", "v1", "deployments")


def test_every_kind_has_a_schema():
    defs = schema.definitions()
    for rt in REGISTRY:
        assert rt.schema_name in defs, rt.schema_name
        gvks = defs[rt.schema_name]["x-kubernetes-group-version-kind"]
        assert {"group": rt.group, "version": rt.version, "kind": rt.kind} in gvks
        if not rt.create_only:
            assert rt.schema_name + "List" in defs


def test_schema_structure_and_types():
    spec = schema.node_at(PODS, ["spec"])
    assert spec.name == "io.k8s.api.core.v1.PodSpec"
    assert "containers" in spec.required
    container = schema.node_at(PODS, ["spec", "containers", 0])
    assert container.kind == "object" and container.required == ["name"]
    assert schema.node_at(PODS, ["spec", "containers", 0, "ports", 0, "containerPort"]).kind \
        == "integer"
    assert schema.node_at(PODS, ["spec", "terminationGracePeriodSeconds"]).schema["format"] \
        == "int64"
    assert schema.node_at(PODS, ["spec", "nodeSelector"]).kind == "map"
    assert schema.node_at(PODS, ["spec", "containers", 0, "resources", "limits", "cpu"]).kind \
        == "quantity"
    assert schema.node_at(PODS, ["spec", "containers", 0, "livenessProbe", "httpGet",
                                 "port"]).kind == "int-or-string"
    assert schema.node_at(PODS, ["metadata", "creationTimestamp"]).schema == \
        {"type": "string", "format": "date-time"}
    revisions = REGISTRY.get("apps", "v1", "controllerrevisions")
    assert schema.node_at(revisions, ["data"]).preserve_unknown
    assert schema.node_at(REGISTRY.get("", "v1", "secrets"), ["data", "key"]).schema == \
        {"type": "string", "format": "byte"}
    assert schema.root(schema.SCALE).field("spec").field("replicas").kind == "integer"


def test_patch_metadata():
    meta = schema.patch_meta(PODS, ["spec", "containers"])
    assert (meta.patch_strategies, meta.merge_key, meta.list_type, meta.list_map_keys) == \
        (("merge",), "name", "map", ("name",))
    ports = schema.patch_meta(DEPLOYMENTS, ["spec", "template", "spec", "containers", "*",
                                            "ports"])
    assert (ports.merge_key, ports.list_map_keys) == ("containerPort", ("containerPort",
                                                                        "protocol"))
    assert schema.patch_meta(PODS, ["spec", "volumes"]).patch_strategies == ("merge",
                                                                             "retainKeys")
    assert schema.patch_meta(PODS, ["spec", "containers", 0, "env"]).merge_key == "name"
    assert schema.patch_meta(PODS, ["spec", "containers", 0, "volumeMounts"]).merge_key == \
        "mountPath"
    assert schema.patch_meta(PODS, ["spec", "tolerations"]).list_type == "atomic"
    assert schema.patch_meta(PODS, ["metadata", "finalizers"]) == schema.PatchMeta(
        ("merge",), None, "set", (), None)
    assert schema.patch_meta(PODS, ["metadata", "ownerReferences"]).merge_key == "uid"
    assert schema.patch_meta(PODS, ["status", "conditions"]).merge_key == "type"
    assert schema.patch_meta(DEPLOYMENTS, ["spec", "strategy"]).patch_strategies == \
        ("retainKeys",)
    assert schema.patch_meta(DEPLOYMENTS, ["spec", "selector"]).map_type == "atomic"
    services = REGISTRY.get("", "v1", "services")
    assert schema.patch_meta(services, ["spec", "ports"]).list_map_keys == ("port", "protocol")
    assert schema.patch_meta(services, ["spec", "selector"]).map_type == "atomic"
    assert schema.patch_meta(PODS, ["spec", "nope"]) == schema.PatchMeta()


def test_unknown_fields():
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p", "labels": {"any": "thing"}, "bogus": 1},
           "spec": {"containers": [{"name": "a", "image": "x"},
                                   {"name": "b", "imagee": "x",
                                    "ports": [{"containerPort": 80, "extra": True}],
                                    "resources": {"limits": {"cpu": 1}}}],
                    "nodeSelector": {"k": "v"}},
           "status": {"phase": "Running", "strange": {}}}
    paths = schema.unknown_fields(PODS, pod)
    assert paths == ["metadata.bogus", "spec.containers[1].imagee",
                     "spec.containers[1].ports[0].extra", "status.strange"]
    assert schema.strict_error_message(paths[1:2]) == \
        'strict decoding error: unknown field "spec.containers[1].imagee"'
    assert schema.unknown_field_warnings(["a"]) == ['unknown field "a"']
    revision = {"apiVersion": "apps/v1", "kind": "ControllerRevision", "revision": 1,
                "data": {"anything": {"goes": [1]}},
                "metadata": {"managedFields": [{"fieldsV1": {"f:spec": {}}}]}}
    assert schema.unknown_fields(REGISTRY.get("apps", "v1", "controllerrevisions"),
                                 revision) == []
    deploy = {"spec": {"template": {"spec": {"containers": [{"name": "a", "imagePullPolicyy":
                                                             "x"}]}},
                       "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxSurgee": 1}}}}
    assert schema.unknown_fields(DEPLOYMENTS, deploy) == [
        "spec.template.spec.containers[0].imagePullPolicyy",
        "spec.strategy.rollingUpdate.maxSurgee"]


def _refs(value, found):
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            found.add(value["$ref"])
        for child in value.values():
            _refs(child, found)
    elif isinstance(value, list):
        for child in value:
            _refs(child, found)


def test_v3_index_and_documents():
    index = v3_index()
    expected = {gv_path(g, v) for g, vs in REGISTRY.group_versions().items() for v in vs}
    assert set(index["paths"]) == expected
    for path, entry in index["paths"].items():
        doc = v3_document(path)
        assert entry["serverRelativeURL"] == f"/openapi/v3/{path}?hash={doc.etag}"
        data = json.loads(doc.body)
        assert data["openapi"] == "3.0.0"
        found: set[str] = set()
        _refs(data, found)
        schemas = data["components"]["schemas"]
        for ref in found:
            assert ref.startswith("#/components/schemas/")
            assert ref.split("/")[-1] in schemas, ref
    assert v3_document("apis/nope/v1") is None
    assert v3_document("/api/v1/") is v3_document("api/v1")


@pytest.mark.parametrize("rt", list(REGISTRY), ids=lambda rt: f"{rt.group_version}/{rt.plural}")
def test_v3_paths_carry_gvk_and_field_validation(rt):
    data = v3_document(gv_path(rt.group, rt.version)).data
    gvk = {"group": rt.group, "kind": rt.kind, "version": rt.version}
    schema_entry = data["components"]["schemas"][rt.schema_name]
    assert gvk in schema_entry["x-kubernetes-group-version-kind"]
    prefix = f"/{gv_path(rt.group, rt.version)}"
    collection = f"{prefix}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced \
        else f"{prefix}/{rt.plural}"
    if set(rt.verbs) == {"get", "list"}:
        # Read-only kinds (componentstatuses): reads only, each with the kind's GVK.
        assert set(data["paths"][collection]) == {"get", "parameters"}
        assert set(data["paths"][collection + "/{name}"]) == {"get", "parameters"}
        for path in (collection, collection + "/{name}"):
            assert data["paths"][path]["get"]["x-kubernetes-group-version-kind"] == gvk
        return
    post = data["paths"][collection]["post"]
    assert post["x-kubernetes-group-version-kind"] == gvk
    names = {p["name"] for p in post["parameters"]}
    assert {"dryRun", "fieldManager", "fieldValidation"} <= names
    if rt.create_only:
        assert set(data["paths"][collection]) == {"post", "parameters"}
        return
    item = data["paths"][collection + "/{name}"]
    assert {"get", "put", "patch", "delete"} <= set(item)
    patch = item["patch"]
    assert patch["x-kubernetes-action"] == "patch"
    assert {"fieldValidation", "fieldManager", "force", "dryRun"} <= \
        {p["name"] for p in patch["parameters"]}
    assert "application/strategic-merge-patch+json" in patch["requestBody"]["content"]
    for sub in rt.subresources:
        assert f"{collection}/{{name}}/{sub}" in data["paths"]


def test_v3_extensions_and_allof_wrappers():
    data = v3_document("apis/apps/v1").data
    spec = data["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentSpec"]
    strategy = spec["properties"]["strategy"]
    assert strategy == {"allOf": [{"$ref": "#/components/schemas/io.k8s.api.apps.v1."
                                           "DeploymentStrategy"}],
                        "x-kubernetes-patch-strategy": "retainKeys"}
    pod_spec = data["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]
    assert pod_spec["properties"]["containers"]["x-kubernetes-patch-merge-key"] == "name"
    int_or_string = data["components"]["schemas"]["io.k8s.apimachinery.pkg.util.intstr."
                                                  "IntOrString"]
    assert int_or_string["format"] == "int-or-string" and "type" not in int_or_string


def test_v2_document_and_protobuf():
    doc = v2_document()
    data = json.loads(doc.body)
    assert data["swagger"] == "2.0"
    found: set[str] = set()
    _refs(data, found)
    for ref in found:
        assert ref.startswith("#/definitions/") and ref.split("/")[-1] in data["definitions"]
    assert data["definitions"]["io.k8s.api.core.v1.Pod"]["x-kubernetes-group-version-kind"]
    pods = data["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]
    assert pods["patch"]["parameters"][0]["in"] == "body"
    proto = v2_protobuf()
    assert proto.body.startswith(b"\x0a\x032.0")  # field 1 (swagger) = "2.0"
    assert b"io.k8s.api.core.v1.PodSpec" in proto.body
    assert v2_protobuf() is proto


def test_type_errors_word_like_go_decoding():
    bad = {"metadata": {"name": 5},
           "spec": {"containers": "nginx", "terminationGracePeriodSeconds": 1.5,
                    "nodeSelector": None}}
    assert schema.type_errors(PODS, bad) == [
        "json: cannot unmarshal number into Go struct field ObjectMeta.metadata.name of type "
        "string",
        "json: cannot unmarshal string into Go struct field PodSpec.spec.containers of type "
        "[]v1.Container",
        "json: cannot unmarshal number 1.5 into Go struct field "
        "PodSpec.spec.terminationGracePeriodSeconds of type int64"]
    good = {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80}],
                                     "resources": {"limits": {"cpu": 1, "memory": "1Gi"}},
                                     "livenessProbe": {"httpGet": {"port": "http"}}}]}}
    assert schema.type_errors(PODS, good) == []


def test_discovery_documents():
    from kubesmith.api import discovery
    core = discovery.api_resource_list("", "v1")
    names = {r["name"]: r for r in core["resources"]}
    assert names["pods"]["shortNames"] == ["po"] and names["pods"]["categories"] == ["all"]
    assert names["pods/eviction"] == {"name": "pods/eviction", "singularName": "",
                                      "namespaced": True, "kind": "Eviction",
                                      "verbs": ["create"], "group": "policy", "version": "v1"}
    assert names["bindings"]["verbs"] == ["create"]
    apps = discovery.api_resource_list("apps", "v1")
    scale = next(r for r in apps["resources"] if r["name"] == "deployments/scale")
    assert (scale["group"], scale["kind"]) == ("autoscaling", "Scale")
    assert discovery.api_resource_list("nope", "v1") is None
    groups = discovery.api_group_list()["groups"]
    assert groups[0]["name"] == "apps" and all(g["name"] for g in groups)
    assert discovery.api_group("batch")["preferredVersion"] == {"groupVersion": "batch/v1",
                                                                "version": "v1"}
    aggregated = discovery.aggregated_discovery(legacy=True)
    assert aggregated["apiVersion"] == "apidiscovery.k8s.io/v2"
    pods = next(r for r in aggregated["items"][0]["versions"][0]["resources"]
                if r["resource"] == "pods")
    assert pods["scope"] == "Namespaced" and pods["responseKind"]["kind"] == "Pod"
    assert {s["subresource"] for s in pods["subresources"]} >= {"status", "log", "exec"}
    named = discovery.aggregated_discovery(legacy=False)
    assert [item["metadata"]["name"] for item in named["items"]][:2] == ["apps",
                                                                        "events.k8s.io"]
