"""What the workload controllers share (upstream's pkg/controller/controller_utils.go).

    owner_reference(rs)              the controller ownerReference a pod of `rs` carries
    controller_of(obj)               the ownerReference with controller: true, or None
    controller_key(obj, kind)        "namespace/name" of obj's controller of that kind
    pod_from_template(...)           a pod to create from a template, owned by a controller
    is_pod_ready / is_pod_available  readiness as upstream reads it (minReadySeconds)
    deletion_rank(pod)               upstream's ActivePods order: the first go first
    Expectations                     creations/deletions asked for and not yet seen
    claim(...)                       adopt orphans that match, release owned that do not
    compute_hash(template, n)        FNV-32a of a template, in the safe-encoding alphabet
    resolve_int_or_percent           maxSurge / maxUnavailable against a replica count
    slow_start_batches(n)            creation batches 1, 2, 4, ...
    set_condition / write_status     status conditions, and status written with PUT
    QueueController                  a work queue, keys of one kind, run(workers)
    ServicePodTracker                Services re-queued when their pods change (endpoints)
    ensure_revision / truncate_...   ControllerRevisions (DaemonSet, StatefulSet)
"""
from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any, Callable, Iterable

import orjson

from kubesmith.api.times import parse_rfc3339 as parse_time, rfc3339
from kubesmith.api.validation import selector_is_empty, selector_matches
from kubesmith.client.informers import DeletedFinalStateUnknown, namespace_key
from kubesmith.client.rest import ApiClient, ApiError, is_already_exists, is_not_found
from kubesmith.client.workqueue import WorkQueue, run_workers

log = logging.getLogger(__name__)

Obj = dict[str, Any]

# Upstream's rand.SafeEncodeString alphabet: no vowels (no words), no look-alikes.
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
# Upstream's ExpectationsTimeout: expectations older than this no longer block a sync.
EXPECTATIONS_TIMEOUT = 300.0
# Upstream's SlowStartInitialBatchSize.
SLOW_START_INITIAL_BATCH = 1


# --- time -----------------------------------------------------------------------------

def now_rfc3339(clock: Callable[[], float] = time.time) -> str:
    return rfc3339(clock())


# --- objects --------------------------------------------------------------------------

def meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def unwrap(obj: Obj | DeletedFinalStateUnknown) -> Obj:
    """The object of a delete notification (a tombstone's last known state)."""
    return obj.obj if isinstance(obj, DeletedFinalStateUnknown) else obj


def owner_reference(owner: Obj) -> Obj:
    m = meta(owner)
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": m["name"],
            "uid": m["uid"], "controller": True, "blockOwnerDeletion": True}


def controller_of(obj: Obj) -> Obj | None:
    for ref in meta(obj).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def controller_key(obj: Obj, kind: str) -> str | None:
    """The queue key ("namespace/name") of obj's controller when it is a `kind`."""
    ref = controller_of(obj)
    if ref is None or ref.get("kind") != kind:
        return None
    return f"{meta(obj).get('namespace')}/{ref.get('name')}"


def is_controlled_by(obj: Obj, owner: Obj) -> bool:
    ref = controller_of(obj)
    return ref is not None and ref.get("uid") == meta(owner).get("uid")


def is_terminating(obj: Obj) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def label_match(selector: Any, obj: Obj) -> bool:
    """Upstream refuses to let an empty selector select everything for workloads."""
    return not selector_is_empty(selector) and selector_matches(selector, meta(obj).get("labels"))


def pod_from_template(template: Obj, owner: Obj, *, name: str | None = None,
                      generate_name: str | None = None) -> Obj:
    """A pod from a pod template: its labels, annotations and spec, owned by `owner`."""
    template_meta = template.get("metadata") or {}
    metadata: Obj = {"labels": dict(template_meta.get("labels") or {}),
                     "ownerReferences": [owner_reference(owner)]}
    if template_meta.get("annotations"):
        metadata["annotations"] = dict(template_meta["annotations"])
    if template_meta.get("finalizers"):
        metadata["finalizers"] = list(template_meta["finalizers"])
    if name:
        metadata["name"] = name
    else:
        metadata["generateName"] = generate_name or f"{meta(owner)['name']}-"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": copy.deepcopy(template.get("spec") or {})}


# --- pods -----------------------------------------------------------------------------

def pod_condition(pod: Obj, kind: str) -> Obj | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def is_pod_ready(pod: Obj) -> bool:
    condition = pod_condition(pod, "Ready")
    return condition is not None and condition.get("status") == "True"


def is_pod_available(pod: Obj, min_ready_seconds: int, now: float | None = None) -> bool:
    """Ready for at least minReadySeconds (upstream's podutil.IsPodAvailable)."""
    condition = pod_condition(pod, "Ready")
    if condition is None or condition.get("status") != "True":
        return False
    if not min_ready_seconds:
        return True
    since = parse_time(condition.get("lastTransitionTime"))
    now = time.time() if now is None else now
    return since is not None and since + min_ready_seconds <= now


def pod_phase(pod: Obj) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def is_pod_active(pod: Obj) -> bool:
    """Neither finished nor being deleted (upstream's IsPodActive)."""
    return pod_phase(pod) not in ("Succeeded", "Failed") and not is_terminating(pod)


def _restarts(pod: Obj) -> int:
    return sum(int(s.get("restartCount") or 0)
               for s in (pod.get("status") or {}).get("containerStatuses") or [])


_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def deletion_rank(pod: Obj) -> tuple:
    """Sort key of upstream's ActivePods: pods to delete first sort first — unassigned
    before assigned, pending < unknown < running, not ready before ready, more
    restarts first, newer before older."""
    ready = is_pod_ready(pod)
    ready_since = parse_time((pod_condition(pod, "Ready") or {}).get("lastTransitionTime")) or 0
    created = parse_time(meta(pod).get("creationTimestamp")) or 0
    return (bool((pod.get("spec") or {}).get("nodeName")),
            _PHASE_RANK.get(pod_phase(pod), 0), ready,
            -ready_since if ready else 0, -_restarts(pod), -created)


# --- expectations ---------------------------------------------------------------------

class Expectations:
    """Upstream's ControllerExpectations: how many creations and deletions a controller
    asked for and has not yet seen through its informer. Until they are seen (or 5
    minutes pass) a sync must not act again on counts the cache does not show yet."""

    def __init__(self, timeout: float = EXPECTATIONS_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic):
        self.timeout = timeout
        self.clock = clock
        self._items: dict[str, list] = {}     # key -> [adds, dels, set at, uids deleting]

    def expect(self, key: str, adds: int = 0, deletes: int = 0,
               uids: Iterable[str] = ()) -> None:
        self._items[key] = [adds, deletes, self.clock(), set(uids)]

    def creation_observed(self, key: str) -> None:
        item = self._items.get(key)
        if item is not None:
            item[0] -= 1

    def creation_failed(self, key: str) -> None:
        self.creation_observed(key)

    def deletion_observed(self, key: str, uid: str | None = None) -> None:
        item = self._items.get(key)
        if item is None:
            return
        if uid is not None and item[3]:
            if uid not in item[3]:
                return
            item[3].discard(uid)
        item[1] -= 1

    def satisfied(self, key: str) -> bool:
        item = self._items.get(key)
        if item is None:
            return True
        if item[0] <= 0 and item[1] <= 0:
            return True
        return self.clock() - item[2] > self.timeout

    def forget(self, key: str) -> None:
        self._items.pop(key, None)


# --- adoption -------------------------------------------------------------------------

async def claim(client: ApiClient, resource: str, owner: Obj, selector: Any,
                candidates: Iterable[Obj]) -> list[Obj]:
    """Upstream's ControllerRefManager.Claim: the candidates `owner` controls after
    adopting orphans its selector matches and releasing owned ones it no longer does.
    An owner being deleted adopts nothing."""
    claimed: list[Obj] = []
    owner_uid = meta(owner)["uid"]
    for obj in candidates:
        ref = controller_of(obj)
        matches = label_match(selector, obj)
        if ref is not None:
            if ref.get("uid") != owner_uid:
                continue
            if matches:
                claimed.append(obj)
            elif not is_terminating(owner):
                await _release(client, resource, obj, owner_uid)
            continue
        if not matches or is_terminating(owner) or is_terminating(obj):
            continue
        adopted = await _adopt(client, resource, obj, owner)
        if adopted is not None:
            claimed.append(adopted)
    return claimed


async def _adopt(client: ApiClient, resource: str, obj: Obj, owner: Obj) -> Obj | None:
    refs = list(meta(obj).get("ownerReferences") or []) + [owner_reference(owner)]
    # The uid in the patch makes it fail if the object was replaced under the same name.
    patch = {"metadata": {"ownerReferences": refs, "uid": meta(obj)["uid"],
                          "resourceVersion": meta(obj).get("resourceVersion")}}
    try:
        return await client.patch(resource, meta(obj)["name"], patch, meta(obj)["namespace"])
    except ApiError as exc:
        if is_not_found(exc) or exc.code in (409, 422):
            return None    # gone or changed meanwhile: the next sync sees the new state
        raise


async def _release(client: ApiClient, resource: str, obj: Obj, owner_uid: str) -> None:
    refs = [r for r in meta(obj).get("ownerReferences") or [] if r.get("uid") != owner_uid]
    patch = {"metadata": {"ownerReferences": refs or None, "uid": meta(obj)["uid"]}}
    try:
        await client.patch(resource, meta(obj)["name"], patch, meta(obj)["namespace"])
    except ApiError as exc:
        if not is_not_found(exc) and exc.code != 422:
            raise


# --- numbers --------------------------------------------------------------------------

def resolve_int_or_percent(value: Any, total: int, round_up: bool) -> int:
    """An IntOrString against `total` (upstream's GetScaledValueFromIntOrPercent)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text.endswith("%"):
        return int(text)
    fraction = int(text[:-1]) * total / 100
    return math.ceil(fraction) if round_up else math.floor(fraction)


def slow_start_batches(count: int, initial: int = SLOW_START_INITIAL_BATCH) -> list[int]:
    """Batch sizes 1, 2, 4, ... adding up to `count` (upstream's slowStartBatch)."""
    batches, size, left = [], initial, count
    while left > 0:
        batch = min(size, left)
        batches.append(batch)
        left -= batch
        size *= 2
    return batches


def fnv32a(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value ^= byte
        value = (value * 0x01000193) & 0xFFFFFFFF
    return value


def safe_encode(text: str) -> str:
    return "".join(SAFE_ALPHABET[ord(ch) % len(SAFE_ALPHABET)] for ch in text)


def compute_hash(template: Obj, collision_count: int | None = None) -> str:
    """The pod-template-hash of a template: FNV-32a of its canonical JSON (and of the
    collision count when there is one), the decimal value safe-encoded, as upstream."""
    data = orjson.dumps(template, option=orjson.OPT_SORT_KEYS)
    if collision_count:
        data += str(collision_count).encode()
    return safe_encode(str(fnv32a(data)))


# --- conditions -----------------------------------------------------------------------

def get_condition(status: Obj, kind: str) -> Obj | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def set_condition(status: Obj, condition: Obj) -> None:
    """Put `condition` in status.conditions, keeping lastTransitionTime when the status
    did not change (upstream's SetDeploymentCondition and friends)."""
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != condition["type"]]
    current = get_condition(status, condition["type"])
    if current is not None and current.get("status") == condition.get("status") \
            and "lastTransitionTime" in current:
        condition = dict(condition, lastTransitionTime=current["lastTransitionTime"])
    conditions.append(condition)
    status["conditions"] = conditions


async def write_status(client: ApiClient, resource: str, obj: Obj, fields: Obj,
                       required: Iterable[str] = ()) -> Obj:
    """PUT obj's status subresource with `fields` set (upstream's UpdateStatus: what
    upstream's controller roles allow, and conditional on the resourceVersion read).
    Fields upstream leaves out when zero (omitempty) are dropped; `required` ones are
    written even then."""
    keep = set(required) | {"observedGeneration"}
    status = dict(obj.get("status") or {})
    for key, value in fields.items():
        if value in (0, None, [], {}) and key not in keep:
            status.pop(key, None)
        else:
            status[key] = value
    return await client.update_status(resource, dict(obj, status=status))


# --- the controller skeleton ----------------------------------------------------------

class QueueController:
    """A work queue of "<namespace>/<name>" keys handled by `sync(key)`."""

    queue_name = ""

    def __init__(self) -> None:
        self.queue = WorkQueue(name=self.queue_name)

    def enqueue(self, obj: Obj | DeletedFinalStateUnknown) -> None:
        self.queue.add(namespace_key(obj) if not isinstance(obj, str) else obj)

    async def sync(self, key: str) -> float | None:
        raise NotImplementedError

    async def run(self, workers: int) -> None:
        await run_workers(self.queue, self.sync, workers)


# --- services and pods (the endpoints controllers) ------------------------------------

class ServicePodTracker(QueueController):
    """Services keyed in a queue, re-queued when a pod their selector matches changes
    (before or after the change); the base of the Endpoints and EndpointSlice
    controllers. `trigger_times` remembers when each key was first queued since its
    last sync (the endpoints.kubernetes.io/last-change-trigger-time annotation)."""

    def __init__(self, services, pods) -> None:
        super().__init__()
        self.services = services
        self.pods = pods
        self.trigger_times: dict[str, str] = {}
        services.add_event_handler(on_add=self._touch,
                                   on_update=lambda old, new: self._touch(new),
                                   on_delete=self._touch)
        pods.add_event_handler(on_add=self._pod_changed,
                               on_update=self._pod_updated,
                               on_delete=lambda obj: self._pod_changed(unwrap(obj)))

    def _touch(self, obj) -> None:
        key = obj if isinstance(obj, str) else namespace_key(obj)
        self.trigger_times.setdefault(key, now_rfc3339())
        self.queue.add(key)

    def _pod_changed(self, pod: Obj) -> None:
        for service in self.services.lister.list(meta(pod).get("namespace")):
            selector = (service.get("spec") or {}).get("selector")
            if selector and all((meta(pod).get("labels") or {}).get(k) == v
                                for k, v in selector.items()):
                self._touch(service)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        if meta(old).get("resourceVersion") == meta(new).get("resourceVersion"):
            return
        self._pod_changed(new)
        if meta(old).get("labels") != meta(new).get("labels"):
            self._pod_changed(old)

    def selected_pods(self, service: Obj) -> list[Obj]:
        selector = (service.get("spec") or {}).get("selector") or {}
        return [p for p in self.pods.lister.list(meta(service)["namespace"], selector)]


def pod_ips(pod: Obj) -> list[str]:
    status = pod.get("status") or {}
    ips = [entry.get("ip") for entry in status.get("podIPs") or [] if entry.get("ip")]
    return ips or ([status["podIP"]] if status.get("podIP") else [])


def find_port(pod: Obj, service_port: Obj) -> int | None:
    """The pod's port a service port reaches: a number as is, a name looked up among
    the containers' ports of the same protocol (upstream's podutil.FindPort)."""
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    protocol = service_port.get("protocol", "TCP")
    for c in (pod.get("spec") or {}).get("containers") or []:
        for port in c.get("ports") or []:
            if port.get("name") == target and port.get("protocol", "TCP") == protocol:
                return port.get("containerPort")
    return None


def pod_reference(pod: Obj) -> Obj:
    m = meta(pod)
    return {"kind": "Pod", "namespace": m["namespace"], "name": m["name"], "uid": m["uid"]}


def include_in_endpoints(pod: Obj, include_terminating: bool) -> bool:
    """Upstream's ShouldPodBeInEndpoints: an IP, not finished, not being deleted unless
    asked."""
    if not pod_ips(pod):
        return False
    if not include_terminating and is_terminating(pod):
        return False
    restart = (pod.get("spec") or {}).get("restartPolicy", "Always")
    phase = pod_phase(pod)
    if phase == "Failed" or (phase == "Succeeded" and restart != "Always"):
        return False
    return True


# --- controller revisions (DaemonSet, StatefulSet) ------------------------------------

REVISION_HASH_LABEL = "controller-revision-hash"
REVISIONS = "apps/v1 controllerrevisions"


async def ensure_revision(client: ApiClient, owner: Obj, revisions: list[Obj],
                          data: Obj) -> tuple[str, Obj]:
    """The ControllerRevision of `owner` holding `data` (its pod template patch), made
    with the next revision number when none does; (hash, revision). `revisions` are
    the owner's existing ones."""
    highest = max((int(r.get("revision") or 0) for r in revisions), default=0)
    for revision in revisions:
        if revision.get("data") == data:
            if int(revision.get("revision") or 0) < highest:
                # An old template back (a rollback): it becomes the newest revision.
                revision = await client.patch(REVISIONS, meta(revision)["name"],
                                              {"revision": highest + 1},
                                              meta(revision)["namespace"])
            return (meta(revision).get("labels") or {}).get(REVISION_HASH_LABEL, ""), revision
    number = highest + 1
    collisions = ((owner.get("status") or {}).get("collisionCount")) or None
    digest = compute_hash(data, collisions)
    template_labels = (((owner.get("spec") or {}).get("template") or {}).get("metadata")
                       or {}).get("labels") or {}
    body = {"apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {"name": f"{meta(owner)['name']}-{digest}",
                         "namespace": meta(owner)["namespace"],
                         "labels": dict(template_labels, **{REVISION_HASH_LABEL: digest}),
                         "ownerReferences": [owner_reference(owner)]},
            "data": data, "revision": number}
    try:
        created = await client.create(REVISIONS, body, meta(owner)["namespace"])
    except ApiError as exc:
        if not is_already_exists(exc):
            raise
        created = await client.get(REVISIONS, body["metadata"]["name"], meta(owner)["namespace"])
        if not is_controlled_by(created, owner) or created.get("data") != data:
            raise
    return digest, created


async def truncate_history(client: ApiClient, owner: Obj, revisions: list[Obj],
                           live_hashes: set[str]) -> None:
    """Delete the oldest revisions no pod uses beyond spec.revisionHistoryLimit."""
    limit = (owner.get("spec") or {}).get("revisionHistoryLimit", 10)
    idle = sorted((r for r in revisions
                   if (meta(r).get("labels") or {}).get(REVISION_HASH_LABEL) not in live_hashes),
                  key=lambda r: int(r.get("revision") or 0))
    for revision in idle[:max(len(idle) - limit, 0)]:
        try:
            await client.delete(REVISIONS, meta(revision)["name"], meta(revision)["namespace"])
        except ApiError as exc:
            if not is_not_found(exc):
                raise


def owned_revisions(lister, owner: Obj) -> list[Obj]:
    return [r for r in lister.list(meta(owner)["namespace"]) if is_controlled_by(r, owner)]


def template_patch(template: Obj) -> Obj:
    """What upstream's DaemonSet and StatefulSet revisions hold: the pod template."""
    return {"spec": {"template": dict(template, **{"$patch": "replace"})}}
