"""Discovery documents built from the registry, in upstream's shapes.

Legacy discovery (what every client understands):
    api_versions()                 GET /api            -> APIVersions
    api_group_list()               GET /apis           -> APIGroupList
    api_group(group)               GET /apis/<group>   -> APIGroup (None if unknown)
    api_resource_list(group, v)    GET /api/v1, /apis/<group>/<v> -> APIResourceList

Aggregated discovery (kubectl 1.26+ asks for it first, with
"Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,..."):
    aggregated_discovery(legacy=True)   GET /api   -> APIGroupDiscoveryList (core group)
    aggregated_discovery(legacy=False)  GET /apis  -> APIGroupDiscoveryList (named groups)
    AGGREGATED_CONTENT_TYPE             the Content-Type to answer it with (clients that
                                        do not ask for it get the legacy documents)
"""
from __future__ import annotations

import base64
import hashlib

from kubesmith.api.registry import REGISTRY, ResourceType

AGGREGATED_CONTENT_TYPE = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_V2BETA1_CONTENT_TYPE = \
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"


def storage_version_hash(rt: ResourceType) -> str:
    """An opaque token that changes when the stored version of a resource changes."""
    digest = hashlib.sha256(f"{rt.group}/{rt.version}/{rt.kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def api_versions(server_address: str = "") -> dict:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": server_address}]
            if server_address else []}


def _group(group: str, versions: list[str]) -> dict:
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def api_group_list() -> dict:
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_group(g, vs) for g, vs in REGISTRY.group_versions().items() if g]}


def api_group(group: str) -> dict | None:
    versions = REGISTRY.group_versions().get(group)
    if not group or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(group, versions)}


def api_resource_list(group: str, version: str) -> dict | None:
    resources = []
    for rt in REGISTRY.resources_in(group, version):
        entry = {"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
                 "kind": rt.kind, "verbs": list(rt.verbs)}
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        if not rt.create_only:
            entry["storageVersionHash"] = storage_version_hash(rt)
        resources.append(entry)
        for sub in rt.subresource_details():
            sub_entry = {"name": f"{rt.plural}/{sub.name}", "singularName": "",
                         "namespaced": rt.namespaced, "kind": sub.kind, "verbs": list(sub.verbs)}
            if (sub.group, sub.version) != (rt.group, rt.version):
                sub_entry["group"] = sub.group
                sub_entry["version"] = sub.version
            resources.append(sub_entry)
    if not resources:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources}


def _resource_discovery(rt: ResourceType) -> dict:
    entry = {"resource": rt.plural,
             "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
             "scope": "Namespaced" if rt.namespaced else "Cluster",
             "singularResource": rt.singular, "verbs": list(rt.verbs)}
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    subresources = [{"subresource": sub.name,
                     "responseKind": {"group": sub.group, "version": sub.version,
                                      "kind": sub.kind},
                     "verbs": list(sub.verbs)} for sub in rt.subresource_details()]
    if subresources:
        entry["subresources"] = subresources
    return entry


def aggregated_discovery(legacy: bool) -> dict:
    items = []
    for group, versions in REGISTRY.group_versions().items():
        if bool(group) == legacy:
            continue
        items.append({
            "metadata": {"name": group, "creationTimestamp": None} if group
            else {"creationTimestamp": None},
            "versions": [{"version": version,
                          "resources": [_resource_discovery(rt)
                                        for rt in REGISTRY.resources_in(group, version)],
                          "freshness": "Current"} for version in versions],
        })
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {}, "items": items}
