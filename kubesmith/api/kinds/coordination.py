"""coordination.k8s.io/v1 kinds: leases."""
from __future__ import annotations

from kubesmith.api.registry import Column, FieldError, ResourceType, register
from kubesmith.api.validation import (
    invalid, required, validate_enum, validate_non_negative, with_meta,
)


@with_meta(namespaced=True)
def _validate_lease(obj: dict, old: dict | None) -> list[FieldError]:
    errors: list[FieldError] = []
    spec = obj.get("spec") or {}
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or duration <= 0):
        errors.append(invalid("spec.leaseDurationSeconds", duration, "must be greater than 0"))
    errors.extend(validate_non_negative(spec.get("leaseTransitions"), "spec.leaseTransitions"))
    if spec.get("preferredHolder") and not spec.get("strategy"):
        errors.append(required("spec.strategy", "must be specified when preferredHolder is set"))
    if spec.get("strategy"):
        errors.extend(validate_enum(spec["strategy"], "spec.strategy", ("OldestEmulationVersion",)))
    return errors


LEASES = register(ResourceType(
    group="coordination.k8s.io", version="v1", kind="Lease", plural="leases", namespaced=True,
    columns=(Column("Holder", "string",
                    lambda o: (o.get("spec") or {}).get("holderIdentity") or "",
                    "The current holder of the lease"),),
    validator=_validate_lease,
))
