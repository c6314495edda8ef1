"""Plain values the store hands out, decoupled from the generated protobuf classes."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int       # Kubernetes' resourceVersion
    version: int            # writes since creation
    lease: int = 0


class EventType(enum.IntEnum):
    # Same numbers as etcd's mvccpb.Event.EventType.
    PUT = 0
    DELETE = 1


@dataclass(slots=True)
class Event:
    type: EventType
    kv: KeyValue            # for DELETE: key and the delete's revision, no value
    prev_kv: KeyValue | None


@dataclass(slots=True)
class WatchBatch:
    """What one watch response carried.

    revision: every event up to and including it has been delivered, so a watch
    resumed later starts at revision + 1. A batch without events is a progress
    notification: nothing changed up to `revision`.
    """
    revision: int
    events: list[Event]

    @property
    def is_progress(self) -> bool:
        return not self.events


class RangeResult(NamedTuple):
    kvs: list[KeyValue]
    revision: int           # the store revision the range was read at
    more: bool              # the limit cut the result short
    count: int              # keys in the whole range, regardless of limit


class Lease(NamedTuple):
    id: int
    ttl: int                # seconds, as granted by the server


class Status(NamedTuple):
    version: str
    db_size: int
    leader: int
    member_id: int
    raft_index: int
    raft_term: int
    revision: int


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with prefix.

    The prefix with its last byte below 0xff incremented and the rest dropped; an
    empty or all-0xff prefix has no upper bound, which etcd spells b"\\0".
    """
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


class DeleteResult(NamedTuple):
    kv: KeyValue            # the key as it was just before the delete
    revision: int           # the delete's revision (the DELETE event's mod_revision)
