"""Django's Tasks framework, wherever it comes from: `django.tasks` (Django 6.0+) or the
`django-tasks` backport (Django 5.2). The two have the same classes under the same module
layout; only the name of the "invalid task" exception differs, and it is moving: Django 6
and the backport's main branch call it `InvalidTask`, the backport's 0.12 `InvalidTaskError`.
Both names are exported here, bound to whichever class the installed framework raises.
Everything of ours imports the framework from here, so a framework change stays here.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy reads the backport, which is what the main environment installs
    from django_tasks import signals, task_backends
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus, task
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist

    FRAMEWORK = "django_tasks"
else:
    try:
        from django.tasks import signals, task_backends
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus, task
        from django.tasks.exceptions import TaskResultDoesNotExist

        FRAMEWORK = "django.tasks"
    except ImportError:
        from django_tasks import signals, task_backends
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus, task
        from django_tasks.exceptions import TaskResultDoesNotExist

        FRAMEWORK = "django_tasks"


def invalid_task_class(exceptions: ModuleType) -> type[Exception]:
    """The framework's "invalid task" exception, under whichever of its names it has."""
    for name in ("InvalidTask", "InvalidTaskError"):
        found = getattr(exceptions, name, None)
        if isinstance(found, type) and issubclass(found, Exception):
            return found
    raise ImportError(f"{exceptions.__name__} has neither InvalidTask nor InvalidTaskError")


if not TYPE_CHECKING:
    InvalidTask = invalid_task_class(importlib.import_module(f"{FRAMEWORK}.exceptions"))
InvalidTaskError = InvalidTask  # the backport's 0.12 name: code written against it keeps working

# The framework's priority range and default (fixed by its API; its constants' names vary).
MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = -100, 100, 0

__all__ = [
    "DEFAULT_PRIORITY",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "BaseTaskBackend",
    "InvalidTask",
    "InvalidTaskError",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "signals",
    "task",
    "task_backends",
]
