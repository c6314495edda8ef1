"""Validation helpers shared by every kind: names, labels, annotations, object metadata,
label selectors, quantities, ports, and the FieldError constructors.

Field paths are written as upstream prints them: "metadata.name",
"spec.containers[0].image", "metadata.labels" and map keys in brackets
("data[bad key]"). A FieldError's `message` is the body upstream puts in a Status
cause ("Required value", `Invalid value: "Foo": ...`, `Unsupported value: "x":
supported values: "a", "b"`, `Duplicate value: "x"`, "Forbidden: ..."); the server
prints a cause as "<field>: <message>". `invalid_message(kind, name, errors)` builds the
Status message of a 422 the way upstream words it.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable

from kubesmith.api.registry import FieldError, Obj

# --- FieldError constructors ----------------------------------------------------------


def _quote(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def required(path: str, detail: str = "") -> FieldError:
    return FieldError("FieldValueRequired", path,
                      "Required value" + (f": {detail}" if detail else ""))


def invalid(path: str, value: Any, detail: str = "") -> FieldError:
    return FieldError("FieldValueInvalid", path,
                      f"Invalid value: {_quote(value)}" + (f": {detail}" if detail else ""))


def not_supported(path: str, value: Any, valid: Iterable[str]) -> FieldError:
    supported = ", ".join(_quote(v) for v in valid)
    return FieldError("FieldValueNotSupported", path,
                      f"Unsupported value: {_quote(value)}: supported values: {supported}")


def duplicate(path: str, value: Any) -> FieldError:
    return FieldError("FieldValueDuplicate", path, f"Duplicate value: {_quote(value)}")


def forbidden(path: str, detail: str) -> FieldError:
    return FieldError("FieldValueForbidden", path, f"Forbidden: {detail}")


def too_long(path: str, max_length: int) -> FieldError:
    return FieldError("FieldValueTooLong", path,
                      f"Too long: may not be more than {max_length} bytes")


def type_invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError("FieldValueTypeInvalid", path, f"Invalid value: {_quote(value)}: {detail}")


def immutable(path: str, value: Any) -> FieldError:
    return invalid(path, value, "field is immutable")


def invalid_message(kind: str, name: str, errors: list[FieldError]) -> str:
    """The Status message of a 422: `Pod "web" is invalid: spec.containers[0].image: ...`."""
    parts = [f"{e.field}: {e.message}" if e.field else e.message for e in errors]
    body = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return f'{kind} "{name}" is invalid: {body}'


# --- name syntax ------------------------------------------------------------------------

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_IANA_SVC_NAME = re.compile(r"^[-a-z0-9]+$")
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def dns1123_label_problems(value: str) -> list[str]:
    problems = []
    if len(value) > DNS1123_LABEL_MAX:
        problems.append(f"must be no more than {DNS1123_LABEL_MAX} characters")
    if not _DNS1123_LABEL.match(value):
        problems.append("must be a lowercase RFC 1123 label: lowercase letters, digits and "
                        "'-', starting and ending with a letter or digit (e.g. 'my-name')")
    return problems


def dns1123_subdomain_problems(value: str) -> list[str]:
    problems = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        problems.append(f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters")
    if not _DNS1123_SUBDOMAIN.match(value):
        problems.append("must be a lowercase RFC 1123 subdomain: lowercase letters, digits, "
                        "'-' and '.', starting and ending with a letter or digit "
                        "(e.g. 'example.com')")
    return problems


def dns1035_label_problems(value: str) -> list[str]:
    problems = []
    if len(value) > DNS1123_LABEL_MAX:
        problems.append(f"must be no more than {DNS1123_LABEL_MAX} characters")
    if not _DNS1035_LABEL.match(value):
        problems.append("must be an RFC 1035 label: lowercase letters, digits and '-', "
                        "starting with a letter and ending with a letter or digit "
                        "(e.g. 'my-name')")
    return problems


def path_segment_problems(value: str) -> list[str]:
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{c}'" for c in ("/", "%") if c in value]


def qualified_name_problems(value: str) -> list[str]:
    """A label key / annotation key / finalizer: optional DNS subdomain prefix + '/' + name."""
    problems = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            problems.append("prefix part must be non-empty")
        else:
            problems.extend("prefix part " + p for p in dns1123_subdomain_problems(prefix))
    else:
        return ["a qualified name must be a name with an optional DNS subdomain prefix "
                "and '/' (e.g. 'example.com/MyName')"]
    if not name:
        problems.append("name part must be non-empty")
    else:
        if len(name) > 63:
            problems.append("name part must be no more than 63 characters")
        if not _QUALIFIED_NAME.match(name):
            problems.append("name part must consist of alphanumeric characters, '-', '_' or "
                            "'.', and must start and end with an alphanumeric character "
                            "(e.g. 'MyName', 'my.name' or '123-abc')")
    return problems


def label_value_problems(value: str) -> list[str]:
    problems = []
    if len(value) > 63:
        problems.append("must be no more than 63 characters")
    if not _LABEL_VALUE.match(value):
        problems.append("a label value must be empty or consist of alphanumeric characters, "
                        "'-', '_' or '.', and must start and end with an alphanumeric "
                        "character (e.g. 'MyValue', 'my_value' or '12345')")
    return problems


def config_key_problems(value: str) -> list[str]:
    problems = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        problems.append(f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters")
    if not _CONFIG_KEY.match(value):
        problems.append("a valid config key must consist of alphanumeric characters, '-', "
                        "'_' or '.' (e.g. 'key.name', 'KEY_NAME' or 'key-name')")
    if value in (".", ".."):
        problems.append(f"must not be '{value}'")
    return problems


def port_name_problems(value: str) -> list[str]:
    """An IANA service name: at most 15 characters, lowercase, digits, '-'."""
    problems = []
    if len(value) > 15:
        problems.append("must be no more than 15 characters")
    if not _IANA_SVC_NAME.match(value):
        problems.append("must contain only lowercase letters, digits and '-'")
    if value.startswith("-") or value.endswith("-"):
        problems.append("must not begin or end with '-'")
    if "--" in value:
        problems.append("must not contain consecutive '-'")
    if value and not re.search(r"[a-z]", value):
        problems.append("must contain at least one letter")
    return problems


def port_number_problems(value: Any) -> list[str]:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        return ["must be between 1 and 65535, inclusive"]
    return []


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- quantities -----------------------------------------------------------------------

_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|"
                       r"[eE][+-]?\d+)?$")
_SUFFIX = {"": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
           "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
           "P": Decimal("1e15"), "E": Decimal("1e18"), "Ki": Decimal(2) ** 10,
           "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
           "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60}


def parse_quantity(value: Any) -> Decimal | None:
    """A resource.Quantity ("500m", "1Gi", "2", 3) as a Decimal, or None if malformed."""
    if is_int(value) or isinstance(value, float):
        return Decimal(str(value))
    if not isinstance(value, str):
        return None
    match = _QUANTITY.match(value.strip())
    if not match:
        return None
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        return None
    suffix = match.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return number * (Decimal(10) ** int(suffix[1:]))
    return number * _SUFFIX[suffix]


def validate_quantity_map(values: Any, path: str, non_negative: bool = True) -> list[FieldError]:
    errors: list[FieldError] = []
    if not isinstance(values, dict):
        return errors
    for key, value in values.items():
        item = f"{path}[{key}]"
        errors.extend(invalid(item, key, p) for p in qualified_name_problems(key))
        parsed = parse_quantity(value)
        if parsed is None:
            errors.append(invalid(item, value, "quantities must match the regular expression "
                                  "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"))
        elif non_negative and parsed < 0:
            errors.append(invalid(item, value, "must be greater than or equal to 0"))
    return errors


# --- metadata -------------------------------------------------------------------------

ANNOTATIONS_MAX_BYTES = 256 * 1024


def validate_labels(labels: Any, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if labels is None:
        return errors
    if not isinstance(labels, dict):
        return [invalid(path, labels, "must be a map of strings")]
    for key, value in labels.items():
        errors.extend(invalid(path, key, p) for p in qualified_name_problems(str(key)))
        if not isinstance(value, str):
            errors.append(invalid(f"{path}", value, "label values must be strings"))
            continue
        errors.extend(invalid(path, value, p) for p in label_value_problems(value))
    return errors


def validate_annotations(annotations: Any, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if annotations is None:
        return errors
    if not isinstance(annotations, dict):
        return [invalid(path, annotations, "must be a map of strings")]
    total = 0
    for key, value in annotations.items():
        errors.extend(invalid(path, key, p) for p in qualified_name_problems(str(key).lower()))
        total += len(str(key)) + len(value if isinstance(value, str) else str(value))
    if total > ANNOTATIONS_MAX_BYTES:
        errors.append(too_long(path, ANNOTATIONS_MAX_BYTES))
    return errors


NAME_CHECKS = {
    "subdomain": dns1123_subdomain_problems,
    "label": dns1123_label_problems,
    "dns1035": dns1035_label_problems,
    "path": path_segment_problems,
}


def validate_object_meta(obj: Obj, namespaced: bool, name_check: str = "subdomain",
                         path: str = "metadata") -> list[FieldError]:
    """What every object's metadata must satisfy on create and update."""
    errors: list[FieldError] = []
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [required(path, "name or generateName is required")]
    name = meta.get("name")
    generate_name = meta.get("generateName")
    if not name:
        if not generate_name:
            errors.append(required(f"{path}.name", "name or generateName is required"))
    elif isinstance(name, str):
        errors.extend(invalid(f"{path}.name", name, p) for p in NAME_CHECKS[name_check](name))
    else:
        errors.append(invalid(f"{path}.name", name, "must be a string"))
    if generate_name and isinstance(generate_name, str) and name_check != "path":
        # A random suffix is appended, so a trailing '-' is fine in the prefix.
        probe = generate_name[:-1] + "a" if generate_name.endswith("-") else generate_name
        errors.extend(invalid(f"{path}.generateName", generate_name, p)
                      for p in NAME_CHECKS[name_check](probe))
    namespace = meta.get("namespace")
    if namespaced:
        if not namespace:
            errors.append(required(f"{path}.namespace", ""))
        elif isinstance(namespace, str):
            errors.extend(invalid(f"{path}.namespace", namespace, p)
                          for p in dns1123_label_problems(namespace))
    elif namespace:
        errors.append(forbidden(f"{path}.namespace", "not allowed on this type"))
    errors.extend(validate_labels(meta.get("labels"), f"{path}.labels"))
    errors.extend(validate_annotations(meta.get("annotations"), f"{path}.annotations"))
    finalizers = meta.get("finalizers") or []
    if isinstance(finalizers, list):
        for index, finalizer in enumerate(finalizers):
            fpath = f"{path}.finalizers[{index}]"
            if not isinstance(finalizer, str):
                errors.append(invalid(fpath, finalizer, "must be a string"))
                continue
            errors.extend(invalid(fpath, finalizer, p) for p in qualified_name_problems(finalizer))
    owners = meta.get("ownerReferences") or []
    if isinstance(owners, list):
        controllers = 0
        for index, owner in enumerate(owners):
            opath = f"{path}.ownerReferences[{index}]"
            if not isinstance(owner, dict):
                errors.append(invalid(opath, owner, "must be an object"))
                continue
            for key in ("apiVersion", "kind", "name", "uid"):
                if not owner.get(key):
                    errors.append(required(f"{opath}.{key}", ""))
            if owner.get("controller") is True:
                controllers += 1
        if controllers > 1:
            errors.append(invalid(f"{path}.ownerReferences", owners,
                                  "only one reference can have Controller set to true"))
    generation = meta.get("generation")
    if generation is not None and (not is_int(generation) or generation < 0):
        errors.append(invalid(f"{path}.generation", generation,
                              "must be greater than or equal to 0"))
    return errors


def validate_object_meta_update(obj: Obj, old: Obj, path: str = "metadata") -> list[FieldError]:
    """Metadata fields that never change once an object exists."""
    errors: list[FieldError] = []
    meta = obj.get("metadata") or {}
    old_meta = old.get("metadata") or {}
    for key in ("name", "namespace", "uid", "creationTimestamp"):
        if key in old_meta and meta.get(key, old_meta.get(key)) != old_meta.get(key):
            errors.append(immutable(f"{path}.{key}", meta.get(key)))
    old_deletion = old_meta.get("deletionTimestamp")
    if old_deletion and meta.get("deletionTimestamp") != old_deletion:
        errors.append(immutable(f"{path}.deletionTimestamp", meta.get("deletionTimestamp")))
    return errors


def meta_validator(namespaced: bool, name_check: str = "subdomain"):
    """A validator for kinds whose only rules are the common metadata rules."""
    def validate(obj: Obj, old: Obj | None) -> list[FieldError]:
        errors = validate_object_meta(obj, namespaced, name_check)
        if old is not None:
            errors.extend(validate_object_meta_update(obj, old))
        return errors
    return validate


def with_meta(namespaced: bool, name_check: str = "subdomain"):
    """Decorator: run the common metadata rules before a kind's own validator."""
    def wrap(fn):
        def validate(obj: Obj, old: Obj | None) -> list[FieldError]:
            errors = validate_object_meta(obj, namespaced, name_check)
            if old is not None:
                errors.extend(validate_object_meta_update(obj, old))
            errors.extend(fn(obj, old))
            return errors
        validate.__name__ = fn.__name__
        validate.__doc__ = fn.__doc__
        return validate
    return wrap


# --- label selectors ------------------------------------------------------------------

SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def validate_label_selector(selector: Any, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if selector is None:
        return errors
    if not isinstance(selector, dict):
        return [invalid(path, selector, "must be an object")]
    errors.extend(validate_labels(selector.get("matchLabels"), f"{path}.matchLabels"))
    for index, expr in enumerate(selector.get("matchExpressions") or []):
        epath = f"{path}.matchExpressions[{index}]"
        if not isinstance(expr, dict):
            errors.append(invalid(epath, expr, "must be an object"))
            continue
        operator = expr.get("operator")
        values = expr.get("values") or []
        if operator in ("In", "NotIn"):
            if not values:
                errors.append(required(f"{epath}.values",
                                       "must be specified when `operator` is 'In' or 'NotIn'"))
        elif operator in ("Exists", "DoesNotExist"):
            if values:
                errors.append(forbidden(f"{epath}.values", "may not be specified when "
                                        "`operator` is 'Exists' or 'DoesNotExist'"))
        else:
            errors.append(invalid(f"{epath}.operator", operator, "not a valid selector operator"))
        key = expr.get("key") or ""
        if not key:
            errors.append(required(f"{epath}.key", ""))
        else:
            errors.extend(invalid(f"{epath}.key", key, p) for p in qualified_name_problems(key))
        for vindex, value in enumerate(values):
            if isinstance(value, str):
                errors.extend(invalid(f"{epath}.values[{vindex}]", value, p)
                              for p in label_value_problems(value))
    return errors


def selector_matches(selector: Any, labels: dict | None) -> bool:
    """Whether a metav1.LabelSelector selects the given labels (empty selects all)."""
    labels = labels or {}
    if not isinstance(selector, dict):
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, operator = expr.get("key"), expr.get("operator")
        values = expr.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def selector_is_empty(selector: Any) -> bool:
    return not isinstance(selector, dict) or (not selector.get("matchLabels")
                                              and not selector.get("matchExpressions"))


# --- misc -----------------------------------------------------------------------------

def validate_non_negative(value: Any, path: str) -> list[FieldError]:
    if value is None:
        return []
    if not is_int(value) or value < 0:
        return [invalid(path, value, "must be greater than or equal to 0")]
    return []


def validate_positive(value: Any, path: str) -> list[FieldError]:
    if value is None:
        return []
    if not is_int(value) or value <= 0:
        return [invalid(path, value, "must be greater than 0")]
    return []


def validate_enum(value: Any, path: str, allowed: Iterable[str], required_value: bool = False
                  ) -> list[FieldError]:
    allowed = list(allowed)
    if value is None or value == "":
        return [required(path, "")] if required_value else []
    if value not in allowed:
        return [not_supported(path, value, allowed)]
    return []


def is_base64(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def int_or_string_problems(value: Any) -> list[str]:
    if is_int(value):
        return []
    if isinstance(value, str):
        return []
    return ["must be an integer or a string"]


def percent_or_int(value: Any) -> tuple[int | None, bool]:
    """(number, is_percent) of an IntOrString like 25% or 3; (None, False) if malformed."""
    if is_int(value):
        return value, False
    if isinstance(value, str):
        match = re.match(r"^(\d+)%$", value)
        if match:
            return int(match.group(1)), True
        if value.isdigit():
            return None, False
    return None, False
