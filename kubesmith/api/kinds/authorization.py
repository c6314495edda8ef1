"""authorization.k8s.io/v1 kinds: access reviews (create-only)."""
from __future__ import annotations

from kubesmith.api.registry import FieldError, ResourceType, register
from kubesmith.api.validation import forbidden, invalid, required

GROUP = "authorization.k8s.io"


def _attributes(spec: dict, path: str) -> list[FieldError]:
    has_resource = spec.get("resourceAttributes") is not None
    has_non_resource = spec.get("nonResourceAttributes") is not None
    if has_resource and has_non_resource:
        return [invalid(f"{path}.nonResourceAttributes", spec["nonResourceAttributes"],
                        "cannot be specified in combination with resourceAttributes")]
    if not has_resource and not has_non_resource:
        return [invalid(f"{path}.resourceAttributes", None,
                        "exactly one of nonResourceAttributes or resourceAttributes must be "
                        "specified")]
    return []


def _validate_sar(obj: dict, old: dict | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errors = _attributes(spec, "spec")
    if not spec.get("user") and not spec.get("groups"):
        errors.append(invalid("spec.user,spec.groups", None,
                              "at least one of user or group must be specified"))
    return errors


def _validate_self_sar(obj: dict, old: dict | None) -> list[FieldError]:
    return _attributes(obj.get("spec") or {}, "spec")


def _validate_local_sar(obj: dict, old: dict | None) -> list[FieldError]:
    errors = _validate_sar(obj, old)
    spec = obj.get("spec") or {}
    namespace = (obj.get("metadata") or {}).get("namespace", "")
    attributes = spec.get("resourceAttributes")
    if spec.get("nonResourceAttributes") is not None:
        errors.append(forbidden("spec.nonResourceAttributes",
                                "disallowed on this kind of request"))
    if isinstance(attributes, dict) and attributes.get("namespace", "") != namespace:
        errors.append(invalid("spec.resourceAttributes.namespace",
                              attributes.get("namespace", ""),
                              "must match metadata.namespace"))
    if not namespace:
        errors.append(required("metadata.namespace", ""))
    return errors


def _validate_rules_review(obj: dict, old: dict | None) -> list[FieldError]:
    return []


SUBJECT_ACCESS_REVIEWS = register(ResourceType(
    group=GROUP, version="v1", kind="SubjectAccessReview", plural="subjectaccessreviews",
    namespaced=False, verbs=("create",), validator=_validate_sar,
))
SELF_SUBJECT_ACCESS_REVIEWS = register(ResourceType(
    group=GROUP, version="v1", kind="SelfSubjectAccessReview",
    plural="selfsubjectaccessreviews", namespaced=False, verbs=("create",),
    validator=_validate_self_sar,
))
SELF_SUBJECT_RULES_REVIEWS = register(ResourceType(
    group=GROUP, version="v1", kind="SelfSubjectRulesReview", plural="selfsubjectrulesreviews",
    namespaced=False, verbs=("create",), validator=_validate_rules_review,
))
LOCAL_SUBJECT_ACCESS_REVIEWS = register(ResourceType(
    group=GROUP, version="v1", kind="LocalSubjectAccessReview",
    plural="localsubjectaccessreviews", namespaced=True, verbs=("create",),
    validator=_validate_local_sar,
))
