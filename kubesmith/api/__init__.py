"""API machinery shared by every component: the registry of resource kinds and helpers.

Importing this package registers every built-in kind (kubesmith/api/kinds/).

    registry.py     ResourceType, Column, FieldError, REGISTRY: URL and etcd layout,
                    discovery facts, subresources, tables, field selectors, the hooks
                    (defaults, prepare-create/update, validation, storage conversion)
    kinds/          one module per API group; podspec.py holds the PodSpec rules every
                    workload shares; validation.py the metadata/name/label rules of all
    schema.py       every kind's schema (data: schemas_data.py, from tools/gen_schemas.py),
                    unknown-field detection, type errors, patch/list metadata for
                    strategic merge patch and server-side apply
    openapi.py      /openapi/v3 index and documents, /openapi/v2 (JSON);
                    openapi_pb.py the /openapi/v2 protobuf form
    discovery.py    /api, /apis, APIResourceList and aggregated discovery documents
"""
from kubesmith.api import kinds as _kinds  # noqa: F401  (registers the built-in kinds)
from kubesmith.api.registry import REGISTRY, Column, FieldError, ResourceType, register

__all__ = ["REGISTRY", "Column", "FieldError", "ResourceType", "register"]
