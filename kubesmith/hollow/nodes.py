"""HollowNodes: many simulated kubelets in one process, on one API client.

    async with ApiClient.from_kubeconfig(path, component="kubesmith-hollow") as client:
        nodes = HollowNodes(client, HollowConfig(count=100))
        await nodes.start()          # registered, leases held, pods informer synced
        ...
        nodes.stop_heartbeat("hollow-node-3")    # that node stops renewing its lease
        await nodes.stop()

What each node does, as a kubelet would:
  * registers its Node (labels, capacity = allocatable, conditions, addresses, nodeInfo);
  * renews its Lease in kube-node-lease every `heartbeat` seconds (holder = node name,
    leaseDurationSeconds 40, owned by the Node); patches its conditions' heartbeat every
    `status_interval` seconds, and at once when the cluster shows them otherwise (the
    node lifecycle controller set Ready Unknown, say);
  * admits the pods bound to it as the kubelet does (a pod that does not fit the
    node's pods, cpu, memory or extended resources fails with OutOf<resource>), and
    starts the others: one status patch makes them Running and Ready with an IP from
    the node's spec.podCIDR (a fallback /24 per node until node-ipam sets one);
  * ends pods annotated hollow.kubesmith.io/succeed-after (or fail-after) that long
    after they started, when their restartPolicy lets them end;
  * finalises pods being deleted: their containers stop (terminal status) and the pod
    is deleted with gracePeriodSeconds=0.

Pods come from ONE shared informer (spec.nodeName!="") filtered by node name locally:
one watch whatever the node count. Nodes come from one informer too (for podCIDR and
for conditions others changed). Pod status writes go through a WorkQueue with
`workers` concurrent workers, so a thousand bound pods start in parallel.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from kubesmith.api.times import parse_rfc3339
from kubesmith.client.informers import (DeletedFinalStateUnknown, InformerFactory,
                                        SharedInformer, namespace_key)
from kubesmith.client.leaderelection import micro_time
from kubesmith.client.rest import (ApiClient, ApiError, is_already_exists, is_conflict,
                                   is_not_found)
from kubesmith.client.workqueue import WorkQueue, run_workers
from kubesmith.hollow.objects import (NodeSpec, PodIPs, address_slot, admission_failure,
                                      completion_after, lease_manifest, node_conditions,
                                      node_labels, node_manifest, node_status, rfc3339,
                                      rejected_pod_status, running_pod_status,
                                      terminated_pod_status)
from kubesmith.scheduler.resources import Resources, pod_requests, quantity_value

log = logging.getLogger(__name__)

Obj = dict[str, Any]
LEASES = "leases.coordination.k8s.io"
LEASE_NAMESPACE = "kube-node-lease"
TERMINAL = ("Succeeded", "Failed")
# A container stopped for its pod's deletion exits on SIGTERM: 128 + 15.
STOPPED_EXIT_CODE = 143


@dataclass
class HollowConfig:
    count: int
    name_prefix: str = "hollow-node-"
    start_index: int = 0        # nodes are <prefix><start_index> ...
    cpu: str = "4"
    memory: str = "16Gi"
    pods: str = "110"
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict] = field(default_factory=list)    # set at registration only
    heartbeat: float = 10.0     # lease renewal period (kubelet: leaseDuration / 4)
    status_interval: float = 60.0
    lease_duration: int = 40
    workers: int = 32           # pod status writes in flight
    register_concurrency: int = 32

    def specs(self) -> list[NodeSpec]:
        return [NodeSpec(f"{self.name_prefix}{i}", address_slot(self.name_prefix, i),
                         self.cpu, self.memory, self.pods)
                for i in range(self.start_index, self.start_index + self.count)]


@dataclass
class _Started:
    node: str
    ip: str             # "" for hostNetwork pods (nothing to give back)
    at: float           # wall clock seconds
    at_text: str
    requests: Resources = field(default_factory=Resources)


class _Node:
    def __init__(self, spec: NodeSpec):
        self.spec = spec
        self.uid = ""
        self.lease: Obj | None = None
        self.heartbeat: asyncio.Task | None = None
        self.last_status = 0.0      # monotonic time of the last status post
        self.killed = False
        self.ranges: dict[str, PodIPs] = {}
        self.allocatable = Resources.from_list(spec.resources())
        self.pods_allowed = quantity_value(spec.pods)
        self.used = Resources()         # what the pods admitted and not ended ask for
        self.pods_used = 0

    def admit(self, requests: Resources) -> None:
        self.used.add(requests)
        self.pods_used += 1

    def free(self, requests: Resources) -> None:
        self.used.add(requests, -1)
        self.pods_used -= 1

    def pod_range(self, cidr: str | None) -> PodIPs:
        cidr = cidr or self.spec.fallback_pod_cidr
        found = self.ranges.get(cidr)
        if found is None:
            found = self.ranges[cidr] = PodIPs(cidr)
        return found

    def release_ip(self, address: str) -> None:
        for ips in self.ranges.values():
            if address in ips:
                ips.release(address)
                return


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


class HollowNodes:
    """`config.count` simulated nodes sharing `client` (see the module docstring)."""

    def __init__(self, client: ApiClient, config: HollowConfig, *,
                 informers: InformerFactory | None = None):
        if config.count < 1:
            raise ValueError("at least one node")
        if config.heartbeat <= 0 or config.status_interval <= 0:
            raise ValueError("heartbeat and status_interval must be positive")
        self.client = client
        self.config = config
        self._nodes: dict[str, _Node] = {s.name: _Node(s) for s in config.specs()}
        self._own_informers = informers is None
        self.informers = informers or InformerFactory(client)
        self.pods: SharedInformer = self.informers.informer("v1 pods",
                                                            field_selector="spec.nodeName!=")
        self.node_informer: SharedInformer = self.informers.informer("v1 nodes")
        self.queue = WorkQueue(name="hollow-pods")
        self._started: dict[str, _Started] = {}     # pod uid -> what this process gave it
        self._finalised: set[str] = set()           # uids deleted for good by this process
        self._rejected: set[str] = set()            # uids refused by admission
        self._tasks: list[asyncio.Task] = []
        # Figures for tests and benchmarks.
        self.counts = {"registered": 0, "lease_renewals": 0, "status_posts": 0,
                       "pods_started": 0, "pods_completed": 0, "pods_deleted": 0,
                       "pods_rejected": 0}

    # --- public -----------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._nodes)

    def uid(self, name: str) -> str:
        return self._nodes[name].uid

    def spec(self, name: str) -> NodeSpec:
        """A node's size and addresses (its InternalIP, its fallback pod range)."""
        return self._nodes[name].spec

    async def start(self, timeout: float = 120.0) -> None:
        """Register every node with its first lease, sync the informers, start the pod
        workers and the heartbeats. Raises TimeoutError after `timeout` seconds."""
        self.pods.add_event_handler(on_add=self._pod_changed,
                                    on_update=lambda old, new: self._pod_changed(new),
                                    on_delete=self._pod_deleted)
        self.informers.start()
        try:
            await asyncio.wait_for(self._start(), timeout)
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        if not await self.informers.wait_for_sync():
            raise RuntimeError("informers did not sync")
        limit = asyncio.Semaphore(max(1, self.config.register_concurrency))

        async def register(node: _Node) -> None:
            async with limit:
                await self._register(node)
                await self._renew_lease(node)

        await asyncio.gather(*(register(node) for node in self._nodes.values()))
        for node in self._nodes.values():
            self._start_heartbeat(node, first_delay=random.uniform(0, self.config.heartbeat))
        self._tasks.append(asyncio.create_task(
            run_workers(self.queue, self._sync_pod, self.config.workers), name="hollow-pods"))
        log.info("%d hollow nodes registered (%s ...)", len(self._nodes), self.names[0])

    async def stop(self) -> None:
        """Stop everything (heartbeats, pod handling); the Nodes stay, as after a crash."""
        tasks = [n.heartbeat for n in self._nodes.values() if n.heartbeat] + self._tasks
        for node in self._nodes.values():
            node.heartbeat = None
        self._tasks = []
        self.queue.shutdown()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_informers:
            await self.informers.shutdown()

    async def __aenter__(self) -> "HollowNodes":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def stop_heartbeat(self, name: str) -> None:
        """The node stops renewing its lease and posting status (its kubelet hangs or
        loses the network); pods on it are still handled."""
        node = self._nodes[name]
        task, node.heartbeat = node.heartbeat, None
        if task is not None:
            task.cancel()

    def start_heartbeat(self, name: str) -> None:
        """Heartbeats (and, after kill(), pod handling) resume at once."""
        node = self._nodes[name]
        node.killed = False
        if node.heartbeat is None or node.heartbeat.done():
            self._start_heartbeat(node, first_delay=0.0)
        for key in self.pods.indexer.keys():
            pod = self.pods.indexer.get(key)
            if pod is not None and (pod.get("spec") or {}).get("nodeName") == name:
                self.queue.add(key)

    def kill(self, name: str) -> None:
        """The node is gone: no heartbeat, and its pods are left as they are."""
        self.stop_heartbeat(name)
        self._nodes[name].killed = True

    # --- nodes ------------------------------------------------------------------------

    async def _register(self, node: _Node) -> None:
        spec = node.spec
        try:
            manifest = node_manifest(spec, self.config.labels, taints=self.config.taints)
            created = await self.client.create("v1 nodes", manifest)
            node.uid = _meta(created).get("uid", "")
            if not (created.get("status") or {}).get("nodeInfo"):
                # A server that resets status on create (upstream keeps a Node's).
                await self.client.patch("v1 nodes", spec.name, {"status": manifest["status"]},
                                        patch_type="strategic", subresource="status")
        except ApiError as exc:
            if not is_already_exists(exc):
                raise
            # Registered before (a restart): bring labels and status up to date.
            labels = node_labels(spec.name, self.config.labels)
            current = await self.client.patch("v1 nodes", spec.name,
                                              {"metadata": {"labels": labels}})
            node.uid = _meta(current).get("uid", "")
            now = rfc3339()
            status = node_status(spec, now)
            status["conditions"] = node_conditions(
                now, (current.get("status") or {}).get("conditions") or [])
            await self.client.patch("v1 nodes", spec.name, {"status": status},
                                    patch_type="strategic", subresource="status")
        node.last_status = time.monotonic()
        self.counts["registered"] += 1

    def _start_heartbeat(self, node: _Node, first_delay: float) -> None:
        node.heartbeat = asyncio.create_task(self._heartbeat(node, first_delay),
                                             name=f"heartbeat {node.spec.name}")

    async def _heartbeat(self, node: _Node, first_delay: float) -> None:
        await asyncio.sleep(first_delay)
        while True:
            try:
                await self._renew_lease(node)
                if self._status_due(node):
                    await self._post_status(node)
            except (ApiError, ConnectionError) as exc:
                log.warning("%s: heartbeat failed: %s", node.spec.name, exc)
            except Exception:
                log.exception("%s: heartbeat failed", node.spec.name)
            await asyncio.sleep(self.config.heartbeat)

    async def _renew_lease(self, node: _Node) -> None:
        """Update the lease from the last copy written (one PUT), as the kubelet does;
        read or create it when that copy is missing or stale."""
        for _ in range(2):
            if node.lease is None:
                try:
                    node.lease = await self.client.get(LEASES, node.spec.name, LEASE_NAMESPACE)
                except ApiError as exc:
                    if not is_not_found(exc):
                        raise
                    try:
                        node.lease = await self.client.create(LEASES, lease_manifest(
                            node.spec.name, node.uid, micro_time(),
                            self.config.lease_duration), LEASE_NAMESPACE)
                        self.counts["lease_renewals"] += 1
                        return
                    except ApiError as exc:
                        if not is_already_exists(exc):
                            raise
                        continue
            lease = copy.deepcopy(node.lease)
            lease["spec"] = dict(lease.get("spec") or {}, holderIdentity=node.spec.name,
                                 leaseDurationSeconds=self.config.lease_duration,
                                 renewTime=micro_time())
            if node.uid and not _meta(lease).get("ownerReferences"):
                lease["metadata"]["ownerReferences"] = lease_manifest(
                    node.spec.name, node.uid, "", 0)["metadata"]["ownerReferences"]
            try:
                node.lease = await self.client.update(LEASES, lease, LEASE_NAMESPACE)
                self.counts["lease_renewals"] += 1
                return
            except ApiError as exc:
                if not (is_conflict(exc) or is_not_found(exc)):
                    raise
                node.lease = None
        raise ApiError({"reason": "Conflict", "code": 409,
                        "message": f"lease {node.spec.name} kept changing"})

    def _status_due(self, node: _Node) -> bool:
        if time.monotonic() - node.last_status >= self.config.status_interval:
            return True
        current = self.node_informer.lister.get(node.spec.name)
        if current is None:
            return False    # not seen yet by the informer; the interval will come
        wanted = {c["type"]: c["status"] for c in node_conditions("")}
        seen = {c.get("type"): c.get("status")
                for c in (current.get("status") or {}).get("conditions") or []}
        return any(seen.get(kind) != status for kind, status in wanted.items())

    async def _post_status(self, node: _Node) -> None:
        current = self.node_informer.lister.get(node.spec.name) or {}
        previous = (current.get("status") or {}).get("conditions") or []
        conditions = node_conditions(rfc3339(), previous)
        await self.client.patch("v1 nodes", node.spec.name,
                                {"status": {"conditions": conditions}},
                                patch_type="strategic", subresource="status")
        node.last_status = time.monotonic()
        self.counts["status_posts"] += 1

    # --- pods -------------------------------------------------------------------------

    def _pod_changed(self, pod: Obj) -> None:
        if (pod.get("spec") or {}).get("nodeName") in self._nodes:
            self.queue.add(namespace_key(pod))

    def _pod_deleted(self, pod: Obj | DeletedFinalStateUnknown) -> None:
        obj = pod.obj if isinstance(pod, DeletedFinalStateUnknown) else pod
        uid = _meta(obj or {}).get("uid")
        if uid:
            self._release(uid)
            self._finalised.discard(uid)
            self._rejected.discard(uid)

    def _release(self, uid: str) -> None:
        """The pod's containers are gone: its address and resources are free."""
        started = self._started.pop(uid, None)
        node = self._nodes.get(started.node) if started is not None else None
        if node is not None:
            node.free(started.requests)
            if started.ip:
                node.release_ip(started.ip)

    async def _sync_pod(self, key: str) -> float | None:
        """Bring one pod along; seconds until it must be looked at again, or None."""
        pod = self.pods.indexer.get(key)
        if pod is None:
            return None
        meta, spec, status = _meta(pod), pod.get("spec") or {}, pod.get("status") or {}
        node = self._nodes.get(spec.get("nodeName") or "")
        if node is None or node.killed:
            return None
        uid = meta.get("uid", "")
        if meta.get("deletionTimestamp"):
            await self._finalise(pod, node)
            return None
        if status.get("phase") in TERMINAL:
            self._release(uid)
            return None
        if uid in self._rejected:
            return None     # refused already; the Failed status is on its way
        started = self._started.get(uid)
        if started is None:
            started = self._adopt(pod, node) or await self._run(pod, node)
            if started is None:
                return None
        ending = completion_after(pod)
        if ending is None:
            return None
        seconds, succeeded = ending
        left = started.at + seconds - time.time()
        if left > 0:
            return left
        await self._end(pod, succeeded, started)
        return None

    def _adopt(self, pod: Obj, node: _Node) -> _Started | None:
        """A pod this node ran before a restart keeps its IP and start time."""
        status = pod.get("status") or {}
        if status.get("phase") != "Running" or not status.get("podIP"):
            return None
        ip = status["podIP"]
        host_network = bool((pod.get("spec") or {}).get("hostNetwork"))
        if not host_network:
            current = self.node_informer.lister.get(node.spec.name) or {}
            node.pod_range((current.get("spec") or {}).get("podCIDR"))
            node.pod_range(None)
            for ips in node.ranges.values():
                if ip in ips:
                    ips.hold(ip)
        at_text = status.get("startTime") or rfc3339()
        requests = pod_requests(pod.get("spec") or {})
        started = _Started(node.spec.name, "" if host_network else ip,
                           parse_rfc3339(at_text) or time.time(), at_text, requests)
        node.admit(requests)
        self._started[_meta(pod).get("uid", "")] = started
        return started

    async def _run(self, pod: Obj, node: _Node) -> _Started | None:
        meta = _meta(pod)
        uid = meta.get("uid", "")
        requests = pod_requests(pod.get("spec") or {})
        refused = admission_failure(requests, node.used, node.pods_used, node.allocatable,
                                    node.pods_allowed)
        if refused is not None:
            await self._reject(pod, *refused)
            return None
        if (pod.get("spec") or {}).get("hostNetwork"):
            ip, given = node.spec.address, ""
        else:
            current = self.node_informer.lister.get(node.spec.name) or {}
            ip = given = node.pod_range((current.get("spec") or {}).get("podCIDR")).take()
        now = rfc3339()
        started = _Started(node.spec.name, given, time.time(), now, requests)
        node.admit(requests)
        self._started[uid] = started
        body = {"metadata": {"uid": uid},
                "status": running_pod_status(pod, ip, node.spec.address, now)}
        try:
            await self.client.patch("v1 pods", meta["name"], body, meta["namespace"],
                                    patch_type="strategic", subresource="status")
        except ApiError as exc:
            self._release(uid)
            if is_not_found(exc) or is_conflict(exc):
                return None     # gone, or a new pod of the same name: its own event comes
            raise
        except BaseException:
            self._release(uid)
            raise
        self.counts["pods_started"] += 1
        return started

    async def _reject(self, pod: Obj, reason: str, message: str) -> None:
        meta = _meta(pod)
        uid = meta.get("uid", "")
        self._rejected.add(uid)
        log.info("%s/%s rejected on %s: %s", meta["namespace"], meta["name"],
                 (pod.get("spec") or {}).get("nodeName"), message)
        try:
            await self.client.patch("v1 pods", meta["name"], {
                "metadata": {"uid": uid}, "status": rejected_pod_status(reason, message)},
                meta["namespace"], patch_type="strategic", subresource="status")
        except ApiError as exc:
            if not (is_not_found(exc) or is_conflict(exc)):
                self._rejected.discard(uid)
                raise
        except BaseException:
            self._rejected.discard(uid)
            raise
        self.counts["pods_rejected"] += 1

    async def _end(self, pod: Obj, succeeded: bool, started: _Started) -> None:
        meta = _meta(pod)
        body = {"metadata": {"uid": meta.get("uid", "")},
                "status": terminated_pod_status(pod, succeeded, started.at_text, rfc3339())}
        try:
            await self.client.patch("v1 pods", meta["name"], body, meta["namespace"],
                                    patch_type="strategic", subresource="status")
        except ApiError as exc:
            if not (is_not_found(exc) or is_conflict(exc)):
                raise
        self._release(meta.get("uid", ""))
        self.counts["pods_completed"] += 1

    async def _finalise(self, pod: Obj, node: _Node) -> None:
        """Containers stop, the terminal status is written, then the pod is deleted
        for good (gracePeriodSeconds=0, only this very pod: uid precondition)."""
        meta = _meta(pod)
        uid = meta.get("uid", "")
        if meta.get("deletionGracePeriodSeconds") == 0 or uid in self._finalised:
            return      # deleted for good already; finalizers hold it
        namespace, name = meta["namespace"], meta["name"]
        if (pod.get("status") or {}).get("phase") not in TERMINAL:
            started = self._started.get(uid)
            at_text = started.at_text if started else rfc3339()
            body = {"metadata": {"uid": uid}, "status": terminated_pod_status(
                pod, False, at_text, rfc3339(), exit_code=STOPPED_EXIT_CODE)}
            try:
                await self.client.patch("v1 pods", name, body, namespace,
                                        patch_type="strategic", subresource="status")
            except ApiError as exc:
                if is_not_found(exc) or is_conflict(exc):
                    self._release(uid)
                    return
                raise
        try:
            await self.client.delete("v1 pods", name, namespace, grace_period_seconds=0,
                                     preconditions={"uid": uid})
        except ApiError as exc:
            if not (is_not_found(exc) or is_conflict(exc)):
                raise
        self._release(uid)
        self._finalised.add(uid)
        self.counts["pods_deleted"] += 1

    def pods_on(self, name: str) -> list[Obj]:
        """The cached pods bound to one node."""
        return [pod for key in self.pods.indexer.keys()
                if (pod := self.pods.indexer.get(key)) is not None
                and (pod.get("spec") or {}).get("nodeName") == name]

