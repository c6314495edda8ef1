"""The Scheduler's loop and informer handlers with a fake API client: assume, bind,
confirm through the watch; failures recorded; a failed binding forgotten."""
from __future__ import annotations

import asyncio
import time

from kubesmith.client.informers import InformerFactory, namespace_key
from kubesmith.client.rest import ApiError
from kubesmith.scheduler.queue import SchedulingQueue
from kubesmith.scheduler.scheduler import Scheduler
from tests.scheduler.fakes import make_node, make_pod


class FakeClient:
    def __init__(self) -> None:
        self.bindings: list[tuple[str, str]] = []
        self.patches: list[tuple[str, dict]] = []
        self.refuse: set[str] = set()

    async def create(self, resource, body, namespace=None, *, name=None, subresource=None,
                     **_):
        assert subresource == "binding"
        await asyncio.sleep(0.01)
        if name in self.refuse:
            raise ApiError({"kind": "Status", "code": 500, "reason": "InternalError",
                            "message": "etcd is down"})
        self.bindings.append((name, body["target"]["name"]))
        return {}

    async def patch(self, resource, name, patch, namespace=None, **options):
        self.patches.append((name, patch))
        return {}


class FakeRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []

    def emit(self, obj, event_type, reason, message):
        self.events.append((obj["metadata"]["name"], event_type, reason, message))

    async def flush(self):
        pass


async def until(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s")
        await asyncio.sleep(0.01)


def make_scheduler():
    client, recorder = FakeClient(), FakeRecorder()
    scheduler = Scheduler(client, InformerFactory(client), recorder,
                          queue=SchedulingQueue(initial_backoff=0.05, max_backoff=0.1))

    def deliver(kind: str, obj: dict) -> None:
        """What an informer does on a watch event: cache first, then handlers."""
        informer = scheduler.pods if kind == "pod" else scheduler.nodes
        key = namespace_key(obj)
        old = informer.indexer.get(key)
        informer.indexer.put(key, obj)
        if old is None:
            informer._dispatch_add(obj)
        else:
            informer._dispatch_update(old, obj)
    return scheduler, client, recorder, deliver


def test_assume_bind_and_confirm():
    async def scenario():
        scheduler, client, recorder, deliver = make_scheduler()
        deliver("node", make_node("n1", cpu="1"))
        deliver("pod", make_pod("a", cpu="600m"))
        deliver("pod", make_pod("b", cpu="600m"))
        running = asyncio.create_task(scheduler.run())
        try:
            await until(lambda: client.bindings)
            assert client.bindings == [("a", "n1")]
            # b did not fit next to the assumed a.
            await until(lambda: any(e[2] == "FailedScheduling" for e in recorder.events))
            assert scheduler.cache.is_assumed("default/a")
            assert ("a", "Normal", "Scheduled",
                    "Successfully assigned default/a to n1") in recorder.events
            failed = [e for e in recorder.events if e[0] == "b"][0]
            assert failed[1:] == ("Warning", "FailedScheduling",
                                  "0/1 nodes are available: 1 Insufficient cpu. preemption: "
                                  "0/1 nodes are available: 1 Preemption is not helpful for "
                                  "scheduling.")
            await until(lambda: client.patches)
            condition = client.patches[0][1]["status"]["conditions"][0]
            assert client.patches[0][0] == "b"
            assert (condition["type"], condition["status"], condition["reason"]) == (
                "PodScheduled", "False", "Unschedulable")
            # The watch shows a bound: the assumption is confirmed.
            deliver("pod", make_pod("a", cpu="600m", node="n1"))
            assert not scheduler.cache.is_assumed("default/a")
            assert scheduler.cache.nodes["n1"].requested.milli_cpu == 600
            # a is deleted: b gets another try and fits.
            scheduler.pods.indexer.remove("default/a")
            scheduler._pod_deleted(make_pod("a", cpu="600m", node="n1"))
            await until(lambda: ("b", "n1") in client.bindings)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    asyncio.run(scenario())


def test_failed_binding_is_forgotten_and_retried():
    async def scenario():
        scheduler, client, recorder, deliver = make_scheduler()
        client.refuse.add("a")
        deliver("node", make_node("n1", cpu="1"))
        deliver("pod", make_pod("a", cpu="600m"))
        running = asyncio.create_task(scheduler.run())
        try:
            await until(lambda: scheduler.bind_errors >= 1)
            await until(lambda: not scheduler.cache.is_assumed("default/a"))
            assert any(e[2] == "FailedScheduling" and e[3].startswith("Binding rejected")
                       for e in recorder.events)
            client.refuse.clear()
            await until(lambda: client.bindings == [("a", "n1")])
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    asyncio.run(scenario())


def test_pods_not_for_this_scheduler_are_not_queued():
    scheduler, _, _, deliver = make_scheduler()
    deliver("pod", make_pod("other", schedulerName="someone-else"))
    gated = make_pod("gated", schedulingGates=[{"name": "wait"}])
    deliver("pod", gated)
    deliver("pod", make_pod("mine"))
    assert "default/other" not in scheduler.queue
    assert "default/gated" not in scheduler.queue
    assert "default/mine" in scheduler.queue
    # The gate removed: now it is queued.
    ungated = make_pod("gated")
    deliver("pod", ungated)
    assert "default/gated" in scheduler.queue
