"""Object writes that carry more keys in the same etcd transaction.

Service IP and node port allocations, and quota usage, change together with the object
that causes them or not at all: a crash or a lost race can neither leak nor double-book.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Callable

from kubesmith.store import ConflictError, KeyExistsError, KeyNotFoundError, KeyValue
from kubesmith.store.proto import rpc_pb2 as pb

_EQUAL = pb.Compare.EQUAL
_CREATE = pb.Compare.CREATE
_MOD = pb.Compare.MOD
MAX_RETRIES = 40


class Retry(Exception):
    """Something read while planning the write changed before it: plan again."""


@dataclass
class Guard:
    """A compare on another key: it must not exist (absent=True) or be at mod_revision."""
    key: bytes
    absent: bool = False
    mod_revision: int = 0
    failed: Callable[[], Exception] = Retry

    def compare(self) -> pb.Compare:
        if self.absent:
            return pb.Compare(key=self.key, target=_CREATE, result=_EQUAL, create_revision=0)
        return pb.Compare(key=self.key, target=_MOD, result=_EQUAL,
                          mod_revision=self.mod_revision)

    def holds(self, kv: KeyValue | None) -> bool:
        if self.absent:
            return kv is None
        return kv is not None and kv.mod_revision == self.mod_revision


@dataclass
class Extra:
    guards: list[Guard] = field(default_factory=list)
    puts: dict[bytes, bytes] = field(default_factory=dict)
    deletes: list[bytes] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.guards or self.puts or self.deletes)

    def merge(self, other: "Extra | None") -> "Extra":
        if other is not None:
            self.guards += other.guards
            self.puts.update(other.puts)
            self.deletes += [k for k in other.deletes if k not in self.deletes]
            self.undo += other.undo
        return self

    def rollback(self) -> None:
        """Undo what planning changed in the object, before planning again."""
        while self.undo:
            self.undo.pop()()


def combine(*extras: "Extra | None") -> Extra:
    result = Extra()
    for extra in extras:
        result.merge(extra)
    return result


async def backoff(retries: int) -> int:
    """Count a retry, with a little jitter so racing writers spread out."""
    if retries >= MAX_RETRIES:
        from kubesmith.apiserver import errors
        raise errors.APIError(409, "Conflict", "too many concurrent changes; please retry")
    await asyncio.sleep(random.uniform(0, 0.002 * (retries + 1)))
    return retries + 1


def _kv(m) -> KeyValue:
    return KeyValue(m.key, m.value, m.create_revision, m.mod_revision, m.version, m.lease)


def _first(response: pb.ResponseOp) -> KeyValue | None:
    kvs = response.response_range.kvs
    return _kv(kvs[0]) if kvs else None


def _ops(extra: Extra) -> list[pb.RequestOp]:
    ops = [pb.RequestOp(request_put=pb.PutRequest(key=k, value=v))
           for k, v in extra.puts.items()]
    ops += [pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k))
            for k in extra.deletes if k not in extra.puts]
    return ops


async def _run(store, main_compare: pb.Compare, main_op: pb.RequestOp, key: bytes,
               extra: Extra):
    compares = [main_compare] + [g.compare() for g in extra.guards]
    failure = [pb.RequestOp(request_range=pb.RangeRequest(key=key))]
    failure += [pb.RequestOp(request_range=pb.RangeRequest(key=g.key)) for g in extra.guards]
    reply = await store.txn(compares, [main_op] + _ops(extra), failure)
    if reply.succeeded:
        return reply, None
    current = _first(reply.responses[0])
    for guard, response in zip(extra.guards, reply.responses[1:]):
        if not guard.holds(_first(response)):
            # The object's own key is judged first by the caller; report the guard only
            # when the object itself was as expected.
            return reply, (current, guard)
    return reply, (current, None)


async def create(store, key: bytes, value: bytes, extra: Extra | None) -> int:
    if not extra:
        return await store.create(key, value)
    compare = pb.Compare(key=key, target=_CREATE, result=_EQUAL, create_revision=0)
    op = pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))
    reply, failed = await _run(store, compare, op, key, extra)
    if failed is None:
        return reply.header.revision
    current, guard = failed
    if current is not None:
        raise KeyExistsError(key, current)
    raise (guard.failed() if guard is not None else Retry())


def _stale(key: bytes, expected: int, current: KeyValue | None) -> bool:
    if current is None:
        raise KeyNotFoundError(key, expected)
    if current.mod_revision != expected:
        raise ConflictError(key, expected, current)
    return False


async def update(store, key: bytes, value: bytes, expected: int, extra: Extra | None) -> int:
    if not extra:
        return await store.update(key, value, expected)
    compare = pb.Compare(key=key, target=_MOD, result=_EQUAL, mod_revision=expected)
    op = pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))
    reply, failed = await _run(store, compare, op, key, extra)
    if failed is None:
        return reply.header.revision
    current, guard = failed
    _stale(key, expected, current)
    raise (guard.failed() if guard is not None else Retry())


async def delete(store, key: bytes, expected: int, extra: Extra | None) -> None:
    if not extra:
        await store.delete(key, expected)
        return
    compare = pb.Compare(key=key, target=_MOD, result=_EQUAL, mod_revision=expected)
    op = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))
    reply, failed = await _run(store, compare, op, key, extra)
    if failed is None:
        return
    current, guard = failed
    _stale(key, expected, current)
    raise (guard.failed() if guard is not None else Retry())
