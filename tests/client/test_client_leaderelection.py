"""Leader election on a Lease in the real kube-apiserver, with durations of seconds."""
from __future__ import annotations

import asyncio
import time

import pytest

from kubesmith.client.leaderelection import LEASES, LeaderElector
from tests.client.helpers import eventually

FAST = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.2}


class Candidate:
    """An elector whose work notes when it runs, to prove leaders never overlap."""

    def __init__(self, client, namespace, identity, working: set, **options):
        self.identity = identity
        self.working = working
        self.overlaps: list[set] = []
        self.stopped = 0
        self.elector = LeaderElector(client, name="lock", namespace=namespace,
                                     identity=identity, on_started_leading=self.work,
                                     on_stopped_leading=self.on_stopped, **FAST, **options)
        self.task: asyncio.Task | None = None

    async def work(self):
        if self.working:
            self.overlaps.append(set(self.working))
        self.working.add(self.identity)
        try:
            await asyncio.Event().wait()     # lead until cancelled
        finally:
            self.working.discard(self.identity)

    def on_stopped(self):
        self.stopped += 1

    def start(self) -> "Candidate":
        self.task = asyncio.create_task(self.elector.run())
        return self

    async def stop(self):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def test_one_leader_then_handover_on_release_and_on_expiry(connect, namespace):
    async def main():
        async with connect() as one, connect() as two, connect() as three:
            working: set[str] = set()
            a = Candidate(one, namespace, "a", working).start()
            await eventually(lambda: working == {"a"})
            b = Candidate(two, namespace, "b", working).start()
            await asyncio.sleep(0.6)         # several of b's tries: the lease is a's
            assert working == {"a"} and b.elector.leader == "a"
            lease = await one.get(LEASES, "lock", namespace)
            assert lease["spec"]["holderIdentity"] == "a"
            assert lease["spec"]["leaseDurationSeconds"] == 2
            assert lease["spec"]["leaseTransitions"] == 0
            assert lease["spec"]["acquireTime"] and lease["spec"]["renewTime"]

            # a shuts down gracefully: it releases, b takes over without waiting it out.
            stopped_at = time.monotonic()
            await a.stop()
            assert a.stopped == 1 and not a.elector.is_leader()
            await eventually(lambda: working == {"b"}, timeout=3)
            assert time.monotonic() - stopped_at < 1.5
            lease = await one.get(LEASES, "lock", namespace)
            assert lease["spec"]["holderIdentity"] == "b"
            assert lease["spec"]["leaseTransitions"] == 1

            # b dies without releasing: c must wait until the lease expires.
            c = Candidate(three, namespace, "c", working).start()
            await asyncio.sleep(0.3)
            b.elector.release_on_cancel = False
            died_at = time.monotonic()
            await b.stop()
            await eventually(lambda: working == {"c"}, timeout=FAST["lease_duration"] + 2)
            waited = time.monotonic() - died_at
            assert 1.0 < waited < FAST["lease_duration"] + 2.0
            lease = await one.get(LEASES, "lock", namespace)
            assert lease["spec"]["holderIdentity"] == "c"
            assert lease["spec"]["leaseTransitions"] == 2
            await c.stop()
            assert a.overlaps == b.overlaps == c.overlaps == []
    asyncio.run(main())


def test_leader_that_cannot_renew_stops_leading(connect, namespace):
    async def main():
        async with connect() as client:
            working: set[str] = set()
            leader = Candidate(client, namespace, "leader", working).start()
            await eventually(lambda: working == {"leader"})
            # Someone takes the lease by force: the leader's renewals now fail.
            lease = await client.get(LEASES, "lock", namespace)
            lease["spec"]["holderIdentity"] = "intruder"
            await client.update(LEASES, lease, namespace)
            await asyncio.wait_for(leader.task, FAST["renew_deadline"] + 2)   # run() returns
            assert working == set() and leader.stopped == 1
            assert (await client.get(LEASES, "lock", namespace))["spec"][
                "holderIdentity"] == "intruder"
    asyncio.run(main())


def test_work_failure_releases_the_lease_and_is_raised(connect, namespace):
    async def main():
        async with connect() as client:
            async def broken():
                raise RuntimeError("cannot start")

            elector = LeaderElector(client, name="broken", namespace=namespace,
                                    identity="x", on_started_leading=broken, **FAST)
            with pytest.raises(RuntimeError, match="cannot start"):
                await asyncio.wait_for(elector.run(), 5)
            lease = await client.get(LEASES, "broken", namespace)
            assert lease["spec"]["holderIdentity"] == ""
    asyncio.run(main())


def test_durations_are_checked():
    async def noop():
        pass
    with pytest.raises(ValueError):
        LeaderElector(None, name="l", identity="i", on_started_leading=noop,
                      lease_duration=10, renew_deadline=10)
    with pytest.raises(ValueError):
        LeaderElector(None, name="l", identity="i", on_started_leading=noop,
                      renew_deadline=2, retry_period=2)
    with pytest.raises(ValueError):
        LeaderElector(None, name="l", identity="", on_started_leading=noop)
