"""Encryption at rest: the API server's EncryptionConfiguration, applied to stored values.

Reads apiserver.config.k8s.io/v1 EncryptionConfiguration (the --encryption-provider-config
file). For each resource the first provider listed encrypts new writes; every provider
listed can decrypt, picked by the prefix a stored value carries, so keys can be rotated
by listing the new key first. Supported providers: aescbc, aesgcm and identity.

Stored layout follows upstream, so data written by one API server is readable by another:
    k8s:enc:aescbc:v1:<key name>:<16-byte IV><AES-CBC ciphertext, PKCS#7 padded>
    k8s:enc:aesgcm:v1:<key name>:<12-byte nonce><AES-GCM ciphertext + tag>
Values without a known prefix are plaintext (identity), as written before encryption
was turned on.
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_KEY_SIZES = (16, 24, 32)


class EncryptionConfigError(ValueError):
    pass


class DecryptionError(ValueError):
    pass


class Provider(Protocol):
    prefix: bytes

    def encrypt(self, data: bytes) -> bytes: ...

    def decrypt(self, data: bytes) -> bytes: ...


class Identity:
    prefix = b""

    def encrypt(self, data: bytes) -> bytes:
        return data

    def decrypt(self, data: bytes) -> bytes:
        return data


@dataclass
class AESCBC:
    name: str
    key: bytes

    @property
    def prefix(self) -> bytes:
        return f"k8s:enc:aescbc:v1:{self.name}:".encode()

    def encrypt(self, data: bytes) -> bytes:
        iv = os.urandom(16)
        padder = padding.PKCS7(128).padder()
        padded = padder.update(data) + padder.finalize()
        encryptor = Cipher(algorithms.AES(self.key), modes.CBC(iv)).encryptor()
        return self.prefix + iv + encryptor.update(padded) + encryptor.finalize()

    def decrypt(self, data: bytes) -> bytes:
        body = data[len(self.prefix):]
        if len(body) < 32 or len(body) % 16:
            raise DecryptionError("aescbc: stored value has an invalid length")
        decryptor = Cipher(algorithms.AES(self.key), modes.CBC(body[:16])).decryptor()
        padded = decryptor.update(body[16:]) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        try:
            return unpadder.update(padded) + unpadder.finalize()
        except ValueError:
            raise DecryptionError("aescbc: wrong key or corrupted value") from None


@dataclass
class AESGCM_:
    name: str
    key: bytes

    @property
    def prefix(self) -> bytes:
        return f"k8s:enc:aesgcm:v1:{self.name}:".encode()

    def encrypt(self, data: bytes) -> bytes:
        nonce = os.urandom(12)
        return self.prefix + nonce + AESGCM(self.key).encrypt(nonce, data, None)

    def decrypt(self, data: bytes) -> bytes:
        body = data[len(self.prefix):]
        try:
            return AESGCM(self.key).decrypt(body[:12], body[12:], None)
        except Exception:
            raise DecryptionError("aesgcm: wrong key or corrupted value") from None


class Transformer:
    """Encrypts values of one resource with its first provider; decrypts with any."""

    def __init__(self, providers: list[Provider]):
        self.providers = providers or [Identity()]
        # Longest prefixes first, so "identity" (empty prefix) is the last resort.
        self._by_prefix = sorted(self.providers, key=lambda p: len(p.prefix), reverse=True)

    def encrypt(self, data: bytes) -> bytes:
        return self.providers[0].encrypt(data)

    def decrypt(self, data: bytes) -> bytes:
        for provider in self._by_prefix:
            if data.startswith(provider.prefix):
                if not provider.prefix and data.startswith(b"k8s:enc:"):
                    break  # encrypted with a key this configuration no longer lists
                return provider.decrypt(data)
        raise DecryptionError("no configured provider can decrypt this value "
                              f"({data[:40]!r}...)")


PLAINTEXT = Transformer([Identity()])


class EncryptionConfig:
    """resource ("secrets", "configmaps", "deployments.apps", "*.apps", "*.*") -> Transformer."""

    def __init__(self, rules: list[tuple[list[str], Transformer]]):
        self._rules = rules

    def transformer_for(self, resource: str, group: str = "") -> Transformer:
        for names, transformer in self._rules:
            if any(_matches(name, resource, group) for name in names):
                return transformer
        return PLAINTEXT


def _matches(name: str, resource: str, group: str) -> bool:
    """Upstream's names: "secrets", "deployments.apps", "*.apps", "*." (core), "*.*"."""
    wanted_resource, _, wanted_group = name.partition(".")
    if wanted_group == "*":
        return wanted_resource == "*"
    return wanted_group == group and wanted_resource in ("*", resource)


def _key(entry: dict, where: str) -> tuple[str, bytes]:
    name, secret = entry.get("name"), entry.get("secret")
    if not name or not secret:
        raise EncryptionConfigError(f"{where}: every key needs a name and a secret")
    try:
        key = base64.b64decode(secret, validate=True)
    except ValueError:
        raise EncryptionConfigError(f"{where}: key {name!r} is not base64") from None
    if len(key) not in _KEY_SIZES:
        raise EncryptionConfigError(f"{where}: key {name!r} must be 16, 24 or 32 bytes, "
                                    f"is {len(key)}")
    return name, key


def parse(text: str, source: str = "encryption config") -> EncryptionConfig:
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise EncryptionConfigError(f"{source}: {exc}") from None
    if doc.get("kind") != "EncryptionConfiguration":
        raise EncryptionConfigError(f"{source}: kind must be EncryptionConfiguration")
    rules = []
    for i, rule in enumerate(doc.get("resources") or []):
        where = f"{source}: resources[{i}]"
        names = rule.get("resources") or []
        if not names:
            raise EncryptionConfigError(f"{where}: resources must not be empty")
        providers: list[Provider] = []
        for spec in rule.get("providers") or []:
            if "identity" in spec:
                providers.append(Identity())
            elif "aescbc" in spec or "aesgcm" in spec:
                kind = "aescbc" if "aescbc" in spec else "aesgcm"
                keys = (spec[kind] or {}).get("keys") or []
                if not keys:
                    raise EncryptionConfigError(f"{where}: {kind} needs at least one key")
                for entry in keys:
                    name, key = _key(entry, where)
                    providers.append(AESCBC(name, key) if kind == "aescbc" else AESGCM_(name, key))
            else:
                raise EncryptionConfigError(f"{where}: unsupported provider {sorted(spec)}; "
                                            "supported: aescbc, aesgcm, identity")
        if not providers:
            raise EncryptionConfigError(f"{where}: providers must not be empty")
        rules.append((names, Transformer(providers)))
    return EncryptionConfig(rules)


def load(path: str | os.PathLike) -> EncryptionConfig:
    return parse(Path(path).read_text(), str(path))
