"""Releasing the lease survives a renewal that lands between its read and its write."""
from __future__ import annotations

import asyncio
import copy

from kubesmith.client.leaderelection import LeaderElector
from kubesmith.client.rest import ApiError


class LeaseStore:
    """One Lease with resourceVersion checks; `interfere` writes once behind a reader."""

    def __init__(self, holder: str):
        self.lease = {"metadata": {"name": "lock", "namespace": "ns", "resourceVersion": "1"},
                      "spec": {"holderIdentity": holder, "leaseDurationSeconds": 2}}
        self.interfere = 0
        self.updates = 0

    async def get(self, resource, name, namespace):
        lease = copy.deepcopy(self.lease)
        if self.interfere:
            self.interfere -= 1
            self._bump()           # a write that lands after this read
        return lease

    async def update(self, resource, obj, namespace):
        self.updates += 1
        if obj["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ApiError({"kind": "Status", "code": 409, "reason": "Conflict",
                            "message": "the object has been modified"})
        self.lease = copy.deepcopy(obj)
        self._bump()
        return copy.deepcopy(self.lease)

    def _bump(self):
        meta = self.lease["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)


async def _nothing():
    return None


def leading_elector(store: LeaseStore) -> LeaderElector:
    """Candidate "a", having seen the lease as the store holds it."""
    elector = LeaderElector(store, name="lock", namespace="ns", identity="a",
                            on_started_leading=_nothing, lease_duration=2,
                            renew_deadline=1.5, retry_period=0.2)
    elector._observe(store.lease["spec"])
    return elector


def test_release_reads_again_after_a_conflict():
    store = LeaseStore("a")
    elector = leading_elector(store)
    store.interfere = 2
    asyncio.run(elector._release())
    assert store.lease["spec"]["holderIdentity"] == ""
    assert store.updates == 3        # two conflicts, then the release


def test_release_leaves_a_lease_someone_else_holds():
    store = LeaseStore("a")
    elector = leading_elector(store)
    store.lease["spec"]["holderIdentity"] = "b"
    asyncio.run(elector._release())
    assert store.lease["spec"]["holderIdentity"] == "b" and store.updates == 0
