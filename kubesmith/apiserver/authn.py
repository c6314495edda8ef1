"""Authentication: who is asking.

Client certificates (verified against --client-ca-file by the TLS handshake): user = CN,
groups = O values. Bearer tokens go to a chain of token authenticators (service-account
tokens, serviceaccount.py). Every authenticated user is also in system:authenticated;
with --anonymous-auth=true a request with no credentials is system:anonymous in
system:unauthenticated.
"""
from __future__ import annotations

import logging
from typing import Protocol

from kubesmith.identity import UserInfo, user_from_certificate, with_authenticated

log = logging.getLogger(__name__)

UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"
MASTERS = "system:masters"


class TokenInvalid(Exception):
    """A token of an authenticator's kind that does not check out (the message says why)."""


class TokenAuthenticator(Protocol):
    """Resolves a bearer token to (user, the audiences it is good for), or None when the
    token is not its kind; raises TokenInvalid for a bad token of its kind. `audiences`:
    what the caller wants the token to be for (None: the API itself)."""

    async def authenticate_token(self, token: str, audiences: list[str] | None = None
                                 ) -> tuple[UserInfo, list[str]] | None: ...


class Authenticator:
    def __init__(self, anonymous: bool,
                 token_authenticators: list[TokenAuthenticator] | None = None):
        self.anonymous = anonymous
        self.token_authenticators = list(token_authenticators or [])

    async def authenticate(self, peer_der: bytes | None, authorization: str | None
                           ) -> UserInfo | None:
        """The request's user; None means 401."""
        if peer_der:
            user = user_from_certificate(peer_der)
            if user is not None:
                return user
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token:
                user = await self.authenticate_token(token)
                if user is not None:
                    return user
            # Credentials were presented and did not check out: never anonymous.
            return None
        if self.anonymous:
            return UserInfo(ANONYMOUS, (UNAUTHENTICATED,))
        return None

    async def authenticate_token(self, token: str) -> UserInfo | None:
        user, _, _ = await self.review_token(token)
        return user

    async def review_token(self, token: str, audiences: list[str] | None = None
                           ) -> tuple[UserInfo | None, list[str], str]:
        """(user or None, audiences the token is good for, why it was refused)."""
        problems = []
        for authenticator in self.token_authenticators:
            try:
                found = await authenticator.authenticate_token(token, audiences)
            except TokenInvalid as exc:
                problems.append(str(exc))
                continue
            except Exception:
                log.exception("token authenticator %r failed", authenticator)
                problems.append("token authenticator failed")
                continue
            if found is not None:
                user, good_for = found
                return (UserInfo(user.name, with_authenticated(user.groups), user.uid,
                                 user.extra), list(good_for), "")
        if problems:
            log.debug("bearer token refused: %s", "; ".join(problems))
        return None, [], "; ".join(problems) or "token not recognized by any authenticator"
