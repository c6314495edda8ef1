"""rbac.authorization.k8s.io/v1 kinds: roles, cluster roles and their bindings."""
from __future__ import annotations

from typing import Any

from kubesmith.api.registry import (
    CREATED_AT_COLUMN, Column, FieldError, ResourceType, register,
)
from kubesmith.api.validation import (
    dns1123_subdomain_problems, invalid, not_supported, path_segment_problems, required,
    validate_label_selector, with_meta,
)

RBAC_GROUP = "rbac.authorization.k8s.io"
SUBJECT_KINDS = ("ServiceAccount", "User", "Group")


def validate_policy_rule(rule: Any, path: str, namespaced: bool) -> list[FieldError]:
    errors: list[FieldError] = []
    if not isinstance(rule, dict):
        return [invalid(path, rule, "must be an object")]
    if not rule.get("verbs"):
        errors.append(required(f"{path}.verbs", "verbs must contain at least one value"))
    if rule.get("nonResourceURLs"):
        if namespaced:
            errors.append(invalid(f"{path}.nonResourceURLs", rule["nonResourceURLs"],
                                  "namespaced rules cannot apply to non-resource URLs"))
        if rule.get("apiGroups") or rule.get("resources") or rule.get("resourceNames"):
            errors.append(invalid(f"{path}.nonResourceURLs", rule["nonResourceURLs"],
                                  "rules cannot apply to both regular resources and "
                                  "non-resource URLs"))
        return errors
    if not rule.get("apiGroups"):
        errors.append(required(f"{path}.apiGroups",
                               "resource rules must supply at least one api group"))
    if not rule.get("resources"):
        errors.append(required(f"{path}.resources",
                               "resource rules must supply at least one resource"))
    return errors


def _role_validator(namespaced: bool):
    @with_meta(namespaced=namespaced, name_check="path")
    def validate(obj: dict, old: dict | None) -> list[FieldError]:
        errors: list[FieldError] = []
        for index, rule in enumerate(obj.get("rules") or []):
            errors.extend(validate_policy_rule(rule, f"rules[{index}]", namespaced))
        aggregation = obj.get("aggregationRule")
        if not namespaced and isinstance(aggregation, dict):
            selectors = aggregation.get("clusterRoleSelectors") or []
            for index, selector in enumerate(selectors):
                errors.extend(validate_label_selector(
                    selector, f"aggregationRule.clusterRoleSelectors[{index}]"))
        return errors
    return validate


def _default_subjects(obj: dict) -> None:
    for subject in obj.get("subjects") or []:
        if isinstance(subject, dict) and "apiGroup" not in subject:
            kind = subject.get("kind")
            if kind == "ServiceAccount":
                subject["apiGroup"] = ""
            elif kind in ("User", "Group"):
                subject["apiGroup"] = RBAC_GROUP


def _binding_validator(namespaced: bool):
    role_kinds = ("Role", "ClusterRole") if namespaced else ("ClusterRole",)

    @with_meta(namespaced=namespaced, name_check="path")
    def validate(obj: dict, old: dict | None) -> list[FieldError]:
        errors: list[FieldError] = []
        ref = obj.get("roleRef")
        if not isinstance(ref, dict):
            errors.append(required("roleRef", ""))
            ref = {}
        if ref.get("apiGroup") != RBAC_GROUP:
            errors.append(not_supported("roleRef.apiGroup", ref.get("apiGroup", ""),
                                        (RBAC_GROUP,)))
        if ref.get("kind") not in role_kinds:
            errors.append(not_supported("roleRef.kind", ref.get("kind", ""), role_kinds))
        if not ref.get("name"):
            errors.append(required("roleRef.name", ""))
        else:
            errors.extend(invalid("roleRef.name", ref["name"], p)
                          for p in path_segment_problems(ref["name"]))
        for index, subject in enumerate(obj.get("subjects") or []):
            path = f"subjects[{index}]"
            if not isinstance(subject, dict):
                errors.append(invalid(path, subject, "must be an object"))
                continue
            kind = subject.get("kind")
            name = subject.get("name")
            if not name:
                errors.append(required(f"{path}.name", ""))
            if kind == "ServiceAccount":
                if subject.get("apiGroup"):
                    errors.append(not_supported(f"{path}.apiGroup", subject["apiGroup"], ("",)))
                if name:
                    errors.extend(invalid(f"{path}.name", name, p)
                                  for p in dns1123_subdomain_problems(name))
                if not namespaced and not subject.get("namespace"):
                    errors.append(required(f"{path}.namespace", ""))
            elif kind in ("User", "Group"):
                if subject.get("apiGroup") != RBAC_GROUP:
                    errors.append(not_supported(f"{path}.apiGroup", subject.get("apiGroup", ""),
                                                (RBAC_GROUP,)))
            else:
                errors.append(not_supported(f"{path}.kind", kind or "", SUBJECT_KINDS))
        if old is not None and old.get("roleRef") != obj.get("roleRef"):
            errors.append(invalid("roleRef", obj.get("roleRef"), "cannot change roleRef"))
        return errors
    return validate


def _subjects(kind: str):
    def cell(obj: dict) -> str:
        names = []
        for subject in obj.get("subjects") or []:
            if subject.get("kind") != kind:
                continue
            if kind == "ServiceAccount":
                names.append(f"{subject.get('namespace', '')}/{subject.get('name', '')}")
            else:
                names.append(subject.get("name", ""))
        return ", ".join(names)
    return cell


def _role_ref(obj: dict) -> str:
    ref = obj.get("roleRef") or {}
    return f"{ref.get('kind', '')}/{ref.get('name', '')}"


BINDING_COLUMNS = (
    Column("Role", "string", _role_ref, "The role the binding grants"),
    Column("Users", "string", _subjects("User"), "Users in the binding", priority=1),
    Column("Groups", "string", _subjects("Group"), "Groups in the binding", priority=1),
    Column("ServiceAccounts", "string", _subjects("ServiceAccount"),
           "Service accounts in the binding", priority=1),
)

ROLES = register(ResourceType(
    group=RBAC_GROUP, version="v1", kind="Role", plural="roles", namespaced=True,
    columns=(CREATED_AT_COLUMN,), table_age=False, validator=_role_validator(True),
))
ROLE_BINDINGS = register(ResourceType(
    group=RBAC_GROUP, version="v1", kind="RoleBinding", plural="rolebindings", namespaced=True,
    columns=BINDING_COLUMNS, defaulter=_default_subjects, validator=_binding_validator(True),
))
CLUSTER_ROLES = register(ResourceType(
    group=RBAC_GROUP, version="v1", kind="ClusterRole", plural="clusterroles", namespaced=False,
    columns=(CREATED_AT_COLUMN,), table_age=False, validator=_role_validator(False),
))
CLUSTER_ROLE_BINDINGS = register(ResourceType(
    group=RBAC_GROUP, version="v1", kind="ClusterRoleBinding", plural="clusterrolebindings",
    namespaced=False, columns=BINDING_COLUMNS, defaulter=_default_subjects,
    validator=_binding_validator(False),
))
