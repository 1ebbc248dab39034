"""Per-task options: how a task's jobs run, set where the task is declared and changed per
call with `.using()`, exactly like the framework's own `priority` or `queue_name`:

    @task(max_attempts=8, timeout=timedelta(minutes=2), backoff={"initial": 5, "max": 600},
          permanent_exceptions=(CardDeclined,))
    def charge(order_id: int) -> str: ...

    charge.using(concurrency_key=f"customer-{customer_id}", idempotency_key=f"charge-{order_id}").enqueue(order_id)

    option                 job field            default
    max_attempts           max_attempts         4
    timeout                timeout_seconds      300 (seconds, or a timedelta; rounded up to whole seconds)
    backoff                backoff              {"initial": 2, "factor": 2, "max": 3600, "jitter": 0.2}
    concurrency_key/limit  concurrency_key/limit  none (a key alone means a limit of 1)
    rate_limit_key         rate_limit_key       none (start no faster than the rate declared for the key)
    idempotency_key        idempotency_key      none (an enqueue with a key seen before returns that job)
    permanent_exceptions   -                    none (these exception types dead-letter at once, like PermanentError)
    unique_key/for/policy  unique_key, ...      none (at most one job of the key within unique_for s; the policy
                                                says what an enqueue meeting a taken key gets: reject raises
                                                UniqueConflict, keep_existing returns that job's result)

The rules are the API's (`jobs.serializers.JobOptionsSerializer`), checked when the task is
declared and when `.using()` makes a copy: a bad option is an InvalidTask naming it.

`task_class` of the framework is where options live: django-tasks 0.12 and Django 6.1 hand a
`@task(...)`'s extra arguments to it. Django 6.0's decorator does not, so our own `task`
(this module's) takes them on every version; it is the framework's decorator otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from typing import Any, Self

from jobs.handlers import class_path
from jobs.task_backend.framework import DEFAULT_PRIORITY, Task, task_backends
from jobs.task_backend.framework import task as framework_task


@dataclass(frozen=True, slots=True, kw_only=True)
class JobTask(Task):  # not Task[P, T]: Django 6.0's Task is not generic
    """The framework's Task with how its jobs run (None: the platform's default)."""

    max_attempts: int | None = None
    timeout: float | timedelta | None = None
    backoff: Mapping[str, float] | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    rate_limit_key: str | None = None
    idempotency_key: str | None = None
    permanent_exceptions: tuple[type[Exception], ...] = ()
    unique_key: str | None = None
    unique_for: int | None = None
    unique_policy: str | None = None
    debounce_seconds: int | None = None
    debounce_max_seconds: int | None = None

    def using(  # type: ignore[override]
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: Any = None,
        backend: str | None = None,
        **options: Any,
    ) -> Self:
        """The framework's `using`, and ours: any option above. None leaves one as it is."""
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(f"{self.module_path}.using() got unknown options {unknown}: it takes {list(OPTION_NAMES)}")
        # Task.using, not super(): zero-argument super() does not work in a slots dataclass.
        copy = Task.using(self, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend)
        changes = {name: value for name, value in options.items() if value is not None}
        return replace(copy, **changes) if changes else copy


OPTION_NAMES = tuple(f.name for f in fields(JobTask) if f.name not in {f.name for f in fields(Task)})


def task(
    function: Callable[..., Any] | None = None,
    *,
    priority: int = DEFAULT_PRIORITY,
    queue_name: str = "default",
    backend: str = "default",
    takes_context: bool = False,
    **options: Any,
) -> Any:
    """The framework's `@task`, taking our options on every framework version."""
    if not options:
        return framework_task(
            function,  # type: ignore[arg-type]
            priority=priority, queue_name=queue_name, backend=backend, takes_context=takes_context,
        )  # fmt: skip

    def wrapper(func: Callable[..., Any]) -> Task[Any, Any]:
        task_class = task_backends[backend].task_class
        if not issubclass(task_class, JobTask):
            raise TypeError(
                f"@task options {sorted(options)} need a backend whose task_class is a JobTask; "
                f"backend {backend!r} uses {class_path(task_class)}"
            )
        made: Task[Any, Any] = task_class(
            func=func, priority=priority, queue_name=queue_name, backend=backend, takes_context=takes_context,
            run_after=None, **options,
        )  # fmt: skip
        return made

    return wrapper(function) if function else wrapper


def options_of(task_: Task[Any, Any]) -> dict[str, Any]:
    """The task's options that are set (a plain framework Task has none)."""
    return {name: value for name in OPTION_NAMES if (value := getattr(task_, name, None)) not in (None, ())}


def timeout_seconds(timeout: float | timedelta) -> int:
    """A timeout in whole seconds, rounded up (a job's timeout is whole seconds)."""
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    return math.ceil(seconds) if math.isfinite(seconds) else 0  # 0 and below are refused by the rules


def is_permanent(error: BaseException, permanent: tuple[type[Exception], ...], paths: list[str]) -> bool:
    """Whether `error` is of one of the permanent types: classes of the task, or import paths
    its job carries (an enqueue's `.using(permanent_exceptions=...)`). Paths are compared with
    the error's own classes: nothing is imported."""
    if permanent and isinstance(error, permanent):
        return True
    return bool(paths) and any(class_path(cls) in paths for cls in type(error).__mro__)
