"""Events about objects (core/v1 Event), as upstream's event recorder writes them.

    recorder = EventRecorder(client, component="kube-scheduler", host=node_name)
    recorder.emit(pod, "Normal", "Scheduled", f"Successfully assigned {key} to {node}")
    ...
    await recorder.flush()      # before exiting

Like upstream's EventCorrelator (kept simple): an event identical to one recorded within
`window` seconds (same object, type, reason, message and source) raises that Event's
count and lastTimestamp instead of making a new Event. Recording never raises: an
event that cannot be written is logged and dropped, so it cannot hurt the caller.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from kubesmith.api.times import rfc3339
from kubesmith.client.rest import ApiClient, ApiError, is_not_found

log = logging.getLogger(__name__)

Obj = dict[str, Any]

NORMAL, WARNING = "Normal", "Warning"
MAX_PENDING = 1000      # emitted events not written yet; upstream's broadcaster queue size
WRITERS = 8             # events written at once (each about a different object)


def object_reference(obj: Obj, field_path: str = "") -> Obj:
    """A core/v1 ObjectReference to `obj` (as an Event's involvedObject)."""
    meta = obj.get("metadata") or {}
    ref = {"kind": obj.get("kind", ""), "apiVersion": obj.get("apiVersion", ""),
           "name": meta.get("name", ""), "uid": meta.get("uid", ""),
           "resourceVersion": meta.get("resourceVersion", "")}
    if meta.get("namespace"):
        ref["namespace"] = meta["namespace"]
    if field_path:
        ref["fieldPath"] = field_path
    return {k: v for k, v in ref.items() if v}


class EventRecorder:
    def __init__(self, client: ApiClient, component: str, host: str = "", *,
                 window: float = 600.0, cache_size: int = 4096, writers: int = WRITERS):
        self.client = client
        self.component = component
        self.host = host
        self.window = window
        self.cache_size = cache_size
        # identity of an event -> (namespace, name, count, monotonic time last written)
        self._seen: OrderedDict[tuple, tuple[str, str, int, float]] = OrderedDict()
        self._pending: set[asyncio.Task] = set()
        # Events about one object are written one at a time (a repeat must see the
        # first to count it); events about different objects go in parallel, up to
        # `writers`, so a busy component (hundreds of pods a second) keeps up.
        self._writing: dict[tuple, asyncio.Lock] = {}
        self._waiting: dict[tuple, int] = {}
        self._slots = asyncio.Semaphore(writers)

    def emit(self, obj: Obj, event_type: str, reason: str, message: str, *,
             field_path: str = "") -> None:
        """Record in the background (the caller does not wait for the API server)."""
        if len(self._pending) >= MAX_PENDING:
            log.warning("too many events pending; dropped %s %s: %s", event_type, reason, message)
            return
        task = asyncio.get_running_loop().create_task(
            self.record(obj, event_type, reason, message, field_path=field_path))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        """Wait until every emitted event is written (or dropped)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def record(self, obj: Obj, event_type: str, reason: str, message: str, *,
                     field_path: str = "") -> Obj | None:
        """Write the event now; the Event as stored, or None when it could not be."""
        meta = obj.get("metadata") or {}
        key = (obj.get("kind"), meta.get("namespace"), meta.get("name"), meta.get("uid"))
        lock = self._writing.setdefault(key, asyncio.Lock())
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            async with lock, self._slots:
                return await self._write(obj, event_type, reason, message, field_path)
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key], self._writing[key]

    async def _write(self, obj: Obj, event_type: str, reason: str, message: str,
                     field_path: str) -> Obj | None:
        involved = object_reference(obj, field_path)
        namespace = involved.get("namespace") or "default"
        identity = (involved.get("uid"), involved.get("kind"), namespace,
                    involved.get("name"), field_path, event_type, reason, message)
        timestamp = rfc3339()
        try:
            seen = self._seen.get(identity)
            if seen is not None and time.monotonic() - seen[3] < self.window:
                event_namespace, name, count, _ = seen
                try:
                    event = await self.client.patch(
                        "v1 events", name, {"count": count + 1, "lastTimestamp": timestamp},
                        event_namespace)
                    self._remember(identity, event_namespace, name, count + 1)
                    return event
                except ApiError as exc:
                    if not is_not_found(exc):
                        raise
                    # The Event expired (events have a TTL); start a new one.
            name = f"{involved.get('name', 'unknown')}.{time.time_ns():x}"
            event = await self.client.create("v1 events", {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": name, "namespace": namespace},
                "involvedObject": involved, "type": event_type, "reason": reason,
                "message": message,
                "source": {k: v for k, v in (("component", self.component),
                                             ("host", self.host)) if v},
                "firstTimestamp": timestamp, "lastTimestamp": timestamp, "count": 1,
                "reportingComponent": self.component, "reportingInstance": self.host,
            }, namespace)
            self._remember(identity, namespace, name, 1)
            return event
        except (ApiError, ConnectionError) as exc:
            log.warning("could not write event %s %s about %s/%s: %s", event_type, reason,
                        namespace, involved.get("name"), exc)
            return None

    def _remember(self, identity: tuple, namespace: str, name: str, count: int) -> None:
        self._seen[identity] = (namespace, name, count, time.monotonic())
        self._seen.move_to_end(identity)
        while len(self._seen) > self.cache_size:
            self._seen.popitem(last=False)
