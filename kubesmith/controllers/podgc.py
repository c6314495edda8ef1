"""The pod garbage collector (upstream's podgc), every GC_CHECK_PERIOD seconds:

  * terminated pods (Succeeded/Failed) above --terminated-pod-gc-threshold are deleted,
    oldest first;
  * pods bound to a node that no longer exists are marked Failed (condition
    DisruptionTarget, reason DeletionByPodGC) and force deleted (grace 0) once the node
    has been missing for ORPHAN_QUARANTINE seconds and a live read confirms it is gone;
  * terminating pods never scheduled are force deleted;
  * terminating pods on a node that is not Ready and carries the out-of-service taint
    are force deleted.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any

from kubesmith.client.rest import ApiError, is_not_found
from kubesmith.controllers import register
from kubesmith.controllers.context import ControllerContext

log = logging.getLogger(__name__)

Obj = dict[str, Any]
GC_CHECK_PERIOD = 20.0      # upstream's gcCheckPeriod
ORPHAN_QUARANTINE = 40.0    # upstream's quarantineTime
OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"
TERMINAL_PHASES = ("Succeeded", "Failed")


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _node_ready(node: Obj) -> bool:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


@register("podgc")
class PodGCController:
    def __init__(self, ctx: ControllerContext):
        self.client = ctx.client
        self.threshold = int(getattr(ctx.options, "terminated_pod_gc_threshold", 12500))
        self.pods = ctx.informers.informer("v1 pods")
        self.nodes = ctx.informers.informer("v1 nodes")
        self._missing_since: dict[str, float] = {}   # node name -> first seen missing

    async def run(self, workers: int) -> None:
        while True:
            try:
                await self.gc()
            except (ApiError, ConnectionError) as exc:
                log.warning("pod garbage collection: %s", exc)
            await asyncio.sleep(GC_CHECK_PERIOD)

    async def gc(self) -> None:
        pods = self.pods.lister.list()
        if self.threshold > 0:
            await self.gc_terminated(pods)
        await self.gc_terminating_out_of_service(pods)
        await self.gc_orphaned(pods)
        await self.gc_unscheduled_terminating(pods)

    async def gc_terminated(self, pods: list[Obj]) -> None:
        terminated = [p for p in pods
                      if (p.get("status") or {}).get("phase") in TERMINAL_PHASES]
        excess = len(terminated) - self.threshold
        if excess <= 0:
            return
        terminated.sort(key=lambda p: (_meta(p).get("creationTimestamp") or "",
                                       _meta(p).get("name") or ""))
        log.info("garbage collecting %d terminated pods", excess)
        for pod in terminated[:excess]:
            await self._delete(pod)

    async def gc_orphaned(self, pods: list[Obj]) -> None:
        nodes = {_meta(n).get("name") for n in self.nodes.lister.list()}
        now = time.monotonic()
        missing = {(p.get("spec") or {}).get("nodeName") for p in pods} - nodes - {None, ""}
        self._missing_since = {n: self._missing_since.get(n, now) for n in missing}
        gone = set()
        for node, since in self._missing_since.items():
            if now - since < ORPHAN_QUARANTINE:
                continue
            try:
                await self.client.get("v1 nodes", node)
            except ApiError as exc:
                if is_not_found(exc):
                    gone.add(node)
                    continue
                raise
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName")
            if node in gone:
                log.info("deleting pod %s/%s bound to node %s that no longer exists",
                         _meta(pod).get("namespace"), _meta(pod).get("name"), node)
                await self._delete(pod, "PodGC: node no longer exists")

    async def gc_unscheduled_terminating(self, pods: list[Obj]) -> None:
        for pod in pods:
            if _meta(pod).get("deletionTimestamp") and not (pod.get("spec") or {}).get(
                    "nodeName"):
                await self._delete(pod)

    async def gc_terminating_out_of_service(self, pods: list[Obj]) -> None:
        out_of_service = {
            _meta(n).get("name") for n in self.nodes.lister.list()
            if not _node_ready(n) and any(t.get("key") == OUT_OF_SERVICE_TAINT for t in
                                          (n.get("spec") or {}).get("taints") or [])}
        if not out_of_service:
            return
        for pod in pods:
            if _meta(pod).get("deletionTimestamp") and \
                    (pod.get("spec") or {}).get("nodeName") in out_of_service:
                await self._delete(pod, "PodGC: node is out-of-service")

    async def _delete(self, pod: Obj, disruption: str = "") -> None:
        """Mark a running pod Failed (with a DisruptionTarget condition saying why), then
        delete it at once."""
        meta = _meta(pod)
        name, namespace = meta.get("name", ""), meta.get("namespace", "")
        try:
            if (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES:
                status: Obj = {"phase": "Failed"}
                if disruption:
                    status["conditions"] = [{
                        "type": "DisruptionTarget", "status": "True",
                        "reason": "DeletionByPodGC", "message": disruption,
                        "lastTransitionTime":
                            datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}]
                await self.client.patch("v1 pods", name, {"status": status}, namespace,
                                        patch_type="strategic", subresource="status")
            await self.client.delete("v1 pods", name, namespace, grace_period_seconds=0,
                                     preconditions={"uid": meta.get("uid")})
        except ApiError as exc:
            if not is_not_found(exc):
                log.warning("cannot delete pod %s/%s: %s", namespace, name, exc)
