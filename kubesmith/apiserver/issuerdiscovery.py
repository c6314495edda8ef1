"""Service-account issuer discovery: upstream's OpenID Connect metadata endpoints.

    GET /.well-known/openid-configuration   the discovery document (application/json)
    GET /openid/v1/jwks                     the verification keys (application/jwk-set+json)

Served, as upstream, only when tokens are verified here and the first
--service-account-issuer is an https URL without query or fragment (the OIDC spec's
demand); otherwise both paths are unknown (404) and the reason is logged. The document
names that issuer, and jwks_uri is --service-account-jwks-uri or, without it,
https://<advertise address>:<secure port>/openid/v1/jwks. Every key the server verifies
service-account tokens with is one JWK whose kid is the one issued tokens carry
(tokens.key_id), so a relying party finds a token's key by its header.

Both documents are rendered once at start (the keys do not change while running).
Authentication and authorization are the pipeline's as for any path: the default policy
grants them to every service account (ClusterRole
system:service-account-issuer-discovery).
"""
from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kubesmith.apiserver import serviceaccount, tokens

if TYPE_CHECKING:
    from kubesmith.apiserver.server import APIServer

log = logging.getLogger(__name__)

CONFIG_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"
JWKS_CONTENT_TYPE = "application/jwk-set+json"
# Overrides the API's "no-cache, private": relying parties may cache the keys an hour.
CACHE_CONTROL = "public, max-age=3600"
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def _int_bytes(value: int, size: int | None = None) -> bytes:
    """Big-endian bytes of a JWK integer: minimal, or padded to the curve's size."""
    size = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(size, "big")


def jwk(vk: tokens.VerifyKey) -> dict:
    """One public key as a JWK, in go-jose's member order (use, kty, kid, crv, alg, ...)."""
    key = vk.key
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return {"use": "sig", "kty": "RSA", "kid": vk.kid, "alg": vk.alg,
                "n": tokens.b64encode(_int_bytes(numbers.n)),
                "e": tokens.b64encode(_int_bytes(numbers.e))}
    if isinstance(key, ec.EllipticCurvePublicKey):
        numbers = key.public_numbers()
        size = (key.curve.key_size + 7) // 8
        return {"use": "sig", "kty": "EC", "kid": vk.kid, "crv": _CURVES[key.curve.name],
                "alg": vk.alg, "x": tokens.b64encode(_int_bytes(numbers.x, size)),
                "y": tokens.b64encode(_int_bytes(numbers.y, size))}
    raise tokens.TokenError(f"unsupported key type {type(key).__name__}")


def issuer_problem(issuer: str) -> str | None:
    """Why an issuer cannot be an OIDC issuer (upstream's extra check), or None."""
    parts = urlsplit(issuer)
    if parts.scheme != "https" or not parts.netloc:
        return f"issuer URL must use https scheme, got: {issuer}"
    if parts.query:
        return f"issuer URL may not include a query, got: {issuer}"
    if parts.fragment:
        return f"issuer URL may not include a fragment, got: {issuer}"
    return None


def default_jwks_uri(address: str, port: int) -> str:
    """Upstream's default: the JWKS path on the server's external address."""
    try:
        if ipaddress.ip_address(address).version == 6:
            address = f"[{address}]"
    except ValueError:
        pass
    return f"https://{address}:{port}{JWKS_PATH}"


class IssuerDiscovery:
    """The two pre-rendered documents and their responses."""

    def __init__(self, issuer: str, jwks_uri: str, keys: list[tokens.VerifyKey]):
        """Render both bodies once: the keys do not change while the server runs."""
        keyset = [jwk(vk) for vk in keys]
        self.config = orjson.dumps({
            "issuer": issuer, "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": sorted({k["alg"] for k in keyset})})
        self.keyset = orjson.dumps({"keys": keyset})

    def handle(self, path: str) -> web.Response | None:
        """The response for one of the two paths; None for any other path."""
        if path == CONFIG_PATH:
            body, content_type = self.config, "application/json"
        elif path == JWKS_PATH:
            body, content_type = self.keyset, JWKS_CONTENT_TYPE
        else:
            return None
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        response.headers["Cache-Control"] = CACHE_CONTROL
        return response


def for_server(srv: "APIServer") -> IssuerDiscovery | None:
    """The server's discovery endpoints, or None (and why, in the log) when it has none."""
    options = srv.options
    issuers = list(getattr(options, "service_account_issuer", None) or [])
    authenticator = serviceaccount.setup(srv).authenticator
    if not issuers or authenticator is None or not authenticator.keys:
        return None
    problem = issuer_problem(issuers[0])
    if problem is not None:
        log.error("service account issuer discovery is not served: %s", problem)
        return None
    jwks_uri = getattr(options, "service_account_jwks_uri", None) or default_jwks_uri(
        options.advertise_address or options.bind_address, options.secure_port)
    return IssuerDiscovery(issuers[0], jwks_uri, authenticator.keys)
