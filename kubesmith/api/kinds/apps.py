"""apps/v1 kinds: deployments, replica sets, daemon sets, stateful sets, controller revisions."""
from __future__ import annotations

from typing import Any

from kubesmith.api.podspec import (
    container_images, container_names, default_pod_template, format_label_selector,
    format_labels, validate_pod_template,
)
from kubesmith.api.registry import Column, FieldError, ResourceType, dig, register
from kubesmith.api.validation import (
    forbidden, immutable, invalid, is_int, percent_or_int, required, selector_is_empty,
    selector_matches, validate_enum, validate_label_selector, validate_non_negative, with_meta,
)


_get = dig  # short local name: the column getters use it on every row


def validate_workload_selector(spec: dict, path: str = "spec") -> list[FieldError]:
    """A required, non-empty label selector that selects the template's labels."""
    errors: list[FieldError] = []
    selector = spec.get("selector")
    if selector is None:
        return [required(f"{path}.selector", "")]
    errors.extend(validate_label_selector(selector, f"{path}.selector"))
    if selector_is_empty(selector):
        errors.append(invalid(f"{path}.selector", selector,
                              "empty selector is invalid for deployment"))
        return errors
    labels = _get(spec, "template", "metadata", "labels", default={})
    if not errors and not selector_matches(selector, labels):
        errors.append(invalid(f"{path}.template.metadata.labels", labels,
                              "`selector` does not match template `labels`"))
    return errors


def _validate_int_or_percent(value: Any, path: str) -> list[FieldError]:
    if value is None:
        return []
    number, is_percent = percent_or_int(value)
    if number is None:
        return [invalid(path, value, "a valid percent string must be a numeric string "
                        "followed by an ending '%' (e.g. '1%',  or '93%')")]
    if number < 0:
        return [invalid(path, value, "must be greater than or equal to 0")]
    if is_percent and number > 100:
        return [invalid(path, value, "must not be greater than 100%")]
    return []


def _is_zero(value: Any) -> bool:
    number, _ = percent_or_int(value)
    return number == 0


def _selector_immutable(obj: dict, old: dict | None) -> list[FieldError]:
    if old is None:
        return []
    if _get(obj, "spec", "selector") != _get(old, "spec", "selector"):
        return [immutable("spec.selector", _get(obj, "spec", "selector"))]
    return []


CONTAINERS_COLUMN = Column("Containers", "string",
                           lambda o: container_names(_get(o, "spec", "template")),
                           "Names of each container in the template", priority=1)
IMAGES_COLUMN = Column("Images", "string", lambda o: container_images(_get(o, "spec", "template")),
                       "Images of each container in the template", priority=1)
SELECTOR_COLUMN = Column("Selector", "string",
                         lambda o: format_label_selector(_get(o, "spec", "selector")),
                         "Label selector of the pods the object manages", priority=1)


# --- deployments ----------------------------------------------------------------------

def _default_deployment(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy.get("type") == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    default_pod_template(spec.get("template"))


@with_meta(namespaced=True)
def _validate_deployment(obj: dict, old: dict | None) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec", "")]
    errors = validate_workload_selector(spec)
    errors.extend(validate_pod_template(spec.get("template"), restart_policies=("Always",)))
    errors.extend(validate_non_negative(spec.get("replicas"), "spec.replicas"))
    errors.extend(validate_non_negative(spec.get("minReadySeconds"), "spec.minReadySeconds"))
    errors.extend(validate_non_negative(spec.get("revisionHistoryLimit"),
                                        "spec.revisionHistoryLimit"))
    strategy = spec.get("strategy") or {}
    errors.extend(validate_enum(strategy.get("type"), "spec.strategy.type",
                                ("Recreate", "RollingUpdate"), True))
    rolling = strategy.get("rollingUpdate")
    if strategy.get("type") == "Recreate" and rolling is not None:
        errors.append(forbidden("spec.strategy.rollingUpdate",
                                "may not be specified when strategy `type` is 'Recreate'"))
    if strategy.get("type") == "RollingUpdate" and isinstance(rolling, dict):
        base = "spec.strategy.rollingUpdate"
        errors.extend(_validate_int_or_percent(rolling.get("maxUnavailable"),
                                               f"{base}.maxUnavailable"))
        errors.extend(_validate_int_or_percent(rolling.get("maxSurge"), f"{base}.maxSurge"))
        if _is_zero(rolling.get("maxUnavailable")) and _is_zero(rolling.get("maxSurge")):
            errors.append(invalid(f"{base}.maxUnavailable", rolling.get("maxUnavailable"),
                                  "may not be 0 when `maxSurge` is 0"))
    deadline = spec.get("progressDeadlineSeconds")
    if deadline is not None:
        errors.extend(validate_non_negative(deadline, "spec.progressDeadlineSeconds"))
        if is_int(deadline) and deadline <= (spec.get("minReadySeconds") or 0):
            errors.append(invalid("spec.progressDeadlineSeconds", deadline,
                                  "must be greater than minReadySeconds"))
    errors.extend(_selector_immutable(obj, old))
    return errors


def _deployment_ready(obj: dict) -> str:
    return f"{_get(obj, 'status', 'readyReplicas', default=0)}/" \
           f"{_get(obj, 'spec', 'replicas', default=0)}"


DEPLOYMENTS = register(ResourceType(
    group="apps", version="v1", kind="Deployment", plural="deployments", namespaced=True,
    short_names=("deploy",), categories=("all",), subresources=("status", "scale"),
    columns=(
        Column("Ready", "string", _deployment_ready, "Ready replicas out of desired replicas"),
        Column("Up-to-date", "integer", lambda o: _get(o, "status", "updatedReplicas", default=0),
               "Replicas updated to the latest template"),
        Column("Available", "integer",
               lambda o: _get(o, "status", "availableReplicas", default=0),
               "Replicas available to serve"),
        CONTAINERS_COLUMN, IMAGES_COLUMN, SELECTOR_COLUMN,
    ),
    defaulter=_default_deployment, validator=_validate_deployment,
))


# --- replica sets ---------------------------------------------------------------------

def _default_replica_set(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    default_pod_template(spec.get("template"))


@with_meta(namespaced=True)
def _validate_replica_set(obj: dict, old: dict | None) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec", "")]
    errors = validate_workload_selector(spec)
    errors.extend(validate_pod_template(spec.get("template"), restart_policies=("Always",)))
    errors.extend(validate_non_negative(spec.get("replicas"), "spec.replicas"))
    errors.extend(validate_non_negative(spec.get("minReadySeconds"), "spec.minReadySeconds"))
    errors.extend(_selector_immutable(obj, old))
    return errors


REPLICA_SETS = register(ResourceType(
    group="apps", version="v1", kind="ReplicaSet", plural="replicasets", namespaced=True,
    short_names=("rs",), categories=("all",), subresources=("status", "scale"),
    columns=(
        Column("Desired", "integer", lambda o: _get(o, "spec", "replicas", default=0),
               "Number of desired pods"),
        Column("Current", "integer", lambda o: _get(o, "status", "replicas", default=0),
               "Number of pods currently running"),
        Column("Ready", "integer", lambda o: _get(o, "status", "readyReplicas", default=0),
               "Number of pods ready"),
        CONTAINERS_COLUMN, IMAGES_COLUMN, SELECTOR_COLUMN,
    ),
    field_selectors={"status.replicas": lambda o: str(_get(o, "status", "replicas",
                                                           default=0))},
    defaulter=_default_replica_set, validator=_validate_replica_set,
))


# --- daemon sets ----------------------------------------------------------------------

def _default_daemon_set(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    strategy = spec.setdefault("updateStrategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy.get("type") == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", 1)
        rolling.setdefault("maxSurge", 0)
    spec.setdefault("revisionHistoryLimit", 10)
    default_pod_template(spec.get("template"))


@with_meta(namespaced=True)
def _validate_daemon_set(obj: dict, old: dict | None) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec", "")]
    errors = validate_workload_selector(spec)
    errors.extend(validate_pod_template(spec.get("template"), restart_policies=("Always",)))
    errors.extend(validate_non_negative(spec.get("minReadySeconds"), "spec.minReadySeconds"))
    errors.extend(validate_non_negative(spec.get("revisionHistoryLimit"),
                                        "spec.revisionHistoryLimit"))
    strategy = spec.get("updateStrategy") or {}
    errors.extend(validate_enum(strategy.get("type"), "spec.updateStrategy.type",
                                ("OnDelete", "RollingUpdate"), True))
    rolling = strategy.get("rollingUpdate")
    if strategy.get("type") == "RollingUpdate" and isinstance(rolling, dict):
        base = "spec.updateStrategy.rollingUpdate"
        errors.extend(_validate_int_or_percent(rolling.get("maxUnavailable"),
                                               f"{base}.maxUnavailable"))
        errors.extend(_validate_int_or_percent(rolling.get("maxSurge"), f"{base}.maxSurge"))
        if _is_zero(rolling.get("maxUnavailable")) and _is_zero(rolling.get("maxSurge")):
            errors.append(invalid(f"{base}.maxUnavailable", rolling.get("maxUnavailable"),
                                  "may not be 0 when `maxSurge` is 0"))
    errors.extend(_selector_immutable(obj, old))
    return errors


DAEMON_SETS = register(ResourceType(
    group="apps", version="v1", kind="DaemonSet", plural="daemonsets", namespaced=True,
    short_names=("ds",), categories=("all",), subresources=("status",),
    columns=(
        Column("Desired", "integer",
               lambda o: _get(o, "status", "desiredNumberScheduled", default=0),
               "Number of nodes that should run the daemon pod"),
        Column("Current", "integer",
               lambda o: _get(o, "status", "currentNumberScheduled", default=0),
               "Number of nodes running the daemon pod"),
        Column("Ready", "integer", lambda o: _get(o, "status", "numberReady", default=0),
               "Number of nodes whose daemon pod is ready"),
        Column("Up-to-date", "integer",
               lambda o: _get(o, "status", "updatedNumberScheduled", default=0),
               "Number of nodes running the latest template"),
        Column("Available", "integer", lambda o: _get(o, "status", "numberAvailable", default=0),
               "Number of nodes whose daemon pod is available"),
        Column("Node Selector", "string",
               lambda o: format_labels(_get(o, "spec", "template", "spec", "nodeSelector")),
               "The node selector of the template"),
        # Age here (inserted by table_columns before the wide columns).
        CONTAINERS_COLUMN, IMAGES_COLUMN, SELECTOR_COLUMN,
    ),
    defaulter=_default_daemon_set, validator=_validate_daemon_set,
))


# --- stateful sets --------------------------------------------------------------------

def _default_stateful_set(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("podManagementPolicy", "OrderedReady")
    strategy = spec.setdefault("updateStrategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy.get("type") == "RollingUpdate":
        strategy.setdefault("rollingUpdate", {}).setdefault("partition", 0)
    spec.setdefault("revisionHistoryLimit", 10)
    policy = spec.setdefault("persistentVolumeClaimRetentionPolicy", {})
    policy.setdefault("whenDeleted", "Retain")
    policy.setdefault("whenScaled", "Retain")
    for claim in spec.get("volumeClaimTemplates") or []:
        if isinstance(claim, dict):
            claim.setdefault("apiVersion", "v1")
            claim.setdefault("kind", "PersistentVolumeClaim")
            claim.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
            claim.setdefault("status", {}).setdefault("phase", "Pending")
    default_pod_template(spec.get("template"))


_STS_MUTABLE = ("replicas", "ordinals", "template", "updateStrategy", "revisionHistoryLimit",
                "persistentVolumeClaimRetentionPolicy", "minReadySeconds")


@with_meta(namespaced=True, name_check="label")
def _validate_stateful_set(obj: dict, old: dict | None) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec", "")]
    errors = validate_workload_selector(spec)
    errors.extend(validate_pod_template(spec.get("template"), restart_policies=("Always",)))
    errors.extend(validate_non_negative(spec.get("replicas"), "spec.replicas"))
    errors.extend(validate_non_negative(spec.get("minReadySeconds"), "spec.minReadySeconds"))
    errors.extend(validate_enum(spec.get("podManagementPolicy"), "spec.podManagementPolicy",
                                ("OrderedReady", "Parallel"), True))
    strategy = spec.get("updateStrategy") or {}
    errors.extend(validate_enum(strategy.get("type"), "spec.updateStrategy.type",
                                ("OnDelete", "RollingUpdate"), True))
    if strategy.get("type") == "OnDelete" and strategy.get("rollingUpdate") is not None:
        errors.append(invalid("spec.updateStrategy.rollingUpdate", strategy["rollingUpdate"],
                              "only allowed for updateStrategy 'RollingUpdate'"))
    partition = _get(strategy, "rollingUpdate", "partition")
    errors.extend(validate_non_negative(partition, "spec.updateStrategy.rollingUpdate.partition"))
    policy = spec.get("persistentVolumeClaimRetentionPolicy") or {}
    for key in ("whenDeleted", "whenScaled"):
        errors.extend(validate_enum(policy.get(key),
                                    f"spec.persistentVolumeClaimRetentionPolicy.{key}",
                                    ("Retain", "Delete")))
    if old is not None:
        new_rest = {k: v for k, v in spec.items() if k not in _STS_MUTABLE}
        old_rest = {k: v for k, v in (old.get("spec") or {}).items() if k not in _STS_MUTABLE}
        if new_rest != old_rest:
            errors.append(forbidden("spec", "updates to statefulset spec for fields other than "
                                    "'replicas', 'ordinals', 'template', 'updateStrategy', "
                                    "'revisionHistoryLimit', "
                                    "'persistentVolumeClaimRetentionPolicy' and "
                                    "'minReadySeconds' are forbidden"))
    return errors


def _stateful_set_ready(obj: dict) -> str:
    return f"{_get(obj, 'status', 'readyReplicas', default=0)}/" \
           f"{_get(obj, 'spec', 'replicas', default=0)}"


STATEFUL_SETS = register(ResourceType(
    group="apps", version="v1", kind="StatefulSet", plural="statefulsets", namespaced=True,
    short_names=("sts",), categories=("all",), subresources=("status", "scale"),
    columns=(
        Column("Ready", "string", _stateful_set_ready, "Ready replicas out of desired replicas"),
        CONTAINERS_COLUMN, IMAGES_COLUMN,
    ),
    defaulter=_default_stateful_set, validator=_validate_stateful_set,
))


# --- controller revisions ---------------------------------------------------------------

def _revision_controller(obj: dict) -> str:
    for owner in _get(obj, "metadata", "ownerReferences", default=[]):
        if owner.get("controller") is True:
            api_version = owner.get("apiVersion", "")
            group = api_version.rpartition("/")[0]
            kind = owner.get("kind", "")
            group_kind = f"{kind}.{group}" if group else kind
            return f"{group_kind.lower()}/{owner.get('name', '')}" if kind \
                else owner.get("name", "")
    return "<none>"


@with_meta(namespaced=True)
def _validate_controller_revision(obj: dict, old: dict | None) -> list[FieldError]:
    errors = validate_non_negative(obj.get("revision"), "revision")
    if obj.get("revision") is None:
        errors.append(required("revision", ""))
    if old is not None and obj.get("data") != old.get("data"):
        errors.append(immutable("data", "<data>"))
    return errors


CONTROLLER_REVISIONS = register(ResourceType(
    group="apps", version="v1", kind="ControllerRevision", plural="controllerrevisions",
    namespaced=True,
    columns=(
        Column("Controller", "string", _revision_controller, "The controller of the revision"),
        Column("Revision", "integer", lambda o: o.get("revision", 0), "The revision number"),
    ),
    validator=_validate_controller_revision,
))
