"""Django's Tasks framework on this platform: `@task`s run as jobs.

    framework  django.tasks (Django 6) or the django-tasks backport (5.2), one import place
    options    JobTask: a task's max_attempts, timeout, backoff, concurrency, idempotency key
               and permanent exception types; `task`, the decorator that takes them everywhere
    backend    JobsBackend: enqueue in the caller's transaction, get_result, check
    registry   the tasks of JOB_TASK_MODULES as job handlers; the signals
    results    a job seen as a TaskResult
    checks     the backend's system checks

`TASKS = {"default": {"BACKEND": "jobs.task_backend.JobsBackend"}}` names the backend here.
"""

from jobs.task_backend.backend import JobsBackend, enqueue_many
from jobs.task_backend.options import JobTask, task
from jobs.task_backend.registry import task_attempt_finished

__all__ = ["JobTask", "JobsBackend", "enqueue_many", "task", "task_attempt_finished"]
