"""Tasks as a Django project would write them, run by the platform's workers in the tests."""

from __future__ import annotations

import asyncio
from typing import Any

from jobs.handlers import PermanentError
from jobs.task_api import TaskContext, task


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
