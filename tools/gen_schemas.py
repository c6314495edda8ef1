#!/usr/bin/env python3
"""Generate kubesmith/api/schemas_data.py: the structure of every built-in kind's objects.

The structure (field names, JSON names, types, formats, required fields) is read from the
model classes of the official `kubernetes` Python client, which mirror upstream's API
types. Only facts are kept: no descriptions. Patch strategies, list types and the other
Kubernetes extensions are not in the client; kubesmith/api/schema.py adds them at load
time from its own table.

The runtime never needs the `kubernetes` package; this tool does. Run it with a Python
that has it installed, from the repository root:

    python -m venv /tmp/gen && /tmp/gen/bin/pip install kubernetes
    PYTHONPATH=. /tmp/gen/bin/python tools/gen_schemas.py

Roots are the registry's kinds (and their List kinds) plus the subresource and meta
kinds the API serves; every model reachable from them is written.
"""
from __future__ import annotations

import json
import re
import sys
from collections import deque
from pathlib import Path

import kubernetes.client.models as models

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kubesmith.api import REGISTRY  # noqa: E402
from kubesmith.api.registry import api_package  # noqa: E402

# A Python module rather than a .json file, so the component wheel carries it without
# package-data configuration.
OUT = Path(__file__).resolve().parents[1] / "kubesmith" / "api" / "schemas_data.py"

META = "io.k8s.apimachinery.pkg.apis.meta.v1"
TIME = f"{META}.Time"
MICRO_TIME = f"{META}.MicroTime"
FIELDS_V1 = f"{META}.FieldsV1"
RAW_EXTENSION = "io.k8s.apimachinery.pkg.runtime.RawExtension"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"

META_TYPES = {"ObjectMeta", "ListMeta", "LabelSelector", "LabelSelectorRequirement",
              "ManagedFieldsEntry", "OwnerReference", "Condition", "Status", "StatusDetails",
              "StatusCause", "DeleteOptions", "Preconditions", "WatchEvent",
              "FieldSelectorRequirement", "APIResource", "APIResourceList", "APIGroup",
              "APIGroupList", "APIVersions", "GroupVersionForDiscovery",
              "ServerAddressByClientCIDR"}

# Client class prefixes that name the group of a type whose name is ambiguous.
PREFIX_PACKAGES = {"Core": "core", "Events": "events", "Rbac": "rbac", "Discovery": "discovery",
                   "Authentication": "authentication", "Storage": "storage",
                   "Flowcontrol": "flowcontrol", "Resource": "resource", "Policy": "policy",
                   "Networking": "networking", "Admissionregistration": "admissionregistration",
                   "Apiextensions": "apiextensions", "Apiregistration": "apiregistration"}

# Fields upstream declares int64 (the client only says "int"); every other integer is int32.
INT64_FIELDS = {"generation", "observedGeneration", "deletionGracePeriodSeconds",
                "activeDeadlineSeconds", "terminationGracePeriodSeconds", "runAsUser",
                "runAsGroup", "fsGroup", "supplementalGroups", "tolerationSeconds",
                "startingDeadlineSeconds", "expirationSeconds", "gracePeriodSeconds",
                "remainingItemCount", "seconds", "revision"}
INT64_IN_CLASS = {("LinuxContainerUser", "uid"), ("LinuxContainerUser", "gid")}

# (type, field) pairs whose values are resource quantities (maps of them, or one).
QUANTITY_FIELDS = {
    ("ResourceRequirements", "limits"), ("ResourceRequirements", "requests"),
    ("VolumeResourceRequirements", "limits"), ("VolumeResourceRequirements", "requests"),
    ("LimitRangeItem", "default"), ("LimitRangeItem", "defaultRequest"),
    ("LimitRangeItem", "max"), ("LimitRangeItem", "min"),
    ("LimitRangeItem", "maxLimitRequestRatio"),
    ("ResourceQuotaSpec", "hard"), ("ResourceQuotaStatus", "hard"),
    ("ResourceQuotaStatus", "used"), ("NodeStatus", "allocatable"), ("NodeStatus", "capacity"),
    ("PodSpec", "overhead"), ("EmptyDirVolumeSource", "sizeLimit"),
    ("ResourceFieldSelector", "divisor"), ("ContainerStatus", "allocatedResources"),
    ("PersistentVolumeClaimStatus", "allocatedResources"),
    ("PersistentVolumeClaimStatus", "capacity"), ("PersistentVolumeSpec", "capacity"),
}
# (type, field) pairs that are MicroTime rather than Time.
MICRO_TIME_FIELDS = {("Event", "eventTime"), ("EventSeries", "lastObservedTime"),
                     ("LeaseSpec", "acquireTime"), ("LeaseSpec", "renewTime")}

# Where the client's notion of required fields differs from upstream's API types.
REQUIRED_OVERRIDES = {
    "io.k8s.api.apps.v1.ControllerRevision": ["revision"],
    "io.k8s.api.rbac.v1.RoleRef": ["apiGroup", "kind", "name"],
}

# Kinds served besides the registry's (subresource bodies, meta kinds), with their package.
EXTRA_ROOTS = [
    ("V1Binding", "core"), ("V1PodTemplate", "core"), ("V1PersistentVolumeClaim", "core"),
    ("V1Scale", "autoscaling"), ("V1Eviction", "policy"),
    ("AuthenticationV1TokenRequest", "authentication"),
    ("V1Status", "meta"), ("V1DeleteOptions", "meta"), ("V1WatchEvent", "meta"),
    ("V1APIResourceList", "meta"), ("V1APIGroupList", "meta"), ("V1APIVersions", "meta"),
]

UNSTABLE = re.compile(r"V\d+(alpha|beta)\d+")
_CLASS = re.compile(r"^(?P<prefix>[A-Z][a-z]+)?(?P<version>V\d+(?:alpha\d+|beta\d+)?)"
                    r"(?P<name>[A-Z]\w*)$")


def split_class(name: str) -> tuple[str | None, str, str]:
    match = _CLASS.match(name)
    if not match:
        raise ValueError(f"unexpected model name {name}")
    prefix = match.group("prefix")
    if prefix is not None and prefix not in PREFIX_PACKAGES:
        # A type whose own name starts with a capitalised word (no group prefix).
        return None, match.group("version"), prefix + match.group("name")
    return prefix, match.group("version").lower(), match.group("name")


def class_for(kind: str, group: str) -> str:
    package = api_package(group)
    for candidate in (f"{package.capitalize()}V1{kind}", f"V1{kind}"):
        if hasattr(models, candidate):
            return candidate
    raise LookupError(f"no client model for {group}/{kind}")


class Generator:
    def __init__(self) -> None:
        self.package: dict[str, str] = {}      # client class -> package
        self.definitions: dict[str, dict] = {}

    def definition_name(self, cls: str) -> str:
        prefix, version, name = split_class(cls)
        package = self.package[cls]
        if package == "meta":
            return f"{META}.{name}"
        return f"io.k8s.api.{package}.{version}.{name}"

    def assign(self, cls: str, package: str) -> None:
        if cls in self.package:
            return
        prefix, _, name = split_class(cls)
        if name in META_TYPES and prefix is None:
            package = "meta"
        elif prefix is not None:
            package = PREFIX_PACKAGES[prefix]
        self.package[cls] = package

    def walk(self, roots: list[tuple[str, str]]) -> None:
        queue = deque()
        for cls, package in roots:
            self.assign(cls, package)
            queue.append(cls)
        seen = set()
        while queue:
            cls = queue.popleft()
            if cls in seen:
                continue
            seen.add(cls)
            for child in self.children(cls):
                self.assign(child, self.package[cls])
                queue.append(child)
        for cls in seen:
            name = self.definition_name(cls)
            self.definitions[name] = self.model_schema(cls)
            if name in REQUIRED_OVERRIDES:
                self.definitions[name]["required"] = REQUIRED_OVERRIDES[name]

    @staticmethod
    def children(cls: str) -> list[str]:
        model = getattr(models, cls)
        found = []
        for type_text in model.openapi_types.values():
            if UNSTABLE.search(type_text):
                continue
            for name in re.findall(r"[A-Za-z]*V\d+(?:alpha\d+|beta\d+)?[A-Z]\w*", type_text):
                if hasattr(models, name):
                    found.append(name)
        return found

    def model_schema(self, cls: str) -> dict:
        model = getattr(models, cls)
        _, _, type_name = split_class(cls)
        properties = {}
        required = []
        for attr, type_text in model.openapi_types.items():
            if UNSTABLE.search(type_text):
                continue  # a field of an alpha/beta type: not part of the stable API
            json_name = model.attribute_map[attr]
            field = model.model_fields.get(attr)
            properties[json_name] = self.field_schema(type_name, json_name, type_text, field)
            if field is not None and field.is_required():
                required.append(json_name)
        schema = {"type": "object", "properties": dict(sorted(properties.items()))}
        if required:
            schema["required"] = sorted(required)
        return schema

    def field_schema(self, owner: str, name: str, type_text: str, field) -> dict:
        if (owner, name) in QUANTITY_FIELDS:
            if type_text.startswith("Dict["):
                return {"type": "object", "additionalProperties": {"$ref": QUANTITY}}
            return {"$ref": QUANTITY}
        return self.type_schema(owner, name, type_text, field)

    def type_schema(self, owner: str, name: str, type_text: str, field) -> dict:
        if type_text.startswith("List[") and type_text.endswith("]"):
            return {"type": "array",
                    "items": self.type_schema(owner, name, type_text[5:-1], None)}
        if type_text.startswith("Dict[str, ") and type_text.endswith("]"):
            return {"type": "object",
                    "additionalProperties": self.type_schema(owner, name, type_text[10:-1], None)}
        if type_text == "str":
            return {"type": "string"}
        if type_text == "bool":
            return {"type": "boolean"}
        if type_text == "int":
            wide = name in INT64_FIELDS or (owner, name) in INT64_IN_CLASS
            return {"type": "integer", "format": "int64" if wide else "int32"}
        if type_text == "float":
            return {"type": "number", "format": "double"}
        if type_text == "bytes":
            return {"type": "string", "format": "byte"}
        if type_text == "datetime":
            return {"$ref": MICRO_TIME if (owner, name) in MICRO_TIME_FIELDS else TIME}
        if type_text == "object":
            annotation = str(getattr(field, "annotation", ""))
            if "Union" in annotation and "int" in annotation and "str" in annotation:
                return {"$ref": INT_OR_STRING}
            if name == "fieldsV1":
                return {"$ref": FIELDS_V1}
            return {"$ref": RAW_EXTENSION}
        if hasattr(models, type_text):
            return {"$ref": self.definition_name(type_text)}
        raise ValueError(f"unknown client type {type_text!r} ({owner}.{name})")


PRIMITIVES = {
    TIME: {"type": "string", "format": "date-time"},
    MICRO_TIME: {"type": "string", "format": "date-time"},
    FIELDS_V1: {"type": "object"},
    RAW_EXTENSION: {"type": "object"},
    INT_OR_STRING: {"format": "int-or-string", "oneOf": [{"type": "integer"},
                                                         {"type": "string"}]},
    QUANTITY: {"oneOf": [{"type": "string"}, {"type": "number"}]},
}


def main() -> None:
    roots: list[tuple[str, str]] = []
    # Core kinds first, so types shared with other groups are named in core.
    kinds = sorted(REGISTRY, key=lambda r: r.group != "")
    for resource in kinds:
        cls = class_for(resource.kind, resource.group)
        package = api_package(resource.group)
        roots.append((cls, package))
        if not resource.create_only:
            roots.append((class_for(resource.kind + "List", resource.group), package))
    roots.extend(EXTRA_ROOTS)
    # Type assignment walks core roots before the rest.
    generator = Generator()
    core = [r for r in roots if r[1] == "core"]
    generator.walk(core)
    generator.walk(roots)
    definitions = dict(PRIMITIVES)
    definitions.update(generator.definitions)
    lines = [f"{json.dumps(name)}:{json.dumps(schema, separators=(',', ':'))}"
             for name, schema in sorted(definitions.items())]
    body = "{\n" + ",\n".join(lines) + "\n}"
    assert '"""' not in body and "\\" not in body
    OUT.write_text(
        '"""Structure of every built-in kind\'s objects (field names, types, required\n'
        "fields), one definition a line. Generated by tools/gen_schemas.py; do not edit.\n"
        '"""\n'
        "# flake8: noqa\n"
        "import json\n\n"
        f'DEFINITIONS = json.loads(r"""{body}""")\n')
    print(f"wrote {len(definitions)} definitions to {OUT}")


if __name__ == "__main__":
    main()
