"""authentication.k8s.io/v1 kinds: token reviews and self subject reviews (create-only)."""
from __future__ import annotations

from kubesmith.api.registry import FieldError, ResourceType, register


def _no_rules(obj: dict, old: dict | None) -> list[FieldError]:
    return []


TOKEN_REVIEWS = register(ResourceType(
    group="authentication.k8s.io", version="v1", kind="TokenReview", plural="tokenreviews",
    namespaced=False, verbs=("create",), validator=_no_rules,
))
SELF_SUBJECT_REVIEWS = register(ResourceType(
    group="authentication.k8s.io", version="v1", kind="SelfSubjectReview",
    plural="selfsubjectreviews", namespaced=False, verbs=("create",), validator=_no_rules,
))
