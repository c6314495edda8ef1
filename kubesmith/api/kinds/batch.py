"""batch/v1 kinds: jobs and cron jobs."""
from __future__ import annotations

import re
from typing import Any

from kubesmith.api.kinds.apps import validate_workload_selector
from kubesmith.api.podspec import (
    container_images, container_names, default_pod_template, format_label_selector,
    validate_pod_template,
)
from kubesmith.api.registry import (
    AGE_COLUMN, Column, FieldError, ResourceType, dig, human_duration, parse_time, register,
    since,
)
from kubesmith.api.validation import (
    forbidden, immutable, invalid, not_supported, required, validate_enum, validate_non_negative,
    validate_positive, with_meta,
)

JOB_RESTART_POLICIES = ("OnFailure", "Never")
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
LEGACY_CONTROLLER_UID_LABEL = "controller-uid"
LEGACY_JOB_NAME_LABEL = "job-name"


_get = dig  # short local name: the column getters use it on every row


# --- jobs -----------------------------------------------------------------------------

def _default_job(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
        spec["parallelism"] = 1
    spec.setdefault("parallelism", 1)
    if spec.get("backoffLimit") is None:
        spec["backoffLimit"] = 2147483647 if spec.get("backoffLimitPerIndex") is not None else 6
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    if spec.get("podReplacementPolicy") is None:
        spec["podReplacementPolicy"] = "Failed" if spec.get("podFailurePolicy") \
            else "TerminatingOrFailed"
    for rule in _get(spec, "podFailurePolicy", "rules", default=[]):
        for pattern in (rule or {}).get("onPodConditions") or []:
            if isinstance(pattern, dict):
                pattern.setdefault("status", "True")
    template = spec.get("template")
    labels = _get(template, "metadata", "labels", default={})
    meta = obj.setdefault("metadata", {})
    if labels and not meta.get("labels"):
        meta["labels"] = dict(labels)
    default_pod_template(template)


def generate_job_selector(obj: dict) -> None:
    """Upstream's create-time selector: the job's uid, unless manualSelector is true."""
    spec = obj.setdefault("spec", {})
    if spec.get("manualSelector") is True:
        return
    meta = obj.get("metadata") or {}
    uid = meta.get("uid")
    if not uid:
        return
    template = spec.setdefault("template", {})
    labels = template.setdefault("metadata", {}).setdefault("labels", {})
    labels.setdefault(CONTROLLER_UID_LABEL, uid)
    labels.setdefault(JOB_NAME_LABEL, meta.get("name", ""))
    labels.setdefault(LEGACY_CONTROLLER_UID_LABEL, uid)
    labels.setdefault(LEGACY_JOB_NAME_LABEL, meta.get("name", ""))
    if spec.get("selector") is None:
        spec["selector"] = {"matchLabels": {CONTROLLER_UID_LABEL: uid}}


def validate_job_spec(spec: Any, path: str, selector_required: bool = True
                      ) -> list[FieldError]:
    errors: list[FieldError] = []
    if not isinstance(spec, dict):
        return [required(path, "")]
    for key in ("parallelism", "completions", "backoffLimit", "backoffLimitPerIndex",
                "maxFailedIndexes", "ttlSecondsAfterFinished"):
        errors.extend(validate_non_negative(spec.get(key), f"{path}.{key}"))
    errors.extend(validate_positive(spec.get("activeDeadlineSeconds"),
                                    f"{path}.activeDeadlineSeconds"))
    errors.extend(validate_enum(spec.get("completionMode"), f"{path}.completionMode",
                                ("NonIndexed", "Indexed")))
    if spec.get("completionMode") == "Indexed" and spec.get("completions") is None:
        errors.append(required(f"{path}.completions",
                               "when completion mode is Indexed"))
    errors.extend(validate_enum(spec.get("podReplacementPolicy"), f"{path}.podReplacementPolicy",
                                ("TerminatingOrFailed", "Failed")))
    if spec.get("manualSelector") is True or selector_required:
        if spec.get("selector") is None:
            errors.append(required(f"{path}.selector", ""))
        else:
            errors.extend(validate_workload_selector(spec, path))
    template = spec.get("template")
    if template is None:
        errors.append(required(f"{path}.template", ""))
    else:
        errors.extend(validate_pod_template(template, f"{path}.template"))
        policy = _get(template, "spec", "restartPolicy")
        if policy in (None, "", "Always"):
            errors.append(not_supported(f"{path}.template.spec.restartPolicy",
                                        policy or "Always", JOB_RESTART_POLICIES))
    return errors


@with_meta(namespaced=True)
def _validate_job(obj: dict, old: dict | None) -> list[FieldError]:
    errors = validate_job_spec(obj.get("spec"), "spec")
    if old is not None:
        spec, old_spec = obj.get("spec") or {}, old.get("spec") or {}
        for key in ("selector", "completionMode", "podFailurePolicy", "backoffLimitPerIndex"):
            if spec.get(key) != old_spec.get(key):
                errors.append(immutable(f"spec.{key}", spec.get(key)))
        if old_spec.get("completionMode") != "Indexed" and \
                spec.get("completions") != old_spec.get("completions"):
            errors.append(immutable("spec.completions", spec.get("completions")))
        if spec.get("template") != old_spec.get("template") and not old_spec.get("suspend"):
            old_template = dict(old_spec.get("template") or {})
            new_template = dict(spec.get("template") or {})
            if new_template != old_template:
                errors.append(invalid("spec.template", "<template>", "field is immutable"))
    return errors


def _has_condition(obj: dict, kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in _get(obj, "status", "conditions", default=[]))


def job_status(obj: dict) -> str:
    if _has_condition(obj, "Complete"):
        return "Complete"
    if _has_condition(obj, "Failed"):
        return "Failed"
    if _get(obj, "metadata", "deletionTimestamp"):
        return "Terminating"
    if _has_condition(obj, "Suspended"):
        return "Suspended"
    if _has_condition(obj, "FailureTarget"):
        return "FailureTarget"
    if _has_condition(obj, "SuccessCriteriaMet"):
        return "SuccessCriteriaMet"
    return "Running"


def job_completions(obj: dict) -> str:
    succeeded = _get(obj, "status", "succeeded", default=0)
    completions = _get(obj, "spec", "completions")
    if completions is not None:
        return f"{succeeded}/{completions}"
    parallelism = _get(obj, "spec", "parallelism", default=0)
    if parallelism > 1:
        return f"{succeeded}/1 of {parallelism}"
    return f"{succeeded}/1"


def job_duration(obj: dict) -> str:
    start = parse_time(_get(obj, "status", "startTime"))
    if start is None:
        return ""
    end = parse_time(_get(obj, "status", "completionTime"))
    if end is None:
        return since(_get(obj, "status", "startTime"))
    return human_duration((end - start).total_seconds())


JOBS = register(ResourceType(
    group="batch", version="v1", kind="Job", plural="jobs", namespaced=True,
    categories=("all",), subresources=("status",),
    columns=(
        Column("Status", "string", job_status, "The status of the job"),
        Column("Completions", "string", job_completions,
               "Succeeded pods out of the desired completions"),
        Column("Duration", "string", job_duration, "How long the job ran or has run"),
        AGE_COLUMN,
        Column("Containers", "string", lambda o: container_names(_get(o, "spec", "template")),
               "Names of each container in the template", priority=1),
        Column("Images", "string", lambda o: container_images(_get(o, "spec", "template")),
               "Images of each container in the template", priority=1),
        Column("Selector", "string", lambda o: format_label_selector(_get(o, "spec", "selector")),
               "Label selector of the job's pods", priority=1),
    ),
    field_selectors={"status.successful": lambda o: str(_get(o, "status", "succeeded",
                                                             default=0))},
    defaulter=_default_job, validator=_validate_job, prepare_create=generate_job_selector,
))


# --- cron jobs ------------------------------------------------------------------------

_SCHEDULE_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                    "@hourly")
_CRON_FIELD = re.compile(r"^(\*|\?|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?"
                         r"(,(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?)*$")


def schedule_problem(schedule: str) -> str | None:
    text = schedule.strip()
    if text.startswith(("TZ=", "CRON_TZ=")):
        return "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
    if text.startswith("@"):
        if text in _SCHEDULE_MACROS or text.startswith("@every "):
            return None
        return f"unrecognized descriptor: {text}"
    fields = text.split()
    if len(fields) != 5:
        return f"expected exactly 5 fields, found {len(fields)}: {text}"
    for part in fields:
        if not _CRON_FIELD.match(part):
            return f"failed to parse: {part}"
    return None


def _default_cron_job(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("concurrencyPolicy", "Allow")
    spec.setdefault("suspend", False)
    spec.setdefault("successfulJobsHistoryLimit", 3)
    spec.setdefault("failedJobsHistoryLimit", 1)
    job_template = spec.setdefault("jobTemplate", {})
    if isinstance(job_template, dict):
        default_pod_template(job_template.setdefault("spec", {}).get("template"))


@with_meta(namespaced=True)
def _validate_cron_job(obj: dict, old: dict | None) -> list[FieldError]:
    errors: list[FieldError] = []
    name = _get(obj, "metadata", "name", default="")
    if len(name) > 52:
        errors.append(invalid("metadata.name", name, "must be no more than 52 characters"))
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return errors + [required("spec", "")]
    schedule = spec.get("schedule")
    if not schedule:
        errors.append(required("spec.schedule", ""))
    else:
        problem = schedule_problem(schedule)
        if problem:
            errors.append(invalid("spec.schedule", schedule, problem))
    errors.extend(validate_enum(spec.get("concurrencyPolicy"), "spec.concurrencyPolicy",
                                ("Allow", "Forbid", "Replace"), True))
    for key in ("startingDeadlineSeconds", "successfulJobsHistoryLimit",
                "failedJobsHistoryLimit"):
        errors.extend(validate_non_negative(spec.get(key), f"spec.{key}"))
    job_template = spec.get("jobTemplate")
    if not isinstance(job_template, dict):
        errors.append(required("spec.jobTemplate", ""))
    else:
        errors.extend(validate_job_spec(job_template.get("spec"), "spec.jobTemplate.spec",
                                        selector_required=False))
        if _get(job_template, "spec", "manualSelector") is True:
            errors.append(forbidden("spec.jobTemplate.spec.manualSelector",
                                    "`manualSelector` is not allowed in cronjob templates"))
    return errors


def _last_schedule(obj: dict) -> str:
    value = _get(obj, "status", "lastScheduleTime")
    return since(value) if value else "<none>"


def _suspend(obj: dict) -> str:
    value = _get(obj, "spec", "suspend")
    if value is None:
        return "<unset>"
    return "true" if value else "false"


def _cron_template(obj: dict) -> Any:
    return _get(obj, "spec", "jobTemplate", "spec", "template")


CRON_JOBS = register(ResourceType(
    group="batch", version="v1", kind="CronJob", plural="cronjobs", namespaced=True,
    short_names=("cj",), categories=("all",), subresources=("status",),
    columns=(
        Column("Schedule", "string", lambda o: _get(o, "spec", "schedule", default=""),
               "The cron schedule"),
        Column("Timezone", "string", lambda o: _get(o, "spec", "timeZone") or "<none>",
               "The time zone of the schedule"),
        Column("Suspend", "boolean", _suspend, "Whether scheduling is suspended"),
        Column("Active", "integer", lambda o: len(_get(o, "status", "active", default=[])),
               "Number of running jobs"),
        Column("Last Schedule", "string", _last_schedule,
               "Time since a job was last scheduled"),
        AGE_COLUMN,
        Column("Containers", "string", lambda o: container_names(_cron_template(o)),
               "Names of each container in the template", priority=1),
        Column("Images", "string", lambda o: container_images(_cron_template(o)),
               "Images of each container in the template", priority=1),
        Column("Selector", "string",
               lambda o: format_label_selector(_get(o, "spec", "jobTemplate", "spec",
                                                    "selector")),
               "Label selector of the jobs' pods", priority=1),
    ),
    defaulter=_default_cron_job, validator=_validate_cron_job,
))
