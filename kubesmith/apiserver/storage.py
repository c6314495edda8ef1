"""How objects live in etcd: JSON (orjson), optionally encrypted, without resourceVersion.

A key's mod_revision is the object's resourceVersion, so the stored bytes never carry it;
it is filled in on every read. One `ResourceStorage` per etcd prefix: several resource
types may share one (events.k8s.io/v1 Event is kept as core/v1 Event), and then the
first registered type owns the stored shape and the encryption rule.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

import orjson

from kubesmith.api.registry import ResourceType
from kubesmith.apiserver import errors
from kubesmith.store import EtcdStore, KeyValue
from kubesmith.store.encryption import PLAINTEXT, DecryptionError, EncryptionConfig, Transformer

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class DecodeError(ValueError):
    pass


class ResourceStorage:
    """One etcd prefix (/registry/<storage_resource>/) and how its values are encoded."""

    def __init__(self, store: EtcdStore, owner: ResourceType, transformer: Transformer):
        self.store = store
        self.owner = owner
        self.prefix = owner.storage_prefix()
        self.transformer = transformer
        self.name = owner.storage_resource

    def encode(self, obj: Obj) -> bytes:
        meta = obj.get("metadata")
        if isinstance(meta, dict) and "resourceVersion" in meta:
            meta = dict(meta)
            meta.pop("resourceVersion", None)
            obj = dict(obj, metadata=meta)
        return self.transformer.encrypt(orjson.dumps(obj))

    def decode(self, kv: KeyValue) -> Obj:
        return self.decode_value(kv.value, kv.mod_revision, kv.key)

    def decode_value(self, value: bytes, revision: int, key: bytes = b"") -> Obj:
        try:
            obj = orjson.loads(self.transformer.decrypt(value))
        except (DecryptionError, orjson.JSONDecodeError) as exc:
            raise DecodeError(f"cannot decode {key.decode(errors='replace')}: {exc}") from None
        if not isinstance(obj, dict):
            raise DecodeError(f"cannot decode {key.decode(errors='replace')}: not an object")
        obj.setdefault("metadata", {})["resourceVersion"] = str(revision)
        return obj

    def list_head(self, rt: ResourceType) -> bytes | None:
        """How a stored object of `rt` begins when it can go into a JSON list of `rt`
        as stored (see `spliced`); None when the type converts from storage."""
        if rt is not self.owner and rt.from_storage is not None:
            return None
        return (b'{"apiVersion":' + orjson.dumps(rt.api_version) + b',"kind":' +
                orjson.dumps(rt.kind) + b',"metadata":{')

    def spliced(self, kv: KeyValue, head: bytes) -> orjson.Fragment | None:
        """The stored JSON with its resourceVersion put in, for a list body without
        decoding the object and encoding it again; None when the value does not begin
        with `head` (from `list_head`) or already names a resourceVersion (the caller
        decodes those as usual).

        resourceVersion goes first in metadata: finding the end of metadata would take
        a parse. The value is the server's own orjson output, so it is not re-checked."""
        try:
            value = self.transformer.decrypt(kv.value)
        except DecryptionError:
            return None
        if not value.startswith(head) or not value.endswith(b"}") or \
                b'"resourceVersion"' in value:
            return None
        rest = value[len(head):]
        version = b'"resourceVersion":"%d"' % kv.mod_revision
        return orjson.Fragment(head + version + (b"" if rest.startswith(b"}") else b",") +
                               rest)

    def decode_or_fail(self, kv: KeyValue) -> Obj:
        try:
            return self.decode(kv)
        except DecodeError as exc:
            log.error("%s", exc)
            raise errors.internal(str(exc)) from None


class StorageMap:
    """ResourceType -> its ResourceStorage (shared by types with the same storage prefix)."""

    def __init__(self, store: EtcdStore, types: Iterable[ResourceType],
                 encryption: EncryptionConfig | None):
        self.store = store
        self._by_prefix: dict[bytes, ResourceStorage] = {}
        for rt in types:
            if rt.create_only:
                continue
            prefix = rt.storage_prefix()
            if prefix not in self._by_prefix:
                resource = rt.storage_resource.split("/")[0]
                transformer = (encryption.transformer_for(resource, rt.group)
                               if encryption else PLAINTEXT)
                self._by_prefix[prefix] = ResourceStorage(store, rt, transformer)

    def for_type(self, rt: ResourceType) -> ResourceStorage:
        return self._by_prefix[rt.storage_prefix()]

    def __iter__(self):
        return iter(self._by_prefix.values())


def to_type(rt: ResourceType, storage: ResourceStorage, stored: Obj) -> Obj:
    """A stored object in the shape of the requested type, with its apiVersion and kind."""
    if rt is not storage.owner and rt.from_storage is not None:
        obj = rt.convert_from_storage(orjson.loads(orjson.dumps(stored)))
    else:
        obj = stored
    if obj.get("apiVersion") != rt.api_version or obj.get("kind") != rt.kind:
        obj = dict(obj, apiVersion=rt.api_version, kind=rt.kind)
    return obj


def to_storage(rt: ResourceType, storage: ResourceStorage, obj: Obj) -> Obj:
    if rt is not storage.owner and rt.to_storage is not None:
        return rt.convert_to_storage(obj)
    return obj
