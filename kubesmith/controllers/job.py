"""Job: run pods until `completions` succeed, or give up (upstream's pkg/controller/job).

Per sync of one unfinished Job:
  * claim its pods (the selector the API server generated from the Job's uid: labels
    batch.kubernetes.io/controller-uid and batch.kubernetes.io/job-name come with the
    template);
  * count succeeded and failed pods; failures (or, with restartPolicy OnFailure, container
    restarts) past backoffLimit fail the Job with reason BackoffLimitExceeded; running
    longer than activeDeadlineSeconds fails it with DeadlineExceeded; either way the
    active pods are deleted;
  * enough successes complete it (condition Complete, completionTime);
  * otherwise keep min(parallelism, completions - succeeded) pods active (parallelism
    when completions is unset, until one succeeds), re-creating failed ones after
    upstream's backoff (10 s doubling, at most 6 min);
  * Indexed completion mode: one pod per index ("<job>-<index>-" with the
    batch.kubernetes.io/job-completion-index annotation and label, hostname
    "<job>-<index>"), status.completedIndexes;
  * spec.suspend: no active pods, condition Suspended.
Counts come from the pods themselves: finished pods are kept (upstream's finalizer-based
tracking for pods deleted before they are counted is not done).

TTLAfterFinishedController ("ttl-after-finished") deletes finished Jobs
ttlSecondsAfterFinished after their completion (or failure), dependents in the
foreground, as upstream's pkg/controller/ttlafterfinished.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import time

from kubesmith.client.informers import split_key
from kubesmith.client.rest import ApiError, is_not_found
from kubesmith.controllers import register
from kubesmith.controllers.common import (
    Expectations,
    Obj,
    QueueController,
    claim,
    controller_key,
    deletion_rank,
    get_condition,
    is_pod_active,
    is_pod_ready,
    is_terminating,
    meta,
    now_rfc3339,
    parse_time,
    pod_from_template,
    pod_phase,
    set_condition,
    slow_start_batches,
    unwrap,
    write_status,
)
from kubesmith.controllers.context import ControllerContext

log = logging.getLogger(__name__)

JOBS = "batch/v1 jobs"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
BACKOFF_BASE = 10.0
BACKOFF_MAX = 360.0


def is_finished(job: Obj) -> bool:
    status = job.get("status") or {}
    return any((get_condition(status, kind) or {}).get("status") == "True"
               for kind in ("Complete", "Failed"))


def pod_index(pod: Obj) -> int | None:
    value = (meta(pod).get("annotations") or {}).get(COMPLETION_INDEX)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def format_indexes(indexes: set[int]) -> str:
    """"0-2,4": upstream's status.completedIndexes."""
    parts, run = [], []
    for i in sorted(indexes):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [i]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


def _condition(kind: str, reason: str, message: str) -> Obj:
    now = now_rfc3339()
    return {"type": kind, "status": "True", "lastProbeTime": now, "lastTransitionTime": now,
            "reason": reason, "message": message}


@register("job")
class JobController(QueueController):
    queue_name = "job"

    def __init__(self, ctx: ControllerContext, clock=time.time):
        super().__init__()
        self.client = ctx.client
        self.clock = clock
        self.recorder = ctx.recorder("job-controller")
        self.expectations = Expectations()
        self.jobs = ctx.informers.informer(JOBS)
        self.pods = ctx.informers.informer("v1 pods")
        self.jobs.add_event_handler(on_add=self.enqueue,
                                    on_update=lambda old, new: self.enqueue(new),
                                    on_delete=self._job_deleted)
        self.pods.add_event_handler(on_add=self._pod_added,
                                    on_update=lambda old, new: self._pod_changed(new),
                                    on_delete=self._pod_deleted)
        # key -> (failures seen, when that number was first seen): the re-create backoff
        self._failures: dict[str, tuple[int, float]] = {}

    def _job_deleted(self, obj) -> None:
        key = f"{meta(unwrap(obj)).get('namespace')}/{meta(unwrap(obj)).get('name')}"
        self.expectations.forget(key)
        self._failures.pop(key, None)

    def _owner_key(self, pod: Obj) -> str | None:
        return controller_key(pod, "Job")

    def _pod_added(self, pod: Obj) -> None:
        key = self._owner_key(pod)
        if key is not None:
            self.expectations.creation_observed(key)
            self.queue.add(key)

    def _pod_changed(self, pod: Obj) -> None:
        key = self._owner_key(pod)
        if key is not None:
            self.queue.add(key)

    def _pod_deleted(self, obj) -> None:
        pod = unwrap(obj)
        key = self._owner_key(pod)
        if key is not None:
            self.expectations.deletion_observed(key, meta(pod).get("uid"))
            self.queue.add(key)

    # --- sync -------------------------------------------------------------------------

    async def sync(self, key: str) -> float | None:
        namespace, name = split_key(key)
        cached = self.jobs.lister.get(name, namespace)
        if cached is None or is_finished(cached) or is_terminating(cached):
            return None
        job = copy.deepcopy(cached)
        spec = job.get("spec") or {}
        candidates = self.pods.lister.list(namespace)
        pods = await claim(self.client, "v1 pods", job, spec.get("selector"), candidates)
        active = [p for p in pods if is_pod_active(p)]
        succeeded_pods = [p for p in pods if pod_phase(p) == "Succeeded"]
        failed = sum(1 for p in pods if pod_phase(p) == "Failed")
        indexed = spec.get("completionMode") == "Indexed"
        completions = spec.get("completions")
        now = self.clock()
        old_status = job.get("status") or {}
        status: Obj = {"conditions": list(old_status.get("conditions") or []),
                       "startTime": old_status.get("startTime"),
                       "completionTime": old_status.get("completionTime")}
        suspended = bool(spec.get("suspend"))
        if not suspended and not status["startTime"]:
            status["startTime"] = now_rfc3339(lambda: now)
        if indexed:
            done = {i for i in map(pod_index, succeeded_pods)
                    if i is not None and i < (completions or 0)}
            succeeded = len(done)
        else:
            done = set()
            succeeded = len(succeeded_pods)

        finished_reason = None
        restarts = 0
        if (spec.get("template") or {}).get("spec", {}).get("restartPolicy") == "OnFailure":
            restarts = sum(int(s.get("restartCount") or 0) for p in active
                           for s in (p.get("status") or {}).get("containerStatuses") or [])
        backoff_limit = spec.get("backoffLimit", 6)
        started = parse_time(status["startTime"])
        deadline = spec.get("activeDeadlineSeconds")
        requeue: float | None = None
        if failed + restarts > backoff_limit:
            finished_reason = ("BackoffLimitExceeded",
                               "Job has reached the specified backoff limit")
        elif deadline is not None and started is not None and not suspended:
            if now - started >= deadline:
                finished_reason = ("DeadlineExceeded",
                                   "Job was active longer than specified deadline")
            else:
                requeue = started + deadline - now

        if finished_reason is not None:
            await self._delete_pods(key, job, active)
            active = []
            set_condition(status, _condition("FailureTarget", *finished_reason))
            set_condition(status, _condition("Failed", *finished_reason))
            self.recorder.emit(job, "Warning", finished_reason[0], finished_reason[1])
            requeue = None
        else:
            complete = (succeeded >= completions if completions is not None
                        else succeeded > 0 and not active)
            if complete:
                await self._delete_pods(key, job, active)
                active = []
                set_condition(status, _condition("SuccessCriteriaMet", "CompletionsReached",
                                                 "Reached expected number of succeeded pods"))
                set_condition(status, _condition("Complete", "CompletionsReached",
                                                 "Reached expected number of succeeded pods"))
                status["completionTime"] = now_rfc3339(lambda: now)
                self.recorder.emit(job, "Normal", "Completed", "Job completed")
                requeue = None
            elif suspended:
                await self._delete_pods(key, job, active)
                active = []
                if (get_condition(status, "Suspended") or {}).get("status") != "True":
                    set_condition(status, _condition("Suspended", "JobSuspended",
                                                     "Job suspended"))
                    self.recorder.emit(job, "Normal", "Suspended", "Job suspended")
            elif self.expectations.satisfied(key):
                if (get_condition(status, "Suspended") or {}).get("status") == "True":
                    set_condition(status, dict(_condition("Suspended", "JobResumed",
                                                          "Job resumed"), status="False"))
                    self.recorder.emit(job, "Normal", "Resumed", "Job resumed")
                wait = self._backoff_left(key, failed, now)
                if wait > 0:
                    requeue = min(requeue or wait, wait)
                else:
                    active = await self._manage(key, job, active, succeeded, done)

        status.update({
            "active": len(active), "succeeded": succeeded, "failed": failed,
            "ready": sum(1 for p in active if is_pod_ready(p)),
        })
        if indexed:
            status["completedIndexes"] = format_indexes(done) or None
        await self._update_status(job, old_status, status)
        return requeue

    def _backoff_left(self, key: str, failed: int, now: float) -> float:
        """Seconds still to wait before replacing failed pods."""
        if failed == 0:
            self._failures.pop(key, None)
            return 0.0
        seen = self._failures.get(key)
        if seen is None or seen[0] != failed:
            seen = (failed, now)
            self._failures[key] = seen
        delay = min(BACKOFF_BASE * 2 ** (failed - 1), BACKOFF_MAX)
        return seen[1] + delay - now

    async def _manage(self, key: str, job: Obj, active: list[Obj], succeeded: int,
                      done: set[int]) -> list[Obj]:
        spec = job.get("spec") or {}
        parallelism = spec.get("parallelism", 1)
        completions = spec.get("completions")
        if completions is None:
            wanted = len(active) if succeeded > 0 else parallelism
        else:
            wanted = max(min(parallelism, completions - succeeded), 0)
        if len(active) > wanted:
            surplus = sorted(active, key=deletion_rank)[:len(active) - wanted]
            await self._delete_pods(key, job, surplus)
            return [p for p in active if p not in surplus]
        missing = wanted - len(active)
        if missing <= 0:
            return active
        indexes: list[int | None] = [None] * missing
        if spec.get("completionMode") == "Indexed":
            busy = done | {i for i in map(pod_index, active) if i is not None}
            indexes = [i for i in range(completions or 0) if i not in busy][:missing]
        self.expectations.expect(key, adds=len(indexes))
        created: list[Obj] = []
        queue = list(indexes)
        for batch in slow_start_batches(len(queue)):
            chunk, queue = queue[:batch], queue[batch:]
            results = await asyncio.gather(*(self._create_pod(job, i) for i in chunk),
                                           return_exceptions=True)
            failure = None
            for result in results:
                if isinstance(result, BaseException):
                    self.expectations.creation_failed(key)
                    failure = failure or result
                else:
                    created.append(result)
            if failure is not None:
                for _ in queue:
                    self.expectations.creation_failed(key)
                raise failure
        return active + created

    async def _create_pod(self, job: Obj, index: int | None) -> Obj:
        template = copy.deepcopy((job.get("spec") or {}).get("template") or {})
        name = meta(job)["name"]
        if index is not None:
            template_meta = template.setdefault("metadata", {})
            template_meta.setdefault("annotations", {})[COMPLETION_INDEX] = str(index)
            template_meta.setdefault("labels", {})[COMPLETION_INDEX] = str(index)
            template.setdefault("spec", {}).setdefault("hostname", f"{name}-{index}")
        pod = pod_from_template(template, job, generate_name=(
            f"{name}-{index}-" if index is not None else f"{name}-"))
        try:
            created = await self.client.create("v1 pods", pod, meta(job)["namespace"])
        except ApiError as exc:
            self.recorder.emit(job, "Warning", "FailedCreate", f"Error creating: {exc}")
            raise
        self.recorder.emit(job, "Normal", "SuccessfulCreate",
                           f"Created pod: {meta(created)['name']}")
        return created

    async def _delete_pods(self, key: str, job: Obj, pods: list[Obj]) -> None:
        if not pods:
            return
        self.expectations.expect(key, deletes=len(pods), uids=[meta(p)["uid"] for p in pods])

        async def delete(pod: Obj) -> None:
            try:
                await self.client.delete("v1 pods", meta(pod)["name"], meta(pod)["namespace"],
                                         preconditions={"uid": meta(pod)["uid"]})
            except ApiError as exc:
                self.expectations.deletion_observed(key, meta(pod)["uid"])
                if not is_not_found(exc) and exc.code != 409:
                    raise
                return
            self.recorder.emit(job, "Normal", "SuccessfulDelete",
                               f"Deleted pod: {meta(pod)['name']}")

        results = await asyncio.gather(*(delete(p) for p in pods), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _update_status(self, job: Obj, old: Obj, new: Obj) -> None:
        def comparable(status: Obj) -> Obj:
            out = {k: status.get(k) or None for k in new if k != "conditions"}
            out["conditions"] = sorted((c.get("type"), c.get("status"), c.get("reason"))
                                       for c in status.get("conditions") or [])
            return out
        if comparable(old) == comparable(new):
            return
        try:
            await write_status(self.client, JOBS, job, new)
        except ApiError as exc:
            if not is_not_found(exc):
                raise


def finished_at(job: Obj) -> float | None:
    """When a finished Job finished: its Complete or Failed condition's transition."""
    status = job.get("status") or {}
    for kind in ("Complete", "Failed"):
        condition = get_condition(status, kind)
        if (condition or {}).get("status") == "True":
            return parse_time(condition.get("lastTransitionTime")) or \
                parse_time(status.get("completionTime"))
    return None


@register("ttl-after-finished")
class TTLAfterFinishedController(QueueController):
    queue_name = "ttl_jobs_to_delete"

    def __init__(self, ctx: ControllerContext, clock=time.time):
        super().__init__()
        self.client = ctx.client
        self.clock = clock
        self.jobs = ctx.informers.informer(JOBS)
        self.jobs.add_event_handler(on_add=self._maybe_enqueue,
                                    on_update=lambda old, new: self._maybe_enqueue(new))

    def _maybe_enqueue(self, job: Obj) -> None:
        if (job.get("spec") or {}).get("ttlSecondsAfterFinished") is not None \
                and is_finished(job) and not is_terminating(job):
            self.enqueue(job)

    async def sync(self, key: str) -> float | None:
        namespace, name = split_key(key)
        job = self.jobs.lister.get(name, namespace)
        if job is None or is_terminating(job):
            return None
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        done = finished_at(job)
        if ttl is None or done is None:
            return None
        left = done + ttl - self.clock()
        if left > 0:
            return left
        # Read it fresh: the TTL may have been changed or removed meanwhile.
        try:
            fresh = await self.client.get(JOBS, name, namespace)
        except ApiError as exc:
            if is_not_found(exc):
                return None
            raise
        if (fresh.get("spec") or {}).get("ttlSecondsAfterFinished") != ttl:
            self.enqueue(fresh)
            return None
        try:
            await self.client.delete(JOBS, name, namespace, propagation_policy="Foreground",
                                     preconditions={"uid": meta(job)["uid"],
                                                    "resourceVersion": meta(fresh)[
                                                        "resourceVersion"]})
        except ApiError as exc:
            if not is_not_found(exc) and exc.code != 409:
                raise
        return None
