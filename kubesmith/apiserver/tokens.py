"""JSON Web Tokens (compact JWS) signed with the service-account key: RS256 for RSA keys,
ES256/ES384/ES512 for EC P-256/P-384/P-521, as upstream picks from the key.

Only what service-account tokens need, on PyJWT's JWS layer: sign a claims object, and
verify a token against a set of public keys (any of them may have signed it). The header carries upstream's key id:
base64url(SHA-256(the public key in PKIX DER)). Claims (issuer, audience, times) are
checked by the caller; this module only proves who signed what.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import jwt
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]
PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey]

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_JWS = jwt.PyJWS()
# Far beyond any real token; refuses absurd input before any parsing work.
MAX_TOKEN_BYTES = 64 * 1024


class TokenError(ValueError):
    """The token is malformed or its signature does not verify."""


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    if not text or "=" in text:
        raise TokenError("malformed base64url segment")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("malformed base64url segment") from None


def algorithm_of(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "RS256"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        alg = _EC_ALGORITHMS.get(key.curve.name)
        if alg is not None:
            return alg
    raise TokenError(f"unsupported key type {type(key).__name__}")


def key_id(public: PublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return b64encode(hashlib.sha256(der).digest())


@dataclass(frozen=True)
class VerifyKey:
    key: PublicKey
    alg: str
    kid: str


def verify_key(public: PublicKey) -> VerifyKey:
    return VerifyKey(public, algorithm_of(public), key_id(public))


def _pem_blocks(data: bytes) -> list[bytes]:
    blocks, rest = [], data
    while True:
        start = rest.find(b"-----BEGIN ")
        if start < 0:
            return blocks
        end_marker = rest.find(b"-----END ", start)
        if end_marker < 0:
            return blocks
        end = rest.find(b"-----", end_marker + 9)
        if end < 0:
            return blocks
        blocks.append(rest[start:end + 5] + b"\n")
        rest = rest[end + 5:]


def load_private_key(path: str | Path) -> PrivateKey:
    data = Path(path).read_bytes()
    key = serialization.load_pem_private_key(data, None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise TokenError(f"{path}: not an RSA or EC private key")
    algorithm_of(key)
    return key


def load_public_keys(path: str | Path) -> list[PublicKey]:
    """Every key in a PEM file: public keys, private keys (their public half) and
    certificates, as upstream's --service-account-key-file accepts."""
    keys: list[PublicKey] = []
    for block in _pem_blocks(Path(path).read_bytes()):
        key: Any
        if b"CERTIFICATE" in block.split(b"\n", 1)[0]:
            key = x509.load_pem_x509_certificate(block).public_key()
        elif b"PRIVATE KEY" in block.split(b"\n", 1)[0]:
            key = serialization.load_pem_private_key(block, None).public_key()
        else:
            key = serialization.load_pem_public_key(block)
        if isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            keys.append(key)
    if not keys:
        raise TokenError(f"{path}: no RSA or EC key found")
    return keys


def _verify(vk: VerifyKey, token: str) -> bool:
    try:
        _JWS.decode_complete(token, key=vk.key, algorithms=[vk.alg])
        return True
    except jwt.PyJWTError:
        return False


def encode(claims: dict, key: PrivateKey, kid: str | None = None) -> str:
    # Upstream's header is {"alg", "kid"} only: no "typ".
    header = {"kid": kid if kid is not None else key_id(key.public_key()), "typ": None}
    return _JWS.encode(orjson.dumps(claims), key, algorithm=algorithm_of(key), headers=header)


def peek(token: str) -> tuple[dict, dict]:
    """(header, claims) without any verification: only to decide whose token it is."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError("token too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("not a compact JWS")
    try:
        header = orjson.loads(b64decode(parts[0]))
        claims = orjson.loads(b64decode(parts[1]))
    except orjson.JSONDecodeError:
        raise TokenError("malformed JSON in token") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("malformed token")
    return header, claims


def decode(token: str, keys: list[VerifyKey]) -> dict:
    """The claims of a token signed by one of `keys`; TokenError otherwise."""
    header, claims = peek(token)
    alg = header.get("alg")
    if header.get("crit") is not None:
        raise TokenError("unsupported critical header")
    b64decode(token.rpartition(".")[2])   # a malformed signature is refused early
    kid = header.get("kid")
    candidates = [k for k in keys if k.alg == alg]
    # A matching kid is tried first; keys without a match are still tried, as upstream.
    candidates.sort(key=lambda k: k.kid != kid)
    for vk in candidates:
        if _verify(vk, token):
            return claims
    raise TokenError("invalid signature" if candidates else f"unsupported algorithm {alg!r}")
