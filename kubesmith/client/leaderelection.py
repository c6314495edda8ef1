"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection.

    elector = LeaderElector(client, name="kube-scheduler", namespace="kube-system",
                            identity=f"{hostname}_{uuid}", on_started_leading=run_scheduler,
                            on_stopped_leading=exit_process)
    await elector.run()

The Lease's spec is the record: holderIdentity, leaseDurationSeconds, acquireTime,
renewTime, leaseTransitions. A candidate takes the lease when it is free (no holder)
or when its record has not changed for leaseDurationSeconds *as this candidate
measures it* (local monotonic time from when it last saw the record change, so clocks
need not agree). Every write is an update carrying the resourceVersion that was read,
so of two candidates racing for the same lease one gets 409 Conflict: never two leaders.

The leader renews every retry_period; if it cannot renew for renew_deadline it stops
leading (the work is cancelled before on_stopped_leading is called). Because
renew_deadline < lease_duration, it has stopped before any other candidate can take
over. Cancelling run() releases the lease at once (upstream's ReleaseOnCancel) so the
next leader need not wait for it to expire.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from kubesmith.client.rest import (
    ApiClient,
    ApiError,
    is_already_exists,
    is_conflict,
    is_not_found,
)

log = logging.getLogger(__name__)

Obj = dict[str, Any]
LEASES = "leases.coordination.k8s.io"
JITTER = 1.2      # upstream's JitterFactor for retries while not leading


def micro_time(moment: datetime | None = None) -> str:
    """metav1.MicroTime text: RFC 3339 with microseconds."""
    return (moment or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """`on_started_leading` is a coroutine function: the work, run while leading.
    `on_stopped_leading()` and `on_new_leader(identity)` are plain functions."""

    def __init__(self, client: ApiClient, *, name: str, identity: str,
                 on_started_leading: Callable[[], Awaitable[Any]],
                 on_stopped_leading: Callable[[], None] | None = None,
                 on_new_leader: Callable[[str], None] | None = None,
                 namespace: str = "kube-system", lease_duration: float = 15.0,
                 renew_deadline: float = 10.0, retry_period: float = 2.0,
                 release_on_cancel: bool = True):
        if not identity:
            raise ValueError("leader election needs an identity")
        if lease_duration <= renew_deadline:
            raise ValueError("lease_duration must be greater than renew_deadline")
        if renew_deadline <= JITTER * retry_period:
            raise ValueError("renew_deadline must be greater than retry_period * 1.2")
        self.client = client
        self.name, self.namespace, self.identity = name, namespace, identity
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.on_new_leader = on_new_leader
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.release_on_cancel = release_on_cancel
        self._observed: Obj = {}          # the lease spec as last read or written
        self._observed_at = 0.0           # monotonic time it was seen to change
        self._reported_leader = ""

    @property
    def leader(self) -> str:
        """The holder the elector last saw ("" when unknown or free)."""
        return self._observed.get("holderIdentity") or ""

    def is_leader(self) -> bool:
        return self.leader == self.identity

    async def run(self) -> None:
        """Campaign until leading, then lead until the lease is lost, the work
        (on_started_leading) ends, or run() is cancelled. An exception of the work is
        raised here after the lease is released."""
        await self._acquire()
        work = asyncio.create_task(self.on_started_leading(), name=f"leading {self.name}")
        cancelled = False
        try:
            await self._renew_until_lost(work)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            # The work stops before anyone else can lead.
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            if (cancelled and self.release_on_cancel) or work_ended(work):
                await self._release()
            if self.is_leader():
                self._observed = {}     # lost: whoever holds the lease now is unknown
            if self.on_stopped_leading is not None:
                self._call(self.on_stopped_leading)
        if work_ended(work) and work.exception() is not None:
            raise work.exception()

    # --- campaign and renewal ---------------------------------------------------------

    async def _acquire(self) -> None:
        log.info("%s: trying to acquire lease %s/%s", self.identity, self.namespace, self.name)
        while not await self._attempt(self.renew_deadline):
            await asyncio.sleep(self.retry_period * (1.0 + random.random() * JITTER))
        log.info("%s: acquired lease %s/%s", self.identity, self.namespace, self.name)

    async def _renew_until_lost(self, work: asyncio.Task) -> None:
        last_renewal = time.monotonic()
        while True:
            await asyncio.wait({work}, timeout=self.retry_period)
            if work.done():
                return
            left = self.renew_deadline - (time.monotonic() - last_renewal)
            if left > 0 and await self._attempt(left):
                last_renewal = time.monotonic()
            elif time.monotonic() - last_renewal >= self.renew_deadline:
                log.warning("%s: could not renew lease %s/%s for %.1fs; stopped leading",
                            self.identity, self.namespace, self.name, self.renew_deadline)
                return

    async def _attempt(self, timeout: float) -> bool:
        """One try to acquire or renew, given at most `timeout` seconds."""
        try:
            return await asyncio.wait_for(self._try_acquire_or_renew(), timeout)
        except asyncio.TimeoutError:
            return False
        except (ApiError, ConnectionError) as exc:
            log.warning("%s: lease %s/%s: %s", self.identity, self.namespace, self.name, exc)
            return False

    async def _try_acquire_or_renew(self) -> bool:
        now = datetime.now(timezone.utc)
        try:
            lease = await self.client.get(LEASES, self.name, self.namespace)
        except ApiError as exc:
            if not is_not_found(exc):
                raise
            return await self._create(now)
        spec = lease.get("spec") or {}
        self._observe(spec)
        holder = spec.get("holderIdentity") or ""
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        if holder and holder != self.identity \
                and time.monotonic() < self._observed_at + duration:
            return False    # held by another, and renewed recently as far as we know
        new_spec = dict(spec, holderIdentity=self.identity, renewTime=micro_time(now),
                        leaseDurationSeconds=self._duration_seconds())
        if holder != self.identity or not spec.get("acquireTime"):
            new_spec["acquireTime"] = micro_time(now)
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (
                1 if holder != self.identity else 0)
        try:
            updated = await self.client.update(LEASES, dict(lease, spec=new_spec),
                                               self.namespace)
        except ApiError as exc:
            if is_conflict(exc):
                return False    # someone else wrote the lease first
            raise
        self._observe(updated.get("spec") or {})
        return True

    async def _create(self, now: datetime) -> bool:
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": self.name, "namespace": self.namespace},
                 "spec": {"holderIdentity": self.identity,
                          "leaseDurationSeconds": self._duration_seconds(),
                          "acquireTime": micro_time(now), "renewTime": micro_time(now),
                          "leaseTransitions": 0}}
        try:
            created = await self.client.create(LEASES, lease, self.namespace)
        except ApiError as exc:
            if is_already_exists(exc) or is_conflict(exc):
                return False
            raise
        self._observe(created.get("spec") or {})
        return True

    async def _release(self) -> None:
        """Give the lease up (if still ours) so the next leader need not wait."""
        if not self.is_leader():
            return

        async def release() -> None:
            # A renewal cancelled in flight may still land after our read: on 409
            # Conflict read again (bounded by the wait_for below).
            while True:
                lease = await self.client.get(LEASES, self.name, self.namespace)
                spec = lease.get("spec") or {}
                if spec.get("holderIdentity") != self.identity:
                    return
                now = micro_time()
                new_spec = dict(spec, holderIdentity="", leaseDurationSeconds=1,
                                acquireTime=now, renewTime=now)
                try:
                    updated = await self.client.update(
                        LEASES, dict(lease, spec=new_spec), self.namespace)
                except ApiError as exc:
                    if is_conflict(exc):
                        await asyncio.sleep(0.05)
                        continue
                    raise
                self._observe(updated.get("spec") or {})
                log.info("%s: released lease %s/%s", self.identity, self.namespace,
                         self.name)
                return

        try:
            await asyncio.wait_for(release(), self.renew_deadline)
        except (ApiError, ConnectionError, asyncio.TimeoutError) as exc:
            log.warning("%s: could not release lease %s/%s: %s", self.identity,
                        self.namespace, self.name, exc)

    def _duration_seconds(self) -> int:
        return max(int(math.ceil(self.lease_duration)), 1)

    def _observe(self, spec: Obj) -> None:
        if spec != self._observed:
            self._observed = spec
            self._observed_at = time.monotonic()
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self._reported_leader:
            self._reported_leader = holder
            if self.on_new_leader is not None:
                self._call(self.on_new_leader, holder)

    def _call(self, func: Callable, *args: Any) -> None:
        try:
            func(*args)
        except Exception:
            log.exception("%s: leader election callback %r failed", self.identity, func)


def work_ended(work: asyncio.Task) -> bool:
    """True when the leading work finished by itself (not cancelled by the elector)."""
    return work.done() and not work.cancelled()
