"""Content negotiation: what the client accepts back and what its body is written in.

Responses are JSON (or YAML on request). `Accept: application/json;as=Table;g=meta.k8s.io;
v=v1` asks for a table (kubectl get), `as=PartialObjectMetadata[List]` for metadata only.
Protobuf is not spoken; clients that list it first fall back to JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
import yaml

from kubesmith.apiserver import errors, protobuf

JSON = "application/json"
YAML = "application/yaml"
PROTOBUF = "application/vnd.kubernetes.protobuf"


@dataclass(frozen=True)
class MediaType:
    type: str
    params: dict

    @property
    def as_(self) -> str:
        return self.params.get("as", "")


@dataclass(frozen=True)
class Output:
    """What to send back: encoding (json/yaml) and transform (object/table/metadata)."""
    encoding: str = "json"
    # "", "Table", "PartialObjectMetadata" or "PartialObjectMetadataList"
    transform: str = ""
    version: str = "v1"           # meta.k8s.io version of a table / metadata


def parse_media_types(header: str | None) -> list[MediaType]:
    result = []
    for part in (header or "").split(","):
        part = part.strip()
        if not part:
            continue
        fields = [f.strip() for f in part.split(";")]
        params = {}
        for field in fields[1:]:
            key, _, value = field.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        result.append(MediaType(fields[0].lower(), params))
    return result


def negotiate(header: str | None, *, allow_transform: bool) -> Output:
    """The first offered representation we can produce; 406 when none."""
    offered = parse_media_types(header)
    if not offered:
        return Output()
    for media in offered:
        if media.type in (JSON, "application/*", "*/*", YAML, "text/yaml"):
            encoding = "yaml" if media.type in (YAML, "text/yaml") else "json"
            as_ = media.as_
            if not as_:
                return Output(encoding)
            if not allow_transform:
                continue
            if media.params.get("g") != "meta.k8s.io":
                continue
            version = media.params.get("v", "")
            if version not in ("v1", "v1beta1"):
                continue
            if as_ in ("Table", "PartialObjectMetadata", "PartialObjectMetadataList"):
                return Output(encoding, as_, version)
    raise errors.not_acceptable([JSON, YAML, f"{JSON};as=Table;v=v1;g=meta.k8s.io"])


def encode(body: Any, output: Output = Output()) -> tuple[bytes, str]:
    if output.encoding == "yaml":
        return yaml.safe_dump(body, sort_keys=False).encode(), YAML
    return orjson.dumps(body), JSON


# --- request bodies --------------------------------------------------------------------

class DuplicateFields(ValueError):
    def __init__(self, paths: list[str]):
        super().__init__(", ".join(paths))
        self.paths = paths


def body_media_type(content_type: str | None) -> str:
    return (content_type or JSON).split(";")[0].strip().lower() or JSON


def decode_body(raw: bytes, content_type: str | None) -> Any:
    """JSON or YAML request body; BadRequest when malformed, 415 for other types."""
    media = body_media_type(content_type)
    if media in (JSON, "*/*", "application/*") or media.endswith("+json"):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise errors.bad_request(f"error decoding JSON: {exc}") from None
    if media in (YAML, "application/x-yaml", "text/yaml") or media.endswith("+yaml"):
        try:
            return yaml.safe_load(raw.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise errors.bad_request(f"error converting YAML to JSON: {exc}") from None
    if media == PROTOBUF:
        try:
            return protobuf.decode(raw)
        except protobuf.Unsupported as exc:
            raise errors.APIError(
                415, "UnsupportedMediaType",
                f"the protobuf encoding of {exc} is not supported by this server; send "
                "application/json") from None
        except protobuf.ProtobufError as exc:
            raise errors.bad_request(f"error decoding protobuf: {exc}") from None
    raise errors.unsupported_media_type(media, [JSON, YAML, PROTOBUF])


def duplicate_fields(raw: bytes, content_type: str | None) -> list[str]:
    """Paths of keys given twice in one JSON object ("metadata.name"); JSON bodies only."""
    media = body_media_type(content_type)
    if not (media == JSON or media.endswith("+json")):
        return []
    found: list[str] = []
    # Almost no body repeats a key: a first pass that only looks is half the cost of the
    # walk with paths, which runs only when it finds one.
    repeated = False

    def look(pairs: list) -> None:
        nonlocal repeated
        if len(pairs) > 1 and len(dict(pairs)) != len(pairs):
            repeated = True

    try:
        json.loads(raw, object_pairs_hook=look)
    except ValueError:
        return []
    if not repeated:
        return found
    # Parse again keeping every pair, then walk it with paths.
    try:
        tree = json.loads(raw, object_pairs_hook=lambda pairs: _Pairs(pairs))
    except ValueError:
        return []
    _walk(tree, "", found)
    return found


class _Pairs(list):
    pass


def _walk(node: Any, path: str, found: list[str]) -> None:
    if isinstance(node, _Pairs):
        seen = set()
        for key, value in node:
            child = f"{path}.{key}" if path else key
            if key in seen:
                found.append(child)
            seen.add(key)
            _walk(value, child, found)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _walk(item, f"{path}[{index}]", found)
