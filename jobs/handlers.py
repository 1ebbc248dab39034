"""The handler registry: job `type` → the function that runs it.

Where a handler goes: in a module of your own (`billing/handlers.py`), listed in
`JOB_HANDLER_MODULES`. Every role imports those modules when Django starts, and each needs
them: the web refuses a job whose type no handler has, the bridge sets aside (dead-letters
with the reason) a message whose type it does not know, and a worker runs the handler. So
set JOB_HANDLER_MODULES alike in every role. The built-in `demo.*` handlers are registered
whatever it lists (`orchestration.demo_handlers`). Django `@task`s are the other way in
(`jobs.task_backend`, JOB_TASK_MODULES); Celery's own tasks, which carry jobs to workers,
are `orchestration.celery_tasks`, not a place for your code.

    @handler("billing.charge")
    def charge(payload: dict, ctx: JobContext) -> dict: ...

A handler receives the payload (it must ignore keys it does not know) and a context with
the job id, attempt number and a cooperative cancel check. Its return value (JSON) becomes
the job's `result`.

Django tasks (`jobs.task_backend.registry`) register here too, under their import path, but as
internal: the worker and the bridge know them, the API does not take them (`submit_problem`),
for their arguments are the calling code's to choose, not an API user's.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help: the job goes straight to DEAD_LETTER."""


class PermanentFailure(PermanentError):
    """A handler's own exception of a type declared permanent for it (a Django task's
    `permanent_exceptions`): the job dead-letters at once, and the attempt is recorded as
    that exception (its class, text and traceback), not as this wrapper."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def class_path(cls: type) -> str:
    """A class as the import path a traceback names it by ("billing.errors.CardDeclined")."""
    return f"{cls.__module__}.{cls.__qualname__}"


class Throttled(Exception):
    """Raised by `ctx.throttle(seconds)`: the downstream asked to slow down. The job goes back
    to wait `seconds` without using an attempt of its budget."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"throttled for {seconds:g}s (ctx.throttle): not counted against max_attempts")
        self.seconds = seconds


class JobCancelled(Exception):
    """Raised inside a handler (by `ctx.check_cancelled`) once a cancel was requested."""


@dataclass
class JobContext:
    job_id: uuid.UUID
    attempt: int
    type: str
    queue: str = "default"
    # Set by the worker; returns True once the job's cancel was requested.
    is_cancel_requested: Callable[[], bool] = field(default=lambda: False)
    # Set by the worker: where `progress` goes (jobs.progress.Reporter.report).
    report_progress: Callable[[float, str], None] = field(default=lambda fraction, message: None)

    def check_cancelled(self) -> None:
        if self.is_cancel_requested():
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def throttle(self, seconds: float) -> None:
        """The downstream said to slow down: stop here, and run again `seconds` from now
        without using an attempt (up to a day). Raises Throttled: code after it does not run."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 86400:
            raise ValueError(f"throttle seconds must be a number above 0 and at most 86400, got {seconds!r}")
        raise Throttled(float(seconds))

    def progress(self, fraction: float, message: str = "") -> None:
        """How far the job is, from 0 to 1, with a short message: shown live in the API and the
        dashboard. Cheap in a tight loop: written at most every JOB_PROGRESS_INTERVAL_SECONDS.
        ValueError for a fraction outside 0..1 or not a number."""
        self.report_progress(fraction, message)


class Handler(Protocol):
    def __call__(self, payload: dict[str, Any], ctx: JobContext) -> Any: ...


_REGISTRY: dict[str, Handler] = {}
# Registered, but not submittable through the API (jobs, bulk, schedules, workflows).
_INTERNAL: set[str] = set()


def handler(name: str) -> Callable[[Handler], Handler]:
    """Register `fn` under the dotted `name`; registering a name twice is a programming error."""

    def decorate(fn: Handler) -> Handler:
        register(name, fn)
        return fn

    return decorate


def register(name: str, fn: Handler, *, internal: bool = False) -> None:
    """`internal`: workers run it, the API refuses it (Django tasks are enqueued from code)."""
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not fn:
        raise ValueError(f"job handler {name!r} is already registered by {existing!r}")
    _REGISTRY[name] = fn
    if internal:
        _INTERNAL.add(name)


def get_handler(name: str) -> Handler | None:
    return _REGISTRY.get(name)


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def submit_problem(name: str) -> str | None:
    """Why the API cannot take a job of type `name`, or None. A lookup only: nothing is imported."""
    if name not in _REGISTRY:
        return f"Unknown job type {name!r}: no handler is registered under that name."
    if name in _INTERNAL:
        return (
            f"{name!r} is a Django task: enqueue it from your Django code (`task.enqueue(...)`); "
            "the API does not run tasks with arguments of its callers' choosing."
        )
    return None


def registered_types() -> list[str]:
    return sorted(_REGISTRY)


def load_handler_modules() -> None:
    for module in settings.JOB_HANDLER_MODULES:
        importlib.import_module(module)
