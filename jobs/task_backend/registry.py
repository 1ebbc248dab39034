"""Django tasks as job handlers: how a worker runs a job whose `type` is a task's import path.

Modules listed in `settings.JOB_TASK_MODULES` are imported at start-up in every role (like
`JOB_HANDLER_MODULES`); each `Task` defined in them is registered under its `module_path`
with a handler that calls it. Nothing else is ever imported: a job's `type` is only a key
into this registry, so a type chosen by an API user (`os.system`) can name nothing to run.

The handler takes the payload `{"args": [...], "kwargs": {...}}` the backend wrote (anything
else is a PermanentError: retrying cannot fix it), gives a task that `takes_context` a
`TaskContext` whose `task_result` is the job as `get_result` would show it (running, with
its attempts so far: the task as enqueued, `.using()` options and all), runs an `async def`
task in its own event loop, and applies the task's options: an exception of a
`permanent_exceptions` type dead-letters at once; a return value that is not JSON, or larger
than JOB_RESULT_MAX_BYTES, dead-letters with the reason (never stored cut short).

Signals, as the framework's database backend sends them: `task_started` once per attempt,
as it starts; `task_finished` once, after the job's end commits (`ended`, called by the state
machine on commit); our `task_attempt_finished` after each attempt's outcome commits.

A module that fails to import at start is not fatal to the web: the failure is kept and the
system check `orchestration.E101` reports it (`jobs.task_backend.checks`); a worker refuses to start.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import uuid
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import orjson
from django.conf import settings
from django.dispatch import Signal
from django.utils import timezone

from jobs import handlers
from jobs.handlers import Handler, JobContext, PermanentError, PermanentFailure
from jobs.models import TERMINAL_STATUSES
from jobs.task_backend import options
from jobs.task_backend import results as task_results
from jobs.task_backend.framework import Task, TaskContext, TaskResult, TaskResultStatus, signals

logger = logging.getLogger("jobs.tasks")

_TASKS: dict[str, Task] = {}
# Modules of JOB_TASK_MODULES that failed to import at start: name → the error, for the checks.
IMPORT_ERRORS: dict[str, str] = {}


def get_task(module_path: str) -> Task | None:
    return _TASKS.get(module_path)


def is_task(type_: str) -> bool:
    return type_ in _TASKS


def tasks() -> list[Task]:
    """Every registered task, by import path."""
    return [_TASKS[name] for name in sorted(_TASKS)]


def is_task_module(module: str) -> bool:
    return module in settings.JOB_TASK_MODULES


def load_task_modules(modules: Iterable[str] | None = None, *, keep_errors: bool = False) -> None:
    """Import each module (default: JOB_TASK_MODULES) and register the tasks it defines.
    Safe to call again: tests load their own task modules this way at run time. With
    `keep_errors`, a module that fails to import is logged and kept in IMPORT_ERRORS, and
    the others still load."""
    for name in settings.JOB_TASK_MODULES if modules is None else modules:
        try:
            register_module(importlib.import_module(name))
        except Exception as exc:
            if not keep_errors:
                raise
            IMPORT_ERRORS[name] = f"{type(exc).__name__}: {exc}"[:1000]
            logger.exception("tasks.module_import_failed", extra={"task_module": name})
        else:
            IMPORT_ERRORS.pop(name, None)


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
    """One attempt of `task`: what a worker's handler call does. `task_started` is sent here,
    once per attempt; how the attempt ended is told after its outcome commits (`ended`)."""
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
    except Exception as exc:
        paths = payload.get("permanent_exceptions") or []
        if options.is_permanent(exc, getattr(task, "permanent_exceptions", ()), paths):
            raise PermanentFailure(exc) from exc
        raise
    size = len(orjson.dumps(value))  # not JSON: the worker dead-letters the job with the reason
    if size > settings.JOB_RESULT_MAX_BYTES:
        raise PermanentError(
            f"task {task.module_path!r} returned {size:,} bytes of JSON, over JOB_RESULT_MAX_BYTES "
            f"({settings.JOB_RESULT_MAX_BYTES:,}): return less, or store it and return where it is"
        )
    return value


def _call(task: Task, *args: Any, **kwargs: Any) -> Any:
    if inspect.iscoroutinefunction(task.func):
        # A loop of its own in this thread: the worker's timeout (SIGALRM in this thread)
        # interrupts it, and asyncio.run cancels what the task left running.
        return asyncio.run(task.func(*args, **kwargs))
    return task.func(*args, **kwargs)


def _running_result(task: Task, ctx: JobContext) -> TaskResult:
    """The job as `get_result` shows it now (RUNNING, with this attempt; its task as it was
    enqueued, `.using()` and all), or, if its row is gone, a minimal one: the task still
    runs, as any handler would."""
    loaded = task_results.load(ctx.job_id)
    if loaded is not None:
        job, attempts = loaded
        return task_results.from_job(job, task_results.as_enqueued(task, job), attempts, backend=task.backend)
    return TaskResult(
        task=task, id=str(ctx.job_id), status=TaskResultStatus.RUNNING, enqueued_at=None, started_at=timezone.now(),
        finished_at=None, last_attempted_at=timezone.now(), args=[], kwargs={}, backend=task.backend, errors=[],
        worker_ids=[""] * ctx.attempt,
    )  # fmt: skip


# --- after an outcome commits -------------------------------------------------------------

task_attempt_finished = Signal()
"""Ours, sent after each attempt's outcome commits, with `task_result` (as `get_result` shows
the job then: READY again when a retry follows) and `attempt` (its number). The framework's
`task_finished` is sent once, when the job's end commits (SUCCESSFUL or FAILED)."""


def ended(job_id: uuid.UUID, type_: str, status: str, *, attempt: bool) -> None:
    """A job's edge committed (`transitions.on_job_ended`): for a task's job, the signals. A
    retry sends `task_attempt_finished`; a job's end sends it too (when an attempt ended
    there) and then `task_finished`. A receiver's failure is logged, never the worker's."""
    task = _TASKS.get(type_)
    if task is None:
        return
    terminal = status in TERMINAL_STATUSES
    if not terminal and not attempt:
        return
    loaded = task_results.load(job_id)
    if loaded is None:
        return
    job, attempts = loaded
    result = task_results.from_job(job, task_results.as_enqueued(task, job), attempts, backend=task.backend)
    sender = type(task.get_backend())
    if attempt:
        _send(task_attempt_finished, sender, result, attempt=attempts[-1].attempt if attempts else 0)
    if terminal:
        _send(signals.task_finished, sender, result)


def _send(signal: Signal, sender: type, result: TaskResult, **extra: Any) -> None:
    for receiver, response in signal.send_robust(sender, task_result=result, **extra):
        if isinstance(response, Exception):
            logger.error(
                "task.signal_receiver_failed",
                exc_info=response,
                extra={"task": result.task.module_path, "job_id": result.id, "receiver": repr(receiver)[:200]},
            )


def _shape(payload: Any) -> str:
    if isinstance(payload, dict):
        keys = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(payload.items())[:5])
        return f"an object with {keys or 'no keys'}"
    return type(payload).__name__
