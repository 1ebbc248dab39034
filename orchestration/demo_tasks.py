"""Demo Django tasks (listed in the default JOB_TASK_MODULES): what a project's `tasks.py`
looks like on this backend. Each runs as a job of type `orchestration.demo_tasks.<name>`.

    from orchestration.demo_tasks import add
    result = add.enqueue(2, 3)            # a job, in the caller's transaction
    add.get_result(result.id).status      # READY … RUNNING … SUCCESSFUL; return_value 5
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from jobs.task_backend.framework import TaskContext, task

logger = logging.getLogger("orchestration.demo_tasks")


class DemoTaskFailure(Exception):
    """What `fail` raises: an ordinary exception, so the job retries, then dead-letters."""


@task
def add(a: float, b: float) -> float:
    """Returns a value: the job's result, the TaskResult's return_value."""
    return a + b


@task(takes_context=True, priority=50)
def greet(context: TaskContext, name: str) -> dict[str, Any]:
    """Takes the context: which job (the result id) and which attempt this is."""
    logger.info("greeting %s", name)  # lands in ClickHouse with the job's id
    return {"greeting": f"Hello, {name}!", "result_id": context.task_result.id, "attempt": context.attempt}


@task
def fail(message: str = "demo task failure") -> None:
    """Always raises: each attempt's error and traceback end up in the result's errors."""
    raise DemoTaskFailure(message)


@task
async def pause(seconds: float = 0.1) -> float:
    """An `async def` task: the worker runs it in an event loop of its own."""
    await asyncio.sleep(min(seconds, 60.0))
    return seconds
