"""scheduling.k8s.io/v1 kinds: priority classes.

A PriorityClass maps a name to the integer priority that the Priority admission plugin
(kubesmith/apiserver/priority.py) writes into new pods. The two system classes are
created by the API server at start; values above one billion and names starting with
"system-" are kept for them, as upstream's validation does.
"""
from __future__ import annotations

from kubesmith.api.registry import AGE_COLUMN, Column, FieldError, ResourceType, register
from kubesmith.api.validation import forbidden, immutable, validate_enum, with_meta

# Priorities above this are reserved for the system classes.
HIGHEST_USER_DEFINABLE_PRIORITY = 1_000_000_000
SYSTEM_CRITICAL_PRIORITY = 2 * HIGHEST_USER_DEFINABLE_PRIORITY
SYSTEM_PRIORITY_CLASS_PREFIX = "system-"
PREEMPTION_POLICIES = ("PreemptLowerPriority", "Never")
DEFAULT_PREEMPTION_POLICY = "PreemptLowerPriority"

# The classes every cluster has (name -> object), with upstream's values and texts.
SYSTEM_PRIORITY_CLASSES: dict[str, dict] = {
    "system-node-critical": {
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": "system-node-critical"},
        "value": SYSTEM_CRITICAL_PRIORITY + 1000,
        "description": "Used for system critical pods that must not be moved from their "
                       "current node.",
        "preemptionPolicy": DEFAULT_PREEMPTION_POLICY,
    },
    "system-cluster-critical": {
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": "system-cluster-critical"},
        "value": SYSTEM_CRITICAL_PRIORITY,
        "description": "Used for system critical pods that must run in the cluster, but can "
                       "be moved to another node if necessary.",
        "preemptionPolicy": DEFAULT_PREEMPTION_POLICY,
    },
}


def _default_priority_class(obj: dict) -> None:
    obj.setdefault("value", 0)
    if not obj.get("preemptionPolicy"):
        obj["preemptionPolicy"] = DEFAULT_PREEMPTION_POLICY


def _system_class_problem(name: str, value, global_default: bool) -> str | None:
    """Why a "system-" name is not allowed here, or None for a well-formed system class."""
    known = SYSTEM_PRIORITY_CLASSES.get(name)
    if known is None:
        return f"{name} is not a known system priority class"
    if value != known["value"]:
        return f"value of {name} PriorityClass must be {known['value']}"
    if global_default:
        return f"globalDefault of {name} PriorityClass must be false"
    return None


@with_meta(namespaced=False)
def _validate_priority_class(obj: dict, old: dict | None) -> list[FieldError]:
    errors: list[FieldError] = []
    name = (obj.get("metadata") or {}).get("name") or ""
    value = obj.get("value", 0)
    if name.startswith(SYSTEM_PRIORITY_CLASS_PREFIX):
        problem = _system_class_problem(name, value, bool(obj.get("globalDefault")))
        if problem:
            errors.append(forbidden(
                "metadata.name", f"priority class names with '{SYSTEM_PRIORITY_CLASS_PREFIX}' "
                f"prefix are reserved for system use only. error: {problem}"))
    elif isinstance(value, int) and value > HIGHEST_USER_DEFINABLE_PRIORITY:
        errors.append(forbidden("value", "maximum allowed value of a user defined priority "
                                f"is {HIGHEST_USER_DEFINABLE_PRIORITY}"))
    errors.extend(validate_enum(obj.get("preemptionPolicy"), "preemptionPolicy",
                                PREEMPTION_POLICIES))
    if old is not None:
        if value != old.get("value", 0):
            errors.append(forbidden("value", "may not be changed in an update."))
        if obj.get("preemptionPolicy") != old.get("preemptionPolicy"):
            errors.append(immutable("preemptionPolicy", obj.get("preemptionPolicy")))
    return errors


PRIORITY_CLASSES = register(ResourceType(
    group="scheduling.k8s.io", version="v1", kind="PriorityClass", plural="priorityclasses",
    namespaced=False, short_names=("pc",),
    columns=(
        Column("Value", "integer", lambda o: o.get("value", 0),
               "The priority pods of this class get"),
        Column("Global-Default", "boolean", lambda o: bool(o.get("globalDefault")),
               "Whether pods without a priorityClassName get this class"),
        AGE_COLUMN,
        Column("PreemptionPolicy", "string", lambda o: o.get("preemptionPolicy") or "",
               "Whether pods of this class may preempt lower-priority pods"),
    ),
    defaulter=_default_priority_class,
    validator=_validate_priority_class,
))
