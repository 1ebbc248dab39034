"""Per-task options (jobs.task_backend.options): declared with `@task(...)`, changed with
`.using(...)`, checked by the API's rules, carried by the job, seen by the running task."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobs.models import Job, JobAttempt, JobStatus
from jobs.task_backend import JobTask
from jobs.task_backend.framework import InvalidTask, TaskResultStatus
from tests.tasks.test_backend import release_retries, run_dispatched

pytestmark = pytest.mark.django_db


def test_the_decorators_options_become_the_jobs_fields(tasks_app):
    assert isinstance(tasks_app.configured, JobTask)
    result = tasks_app.configured.enqueue("ok")
    job = Job.objects.get(id=result.id)
    assert job.max_attempts == 3
    assert job.timeout_seconds == 2  # 1.5 s, rounded up to whole seconds
    assert job.backoff == {"initial": 0, "factor": 2.0, "max": 3600, "jitter": 0}
    assert job.payload == {
        "args": ["ok"], "kwargs": {}, "permanent_exceptions": ["tests.tasks_app.tasks.Declined"],
    }  # fmt: skip
    plain = Job.objects.get(id=tasks_app.multiply.enqueue(1, 2).id)
    assert (plain.max_attempts, plain.timeout_seconds, plain.concurrency_key) == (4, 300, None)


def test_using_sets_options_per_call_and_keeps_the_rest(tasks_app):
    copy = tasks_app.configured.using(max_attempts=9, concurrency_key="customer-7", idempotency_key="order-1")
    assert copy.timeout == tasks_app.configured.timeout  # unchanged
    job = Job.objects.get(id=copy.enqueue("ok").id)
    assert (job.max_attempts, job.concurrency_key, job.concurrency_limit) == (9, "customer-7", 1)
    assert job.idempotency_key == "order-1"
    assert tasks_app.configured.max_attempts == 3  # the declared task is not changed

    job = Job.objects.get(
        id=tasks_app.multiply.using(concurrency_key="k", concurrency_limit=3, timeout=timedelta(minutes=2))
        .enqueue(1, 1)
        .id
    )
    assert (job.concurrency_limit, job.timeout_seconds) == (3, 120)


def test_an_idempotency_key_returns_the_job_enqueued_before(tasks_app, django_capture_on_commit_callbacks):
    keyed = tasks_app.multiply.using(idempotency_key="receipt-42")
    first = keyed.enqueue(6, 7)
    again = keyed.enqueue(6, 7)
    assert again.id == first.id
    assert Job.objects.filter(type=tasks_app.multiply.module_path).count() == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts: Ensure this value is greater than or equal to 1."),
        ({"max_attempts": 26}, "max_attempts: Ensure this value is less than or equal to 25."),
        ({"timeout": 0}, "timeout: Ensure this value is greater than or equal to 1."),
        ({"timeout": float("inf")}, "timeout: Ensure this value is greater than or equal to 1."),
        ({"timeout": "soon"}, "timeout must be seconds or a timedelta, not 'soon'"),
        ({"backoff": {"factor": 0.5}}, "backoff: factor: Ensure this value is greater than or equal to 1."),
        ({"concurrency_limit": 2}, "concurrency_limit: needs a concurrency_key"),
        ({"concurrency_key": "x" * 201}, "concurrency_key: Ensure this field has no more than 200 characters."),
        ({"idempotency_key": "schedule:1"}, "idempotency_key: keys starting with 'schedule:' are reserved"),
        ({"permanent_exceptions": (KeyError, "nope")}, "permanent_exceptions must be a tuple of Exception classes"),
        ({"permanent_exceptions": [KeyError]}, "permanent_exceptions must be a tuple of Exception classes"),
    ],
)
def test_a_bad_option_is_an_invalid_task_naming_it(tasks_app, options, message):
    with pytest.raises(InvalidTask) as caught:
        tasks_app.multiply.using(**options)
    assert message in str(caught.value)
    assert "tests.tasks_app.tasks.multiply" in str(caught.value)


def test_using_refuses_an_option_it_does_not_know(tasks_app):
    with pytest.raises(TypeError, match=r"unknown options \['retries'\]"):
        tasks_app.multiply.using(retries=3)


def test_a_permanent_exception_dead_letters_at_once_recorded_as_itself(tasks_app):
    result = tasks_app.configured.enqueue("declined")
    run_dispatched()
    failed = tasks_app.configured.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert Job.objects.get(id=result.id).attempts == 1  # of 3: not retried
    [error] = failed.errors
    assert error.exception_class_path == "tests.tasks_app.tasks.Declined"
    assert error.exception_class is tasks_app.Declined
    assert "card declined" in error.traceback


def test_permanent_exceptions_set_by_using_travel_with_the_job(tasks_app):
    result = tasks_app.configured.using(permanent_exceptions=(tasks_app.Boom,)).enqueue("boom")
    assert Job.objects.get(id=result.id).payload["permanent_exceptions"] == ["tests.tasks_app.tasks.Boom"]
    run_dispatched()
    assert Job.objects.get(id=result.id).status == JobStatus.DEAD_LETTER
    assert [e.exception_class_path for e in tasks_app.configured.get_result(result.id).errors] == [
        "tests.tasks_app.tasks.Boom"
    ]


def test_other_exceptions_retry_within_the_tasks_own_budget(tasks_app):
    result = tasks_app.configured.enqueue("boom")
    for _ in range(3):
        run_dispatched()
        release_retries()
    job = Job.objects.get(id=result.id)
    assert (job.status, job.attempts) == (JobStatus.DEAD_LETTER, 3)


def test_the_class_of_an_error_survives_a_traceback_longer_than_what_is_kept(tasks_app, settings):
    result = tasks_app.configured.using(max_attempts=1).enqueue("huge")
    run_dispatched()
    attempt = JobAttempt.objects.get(job_id=result.id)
    assert len(attempt.traceback) <= settings.JOB_TRACEBACK_MAX_CHARS < 200_000
    assert attempt.error_class == "tests.tasks_app.tasks.Boom"
    [error] = tasks_app.configured.get_result(result.id).errors
    assert error.exception_class_path == "tests.tasks_app.tasks.Boom"  # was builtins.Exception


def test_a_running_task_sees_itself_as_enqueued_not_as_declared(tasks_app):
    result = tasks_app.seen_options.using(priority=60, queue_name="emails", concurrency_key="c").enqueue()
    run_dispatched()
    assert tasks_app.seen_options.get_result(result.id).return_value == {
        "priority": 75,
        "queue": "emails",
        "max_attempts": 7,
        "timeout": 300,
        "concurrency_key": "c",
    }  # fmt: skip (60 is in our band 8, which the framework reads back as 75: the job stores the band)


def test_a_return_value_over_the_limit_fails_with_the_reason_not_a_marker(tasks_app, settings):
    settings.JOB_RESULT_MAX_BYTES = 1000
    result = tasks_app.sized.enqueue(2000)
    run_dispatched()
    failed = tasks_app.sized.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert Job.objects.get(id=result.id).result is None
    [error] = failed.errors
    assert "returned 2,002 bytes of JSON, over JOB_RESULT_MAX_BYTES (1,000)" in error.traceback
    ok = tasks_app.sized.enqueue(10)
    run_dispatched()
    assert tasks_app.sized.get_result(ok.id).return_value == "x" * 10


def test_a_unique_task_runs_once_per_key(tasks_app):
    from jobs.errors import UniqueConflict

    keyed = tasks_app.multiply.using(unique_key="invoice-7", unique_for=600, unique_policy="keep_existing")
    first, again = keyed.enqueue(2, 3), keyed.enqueue(2, 3)
    assert again.id == first.id
    assert Job.objects.filter(type=tasks_app.multiply.module_path).count() == 1
    with pytest.raises(UniqueConflict, match=f"taken by job {first.id}"):
        tasks_app.multiply.using(unique_key="invoice-7").enqueue(2, 3)  # the default policy: reject
    with pytest.raises(InvalidTask, match="unique_policy"):
        tasks_app.multiply.using(unique_key="k", unique_policy="sometimes")


def test_a_rate_limited_task_carries_its_key_to_its_jobs(tasks_app):
    result = tasks_app.multiply.using(rate_limit_key="partner-api").enqueue(2, 3)
    job = Job.objects.get(id=result.id)
    assert job.rate_limit_key == "partner-api"
    assert tasks_app.multiply.get_result(result.id).task.rate_limit_key == "partner-api"  # as enqueued
    with pytest.raises(InvalidTask, match="rate_limit_key"):
        tasks_app.multiply.using(rate_limit_key="x" * 201)
