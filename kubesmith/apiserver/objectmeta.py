"""Server-managed metadata: names, uid, timestamps, generation, as upstream fills them."""
from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from kubesmith.api.registry import ResourceType

Obj = dict[str, Any]

# Upstream's alphabet for generated name suffixes (no vowels, no look-alike digits).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
SUFFIX_LENGTH = 5
MAX_NAME_LENGTH = 63

# Kinds whose strategies track spec changes in metadata.generation (upstream sets it to 1
# on create and bumps it on spec changes only for these).
_GENERATION_KINDS = {
    ("", "ReplicationController"), ("apps", "Deployment"), ("apps", "ReplicaSet"),
    ("apps", "StatefulSet"), ("apps", "DaemonSet"), ("batch", "Job"), ("batch", "CronJob"),
    ("autoscaling", "HorizontalPodAutoscaler"), ("policy", "PodDisruptionBudget"),
    ("networking.k8s.io", "NetworkPolicy"), ("networking.k8s.io", "Ingress"),
    ("extensions", "Deployment"), ("extensions", "ReplicaSet"), ("extensions", "DaemonSet"),
    ("extensions", "Ingress"), ("extensions", "NetworkPolicy"),
}
_GENERATION_GROUPS = {"admissionregistration.k8s.io", "flowcontrol.apiserver.k8s.io",
                      "apiextensions.k8s.io", "apiregistration.k8s.io"}
# Top-level fields that are not "the spec" for generation purposes.
_NOT_SPEC = ("apiVersion", "kind", "metadata", "status")


def uses_generation(rt: ResourceType) -> bool:
    return (rt.group, rt.kind) in _GENERATION_KINDS or rt.group in _GENERATION_GROUPS


def now() -> datetime:
    return datetime.now(timezone.utc)


def timestamp(when: datetime | None = None) -> str:
    """RFC 3339, UTC, whole seconds (metav1.Time)."""
    return (when or now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def later(seconds: int) -> str:
    return timestamp(now() + timedelta(seconds=seconds))


def generate_name(prefix: str) -> str:
    if len(prefix) > MAX_NAME_LENGTH - SUFFIX_LENGTH:
        prefix = prefix[:MAX_NAME_LENGTH - SUFFIX_LENGTH]
    return prefix + "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(SUFFIX_LENGTH))


def meta(obj: Obj) -> Obj:
    value = obj.get("metadata")
    if not isinstance(value, dict):
        value = {}
        obj["metadata"] = value
    return value


# ObjectMeta fields Go encodes with omitempty: an empty one is not stored (a patch that
# removes the last owner reference leaves no `ownerReferences: []`, as upstream).
_OMIT_EMPTY = ("labels", "annotations", "ownerReferences", "finalizers", "managedFields")


def _drop_empty(m: Obj) -> None:
    for key in _OMIT_EMPTY:
        if key in m and not m[key]:
            del m[key]


def fill_create(rt: ResourceType, obj: Obj) -> None:
    """uid, creationTimestamp, generation; clears what a client may not set on create."""
    m = meta(obj)
    _drop_empty(m)
    m["uid"] = str(uuid.uuid4())
    m["creationTimestamp"] = timestamp()
    for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink",
                "resourceVersion"):
        m.pop(key, None)
    if uses_generation(rt):
        m["generation"] = 1
    else:
        m.pop("generation", None)


def spec_part(obj: Obj) -> dict:
    return {k: v for k, v in obj.items() if k not in _NOT_SPEC}


def keep_system_fields(rt: ResourceType, new: Obj, old: Obj) -> None:
    """On update, fields only the server sets keep their stored values."""
    m, old_m = meta(new), meta(old)
    _drop_empty(m)
    for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                "generation"):
        if key in old_m:
            m[key] = old_m[key]
        else:
            m.pop(key, None)
    m.pop("selfLink", None)
    if "generation" in old_m and spec_part(new) != spec_part(old):
        m["generation"] = int(old_m.get("generation") or 0) + 1


def same_object(a: Obj, b: Obj) -> bool:
    """Equal apart from resourceVersion (an update that changes nothing writes nothing)."""
    ma, mb = a.get("metadata") or {}, b.get("metadata") or {}
    if {k: v for k, v in ma.items() if k != "resourceVersion"} != \
            {k: v for k, v in mb.items() if k != "resourceVersion"}:
        return False
    return {k: v for k, v in a.items() if k != "metadata"} == \
        {k: v for k, v in b.items() if k != "metadata"}
