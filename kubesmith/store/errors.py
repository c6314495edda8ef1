"""Errors raised by the store. Callers catch these, never grpc's own errors."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubesmith.store.model import KeyValue


class StoreError(Exception):
    """Base of every store error."""


class StoreUnavailableError(StoreError):
    """No endpoint could serve the request (down, unreachable, refused TLS, no leader)."""


class StoreTimeoutError(StoreUnavailableError):
    """The request ran past its deadline; a write may or may not have been applied."""


class KeyExistsError(StoreError):
    """create() found the key already there."""

    def __init__(self, key: bytes, current: KeyValue | None = None):
        super().__init__(f"key exists: {key!r}")
        self.key = key
        self.current = current


class ConflictError(StoreError):
    """The key's mod_revision was not the expected one; `current` is what is stored now."""

    def __init__(self, key: bytes, expected_mod_revision: int | None, current: KeyValue | None):
        found = current.mod_revision if current is not None else "no key"
        super().__init__(f"conflict on {key!r}: expected mod_revision "
                         f"{expected_mod_revision}, found {found}")
        self.key = key
        self.expected_mod_revision = expected_mod_revision
        self.current = current


class KeyNotFoundError(ConflictError):
    """The key does not exist (a conflict whose `current` is None)."""

    def __init__(self, key: bytes, expected_mod_revision: int | None = None):
        super().__init__(key, expected_mod_revision, None)
        self.args = (f"key not found: {key!r}",)


class CompactedError(StoreError):
    """The requested revision is older than the store's compaction.

    compact_revision is the oldest revision still available, or 0 when etcd did
    not say (reads at a compacted revision do not report it).
    """

    def __init__(self, compact_revision: int = 0, message: str | None = None):
        super().__init__(message or f"revision compacted (oldest available: {compact_revision})")
        self.compact_revision = compact_revision


class FutureRevisionError(StoreError):
    """The requested revision is newer than the store's current revision."""


class RequestTooLargeError(StoreError):
    """The request or value exceeds etcd's or gRPC's size limit."""


class LeaseNotFoundError(StoreError):
    """The lease does not exist (never granted, revoked or expired)."""
