"""The Scheduler: informers feed the cache and the queue; one loop takes pods off the
queue, finds each a node and assumes it there, and bindings are written in the
background, several at a time.

    scheduler = Scheduler(client, InformerFactory(client),
                          EventRecorder(client, "default-scheduler"))
    factory.start(); await factory.wait_for_sync()
    await scheduler.run()       # while leading; until cancelled

A pod no node fits gets a FailedScheduling event and its PodScheduled condition set to
False/Unschedulable with the same message, as upstream does, and waits in the queue's
unschedulable set for a change in the cluster.
"""
from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from kubesmith.api.times import rfc3339
from kubesmith.client.events import NORMAL, WARNING, EventRecorder
from kubesmith.client.informers import DeletedFinalStateUnknown, InformerFactory
from kubesmith.client.rest import ApiClient, ApiError, is_conflict, is_not_found
from kubesmith.scheduler.cache import DEFAULT_SCHEDULER, PodInfo, SchedulerCache, \
    is_terminal, pod_key
from kubesmith.scheduler.framework import FitError, Framework, NoNodesAvailable
from kubesmith.scheduler.queue import QueuedPod, SchedulingQueue

log = logging.getLogger(__name__)

Obj = dict[str, Any]
MAX_BINDS_IN_FLIGHT = 64
# Node fields whose change may let an unschedulable pod fit.
_NODE_SPEC_FIELDS = ("taints", "unschedulable")


def _scheduling_view(pod: Obj) -> tuple:
    """What a pod update must change to be worth another try (upstream's isPodUpdated
    ignores resourceVersion, generation, managedFields and status)."""
    meta = {k: v for k, v in (pod.get("metadata") or {}).items()
            if k not in ("resourceVersion", "generation", "managedFields")}
    return meta, pod.get("spec")


def _node_changed(old: Obj, new: Obj) -> bool:
    old_status, new_status = old.get("status") or {}, new.get("status") or {}
    if old_status.get("allocatable") != new_status.get("allocatable"):
        return True
    if (old.get("metadata") or {}).get("labels") != (new.get("metadata") or {}).get("labels"):
        return True
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    return any(old_spec.get(f) != new_spec.get(f) for f in _NODE_SPEC_FIELDS)


class Scheduler:
    def __init__(self, client: ApiClient, informers: InformerFactory,
                 recorder: EventRecorder, *,
                 scheduler_name: str = DEFAULT_SCHEDULER,
                 percentage_of_nodes_to_score: int = 0,
                 max_binds_in_flight: int = MAX_BINDS_IN_FLIGHT,
                 queue: SchedulingQueue | None = None, rng: random.Random | None = None):
        self.client = client
        self.recorder = recorder
        self.scheduler_name = scheduler_name
        self.cache = SchedulerCache()
        self.queue = queue or SchedulingQueue()
        self.max_binds_in_flight = max_binds_in_flight
        self.pods = informers.informer("v1 pods")
        self.nodes = informers.informer("v1 nodes")
        # Namespaces' labels, for pod affinity terms with a namespaceSelector.
        self.namespaces = informers.informer("v1 namespaces")
        self.framework = Framework(self.cache, percentage_of_nodes_to_score, rng,
                                   self.namespace_labels)
        self.pods.add_event_handler(self._pod_added, self._pod_updated, self._pod_deleted)
        self.nodes.add_event_handler(self._node_added, self._node_updated, self._node_deleted)
        self._background: set[asyncio.Task] = set()
        # Figures for /metrics and logs.
        self.scheduled = 0
        self.unschedulable = 0
        self.bind_errors = 0

    def namespace_labels(self, name: str) -> dict[str, str]:
        namespace = self.namespaces.lister.get(name) or {}
        return (namespace.get("metadata") or {}).get("labels") or {}

    # --- informer handlers ------------------------------------------------------------

    def responsible_for(self, pod: Obj) -> bool:
        """An unassigned pod of this scheduler, not being deleted, not gated."""
        spec = pod.get("spec") or {}
        return (not spec.get("nodeName")
                and (spec.get("schedulerName") or DEFAULT_SCHEDULER) == self.scheduler_name
                and not (pod.get("metadata") or {}).get("deletionTimestamp")
                and not spec.get("schedulingGates")
                and not is_terminal(pod))

    def _pod_added(self, pod: Obj) -> None:
        if (pod.get("spec") or {}).get("nodeName"):
            self.cache.add_pod(pod)
        elif self.responsible_for(pod):
            self.queue.add(PodInfo(pod))

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        key = pod_key(new)
        new_node = (new.get("spec") or {}).get("nodeName")
        if new_node:
            old_node = (old.get("spec") or {}).get("nodeName")
            if not old_node:
                self.queue.delete(key)
            self.cache.update_pod(new)
            old_labels = (old.get("metadata") or {}).get("labels")
            if old_node and (old_labels != (new.get("metadata") or {}).get("labels")
                             or (is_terminal(new) and not is_terminal(old))):
                self.queue.move_all_to_active_or_backoff()
            return
        if self.cache.is_assumed(key):
            return      # its binding is being written
        if self.responsible_for(new):
            self.queue.update(PodInfo(new), _scheduling_view(old) != _scheduling_view(new))
        else:
            self.queue.delete(key)

    def _pod_deleted(self, pod: Obj | DeletedFinalStateUnknown) -> None:
        if isinstance(pod, DeletedFinalStateUnknown):
            pod = pod.obj
        key = pod_key(pod)
        self.queue.delete(key)
        if self.cache.pod(key) is not None:
            self.cache.remove_pod(key)
            self.queue.move_all_to_active_or_backoff()

    def _node_added(self, node: Obj) -> None:
        self.cache.add_node(node)
        self.queue.move_all_to_active_or_backoff()

    def _node_updated(self, old: Obj, new: Obj) -> None:
        self.cache.update_node(new)
        if _node_changed(old, new):
            self.queue.move_all_to_active_or_backoff()

    def _node_deleted(self, node: Obj | DeletedFinalStateUnknown) -> None:
        if isinstance(node, DeletedFinalStateUnknown):
            node = node.obj
        self.cache.remove_node((node.get("metadata") or {}).get("name", ""))

    # --- the scheduling loop ----------------------------------------------------------

    async def run(self) -> None:
        """Schedule until cancelled (the informers must have synced)."""
        slots = asyncio.Semaphore(self.max_binds_in_flight)
        flusher = asyncio.create_task(self.queue.run(), name="scheduling-queue")
        log.info("scheduling pods (%d nodes known)", len(self.cache))
        try:
            while True:
                await slots.acquire()
                entry = await self.queue.pop()
                try:
                    bind = self.schedule_one(entry)
                except Exception:
                    log.exception("scheduling %s failed", entry.key)
                    self.queue.add_backoff(entry)
                    bind = None
                if bind is None:
                    slots.release()
                else:
                    self._spawn(self._bind(entry, *bind), slots.release)
                # Let the informers deliver what came meanwhile.
                await asyncio.sleep(0)
        finally:
            flusher.cancel()
            tasks = list(self._background)
            for task in tasks:
                task.cancel()
            await asyncio.gather(flusher, *tasks, return_exceptions=True)

    def schedule_one(self, entry: QueuedPod) -> tuple[PodInfo, str] | None:
        """One scheduling cycle; (pod, node) to bind, or None."""
        info = entry.info
        current = self.pods.lister.get(info.name, info.namespace)
        if current is None or not self.responsible_for(current):
            self.queue.done(info.key)      # deleted, bound or no longer ours meanwhile
            return None
        if current is not info.pod:
            info = entry.info = PodInfo(current)
        try:
            node = self.framework.schedule(info)
        except (FitError, NoNodesAvailable) as err:
            self.unschedulable += 1
            self._record_failure(entry, str(err))
            return None
        self.cache.assume_pod(info, node)
        self.queue.done(info.key)
        return info, node

    async def _bind(self, entry: QueuedPod, info: PodInfo, node: str) -> None:
        binding = {"apiVersion": "v1", "kind": "Binding",
                   "metadata": {"name": info.name, "namespace": info.namespace},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        try:
            await self.client.create("v1 pods", binding, info.namespace, name=info.name,
                                     subresource="binding")
        except (ApiError, ConnectionError) as exc:
            self.bind_errors += 1
            self.cache.forget_pod(info.key)
            self.queue.move_all_to_active_or_backoff()   # what it held is free again
            if is_not_found(exc) or is_conflict(exc):
                # Deleted, or bound already: the watch tells the rest.
                log.info("binding %s to %s: %s", info.key, node, exc)
                return
            log.warning("binding %s to %s failed: %s", info.key, node, exc)
            self.recorder.emit(info.pod, WARNING, "FailedScheduling",
                               f"Binding rejected: {exc}")
            self.queue.add_backoff(entry)
            return
        self.scheduled += 1
        log.debug("bound %s to %s", info.key, node)
        self.recorder.emit(info.pod, NORMAL, "Scheduled",
                           f"Successfully assigned {info.key} to {node}")

    def _record_failure(self, entry: QueuedPod, message: str) -> None:
        info = entry.info
        log.info("unable to schedule %s: %s", info.key, message)
        self.queue.add_unschedulable(entry)
        self.recorder.emit(info.pod, WARNING, "FailedScheduling", message)
        condition = next((c for c in (info.pod.get("status") or {}).get("conditions") or ()
                          if c.get("type") == "PodScheduled"), {})
        if (condition.get("status"), condition.get("reason"), condition.get("message")) \
                != ("False", "Unschedulable", message):
            self._spawn(self._set_unschedulable(info, message))

    async def _set_unschedulable(self, info: PodInfo, message: str) -> None:
        patch = {"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastProbeTime": None, "lastTransitionTime": rfc3339()}]}}
        try:
            await self.client.patch("v1 pods", info.name, patch, info.namespace,
                                    patch_type="strategic", subresource="status")
        except (ApiError, ConnectionError) as exc:
            if not is_not_found(exc):
                log.warning("could not set PodScheduled on %s: %s", info.key, exc)

    def _spawn(self, coroutine, on_done=None) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)

        def finished(task: asyncio.Task) -> None:
            self._background.discard(task)
            if on_done is not None:
                on_done()
            if not task.cancelled() and task.exception() is not None:
                log.error("scheduler task failed", exc_info=task.exception())

        task.add_done_callback(finished)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (at most `timeout` for each) for bindings and status writes in flight,
        then for the events emitted."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)
        try:
            await asyncio.wait_for(self.recorder.flush(), timeout)
        except asyncio.TimeoutError:
            log.warning("events not all written after %.0fs", timeout)
