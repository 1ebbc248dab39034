"""Django tasks as job handlers: how a worker runs a job whose `type` is a task's import path.

Modules listed in `settings.JOB_TASK_MODULES` are imported at start-up in every role (like
`JOB_HANDLER_MODULES`); each `Task` defined in them is registered under its `module_path`
with a handler that calls it. Nothing else is ever imported: a job's `type` is only a key
into this registry, so a type chosen by an API user (`os.system`) can name nothing to run.

The handler takes the payload `{"args": [...], "kwargs": {...}}` the backend wrote (anything
else is a PermanentError: retrying cannot fix it), gives a task that `takes_context` a
`TaskContext` whose `task_result` is the job as `get_result` would show it (running, with
its attempts so far), runs an `async def` task in its own event loop, and sends the
framework's `task_started` / `task_finished` signals around each attempt.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import traceback
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from django.conf import settings
from django.utils import timezone

from jobs import handlers, task_results
from jobs.handlers import Handler, JobContext, PermanentError
from jobs.task_api import Task, TaskContext, TaskError, TaskResult, TaskResultStatus, signals

logger = logging.getLogger("jobs.tasks")

_TASKS: dict[str, Task] = {}


def get_task(module_path: str) -> Task | None:
    return _TASKS.get(module_path)


def is_task_module(module: str) -> bool:
    return module in settings.JOB_TASK_MODULES


def load_task_modules(modules: Iterable[str] | None = None) -> None:
    """Import each module (default: JOB_TASK_MODULES) and register the tasks it defines.
    Safe to call again: tests load their own task modules this way at run time."""
    for name in settings.JOB_TASK_MODULES if modules is None else modules:
        register_module(importlib.import_module(name))


def register_module(module: ModuleType) -> list[Task]:
    """Register every Task defined in `module` (not those it merely imports)."""
    found = [
        value for value in vars(module).values() if isinstance(value, Task) and value.func.__module__ == module.__name__
    ]
    for task in found:
        register_task(task)
    return found


def register_task(task: Task) -> None:
    name = task.module_path
    existing = _TASKS.get(name)
    if existing is not None:
        if existing.func is not task.func:
            raise ValueError(f"task {name!r} is already registered for {existing.func!r}")
        return
    _TASKS[name] = task
    handlers.register(name, _handler_for(task), internal=True)


def _handler_for(task: Task) -> Handler:
    def run_task(payload: dict[str, Any], ctx: JobContext) -> Any:
        return run(task, payload, ctx)

    run_task.__qualname__ = f"run_task[{task.module_path}]"
    return run_task


def run(task: Task, payload: dict[str, Any], ctx: JobContext) -> Any:
    """One attempt of `task`: what a worker's handler call does."""
    call = task_results.call_arguments(payload)
    if call is None:
        raise PermanentError(
            f"the payload of task {task.module_path!r} must be {{'args': [...], 'kwargs': {{...}}}}; "
            f"got {_shape(payload)}"
        )
    args, kwargs = call
    result = _running_result(task, ctx)
    signals.task_started.send(type(task.get_backend()), task_result=result)
    try:
        if task.takes_context:
            value = _call(task, TaskContext(task_result=result), *args, **kwargs)
        else:
            value = _call(task, *args, **kwargs)
    except BaseException as exc:
        try:
            _finished(result, TaskResultStatus.FAILED, error=exc)
        except Exception:  # a receiver's own failure must not replace the task's
            logger.exception("task.finished_signal_failed", extra={"task": task.module_path})
        raise
    _finished(result, TaskResultStatus.SUCCESSFUL, value=value)
    return value


def _call(task: Task, *args: Any, **kwargs: Any) -> Any:
    if inspect.iscoroutinefunction(task.func):
        # A loop of its own in this thread: the worker's timeout (SIGALRM in this thread)
        # interrupts it, and asyncio.run cancels what the task left running.
        return asyncio.run(task.func(*args, **kwargs))
    return task.func(*args, **kwargs)


def _running_result(task: Task, ctx: JobContext) -> TaskResult:
    """The job as `get_result` shows it now (RUNNING, with this attempt), or, if its row is
    gone, a minimal one: the task still runs, as any handler would."""
    loaded = task_results.load(ctx.job_id)
    if loaded is not None:
        job, attempts = loaded
        return task_results.from_job(job, task, attempts, backend=task.backend)
    return TaskResult(
        task=task, id=str(ctx.job_id), status=TaskResultStatus.RUNNING, enqueued_at=None, started_at=timezone.now(),
        finished_at=None, last_attempted_at=timezone.now(), args=[], kwargs={}, backend=task.backend, errors=[],
        worker_ids=[""] * ctx.attempt,
    )  # fmt: skip


def _finished(
    result: TaskResult, status: TaskResultStatus, *, value: Any = None, error: BaseException | None = None
) -> None:
    """task_finished for this attempt: SUCCESSFUL with its value, or FAILED with its error (a
    retry may follow; `get_result` then says READY again)."""
    object.__setattr__(result, "status", status)
    object.__setattr__(result, "finished_at", timezone.now())
    if error is not None:
        result.errors.append(
            TaskError(
                exception_class_path=f"{type(error).__module__}.{type(error).__qualname__}",
                traceback="".join(traceback.format_exception(error)),
            )
        )
    else:
        object.__setattr__(result, "_return_value", value)
    signals.task_finished.send(type(result.task.get_backend()), task_result=result)


def _shape(payload: Any) -> str:
    if isinstance(payload, dict):
        keys = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(payload.items())[:5])
        return f"an object with {keys or 'no keys'}"
    return type(payload).__name__
