"""The backend's system checks (jobs.task_backend.checks, jobs.apps), the framework's two
names for an invalid task, the async API, and results read back from the archive."""

from __future__ import annotations

import asyncio
import importlib.util
import types
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from asgiref.sync import sync_to_async
from django.core import checks
from django.core.management import call_command
from django.db import connections
from django.utils import timezone

from jobs import apps as jobs_apps
from jobs.models import Job
from jobs.task_backend import registry
from jobs.task_backend.framework import (
    InvalidTask,
    InvalidTaskError,
    TaskResultDoesNotExist,
    TaskResultStatus,
    invalid_task_class,
    task_backends,
)
from tests.tasks.test_backend import run_dispatched

pytestmark = pytest.mark.django_db
T = TypeVar("T")


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return [m.id or "" for m in messages]


def backend_check(**kwargs: Any) -> list[checks.CheckMessage]:
    return list(task_backends["default"].check(**kwargs))


def test_the_reference_deployment_checks_clean(tasks_app):
    call_command("check", "--fail-level", "WARNING", "--database", "default")
    assert backend_check(databases=["default"]) == []


def test_a_task_module_that_does_not_import_is_reported_and_the_others_load(tasks_app, settings):
    broken = "tests.tasks_app.missing_module"
    registry.load_task_modules([broken, "tests.tasks_app.tasks"], keep_errors=True)
    try:
        [error] = backend_check()
        assert error.id == "orchestration.E101"
        assert "tests.tasks_app.missing_module" in error.msg
        assert "ModuleNotFoundError" in error.msg
        from orchestration.worker import task_modules_problem

        assert "orchestration.E101" in (task_modules_problem() or "")  # and a worker will not start
    finally:
        registry.IMPORT_ERRORS.pop(broken)
    with pytest.raises(ModuleNotFoundError):
        registry.load_task_modules([broken])  # without keep_errors: raised, as any import


def test_a_tasks_queue_must_be_declared_and_consumed(tasks_app, settings):
    settings.WORKER_QUEUES = ["default"]
    assert "orchestration.W103" not in ids(backend_check())
    copy = tasks_app.multiply.using(queue_name="emails")  # declared, but no worker consumes it
    registry._TASKS["tests.check.emails"] = copy
    try:
        [warning] = [m for m in backend_check() if m.obj == copy.module_path]
        assert warning.id == "orchestration.W103"
        assert "'emails', which no worker consumes" in warning.msg
        settings.QUEUES = {name: q for name, q in settings.QUEUES.items() if name != "emails"}  # no longer declared
        [error] = [m for m in backend_check() if m.obj == copy.module_path]
        assert error.id == "orchestration.E102"
        assert "emails" in error.msg
    finally:
        del registry._TASKS["tests.check.emails"]


def test_a_named_owner_must_exist(tasks_app, settings, user):
    backend = settings.TASKS["default"]
    settings.TASKS = {"default": {**backend, "OPTIONS": {"OWNER": "nobody"}}}
    assert backend_check() == []  # the database is read only when asked to
    [error] = backend_check(databases=["default"])
    assert error.id == "orchestration.E104"
    assert "user 'nobody', does not exist" in error.msg
    settings.TASKS = {"default": {**backend, "OPTIONS": {"OWNER": user.username}}}
    assert backend_check(databases=["default"]) == []


def test_on_django_5_2_the_backport_must_be_installed(monkeypatch):
    assert jobs_apps.tasks_framework_problems() == []
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "django.tasks" else real(name, *a)
    )
    monkeypatch.setattr(jobs_apps.apps, "is_installed", lambda name: name != "django_tasks")
    [error] = jobs_apps.tasks_framework_problems()
    assert error.id == "orchestration.E105"
    assert "add 'django_tasks' to INSTALLED_APPS" in error.hint


def test_both_names_of_the_invalid_task_exception_are_accepted():
    assert InvalidTaskError is InvalidTask

    class Renamed(Exception): ...

    assert invalid_task_class(types.SimpleNamespace(__name__="main", InvalidTask=Renamed)) is Renamed  # type: ignore[arg-type]
    assert invalid_task_class(types.SimpleNamespace(__name__="0.12", InvalidTaskError=Renamed)) is Renamed  # type: ignore[arg-type]
    with pytest.raises(ImportError, match="neither InvalidTask nor InvalidTaskError"):
        invalid_task_class(types.SimpleNamespace(__name__="none"))  # type: ignore[arg-type]


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine as an async view would; the connection the framework's sync_to_async
    opened in its thread is closed after (the test database is dropped at the end)."""

    async def run() -> T:
        try:
            return await make()
        finally:
            await sync_to_async(connections.close_all, thread_sensitive=True)()

    # In a thread of its own: this thread may have an event loop running (a browser test's).
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, run()).result()


@pytest.mark.django_db(transaction=True)
def test_aenqueue_and_aget_result(tasks_app):
    enqueued = run_async(lambda: tasks_app.multiply.aenqueue(3, 5))
    assert Job.objects.filter(id=enqueued.id).exists()
    assert run_async(lambda: tasks_app.multiply.aget_result(enqueued.id)).status == TaskResultStatus.READY
    run_dispatched()
    done = run_async(lambda: tasks_app.multiply.aget_result(enqueued.id))
    assert (done.status, done.return_value) == (TaskResultStatus.SUCCESSFUL, 15)
    with pytest.raises(TaskResultDoesNotExist):
        run_async(lambda: tasks_app.multiply.aget_result("01a2b3c4-0000-7000-8000-000000000000"))


def test_get_result_reads_an_archived_job_back(tasks_app, archive_table, epoch):
    from orchestration.scheduler import retention

    result = tasks_app.configured.using(max_attempts=1).enqueue("boom")
    run_dispatched()
    long_ago = timezone.now() - timedelta(days=40)
    Job.objects.filter(id=result.id).update(created_at=long_ago, finished_at=long_ago)
    assert retention.RetentionScan()(epoch, timezone.now) == 1
    assert not Job.objects.filter(id=result.id).exists()

    archived = tasks_app.configured.get_result(result.id)  # was TaskResultDoesNotExist
    assert archived.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in archived.errors] == ["tests.tasks_app.tasks.Boom"]
    assert archived.task.max_attempts == 1
    assert archived.args == ["boom"]
