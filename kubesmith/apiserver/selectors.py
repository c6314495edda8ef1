"""labelSelector and fieldSelector query parameters, parsed and matched as upstream does.

Label selectors: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a`, `!a`, and the
numeric `a>1`, `a<1`, comma separated (all must hold). Field selectors: `f=v`, `f==v`,
`f!=v`, comma separated, with backslash escapes for `,` `=` `!` `\\`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from kubesmith.apiserver import errors

_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str             # =, !=, in, notin, exists, !, gt, lt
    values: tuple[str, ...] = ()

    def matches(self, labels: dict) -> bool:
        op = self.operator
        if op in ("=", "in"):
            return self.key in labels and labels[self.key] in self.values
        if op in ("!=", "notin"):
            return self.key not in labels or labels[self.key] not in self.values
        if op == "exists":
            return self.key in labels
        if op == "!":
            return self.key not in labels
        if self.key not in labels:
            return False
        try:
            have, want = int(labels[self.key]), int(self.values[0])
        except ValueError:
            return False
        return have > want if op == "gt" else have < want


class LabelSelector:
    def __init__(self, requirements: list[Requirement]):
        self.requirements = requirements

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: dict | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


_TOKEN = re.compile(r"\s*(==|!=|=|>|<|\(|\)|,|!|[^\s=!<>(),]+)")


def parse_label_selector(text: str | None) -> LabelSelector:
    if not text or not text.strip():
        return LabelSelector([])
    tokens: list[str] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            if text[position:].strip() == "":
                break
            raise _label_error(text, f"unexpected character at {position}")
        tokens.append(match.group(1))
        position = match.end()
        while position < len(text) and text[position].isspace():
            position += 1
    requirements: list[Requirement] = []
    index = 0

    def take() -> str | None:
        nonlocal index
        if index >= len(tokens):
            return None
        index += 1
        return tokens[index - 1]

    def peek() -> str | None:
        return tokens[index] if index < len(tokens) else None

    while index < len(tokens):
        token = take()
        if token == "!":
            key = take()
            _check_key(text, key)
            requirements.append(Requirement(key, "!"))
        else:
            key = token
            _check_key(text, key)
            op = peek()
            if op in (None, ","):
                requirements.append(Requirement(key, "exists"))
            elif op in ("=", "==", "!="):
                take()
                value = peek()
                if value in (None, ","):
                    value = ""
                else:
                    take()
                _check_value(text, value)
                requirements.append(Requirement(key, "!=" if op == "!=" else "=", (value,)))
            elif op in (">", "<"):
                take()
                value = take()
                if value is None or not re.fullmatch(r"-?\d+", value):
                    raise _label_error(text, "for 'Gt', 'Lt' operators, the value must be "
                                             "an integer")
                requirements.append(Requirement(key, "gt" if op == ">" else "lt", (value,)))
            elif op in ("in", "notin"):
                take()
                if take() != "(":
                    raise _label_error(text, "found '" + str(peek()) + "', expected: '('")
                values: list[str] = []
                while True:
                    value = take()
                    if value is None:
                        raise _label_error(text, "found end of string, expected: ')'")
                    if value == ")":
                        break
                    if value == ",":
                        continue
                    _check_value(text, value)
                    values.append(value)
                if not values:
                    raise _label_error(text, "for 'in', 'notin' operators, values set can't "
                                             "be empty")
                requirements.append(Requirement(key, op, tuple(values)))
            else:
                raise _label_error(text, f"found '{op}', expected: '=', '!=', '==', 'in', "
                                         "notin'")
        separator = take()
        if separator not in (None, ","):
            raise _label_error(text, f"found '{separator}', expected: ',' or 'end of string'")
        if separator == "," and peek() is None:
            raise _label_error(text, "found 'end of string', expected: identifier")
    return LabelSelector(requirements)


def _label_error(text: str, detail: str) -> errors.APIError:
    return errors.bad_request(f"unable to parse requirement: {detail}")


def _check_key(text: str, key: str | None) -> None:
    if not key or key in ("(", ")", ",", "=", "==", "!=", "!") or not _KEY.match(key) \
            or len(key.rpartition("/")[2]) > 63:
        raise errors.bad_request(
            f"unable to parse requirement: invalid label key \"{key or ''}\": name part must "
            "consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character")


def _check_value(text: str, value: str) -> None:
    if len(value) > 63 or not _VALUE.match(value):
        raise errors.bad_request(
            f"unable to parse requirement: invalid label value: \"{value}\": at key: "
            "must be 63 characters or less and consist of alphanumeric characters, '-', "
            "'_' or '.', starting and ending with an alphanumeric character")


# --- field selectors -------------------------------------------------------------------

@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    negate: bool


class FieldSelector:
    def __init__(self, requirements: list[FieldRequirement]):
        self.requirements = requirements

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, value_of: Callable[[str], str | None]) -> bool:
        for req in self.requirements:
            have = value_of(req.field)
            if (have == req.value) == req.negate:
                return False
        return True

    def exact_name(self) -> str | None:
        """metadata.name=x in the selector: the request concerns one object (authorization)."""
        for req in self.requirements:
            if req.field == "metadata.name" and not req.negate:
                return req.value
        return None

    def exact(self, name: str) -> str | None:
        for req in self.requirements:
            if req.field == name and not req.negate:
                return req.value
        return None


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    out, escaped = [], False
    for char in text:
        if escaped:
            if char not in "\\,=!":
                raise errors.bad_request(f"invalid field selector: invalid escape sequence: "
                                         f"\\{char}")
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    if escaped:
        raise errors.bad_request("invalid field selector: unterminated escape sequence")
    return "".join(out)


def parse_field_selector(text: str | None) -> FieldSelector:
    if not text:
        return FieldSelector([])
    requirements = []
    for part in _split_unescaped(text, ","):
        if not part:
            continue
        match = None
        for op in ("!=", "==", "="):
            index = _find_unescaped(part, op)
            if index >= 0:
                match = (part[:index], op, part[index + len(op):])
                break
        if match is None:
            raise errors.bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = match
        requirements.append(FieldRequirement(_unescape(field).strip(), _unescape(value),
                                             op == "!="))
    return FieldSelector(requirements)


def _find_unescaped(text: str, needle: str) -> int:
    index = 0
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text.startswith(needle, index):
            return index
        index += 1
    return -1
