"""System checks of the Django Tasks backend: run by `manage.py check` (and before
`migrate`, `runserver`...) through the framework's own check, which asks each backend's
`check()`; `jobs.checks` adds the one the framework cannot make when it is not installed.

    orchestration.E101  a module of JOB_TASK_MODULES does not import (the error, as it was raised)
    orchestration.E102  a task's queue is not declared in QUEUES, or not one of the backend's QUEUES
    orchestration.W103  no worker consumes a task's queue (it is not in WORKER_QUEUES)
    orchestration.E104  the backend's OWNER account does not exist (with `check --database default`)

A check that reads the database runs only when asked to (`--database`), as Django's own do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import checks

from config import queues
from jobs.task_backend import registry

if TYPE_CHECKING:
    from jobs.task_backend.backend import JobsBackend


def backend_problems(backend: JobsBackend, *, databases: Sequence[str] | None) -> Iterable[checks.CheckMessage]:
    for module, error in sorted(registry.IMPORT_ERRORS.items()):
        yield checks.Error(
            f"JOB_TASK_MODULES: module {module!r} does not import: {error}",
            hint="Every role imports these modules at start; a worker without them cannot run their tasks.",
            obj=f"TASKS[{backend.alias!r}]",
            id="orchestration.E101",
        )
    consumed = set(settings.WORKER_QUEUES)
    for task in registry.tasks():
        if task.backend != backend.alias:
            continue
        if problem := queues.problem(task.queue_name, dict.fromkeys(backend.queues)):
            yield checks.Error(
                f"task {task.module_path!r}: {problem}",
                hint="Declare the queue in QUEUES (and in the backend's QUEUES when it names some).",
                obj=task.module_path,
                id="orchestration.E102",
            )
        elif task.queue_name not in consumed:
            yield checks.Warning(
                f"task {task.module_path!r} uses queue {task.queue_name!r}, which no worker consumes "
                f"(WORKER_QUEUES is {sorted(consumed)}): its jobs would wait for ever",
                hint="Add the queue to WORKER_QUEUES of the workers that should run it.",
                obj=task.module_path,
                id="orchestration.W103",
            )
    if databases and "default" in databases:
        yield from _owner_problems(backend)


def _owner_problems(backend: JobsBackend) -> Iterable[checks.CheckMessage]:
    from jobs.task_backend.backend import DEFAULT_OWNER

    if backend.owner == DEFAULT_OWNER:
        return  # made on first use
    field = get_user_model().USERNAME_FIELD
    if not get_user_model()._default_manager.filter(**{field: backend.owner}).exists():
        yield checks.Error(
            f"the owner of {backend.alias!r} tasks, user {backend.owner!r}, does not exist",
            hint=f"Create it, or leave OWNER (TASKS_OWNER) unset to use the login-less {DEFAULT_OWNER!r} account.",
            obj=f"TASKS[{backend.alias!r}]['OPTIONS']['OWNER']",
            id="orchestration.E104",
        )
