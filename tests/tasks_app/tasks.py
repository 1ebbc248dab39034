"""Tasks as a Django project would write them, run by the platform's workers in the tests."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from jobs.handlers import PermanentError
from jobs.task_backend import task as options_task  # takes the options on every framework version
from jobs.task_backend.framework import TaskContext, task


class Boom(Exception):
    """A task's own exception: retryable."""


@task
def multiply(a: int, b: int) -> int:
    return a * b


@task(takes_context=True)
def whoami(context: TaskContext, tag: str) -> dict[str, Any]:
    result = context.task_result
    return {
        "id": result.id, "attempt": context.attempt, "status": str(result.status), "tag": tag,
        "workers": result.worker_ids, "args": result.args, "kwargs": result.kwargs,
    }  # fmt: skip


@task
def explode(message: str) -> None:
    raise PermanentError(message)  # dead-letters at once


@task(takes_context=True)
def flaky(context: TaskContext, message: str) -> int:
    if context.attempt == 1:
        raise Boom(message)
    return context.attempt


@task
async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


class Declined(Exception):
    """Declared permanent for `configured`: retrying cannot help."""


@options_task(
    max_attempts=3, timeout=timedelta(seconds=1.5), backoff={"initial": 0, "jitter": 0},
    permanent_exceptions=(Declined,),
)  # fmt: skip
def configured(kind: str) -> str:
    if kind == "declined":
        raise Declined("card declined")
    if kind == "boom":
        raise Boom("try again")
    if kind == "huge":
        raise Boom("x" * 200_000)  # its traceback is longer than the 64 KiB kept of it
    return kind


@options_task(takes_context=True, max_attempts=7)
def seen_options(context: TaskContext) -> dict[str, Any]:
    enqueued = context.task_result.task
    return {
        "priority": enqueued.priority, "queue": enqueued.queue_name, "max_attempts": enqueued.max_attempts,
        "timeout": enqueued.timeout, "concurrency_key": enqueued.concurrency_key,
    }  # fmt: skip


@task
def sized(n: int) -> str:
    return "x" * n
