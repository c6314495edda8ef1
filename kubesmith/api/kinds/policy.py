"""policy/v1 kinds: pod disruption budgets."""
from __future__ import annotations

from kubesmith.api.registry import Column, FieldError, ResourceType, register
from kubesmith.api.validation import (
    invalid, percent_or_int, validate_label_selector, with_meta,
)


@with_meta(namespaced=True)
def _validate_pdb(obj: dict, old: dict | None) -> list[FieldError]:
    errors: list[FieldError] = []
    spec = obj.get("spec") or {}
    if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
        errors.append(invalid("spec", spec, "minAvailable and maxUnavailable cannot be both set"))
    for key in ("minAvailable", "maxUnavailable"):
        value = spec.get(key)
        if value is None:
            continue
        number, is_percent = percent_or_int(value)
        if number is None or number < 0 or (is_percent and number > 100):
            errors.append(invalid(f"spec.{key}", value,
                                  "must be a non-negative integer or a percentage up to 100%"))
    errors.extend(validate_label_selector(spec.get("selector"), "spec.selector"))
    policy = spec.get("unhealthyPodEvictionPolicy")
    if policy and policy not in ("IfHealthyBudget", "AlwaysAllow"):
        errors.append(invalid("spec.unhealthyPodEvictionPolicy", policy,
                              "must be IfHealthyBudget or AlwaysAllow"))
    return errors


def _spec_value(key: str):
    def cell(obj: dict) -> str:
        value = (obj.get("spec") or {}).get(key)
        return "N/A" if value is None else str(value)
    return cell


POD_DISRUPTION_BUDGETS = register(ResourceType(
    group="policy", version="v1", kind="PodDisruptionBudget", plural="poddisruptionbudgets",
    namespaced=True, short_names=("pdb",), subresources=("status",),
    columns=(
        Column("Min Available", "string", _spec_value("minAvailable"),
               "Pods that must stay available"),
        Column("Max Unavailable", "string", _spec_value("maxUnavailable"),
               "Pods that may be unavailable"),
        Column("Allowed Disruptions", "integer",
               lambda o: (o.get("status") or {}).get("disruptionsAllowed", 0),
               "Evictions currently allowed"),
    ),
    validator=_validate_pdb,
))
