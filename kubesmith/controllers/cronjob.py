"""CronJob: a Job from the template at each time the schedule names (upstream's
pkg/controller/cronjob, the v2 controller).

The schedule is standard cron (`Schedule`): five fields — minute, hour, day of month,
month, day of week — each "*", a number, a name (jan..dec, sun..sat), a range "a-b",
a step "*/n" or "a-b/n", or a comma list of these; 7 is Sunday as well as 0; when both
day fields are restricted a day matching either runs (as robfig/cron, which upstream
uses); the descriptors @yearly, @annually, @monthly, @weekly, @daily, @midnight,
@hourly, and "@every <duration>". Times are in spec.timeZone when given, UTC otherwise.

Per sync: status.active follows the CronJob's Jobs (finished ones leave it, and
lastSuccessfulTime records the last completion); unless suspended, the most recent
schedule time not yet run (after lastScheduleTime, or creation, and within
startingDeadlineSeconds) gets a Job "<cronjob>-<minutes since the epoch>" — except
under concurrencyPolicy Forbid while one is active; Replace deletes the active ones
first; finished Jobs beyond successfulJobsHistoryLimit / failedJobsHistoryLimit are
deleted; and the CronJob is looked at again at the next schedule time. The clock is a
constructor argument so the due computation can be tested without waiting.
"""
from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Callable

from kubesmith.client.informers import split_key
from kubesmith.client.rest import ApiError, is_already_exists, is_not_found
from kubesmith.controllers import register
from kubesmith.controllers.common import (
    Obj,
    QueueController,
    controller_key,
    get_condition,
    is_controlled_by,
    meta,
    owner_reference,
    parse_time,
    unwrap,
    write_status,
)
from kubesmith.controllers.context import ControllerContext

log = logging.getLogger(__name__)

CRONJOBS = "batch/v1 cronjobs"
JOBS = "batch/v1 jobs"
SCHEDULED_TIMESTAMP = "batch.kubernetes.io/cronjob-scheduled-timestamp"
MAX_MISSED = 100    # upstream warns (TooManyMissedTimes) past 100 missed start times

_MONTHS = {name: i + 1 for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
_DAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_DESCRIPTORS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
                "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
                "@hourly": "0 * * * *"}


class ScheduleError(ValueError):
    pass


def _parse_field(text: str, low: int, high: int, names: dict[str, int]) -> tuple[set[int], bool]:
    """(values, restricted) of one field; restricted is False for a field starting "*"."""
    values: set[int] = set()
    restricted = not (text.startswith("*") or text.startswith("?"))

    def number(token: str) -> int:
        token = token.lower()
        if token in names:
            return names[token]
        if not token.isdigit():
            raise ScheduleError(f"failed to parse: {token!r}")
        return int(token)

    for part in text.split(","):
        if not part:
            raise ScheduleError(f"empty list item in {text!r}")
        span, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"bad step in {part!r}")
            step = int(step_text)
        if span in ("*", "?"):
            start, end = low, high
        elif "-" in span:
            a, _, b = span.partition("-")
            start, end = number(a), number(b)
        else:
            start = number(span)
            end = high if step_text else start
        if start < low or end > high or start > end:
            raise ScheduleError(f"{part!r} is beyond {low}-{high}")
        values.update(range(start, end + 1, step))
    return values, restricted


class Schedule:
    """A parsed cron schedule; next(after) is the first time after `after` it names."""

    def __init__(self, text: str):
        spec = text.strip()
        spec = _DESCRIPTORS.get(spec, spec)
        if spec.startswith("@"):
            raise ScheduleError(f"unrecognized descriptor: {spec}")
        fields = spec.split()
        if len(fields) != 5:
            raise ScheduleError(f"expected exactly 5 fields, found {len(fields)}: {text}")
        self.minutes, _ = _parse_field(fields[0], 0, 59, {})
        self.hours, _ = _parse_field(fields[1], 0, 23, {})
        self.days, self.days_restricted = _parse_field(fields[2], 1, 31, {})
        self.months, _ = _parse_field(fields[3], 1, 12, _MONTHS)
        weekdays, self.weekdays_restricted = _parse_field(fields[4], 0, 7, _DAYS)
        self.weekdays = {d % 7 for d in weekdays}

    def _day_matches(self, when: datetime) -> bool:
        dom = when.day in self.days
        dow = (when.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow
        return dom and dow

    def next(self, after: datetime) -> datetime | None:
        """The first matching minute strictly after `after` (None within 5 years)."""
        when = (after + timedelta(minutes=1)).replace(second=0, microsecond=0)
        limit = after + timedelta(days=366 * 5)
        while when <= limit:
            if when.month not in self.months:
                month = when.month + 1
                year = when.year + (month > 12)
                when = when.replace(year=year, month=(month - 1) % 12 + 1, day=1, hour=0,
                                    minute=0)
                continue
            if not self._day_matches(when):
                when = (when + timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if when.hour not in self.hours:
                when = (when + timedelta(hours=1)).replace(minute=0)
                continue
            if when.minute not in self.minutes:
                when += timedelta(minutes=1)
                continue
            return when
        return None


_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


class EverySchedule:
    """"@every <duration>" (a Go duration: 1h30m, 5m, 90s): a fixed interval, whole
    seconds, as robfig/cron's ConstantDelaySchedule."""

    def __init__(self, text: str):
        duration = text.strip()[len("@every"):].strip()
        parts = _DURATION.findall(duration)
        if not parts or "".join(n + u for n, u in parts) != duration:
            raise ScheduleError(f"failed to parse duration {duration!r}")
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
        self.delay = timedelta(seconds=max(int(seconds), 1))

    def next(self, after: datetime) -> datetime | None:
        return after.replace(microsecond=0) + self.delay


def parse_schedule(text: str) -> Schedule | EverySchedule:
    if text.strip().startswith("@every"):
        return EverySchedule(text)
    return Schedule(text)


def _zone(name: str | None) -> tzinfo:
    if not name:
        return timezone.utc
    from zoneinfo import ZoneInfo
    return ZoneInfo(name)


def most_recent_due(schedule: Schedule | EverySchedule, earliest: float, now: float, zone: tzinfo = timezone.utc
                    ) -> tuple[float | None, int, float | None]:
    """(the latest schedule time in (earliest, now], how many there were, the next one
    after now) — upstream's mostRecentScheduleTime, in seconds since the epoch."""
    when = datetime.fromtimestamp(earliest, zone)
    latest, missed = None, 0
    while True:
        upcoming = schedule.next(when)
        if upcoming is None:
            return latest, missed, None
        if upcoming.timestamp() > now:
            return latest, missed, upcoming.timestamp()
        latest, missed, when = upcoming.timestamp(), missed + 1, upcoming
        if missed == MAX_MISSED + 1 and when.timestamp() < now - 8 * 86400:
            # A long gap: only the latest time matters, and the count is "too many"
            # already; skip ahead (a week and a day holds every weekly pattern).
            when = datetime.fromtimestamp(now - 8 * 86400, zone)


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_finished(job: Obj) -> str | None:
    """"Complete" or "Failed" when the Job is finished."""
    status = job.get("status") or {}
    for kind in ("Complete", "Failed"):
        if (get_condition(status, kind) or {}).get("status") == "True":
            return kind
    return None


def job_name(cronjob: Obj, scheduled: float) -> str:
    return f"{meta(cronjob)['name']}-{int(scheduled // 60)}"


@register("cronjob")
class CronJobController(QueueController):
    queue_name = "cronjob"

    def __init__(self, ctx: ControllerContext, clock: Callable[[], float] = time.time):
        super().__init__()
        self.client = ctx.client
        self.clock = clock
        self.recorder = ctx.recorder("cronjob-controller")
        self.cronjobs = ctx.informers.informer(CRONJOBS)
        self.jobs = ctx.informers.informer(JOBS)
        self.cronjobs.add_event_handler(on_add=self.enqueue,
                                        on_update=lambda old, new: self.enqueue(new))
        self.jobs.add_event_handler(on_add=self._job_changed,
                                    on_update=lambda old, new: self._job_changed(new),
                                    on_delete=lambda obj: self._job_changed(unwrap(obj)))

    def _job_changed(self, job: Obj) -> None:
        key = controller_key(job, "CronJob")
        if key is not None:
            self.queue.add(key)

    async def sync(self, key: str) -> float | None:
        namespace, name = split_key(key)
        cronjob = self.cronjobs.lister.get(name, namespace)
        if cronjob is None:
            return None
        jobs = [j for j in self.jobs.lister.list(namespace) if is_controlled_by(j, cronjob)]
        status = dict(cronjob.get("status") or {})
        old_status = dict(status)
        await self._track_active(cronjob, jobs, status)
        requeue: float | None = None
        if not meta(cronjob).get("deletionTimestamp"):
            requeue = await self._maybe_start(cronjob, jobs, status)
            await self._cleanup(cronjob, jobs)
        if status != old_status:
            try:
                await write_status(self.client, CRONJOBS, cronjob, {
                    key: status.get(key) for key in ("active", "lastScheduleTime",
                                                     "lastSuccessfulTime")})
            except ApiError as exc:
                if not is_not_found(exc):
                    raise
        return requeue

    async def _track_active(self, cronjob: Obj, jobs: list[Obj], status: Obj) -> None:
        by_uid = {meta(j)["uid"]: j for j in jobs}
        active = []
        for ref in status.get("active") or []:
            job = by_uid.get(ref.get("uid"))
            if job is None:
                # The cache may lag behind a Job just made: ask before dropping it.
                try:
                    job = await self.client.get(JOBS, ref.get("name", ""),
                                                meta(cronjob)["namespace"])
                except ApiError as exc:
                    if not is_not_found(exc):
                        raise
                    self.recorder.emit(cronjob, "Normal", "MissingJob",
                                       f"Active job went missing: {ref.get('name')}")
                    continue
                if meta(job).get("uid") != ref.get("uid"):
                    continue
            if job_finished(job) is None:
                active.append(ref)
        known = {ref.get("uid") for ref in active}
        for job in jobs:
            finished = job_finished(job)
            if finished is None and meta(job)["uid"] not in known:
                active.append(_job_reference(job))
            if finished == "Complete":
                done = (job.get("status") or {}).get("completionTime")
                last = status.get("lastSuccessfulTime")
                if done and (not last or parse_time(done) > (parse_time(last) or 0)):
                    status["lastSuccessfulTime"] = done
                if any(r.get("uid") == meta(job)["uid"] for r in status.get("active") or []):
                    self.recorder.emit(cronjob, "Normal", "SawCompletedJob",
                                       f"Saw completed job: {meta(job)['name']}, "
                                       f"status: {finished}")
        status["active"] = active

    async def _maybe_start(self, cronjob: Obj, jobs: list[Obj], status: Obj) -> float | None:
        spec = cronjob.get("spec") or {}
        now = self.clock()
        try:
            schedule = parse_schedule(spec.get("schedule", ""))
            zone = _zone(spec.get("timeZone"))
        except (ScheduleError, ValueError, KeyError) as exc:
            self.recorder.emit(cronjob, "Warning", "UnparseableSchedule",
                               f"unparseable schedule: {spec.get('schedule')!r} : {exc}")
            return None
        if spec.get("suspend"):
            return None
        earliest = parse_time(status.get("lastScheduleTime")) or \
            parse_time(meta(cronjob).get("creationTimestamp")) or now
        deadline = spec.get("startingDeadlineSeconds")
        if deadline is not None:
            earliest = max(earliest, now - deadline)
        due, missed, upcoming = most_recent_due(schedule, earliest, now, zone)
        requeue = (upcoming - now + 0.1) if upcoming is not None else None
        if due is None:
            return requeue
        if missed > MAX_MISSED:
            self.recorder.emit(cronjob, "Warning", "TooManyMissedTimes",
                               f"too many missed start times: {missed}. Set or decrease "
                               ".spec.startingDeadlineSeconds or check clock skew")
        if deadline is not None and due + deadline < now:
            self.recorder.emit(cronjob, "Warning", "MissSchedule",
                               f"Missed scheduled time to start a job: {_rfc3339(due)}")
            return requeue
        name = job_name(cronjob, due)
        if any(meta(j)["name"] == name for j in jobs) or any(
                r.get("name") == name for r in status.get("active") or []):
            return requeue
        policy = spec.get("concurrencyPolicy", "Allow")
        if policy == "Forbid" and status.get("active"):
            self.recorder.emit(cronjob, "Normal", "JobAlreadyActive",
                               "Not starting job because prior execution is running and "
                               "concurrency policy is Forbid")
            return requeue
        if policy == "Replace":
            for ref in list(status.get("active") or []):
                try:
                    await self.client.delete(JOBS, ref["name"], meta(cronjob)["namespace"],
                                             propagation_policy="Background")
                except ApiError as exc:
                    if not is_not_found(exc):
                        raise
                self.recorder.emit(cronjob, "Normal", "SuccessfulDelete",
                                   f"Deleted job {ref['name']}")
            status["active"] = []
        job = await self._create_job(cronjob, name, due)
        if job is not None:
            status["active"] = list(status.get("active") or []) + [_job_reference(job)]
        status["lastScheduleTime"] = _rfc3339(due)
        return requeue

    async def _create_job(self, cronjob: Obj, name: str, due: float) -> Obj | None:
        template = (cronjob.get("spec") or {}).get("jobTemplate") or {}
        template_meta = template.get("metadata") or {}
        body = {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "namespace": meta(cronjob)["namespace"],
                             "labels": dict(template_meta.get("labels") or {}),
                             "annotations": dict(template_meta.get("annotations") or {},
                                                 **{SCHEDULED_TIMESTAMP: _rfc3339(due)}),
                             "ownerReferences": [owner_reference(cronjob)]},
                "spec": template.get("spec") or {}}
        try:
            job = await self.client.create(JOBS, body, meta(cronjob)["namespace"])
        except ApiError as exc:
            if is_already_exists(exc):
                return None
            self.recorder.emit(cronjob, "Warning", "FailedCreate",
                               f"Error creating job: {exc.message}")
            raise
        self.recorder.emit(cronjob, "Normal", "SuccessfulCreate", f"Created job {name}")
        return job

    async def _cleanup(self, cronjob: Obj, jobs: list[Obj]) -> None:
        spec = cronjob.get("spec") or {}
        for kind, limit in (("Complete", spec.get("successfulJobsHistoryLimit")),
                            ("Failed", spec.get("failedJobsHistoryLimit"))):
            if limit is None:
                continue
            finished = sorted((j for j in jobs if job_finished(j) == kind),
                              key=lambda j: ((j.get("status") or {}).get("startTime")
                                             or meta(j).get("creationTimestamp") or ""))
            for job in finished[:max(len(finished) - limit, 0)]:
                try:
                    await self.client.delete(JOBS, meta(job)["name"], meta(job)["namespace"],
                                             propagation_policy="Background")
                except ApiError as exc:
                    if not is_not_found(exc):
                        raise
                    continue
                self.recorder.emit(cronjob, "Normal", "SuccessfulDelete",
                                   f"Deleted job {meta(job)['name']}")


def _job_reference(job: Obj) -> Obj:
    return {"kind": "Job", "namespace": meta(job)["namespace"], "name": meta(job)["name"],
            "uid": meta(job)["uid"], "apiVersion": "batch/v1",
            "resourceVersion": meta(job).get("resourceVersion", "")}
