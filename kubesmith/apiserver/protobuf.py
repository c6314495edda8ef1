"""Request bodies in Kubernetes' protobuf encoding, read into the JSON shape.

client-go's typed clients (kubectl 1.32+, `kubectl create ...`, `kubectl auth can-i`)
send `application/vnd.kubernetes.protobuf`: the 4-byte magic "k8s\\0", then a
runtime.Unknown envelope {typeMeta{apiVersion, kind}, raw, contentEncoding, contentType}
whose `raw` is the object's message. Responses stay JSON (those clients accept it).

Decoding needs each message's field numbers; the table below lists the kinds those
clients write and what they are built from. A kind not in it is refused with 415,
which names it. Go's encoder writes every non-pointer field, zero or not; the JSON
shape leaves zero scalars out (as Go's omitempty does), except fields that are
pointers in Go, where presence matters (marked "keep").
"""
from __future__ import annotations

import base64
import struct
from datetime import datetime, timezone
from typing import Any

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    pass


class Unsupported(ProtobufError):
    """A well-formed body of a kind this table does not describe."""


# Field: (json name, type, flags). type: "string", "bytes", "int32", "int64", "bool",
# "double", a message name, or ("map", value type). flags: "repeated", "keep".
S, B, I32, I64, BOOL = "string", "bytes", "int32", "int64", "bool"
R, KEEP = "repeated", "keep"


def _m(**fields) -> dict:
    return fields


MESSAGES: dict[str, dict[int, tuple]] = {
    # --- meta/v1 -------------------------------------------------------------------
    "Unknown": {1: ("typeMeta", "TypeMeta", ""), 2: ("raw", B, ""),
                3: ("contentEncoding", S, ""), 4: ("contentType", S, "")},
    "TypeMeta": {1: ("apiVersion", S, ""), 2: ("kind", S, "")},
    "ObjectMeta": {
        1: ("name", S, ""), 2: ("generateName", S, ""), 3: ("namespace", S, ""),
        4: ("selfLink", S, ""), 5: ("uid", S, ""), 6: ("resourceVersion", S, ""),
        7: ("generation", I64, ""), 8: ("creationTimestamp", "Time", ""),
        9: ("deletionTimestamp", "Time", ""), 10: ("deletionGracePeriodSeconds", I64, KEEP),
        11: ("labels", ("map", S), ""), 12: ("annotations", ("map", S), ""),
        13: ("ownerReferences", "OwnerReference", R), 14: ("finalizers", S, R),
        17: ("managedFields", "ManagedFieldsEntry", R),
    },
    "OwnerReference": {1: ("kind", S, ""), 3: ("name", S, ""), 4: ("uid", S, ""),
                       5: ("apiVersion", S, ""), 6: ("controller", BOOL, KEEP),
                       7: ("blockOwnerDeletion", BOOL, KEEP)},
    "ManagedFieldsEntry": {1: ("manager", S, ""), 2: ("operation", S, ""),
                           3: ("apiVersion", S, ""), 4: ("time", "Time", ""),
                           6: ("fieldsType", S, ""), 7: ("fieldsV1", "FieldsV1", ""),
                           8: ("subresource", S, "")},
    "LabelSelector": {1: ("matchLabels", ("map", S), ""),
                      2: ("matchExpressions", "LabelSelectorRequirement", R)},
    "LabelSelectorRequirement": {1: ("key", S, ""), 2: ("operator", S, ""),
                                 3: ("values", S, R)},
    "DeleteOptions": {1: ("gracePeriodSeconds", I64, KEEP),
                      2: ("preconditions", "Preconditions", ""),
                      3: ("orphanDependents", BOOL, KEEP), 4: ("propagationPolicy", S, KEEP),
                      5: ("dryRun", S, R),
                      6: ("ignoreStoreReadErrorWithClusterBreakingPotential", BOOL, KEEP)},
    "Preconditions": {1: ("uid", S, KEEP), 2: ("resourceVersion", S, KEEP)},
    # --- core/v1 -------------------------------------------------------------------
    "Namespace": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "NamespaceSpec", ""),
                  3: ("status", "NamespaceStatus", "")},
    "NamespaceSpec": {1: ("finalizers", S, R)},
    "NamespaceStatus": {1: ("phase", S, "")},
    "ConfigMap": {1: ("metadata", "ObjectMeta", ""), 2: ("data", ("map", S), ""),
                  3: ("binaryData", ("map", B), ""), 4: ("immutable", BOOL, KEEP)},
    "Secret": {1: ("metadata", "ObjectMeta", ""), 2: ("data", ("map", B), ""),
               3: ("type", S, ""), 4: ("stringData", ("map", S), ""),
               5: ("immutable", BOOL, KEEP)},
    "ServiceAccount": {1: ("metadata", "ObjectMeta", ""),
                       2: ("secrets", "ObjectReference", R),
                       3: ("imagePullSecrets", "LocalObjectReference", R),
                       4: ("automountServiceAccountToken", BOOL, KEEP)},
    "ObjectReference": {1: ("kind", S, ""), 2: ("namespace", S, ""), 3: ("name", S, ""),
                        4: ("uid", S, ""), 5: ("apiVersion", S, ""),
                        6: ("resourceVersion", S, ""), 7: ("fieldPath", S, "")},
    "LocalObjectReference": {1: ("name", S, "")},
    "ResourceQuota": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "ResourceQuotaSpec", ""),
                      3: ("status", "ResourceQuotaStatus", "")},
    "ResourceQuotaSpec": {1: ("hard", ("map", "Quantity"), ""), 2: ("scopes", S, R),
                          3: ("scopeSelector", "ScopeSelector", "")},
    "ScopeSelector": {1: ("matchExpressions", "ScopedResourceSelectorRequirement", R)},
    "ScopedResourceSelectorRequirement": {1: ("scopeName", S, ""), 2: ("operator", S, ""),
                                          3: ("values", S, R)},
    "ResourceQuotaStatus": {1: ("hard", ("map", "Quantity"), ""),
                            2: ("used", ("map", "Quantity"), "")},
    "Binding": {1: ("metadata", "ObjectMeta", ""), 2: ("target", "ObjectReference", "")},
    # --- rbac.authorization.k8s.io/v1 ---------------------------------------------------
    "Role": {1: ("metadata", "ObjectMeta", ""), 2: ("rules", "PolicyRule", R)},
    "ClusterRole": {1: ("metadata", "ObjectMeta", ""), 2: ("rules", "PolicyRule", R),
                    3: ("aggregationRule", "AggregationRule", "")},
    "AggregationRule": {1: ("clusterRoleSelectors", "LabelSelector", R)},
    "PolicyRule": {1: ("verbs", S, R), 2: ("apiGroups", S, R), 3: ("resources", S, R),
                   4: ("resourceNames", S, R), 5: ("nonResourceURLs", S, R)},
    "RoleBinding": {1: ("metadata", "ObjectMeta", ""), 2: ("subjects", "Subject", R),
                    3: ("roleRef", "RoleRef", "")},
    "ClusterRoleBinding": {1: ("metadata", "ObjectMeta", ""), 2: ("subjects", "Subject", R),
                           3: ("roleRef", "RoleRef", "")},
    "Subject": {1: ("kind", S, ""), 2: ("apiGroup", S, ""), 3: ("name", S, ""),
                4: ("namespace", S, "")},
    "RoleRef": {1: ("apiGroup", S, ""), 2: ("kind", S, ""), 3: ("name", S, "")},
    # --- authorization.k8s.io/v1 ----------------------------------------------------------
    "SelfSubjectAccessReview": {1: ("metadata", "ObjectMeta", ""),
                                2: ("spec", "SelfSubjectAccessReviewSpec", ""),
                                3: ("status", "SubjectAccessReviewStatus", "")},
    "SelfSubjectAccessReviewSpec": {1: ("resourceAttributes", "ResourceAttributes", ""),
                                    2: ("nonResourceAttributes", "NonResourceAttributes", "")},
    "SubjectAccessReview": {1: ("metadata", "ObjectMeta", ""),
                            2: ("spec", "SubjectAccessReviewSpec", ""),
                            3: ("status", "SubjectAccessReviewStatus", "")},
    "LocalSubjectAccessReview": {1: ("metadata", "ObjectMeta", ""),
                                 2: ("spec", "SubjectAccessReviewSpec", ""),
                                 3: ("status", "SubjectAccessReviewStatus", "")},
    "SubjectAccessReviewSpec": {1: ("resourceAttributes", "ResourceAttributes", ""),
                                2: ("nonResourceAttributes", "NonResourceAttributes", ""),
                                3: ("user", S, ""), 4: ("groups", S, R),
                                5: ("extra", ("map", "ExtraValue"), ""), 6: ("uid", S, "")},
    "ExtraValue": {1: ("items", S, R)},
    "ResourceAttributes": {1: ("namespace", S, ""), 2: ("verb", S, ""), 3: ("group", S, ""),
                           4: ("version", S, ""), 5: ("resource", S, ""),
                           6: ("subresource", S, ""), 7: ("name", S, "")},
    "NonResourceAttributes": {1: ("path", S, ""), 2: ("verb", S, "")},
    "SubjectAccessReviewStatus": {1: ("allowed", BOOL, ""), 2: ("reason", S, ""),
                                  3: ("evaluationError", S, ""), 4: ("denied", BOOL, "")},
    "SelfSubjectRulesReview": {1: ("metadata", "ObjectMeta", ""),
                               2: ("spec", "SelfSubjectRulesReviewSpec", ""),
                               3: ("status", "SubjectRulesReviewStatus", "")},
    "SubjectRulesReviewStatus": {1: ("resourceRules", "ResourceRule", R),
                                 2: ("nonResourceRules", "NonResourceRule", R),
                                 3: ("incomplete", BOOL, ""), 4: ("evaluationError", S, "")},
    "ResourceRule": {1: ("verbs", S, R), 2: ("apiGroups", S, R), 3: ("resources", S, R),
                     4: ("resourceNames", S, R)},
    "NonResourceRule": {1: ("verbs", S, R), 2: ("nonResourceURLs", S, R)},
    "SelfSubjectRulesReviewSpec": {1: ("namespace", S, "")},
    # --- authentication.k8s.io/v1 ---------------------------------------------------------
    "SelfSubjectReview": {1: ("metadata", "ObjectMeta", ""),
                          2: ("status", "SelfSubjectReviewStatus", "")},
    "SelfSubjectReviewStatus": {1: ("userInfo", "UserInfo", "")},
    "UserInfo": {1: ("username", S, ""), 2: ("uid", S, ""), 3: ("groups", S, R),
                 4: ("extra", ("map", "ExtraValue"), "")},
    "TokenReview": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "TokenReviewSpec", ""),
                    3: ("status", "TokenReviewStatus", "")},
    "TokenReviewStatus": {1: ("authenticated", BOOL, ""), 2: ("user", "UserInfo", ""),
                          3: ("error", S, ""), 4: ("audiences", S, R)},
    "TokenReviewSpec": {1: ("token", S, ""), 2: ("audiences", S, R)},
    "TokenRequest": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "TokenRequestSpec", ""),
                     3: ("status", "TokenRequestStatus", "")},
    "TokenRequestStatus": {1: ("token", S, ""), 2: ("expirationTimestamp", "Time", "")},
    # --- workloads (what `kubectl create deployment|job|cronjob|service|pdb` write) -----
    # Pod templates: the commonly set fields; any other field set to a non-zero value
    # makes the body unsupported (415) rather than silently lost.
    "PodTemplateSpec": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "PodSpec", "")},
    "PodSpec": {
        2: ("containers", "Container", R), 3: ("restartPolicy", S, ""),
        4: ("terminationGracePeriodSeconds", I64, KEEP), 6: ("dnsPolicy", S, ""),
        7: ("nodeSelector", ("map", S), ""), 8: ("serviceAccountName", S, ""),
        10: ("nodeName", S, ""), 11: ("hostNetwork", BOOL, ""),
        15: ("imagePullSecrets", "LocalObjectReference", R), 16: ("hostname", S, ""),
        17: ("subdomain", S, ""), 19: ("schedulerName", S, ""),
        20: ("initContainers", "Container", R), 24: ("priorityClassName", S, ""),
    },
    "Container": {
        1: ("name", S, ""), 2: ("image", S, ""), 3: ("command", S, R), 4: ("args", S, R),
        5: ("workingDir", S, ""), 6: ("ports", "ContainerPort", R), 7: ("env", "EnvVar", R),
        8: ("resources", "ResourceRequirements", ""), 13: ("terminationMessagePath", S, ""),
        14: ("imagePullPolicy", S, ""), 16: ("stdin", BOOL, ""), 17: ("stdinOnce", BOOL, ""),
        18: ("tty", BOOL, ""), 20: ("terminationMessagePolicy", S, ""),
    },
    "ContainerPort": {1: ("name", S, ""), 2: ("hostPort", I32, ""), 3: ("containerPort", I32, ""),
                      4: ("protocol", S, ""), 5: ("hostIP", S, "")},
    "EnvVar": {1: ("name", S, ""), 2: ("value", S, "")},
    "ResourceRequirements": {1: ("limits", ("map", "Quantity"), ""),
                             2: ("requests", ("map", "Quantity"), "")},
    "Deployment": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "DeploymentSpec", ""),
                   3: ("status", "Empty", "")},
    "DeploymentSpec": {1: ("replicas", I32, KEEP), 2: ("selector", "LabelSelector", ""),
                       3: ("template", "PodTemplateSpec", ""),
                       4: ("strategy", "DeploymentStrategy", ""),
                       5: ("minReadySeconds", I32, ""), 6: ("revisionHistoryLimit", I32, KEEP),
                       7: ("paused", BOOL, ""), 9: ("progressDeadlineSeconds", I32, KEEP)},
    "DeploymentStrategy": {1: ("type", S, "")},
    "Job": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "JobSpec", ""),
            3: ("status", "Empty", "")},
    "JobSpec": {1: ("parallelism", I32, KEEP), 2: ("completions", I32, KEEP),
                3: ("activeDeadlineSeconds", I64, KEEP), 4: ("selector", "LabelSelector", ""),
                5: ("manualSelector", BOOL, KEEP), 6: ("template", "PodTemplateSpec", ""),
                7: ("backoffLimit", I32, KEEP), 8: ("ttlSecondsAfterFinished", I32, KEEP),
                9: ("completionMode", S, KEEP), 10: ("suspend", BOOL, KEEP)},
    "CronJob": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "CronJobSpec", ""),
                3: ("status", "Empty", "")},
    "CronJobSpec": {1: ("schedule", S, ""), 2: ("startingDeadlineSeconds", I64, KEEP),
                    3: ("concurrencyPolicy", S, ""), 4: ("suspend", BOOL, KEEP),
                    5: ("jobTemplate", "JobTemplateSpec", ""),
                    6: ("successfulJobsHistoryLimit", I32, KEEP),
                    7: ("failedJobsHistoryLimit", I32, KEEP), 8: ("timeZone", S, KEEP)},
    "JobTemplateSpec": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "JobSpec", "")},
    "Service": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "ServiceSpec", ""),
                3: ("status", "Empty", "")},
    "ServiceSpec": {1: ("ports", "ServicePort", R), 2: ("selector", ("map", S), ""),
                    3: ("clusterIP", S, ""), 4: ("type", S, ""), 5: ("externalIPs", S, R),
                    7: ("sessionAffinity", S, ""), 10: ("externalName", S, ""),
                    18: ("clusterIPs", S, R)},
    "ServicePort": {1: ("name", S, ""), 2: ("protocol", S, ""), 3: ("port", I32, ""),
                    4: ("targetPort", "IntOrString", ""), 5: ("nodePort", I32, "")},
    "PodDisruptionBudget": {1: ("metadata", "ObjectMeta", ""),
                            2: ("spec", "PodDisruptionBudgetSpec", ""),
                            3: ("status", "Empty", "")},
    "PodDisruptionBudgetSpec": {1: ("minAvailable", "IntOrString", ""),
                                2: ("selector", "LabelSelector", ""),
                                3: ("maxUnavailable", "IntOrString", ""),
                                4: ("unhealthyPodEvictionPolicy", S, KEEP)},
    # value is required upstream: kept even when 0, which Go's encoder always writes.
    "PriorityClass": {1: ("metadata", "ObjectMeta", ""), 2: ("value", I32, KEEP),
                      3: ("globalDefault", BOOL, ""), 4: ("description", S, ""),
                      5: ("preemptionPolicy", S, KEEP)},
    # A status the server resets anyway: only an all-zero one is accepted.
    "Empty": {},
    "TokenRequestSpec": {1: ("audiences", S, R), 3: ("boundObjectRef", "BoundObjectReference", ""),
                         4: ("expirationSeconds", I64, KEEP)},
    "BoundObjectReference": {1: ("kind", S, ""), 2: ("apiVersion", S, ""), 3: ("name", S, ""),
                             4: ("uid", S, "")},
}

# Special messages with a JSON form of their own.
_TIME, _QUANTITY, _FIELDS_V1, _INT_OR_STRING = "Time", "Quantity", "FieldsV1", "IntOrString"

# (group, kind) -> top-level message
KINDS = {
    ("", "Namespace"), ("", "ConfigMap"), ("", "Secret"), ("", "ServiceAccount"),
    ("", "ResourceQuota"), ("", "Binding"),
    ("rbac.authorization.k8s.io", "Role"), ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "RoleBinding"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("authorization.k8s.io", "SelfSubjectAccessReview"),
    ("authorization.k8s.io", "SubjectAccessReview"),
    ("authorization.k8s.io", "LocalSubjectAccessReview"),
    ("authorization.k8s.io", "SelfSubjectRulesReview"),
    ("authentication.k8s.io", "SelfSubjectReview"), ("authentication.k8s.io", "TokenReview"),
    ("authentication.k8s.io", "TokenRequest"),
    ("meta.k8s.io", "DeleteOptions"), ("", "DeleteOptions"),
    ("apps", "Deployment"), ("batch", "Job"), ("batch", "CronJob"), ("", "Service"),
    ("policy", "PodDisruptionBudget"), ("scheduling.k8s.io", "PriorityClass"),
}


# --- wire format -------------------------------------------------------------------------

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def fields(data: bytes):
    """(field number, wire type, value) of each field; value: int or bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError("truncated field")
            value, pos = data[pos:pos + length], pos + length
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed(value: int, bits: int) -> int:
    value &= (1 << 64) - 1
    if value >= 1 << 63:
        value -= 1 << 64
    if bits == 32:
        value = ((value + (1 << 31)) % (1 << 32)) - (1 << 31)
    return value


def _scalar(kind: str, wire: int, value):
    if kind == S:
        if wire != 2:
            raise ProtobufError("string field with a non-length wire type")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtobufError("string field is not UTF-8") from None
    if kind == B:
        return base64.b64encode(value).decode()
    if kind in (I32, I64):
        if wire != 0:
            raise ProtobufError("integer field with a non-varint wire type")
        return _signed(value, 32 if kind == I32 else 64)
    if kind == BOOL:
        return bool(value)
    if kind == "double":
        return struct.unpack("<d", value)[0]
    raise ProtobufError(f"unknown scalar {kind}")


def _all_zero(wire: int, value) -> bool:
    """A field holding only zero values (0, "", or a message of such fields)."""
    if wire == 0:
        return value == 0
    if wire != 2:
        return False
    try:
        return all(_all_zero(w, v) for _, w, v in fields(value))
    except ProtobufError:
        return False


def _zero(value) -> bool:
    return value in ("", 0, False) and not isinstance(value, float)


def _special(name: str, data: bytes):
    if name == _TIME:
        seconds = nanos = 0
        for number, wire, value in fields(data):
            if number == 1:
                seconds = _signed(value, 64)
            elif number == 2:
                nanos = _signed(value, 32)
        if seconds == 0 and nanos == 0:
            return None
        moment = datetime.fromtimestamp(seconds, timezone.utc)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if name == _QUANTITY:
        for number, wire, value in fields(data):
            if number == 1:
                return value.decode("utf-8")
        return "0"
    if name == _INT_OR_STRING:
        kind, number_value, text = 0, 0, ""
        for number, wire, value in fields(data):
            if number == 1:
                kind = value
            elif number == 2:
                number_value = _signed(value, 32)
            elif number == 3:
                text = value.decode("utf-8")
        return text if kind == 1 else number_value
    if name == _FIELDS_V1:
        import orjson
        for number, wire, value in fields(data):
            if number == 1:
                try:
                    return orjson.loads(value)
                except orjson.JSONDecodeError:
                    raise ProtobufError("fieldsV1 is not JSON") from None
        return {}
    raise KeyError(name)


def _value(kind, wire: int, value):
    if isinstance(kind, str) and kind in (_TIME, _QUANTITY, _FIELDS_V1, _INT_OR_STRING):
        return _special(kind, value)
    if isinstance(kind, str) and kind in MESSAGES:
        if wire != 2:
            raise ProtobufError(f"{kind} field with a non-length wire type")
        return message(kind, value)
    return _scalar(kind, wire, value)


def message(name: str, data: bytes) -> dict:
    schema = MESSAGES.get(name)
    if schema is None:
        raise Unsupported(name)
    out: dict[str, Any] = {}
    for number, wire, value in fields(data):
        field = schema.get(number)
        if field is None:
            # Go writes every non-pointer field; a zero one we do not know is no loss.
            if _all_zero(wire, value):
                continue
            raise Unsupported(f"{name} field {number}")
        json_name, kind, flags = field
        if isinstance(kind, tuple):          # map<string, V>: entries {1: key, 2: value}
            key, item = "", None
            for entry_number, entry_wire, entry_value in fields(value):
                if entry_number == 1:
                    key = _scalar(S, entry_wire, entry_value)
                elif entry_number == 2:
                    item = _value(kind[1], entry_wire, entry_value)
            if item is None:
                item = "" if kind[1] in (S, B) else ({} if kind[1] in MESSAGES else "")
            out.setdefault(json_name, {})[key] = item
            continue
        if flags == R:
            if wire == 2 and kind in (I32, I64, BOOL):   # packed
                items, pos = [], 0
                while pos < len(value):
                    number_value, pos = _varint(value, pos)
                    items.append(_scalar(kind, 0, number_value))
                out.setdefault(json_name, []).extend(items)
            else:
                out.setdefault(json_name, []).append(_value(kind, wire, value))
            continue
        decoded = _value(kind, wire, value)
        if decoded is None or (flags != KEEP and _zero(decoded)):
            out.pop(json_name, None)
            continue
        out[json_name] = decoded
    return out


def decode(body: bytes) -> dict:
    """A protobuf request body as the object it encodes (apiVersion and kind set)."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing the k8s protobuf magic prefix")
    envelope = message("Unknown", body[len(MAGIC):])
    type_meta = envelope.get("typeMeta") or {}
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    group = api_version.rpartition("/")[0]
    if envelope.get("contentEncoding"):
        raise ProtobufError(f"unsupported content encoding {envelope['contentEncoding']}")
    if (group, kind) not in KINDS:
        raise Unsupported(f"{kind} ({api_version or 'no apiVersion'})")
    raw = base64.b64decode(envelope.get("raw", ""))
    obj = message(kind, raw)
    result = {"apiVersion": api_version, "kind": kind}
    result.update(obj)
    return result
