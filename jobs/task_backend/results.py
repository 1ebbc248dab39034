"""A job seen as a Django task's `TaskResult`: its status, times, arguments, return value and
the errors of its failed attempts. Read by the backend's `get_result` and by the context a
running task receives.

    job status                     TaskResult status
    PENDING, QUEUED, RETRYING      READY       (not running now; will run)
    RUNNING                        RUNNING
    SUCCEEDED                      SUCCESSFUL  (return_value = the job's result)
    DEAD_LETTER                    FAILED      (errors: every failed attempt)
    CANCELLED                      FAILED      (the framework has no "cancelled"; the last
                                                error says JobCancelled)
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from jobs import archive
from jobs.handlers import JobCancelled
from jobs.models import TERMINAL_STATUSES, AttemptStatus, Job, JobAttempt, JobStatus
from jobs.task_backend.framework import MAX_PRIORITY, MIN_PRIORITY, Task, TaskError, TaskResult, TaskResultStatus
from jobs.task_backend.options import JobTask

STATUS = {
    JobStatus.PENDING: TaskResultStatus.READY,
    JobStatus.QUEUED: TaskResultStatus.READY,
    JobStatus.RETRYING: TaskResultStatus.READY,
    JobStatus.RUNNING: TaskResultStatus.RUNNING,
    JobStatus.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    JobStatus.DEAD_LETTER: TaskResultStatus.FAILED,
    JobStatus.CANCELLED: TaskResultStatus.FAILED,
}

# Attempts that ended without a Python exception of the task's own get a class that says how.
_ENDED_WITHOUT_EXCEPTION: dict[str, str] = {
    AttemptStatus.TIMED_OUT: "builtins.TimeoutError",
    AttemptStatus.LOST: f"{__name__}.WorkerLost",
    AttemptStatus.CANCELLED: f"{JobCancelled.__module__}.{JobCancelled.__qualname__}",
}
_FAILED = (AttemptStatus.FAILED, AttemptStatus.TIMED_OUT, AttemptStatus.LOST, AttemptStatus.CANCELLED)
# The line a traceback ends with names the exception: "pkg.mod.Error: message" ("Error" alone
# for builtins). The recorded error text starts with the bare class name.
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


def to_job_priority(priority: int) -> int:
    """The framework's -100..100 (default 0) -> our 0..9 (default 5). The sign is kept: any
    positive priority runs before the default, any negative one after it.

        p > 0: 5 + ceil(p / 25)    1..25 -> 6, 26..50 -> 7, 51..75 -> 8, 76..100 -> 9
        p < 0: 5 - ceil(-p / 20)   -1..-20 -> 4, -21..-40 -> 3, ..., -81..-100 -> 0
    """
    if priority > 0:
        return 5 + math.ceil(priority / 25)
    if priority < 0:
        return 5 - math.ceil(-priority / 20)
    return 5


def from_job_priority(priority: int) -> int:
    """The highest framework priority in the band of our `priority` (to_job_priority of it
    gives `priority` back)."""
    if priority > 5:
        return min(MAX_PRIORITY, (priority - 5) * 25)
    if priority < 5:
        return max(MIN_PRIORITY, (priority - 5) * 20)
    return 0


def as_enqueued(task: Task, job: Job) -> Task:
    """The task as this job was enqueued (the `.using()` copy, not the declared task): its
    queue, run_after, (band of) priority, and options. Permanent exception types stay the
    declared task's; those an enqueue added travel as paths in the payload."""
    priority = task.priority if to_job_priority(task.priority) == job.priority else from_job_priority(job.priority)
    enqueued = task.using(priority=priority, queue_name=job.queue, run_after=job.run_at)
    if not isinstance(enqueued, JobTask):
        return enqueued  # a plain framework Task: it has no options
    return replace(
        enqueued, max_attempts=job.max_attempts, timeout=job.timeout_seconds, backoff=job.backoff,
        concurrency_key=job.concurrency_key, concurrency_limit=job.concurrency_limit,
        rate_limit_key=job.rate_limit_key, idempotency_key=job.idempotency_key,
    )  # fmt: skip


class WorkerLost(Exception):
    """The class a TaskError names for an attempt whose worker died (its lease expired)."""


def exception_class_path(attempt: JobAttempt) -> str:
    """The failed attempt's exception class as an import path: the one the worker recorded
    from the exception, else (attempts recorded before it did) read back from its error text
    and traceback."""
    if attempt.error_class:
        return attempt.error_class
    if attempt.status in _ENDED_WITHOUT_EXCEPTION and not attempt.traceback:
        return _ENDED_WITHOUT_EXCEPTION[attempt.status]
    name = attempt.error.split(":", 1)[0].strip()
    for line in reversed(attempt.traceback.splitlines()):
        match = _EXCEPTION_LINE.match(line)
        if match and match.group(1).rsplit(".", 1)[-1] == name:
            path = match.group(1)
            return path if "." in path else f"builtins.{path}"
    return "builtins.Exception"


def task_error(attempt: JobAttempt) -> TaskError:
    # A traceback ends with the error's text; an attempt with none (timed out, lost) has
    # only its error text, which then stands in for it.
    return TaskError(exception_class_path=exception_class_path(attempt), traceback=attempt.traceback or attempt.error)


def call_arguments(payload: Any) -> tuple[list[Any], dict[str, Any]] | None:
    """The task's (args, kwargs) from a job's payload, or None when it is not of that shape."""
    if not isinstance(payload, dict):
        return None
    args, kwargs = payload.get("args", []), payload.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return None
    return args, kwargs


def from_job(job: Job, task: Task, attempts: Sequence[JobAttempt], *, backend: str) -> TaskResult:
    """The TaskResult of `job` (a job of `task`), given its attempt history in order."""
    args, kwargs = call_arguments(job.payload) or ([], {})
    errors = [task_error(a) for a in attempts if a.status in _FAILED]
    if job.status == JobStatus.CANCELLED and not (attempts and attempts[-1].status == AttemptStatus.CANCELLED):
        # Cancelled while waiting: no attempt says so, yet FAILED should come with a reason.
        errors.append(
            TaskError(
                exception_class_path=_ENDED_WITHOUT_EXCEPTION[AttemptStatus.CANCELLED],
                traceback=job.last_error or f"job {job.id} was cancelled",
            )
        )
    result: TaskResult = TaskResult(
        task=task,
        id=str(job.id),
        status=STATUS[JobStatus(job.status)],
        enqueued_at=job.created_at,
        started_at=attempts[0].started_at if attempts else job.started_at,
        finished_at=job.finished_at if job.status in TERMINAL_STATUSES else None,
        last_attempted_at=attempts[-1].started_at if attempts else job.started_at,
        args=args,
        kwargs=kwargs,
        backend=backend,
        errors=errors,
        worker_ids=[a.worker for a in attempts],
    )
    if job.status == JobStatus.SUCCEEDED:
        object.__setattr__(result, "_return_value", job.result)  # the framework's own way: it is frozen
    return result


def load(job_id: uuid.UUID | str, *, owner_id: int | None = None) -> tuple[Job, list[JobAttempt]] | None:
    """A job and its attempts in order (two indexed reads), or None; `owner_id` narrows to one
    owner. A job past retention is read back from the archive (ClickHouse), attempts and all."""
    jobs = Job.objects.filter(id=job_id)
    if owner_id is not None:
        jobs = jobs.filter(owner_id=owner_id)
    job = jobs.first()
    if job is None:
        archived = archive.get(job_id, owners=None if owner_id is None else [owner_id])
        return None if archived is None else (archived, list(archived.history.all()))
    return job, list(JobAttempt.objects.filter(job_id=job.id).order_by("attempt"))
