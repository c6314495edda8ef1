"""The OpenAPI v2 document in its protobuf form (the gnostic `openapi.v2.Document` message),
as client-go asks for it at /openapi/v2 with
"Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf" (the older spelling;
newer clients may send "...spec.v2.v1.0+protobuf": accept both).

kubectl 1.27 and 1.28 load this document before `kubectl explain` runs at all, and
older kubectl use it for client-side validation and apply's patch metadata, so the server
should answer that Accept with `v2_protobuf().body` and Content-Type CONTENT_TYPE
("application/com.github.proto-openapi.spec.v2.v1.0+protobuf": the '@' spelling is not a
valid media type, and client-go rejects a response that carries it).

Only the message fields the JSON document uses are encoded, by hand: the runtime needs no
generated code. Vendor extensions are gnostic `Any` values whose `yaml` field holds the
value as YAML text (JSON is valid YAML).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

from kubesmith.api.openapi import v2_document
from kubesmith.protowire import length_delimited, varint

CONTENT_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
ACCEPT_TYPES = ("application/com.github.proto-openapi.spec.v2@v1.0+protobuf", CONTENT_TYPE)


# --- wire format --------------------------------------------------------------------------

def _str(number: int, value: str | None) -> bytes:
    if not value:
        return b""
    return length_delimited(number, value.encode())


def _strs(number: int, values: Iterable[str] | None) -> bytes:
    return b"".join(length_delimited(number, v.encode()) for v in values or ())


def _bool(number: int, value: bool | None) -> bytes:
    return varint(number << 3) + b"\x01" if value else b""


def _msg(number: int, payload: bytes, always: bool = False) -> bytes:
    if not payload and not always:
        return b""
    return length_delimited(number, payload)


# --- messages -----------------------------------------------------------------------------

def _any(value: Any) -> bytes:
    return _str(2, json.dumps(value, separators=(",", ":")))  # Any.yaml


def _extensions(number: int, data: dict) -> bytes:
    out = b""
    for key, value in data.items():
        if key.startswith("x-"):
            out += _msg(number, _str(1, key) + _msg(2, _any(value), always=True), always=True)
    return out


def _schema(schema: dict) -> bytes:
    out = _str(1, schema.get("$ref"))
    out += _str(2, schema.get("format"))
    out += _str(4, schema.get("description"))
    if "default" in schema:
        out += _msg(5, _any(schema["default"]), always=True)
    out += _bool(16, schema.get("uniqueItems"))
    out += _strs(19, schema.get("required"))
    for value in schema.get("enum") or []:
        out += _msg(20, _any(value), always=True)
    additional = schema.get("additionalProperties")
    if isinstance(additional, dict):
        out += _msg(21, _msg(1, _schema(additional), always=True), always=True)
    elif isinstance(additional, bool):
        out += _msg(21, _bool(2, additional) or b"\x10\x00", always=True)
    kind = schema.get("type")
    if kind:
        out += _msg(22, _strs(1, [kind] if isinstance(kind, str) else kind), always=True)
    if isinstance(schema.get("items"), dict):
        out += _msg(23, _msg(1, _schema(schema["items"]), always=True), always=True)
    for part in schema.get("allOf") or []:
        out += _msg(24, _schema(part), always=True)
    properties = schema.get("properties")
    if properties:
        named = b"".join(_msg(1, _str(1, name) + _msg(2, _schema(value), always=True),
                              always=True) for name, value in properties.items())
        out += _msg(25, named, always=True)
    out += _extensions(31, schema)
    return out


def _parameter(param: dict) -> bytes:
    where = param.get("in")
    if where == "body":
        body = (_str(1, param.get("description")) + _str(2, param.get("name")) + _str(3, where)
                + _bool(4, param.get("required"))
                + _msg(5, _schema(param.get("schema") or {}), always=True))
        return _msg(1, _msg(1, body, always=True), always=True)
    if where == "path":
        sub = (_bool(1, param.get("required")) + _str(2, where)
               + _str(3, param.get("description")) + _str(4, param.get("name"))
               + _str(5, param.get("type")) + _str(6, param.get("format"))
               + _bool(19, param.get("uniqueItems")))
        non_body = _msg(4, sub, always=True)
    else:
        sub = (_bool(1, param.get("required")) + _str(2, where)
               + _str(3, param.get("description")) + _str(4, param.get("name"))
               + _str(6, param.get("type")) + _str(7, param.get("format"))
               + _bool(20, param.get("uniqueItems")))
        non_body = _msg(3, sub, always=True)
    return _msg(1, _msg(2, non_body, always=True), always=True)


def _parameters(number: int, params: Iterable[dict]) -> bytes:
    return b"".join(_msg(number, _parameter(p), always=True) for p in params or ())


def _operation(op: dict) -> bytes:
    out = _strs(1, op.get("tags"))
    out += _str(3, op.get("description"))
    out += _str(5, op.get("operationId"))
    out += _strs(6, op.get("produces"))
    out += _strs(7, op.get("consumes"))
    out += _parameters(8, op.get("parameters") or [])
    codes = b""
    for code, response in (op.get("responses") or {}).items():
        body = _str(1, response.get("description"))
        if "schema" in response:
            body += _msg(2, _msg(1, _schema(response["schema"]), always=True), always=True)
        value = _msg(1, body, always=True)
        codes += _msg(1, _str(1, code) + _msg(2, value, always=True), always=True)
    out += _msg(9, codes, always=True)
    out += _strs(10, op.get("schemes"))
    out += _extensions(13, op)
    return out


_METHODS = {"get": 2, "put": 3, "post": 4, "delete": 5, "options": 6, "head": 7, "patch": 8}


def _path_item(item: dict) -> bytes:
    out = b""
    for method, number in _METHODS.items():
        if method in item:
            out += _msg(number, _operation(item[method]), always=True)
    out += _parameters(9, item.get("parameters") or [])
    return out


def encode_document(doc: dict) -> bytes:
    out = _str(1, doc.get("swagger"))
    info = doc.get("info") or {}
    out += _msg(2, _str(1, info.get("title")) + _str(2, info.get("version")))
    paths = b"".join(_msg(2, _str(1, path) + _msg(2, _path_item(item), always=True),
                          always=True) for path, item in (doc.get("paths") or {}).items())
    out += _msg(8, paths, always=True)
    definitions = b"".join(_msg(1, _str(1, name) + _msg(2, _schema(schema), always=True),
                                always=True)
                           for name, schema in (doc.get("definitions") or {}).items())
    out += _msg(9, definitions, always=True)
    for requirement in doc.get("security") or []:
        named = b"".join(_msg(1, _str(1, name) + _msg(2, _strs(1, scopes), always=True),
                              always=True) for name, scopes in requirement.items())
        out += _msg(12, named, always=True)
    security = b""
    for name, item in (doc.get("securityDefinitions") or {}).items():
        api_key = (_str(1, item.get("type")) + _str(2, item.get("name"))
                   + _str(3, item.get("in")) + _str(4, item.get("description")))
        security += _msg(1, _str(1, name) + _msg(2, _msg(2, api_key, always=True),
                                                 always=True), always=True)
    out += _msg(13, security)
    return out


@dataclass(frozen=True)
class ProtoDocument:
    body: bytes
    etag: str


@lru_cache(maxsize=1)
def v2_protobuf() -> ProtoDocument:
    body = encode_document(v2_document().data)
    return ProtoDocument(body, hashlib.sha512(body).hexdigest().upper())
