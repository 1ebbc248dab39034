"""The Django Tasks backend: every `@task` runs as a job of this platform.

    TASKS = {"default": {"BACKEND": "jobs.task_backend.JobsBackend"}}

`enqueue` submits a job through `jobs.services` in the caller's transaction (a savepoint
inside it): a rolled-back `transaction.atomic()` leaves neither the job nor its dispatch.
The job's `type` is the task's import path, its payload `{"args": [...], "kwargs": {...}}`,
checked at enqueue like an API payload; the task's options (`options.JobTask`) become the
job's fields. `get_result` reads the job back (`results`), from the archive once it is past
retention; workers run it through the handler registry (`registry`).

Options (`TASKS[alias]["OPTIONS"]`): `OWNER`, the username whose jobs tasks become (default
`tasks`, a login-less account created on first use). `QUEUES`, when given, narrows the
queues tasks may name to some of the declared ones (config.queues); without it, any declared
queue will do, and any other is an InvalidTask naming them. `check()` is the system checks
of `checks`.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.exceptions import ImproperlyConfigured
from rest_framework.exceptions import ValidationError

from config import queues
from config.rest import check_json, in_utc, text_problem
from jobs.handlers import class_path
from jobs.models import Job, default_backoff
from jobs.serializers import QUEUE_ERRORS, QUEUE_NAME, JobOptionsSerializer
from jobs.services import JobSpec, job_submit_bulk
from jobs.task_backend import checks, options, registry
from jobs.task_backend import results as task_results
from jobs.task_backend.framework import BaseTaskBackend, InvalidTask, Task, TaskResult, TaskResultDoesNotExist, signals

DEFAULT_OWNER = "tasks"
TYPE_MAX_CHARS = Job._meta.get_field("type").max_length or 200
# orjson writes at most 254 levels; the API's own nesting limit is usually far below.
_DEPTH_CAP = 254
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson and PostgreSQL's jsonb round-trip


class InvalidTaskArguments(InvalidTask, ValueError):
    """A task's args or kwargs cannot travel as a job's payload (not JSON, text PostgreSQL
    cannot store, too large). A ValueError too, as the framework's own JSON check raises."""


class JobsBackend(BaseTaskBackend):
    task_class = options.JobTask  # the framework's Task, with how its jobs run
    supports_defer = True  # run_after → the job's run_at
    supports_async_task = True  # an `async def` task runs in an event loop of its own
    supports_get_result = True  # from any process: the job row is the result
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.queues = set(params.get("QUEUES") or [])
        for name in self.queues:
            if problem := queues.problem(name, settings.QUEUES):
                raise ImproperlyConfigured(f"TASKS[{alias!r}]['QUEUES']: {problem}")
        self.owner = str(params.get("OPTIONS", {}).get("OWNER") or DEFAULT_OWNER)

    @property
    def queues(self) -> set[str]:
        """The declared queues (config.queues), or those of them this backend's QUEUES names."""
        return set(self._queues) if self._queues else set(settings.QUEUES)

    @queues.setter
    def queues(self, names: set[str]) -> None:
        self._queues = names

    # --- validation -------------------------------------------------------------------

    def validate_task(self, task: Task) -> None:
        """The framework's checks, and ours: the task's module is one workers load, its path
        fits a job type, its queue is a name the API would take."""
        if not re.match(QUEUE_NAME, task.queue_name):
            raise InvalidTask(f"Queue {task.queue_name!r} is not a valid queue name: it {QUEUE_ERRORS['invalid']}")
        if problem := queues.problem(task.queue_name, dict.fromkeys(self.queues)):
            raise InvalidTask(f"Task {task.module_path!r}: {problem}")
        super().validate_task(task)
        _check_options(task)
        module = task.func.__module__
        if not registry.is_task_module(module):
            raise InvalidTask(
                f"Task {task.module_path!r} is defined in {module!r}, which is not in JOB_TASK_MODULES: add the "
                "module there (every role imports those modules at start, and runs only the tasks they define)."
            )
        if len(task.module_path) > TYPE_MAX_CHARS:
            raise InvalidTask(f"Task path {task.module_path!r} is longer than {TYPE_MAX_CHARS} characters.")

    def _spec(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> JobSpec:
        self.validate_task(task)
        registered = registry.get_task(task.module_path)
        if registered is None or registered.func is not task.func:
            raise InvalidTask(
                f"Task {task.module_path!r} is not registered: define it with @task at the top level of its "
                "module, so the module's import registers it in every role."
            )
        payload: dict[str, Any] = {
            "args": _json_value(list(args), "args", 1),
            "kwargs": _json_value(dict(kwargs), "kwargs", 1),
        }
        chosen = options.options_of(task)
        if permanent := chosen.pop("permanent_exceptions", ()):
            payload["permanent_exceptions"] = [class_path(cls) for cls in permanent]
        try:
            check_json(
                payload, "args and kwargs", max_bytes=settings.JOB_PAYLOAD_MAX_BYTES, setting="JOB_PAYLOAD_MAX_BYTES"
            )
        except ValidationError as exc:
            raise InvalidTaskArguments(f"{task.module_path}: {_message(exc)}") from None
        try:
            run_at = in_utc(task.run_after) if task.run_after is not None else None
        except ValueError as exc:
            raise InvalidTask(f"run_after {task.run_after!r} is {exc}") from None
        return JobSpec(
            type=task.module_path,
            payload=payload,
            queue=task.queue_name,
            priority=task_results.to_job_priority(task.priority),
            run_at=run_at,
            max_attempts=chosen.get("max_attempts", JobSpec.max_attempts),
            backoff={**default_backoff(), **chosen.get("backoff", {})},
            timeout_seconds=options.timeout_seconds(chosen.get("timeout", JobSpec.timeout_seconds)),
            idempotency_key=chosen.get("idempotency_key"),
            concurrency_key=chosen.get("concurrency_key"),
            concurrency_limit=chosen.get("concurrency_limit", 1 if "concurrency_key" in chosen else None),
            rate_limit_key=chosen.get("rate_limit_key"),
            unique_key=chosen.get("unique_key"),
            unique_for=chosen.get("unique_for"),
            unique_policy=chosen.get("unique_policy", "reject"),
            debounce_seconds=chosen.get("debounce_seconds"),
            debounce_max_seconds=chosen.get("debounce_max_seconds"),
        )

    # --- enqueue ----------------------------------------------------------------------

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """One job, in the caller's transaction."""
        return self._submit([(task, self._spec(task, args, kwargs))])[0]

    def enqueue_many(self, calls: Iterable[tuple[Task, Sequence[Any], Mapping[str, Any]]]) -> list[TaskResult]:
        """Many tasks (any mix) with one bulk submit: a fixed number of statements, all or
        nothing. An error names the position of the call it is about."""
        prepared = []
        for i, (task, args, kwargs) in enumerate(calls):
            try:
                prepared.append((task, self._spec(task, args, kwargs)))
            except InvalidTask as exc:
                raise type(exc)(f"calls[{i}]: {exc}") from None
        return self._submit(prepared)

    def _submit(self, prepared: Sequence[tuple[Task, JobSpec]]) -> list[TaskResult]:
        if not prepared:
            return []
        submitted = job_submit_bulk(owner_id=self._owner_id(), specs=[spec for _, spec in prepared])
        results = []
        for (task, _), s in zip(prepared, submitted, strict=True):
            enqueued = task if s.created else task_results.as_enqueued(task, s.job)
            result = task_results.from_job(s.job, enqueued, [], backend=self.alias)
            if s.created:  # an idempotent replay returns the job enqueued before: not enqueued again
                signals.task_enqueued.send(type(self), task_result=result)
            results.append(result)
        return results

    def _owner_id(self) -> int:
        """The owner's id; the default owner is created on first use (in the caller's
        transaction, so a rollback takes it back too: nothing is cached)."""
        users = get_user_model()._default_manager
        field = get_user_model().USERNAME_FIELD
        pk = users.filter(**{field: self.owner}).values_list("pk", flat=True).first()
        if pk is not None:
            return int(pk)
        if self.owner != DEFAULT_OWNER:
            raise ImproperlyConfigured(
                f"the owner of {self.alias!r} tasks, user {self.owner!r} (TASKS_OWNER), does not exist: create it, "
                f"or leave TASKS_OWNER unset to use the login-less {DEFAULT_OWNER!r} account"
            )
        user, _ = users.get_or_create(**{field: DEFAULT_OWNER}, defaults={"password": make_password(None)})
        return int(user.pk)

    # --- results ----------------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult:
        """The job `result_id` as a TaskResult; TaskResultDoesNotExist for an id that is no
        job, or a job that is no task this process knows."""
        try:
            job_id = uuid.UUID(str(result_id))
        except ValueError:
            raise TaskResultDoesNotExist(result_id) from None
        loaded = task_results.load(job_id)
        task = registry.get_task(loaded[0].type) if loaded else None
        if loaded is None or task is None:
            raise TaskResultDoesNotExist(result_id)
        job, attempts = loaded
        return task_results.from_job(job, task_results.as_enqueued(task, job), attempts, backend=self.alias)

    # --- checks -----------------------------------------------------------------------

    def check(self, **kwargs: Any) -> Iterable[Any]:
        """The framework's hook for a backend's system checks (`manage.py check`)."""
        return checks.backend_problems(self, databases=kwargs.get("databases"))


def _check_options(task: Task) -> None:
    """The task's options, by the API's rules (`JobOptionsSerializer`): InvalidTask naming
    each that breaks one."""
    chosen = options.options_of(task)
    permanent = chosen.pop("permanent_exceptions", ())
    if not isinstance(permanent, tuple) or not all(
        isinstance(cls, type) and issubclass(cls, Exception) for cls in permanent
    ):
        raise InvalidTask(
            f"Task {task.module_path!r}: permanent_exceptions must be a tuple of Exception classes, "
            f"not {permanent!r:.200}"
        )
    if "timeout" in chosen:
        timeout = chosen.pop("timeout")
        if not isinstance(timeout, int | float | timedelta) or isinstance(timeout, bool):
            raise InvalidTask(
                f"Task {task.module_path!r}: timeout must be seconds or a timedelta, not {timeout!r:.200}"
            )
        chosen["timeout_seconds"] = options.timeout_seconds(timeout)
    serializer = JobOptionsSerializer(data=chosen)
    if not serializer.is_valid():
        problems = "; ".join(
            f"{'timeout' if name == 'timeout_seconds' else name}: {_flat(errors)}"
            for name, errors in serializer.errors.items()
        )
        raise InvalidTask(f"Task {task.module_path!r}: {problems}")


def _flat(errors: Any) -> str:
    if isinstance(errors, dict):
        return "; ".join(f"{k}: {_flat(v)}" for k, v in errors.items())
    if isinstance(errors, list):
        return " ".join(_flat(e) for e in errors)
    return str(errors)


def enqueue_many(calls: Iterable[tuple[Task, Sequence[Any], Mapping[str, Any]]]) -> list[TaskResult]:
    """`[(task, args, kwargs), ...]` → their results, in one bulk submit when the tasks'
    backend is a JobsBackend (any other backend enqueues them one by one)."""
    calls = list(calls)
    if not calls:
        return []
    aliases = {task.backend for task, _, _ in calls}
    if len(aliases) > 1:
        raise ValueError(f"enqueue_many takes the tasks of one backend, not {sorted(aliases)}")
    backend = calls[0][0].get_backend()
    if isinstance(backend, JobsBackend):
        return backend.enqueue_many(calls)
    return [backend.enqueue(task, list(args), dict(kwargs)) for task, args, kwargs in calls]


# --- arguments as JSON ------------------------------------------------------------------


def _message(exc: ValidationError) -> str:
    detail = exc.detail
    return "; ".join(str(d) for d in detail) if isinstance(detail, list) else str(detail)


def _json_value(value: Any, path: str, depth: int) -> Any:
    """`value` as plain JSON (tuples become lists), or InvalidTaskArguments naming where it
    is not: the framework's contract is that a task's arguments survive a JSON round trip."""
    limit = min(settings.API_JSON_MAX_DEPTH, _DEPTH_CAP)
    if depth > limit:
        raise InvalidTaskArguments(f"{path} nests lists and dicts more than {limit} levels deep (API_JSON_MAX_DEPTH)")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidTaskArguments(f"{path} is an integer outside the 64-bit range JSON storage keeps exactly")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidTaskArguments(f"{path} is {value}, which JSON cannot carry")
        return value
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise InvalidTaskArguments(f"{path} {problem}, which PostgreSQL cannot store")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, child in value.items():
            if not isinstance(key, str):
                kind = type(key).__name__
                raise InvalidTaskArguments(f"a key in {path} is {kind} {key!r:.40}, not text: JSON keys are text")
            problem = text_problem(key)
            if problem:
                raise InvalidTaskArguments(f"a key in {path} {problem}, which PostgreSQL cannot store")
            out[key] = _json_value(child, f"{path}[{key!r:.40}]", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_json_value(child, f"{path}[{i}]", depth + 1) for i, child in enumerate(value)]
    raise InvalidTaskArguments(
        f"{path} is a {type(value).__name__}, which JSON cannot carry: pass str, int, float, bool, None, "
        "or lists and dicts of them"
    )
