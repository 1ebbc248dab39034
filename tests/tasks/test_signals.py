"""When the backend's signals are sent: `task_started` once per attempt, `task_finished` once,
after the job's end commits (never for an attempt that will be retried, never SUCCESSFUL for
a job that then dead-letters), our `task_attempt_finished` after each attempt commits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from jobs import services
from jobs.models import Job, JobStatus
from jobs.task_backend import task_attempt_finished
from jobs.task_backend.framework import signals
from tests.tasks.test_backend import release_retries, run_dispatched

pytestmark = pytest.mark.django_db


@pytest.fixture
def heard() -> Iterator[list[tuple[str, str, str]]]:
    """(signal, TaskResult status, the job's status in the database when it was sent)."""
    seen: list[tuple[str, str, str]] = []

    def listen(name: str) -> Any:
        def receive(sender: Any, task_result: Any, **kwargs: Any) -> None:
            with connection.cursor() as cur:
                cur.execute("SELECT status FROM jobs_job WHERE id = %s", [task_result.id])
                row = cur.fetchone()
            seen.append((name, str(task_result.status), row[0] if row else "-"))

        return receive

    receivers = [
        (signals.task_started, listen("started")),
        (task_attempt_finished, listen("attempt")),
        (signals.task_finished, listen("finished")),
    ]
    for signal, receiver in receivers:
        signal.connect(receiver)
    yield seen
    for signal, receiver in receivers:
        signal.disconnect(receiver)


def test_a_retried_task_finishes_once_after_its_dead_letter_commits(
    tasks_app, heard, django_capture_on_commit_callbacks
):
    result = tasks_app.configured.enqueue("boom")
    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            run_dispatched()
        release_retries()
    assert Job.objects.get(id=result.id).status == JobStatus.DEAD_LETTER
    assert heard == [
        ("started", "RUNNING", "RUNNING"), ("attempt", "READY", "RETRYING"),
        ("started", "RUNNING", "RUNNING"), ("attempt", "READY", "RETRYING"),
        ("started", "RUNNING", "RUNNING"), ("attempt", "FAILED", "DEAD_LETTER"),
        ("finished", "FAILED", "DEAD_LETTER"),
    ]  # fmt: skip


def test_nothing_is_announced_before_the_outcome_commits(tasks_app, heard, django_capture_on_commit_callbacks):
    tasks_app.multiply.enqueue(2, 3)
    with django_capture_on_commit_callbacks(execute=False) as pending:
        run_dispatched()
    assert heard == [("started", "RUNNING", "RUNNING")]  # the success is written, not yet committed
    for callback in pending:
        callback()
    assert heard[1:] == [("attempt", "SUCCESSFUL", "SUCCEEDED"), ("finished", "SUCCESSFUL", "SUCCEEDED")]


def test_a_result_that_dead_letters_is_never_announced_successful(
    tasks_app, heard, settings, django_capture_on_commit_callbacks
):
    settings.JOB_RESULT_MAX_BYTES = 100
    tasks_app.sized.enqueue(500)
    with django_capture_on_commit_callbacks(execute=True):
        run_dispatched()
    assert [h for h in heard if h[0] == "finished"] == [("finished", "FAILED", "DEAD_LETTER")]


def test_a_task_cancelled_while_waiting_finishes_failed(tasks_app, heard, django_capture_on_commit_callbacks):
    result = tasks_app.multiply.enqueue(1, 1)
    with django_capture_on_commit_callbacks(execute=True):
        services.job_cancel(job_id=result.id)
    assert heard == [("finished", "FAILED", "CANCELLED")]  # no attempt ran: no attempt signal


def test_a_receivers_failure_is_logged_and_the_job_keeps_its_outcome(
    tasks_app, django_capture_on_commit_callbacks, caplog
):
    def broken(sender: Any, task_result: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    signals.task_finished.connect(broken)
    try:
        result = tasks_app.multiply.enqueue(2, 2)
        with django_capture_on_commit_callbacks(execute=True):
            run_dispatched()
    finally:
        signals.task_finished.disconnect(broken)
    assert Job.objects.get(id=result.id).status == JobStatus.SUCCEEDED
    assert any(r.message == "task.signal_receiver_failed" for r in caplog.records)


def test_a_batch_of_successes_announces_each_once(tasks_app, heard, django_capture_on_commit_callbacks):
    from orchestration.worker import execute_batch
    from tests.workflows.conftest import pending_dispatches

    ids = {tasks_app.multiply.enqueue(n, n).id for n in range(3)}
    with django_capture_on_commit_callbacks(execute=True):
        execute_batch(pending_dispatches(), worker="test-worker")
    assert Job.objects.filter(id__in=ids, status=JobStatus.SUCCEEDED).count() == 3
    assert sorted(h for h in heard if h[0] == "finished") == [("finished", "SUCCESSFUL", "SUCCEEDED")] * 3
