"""orchestration.worker.execute against real PostgreSQL: claims, outcomes, duplicates,
timeouts and cancellation. (The Celery task only unpacks its message and calls this.)"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from jobs import services, transitions
from jobs.dispatch import DispatchEnvelope
from jobs.models import AttemptStatus, Job, JobAttempt, JobStatus
from jobs.services import JobSpec
from orchestration.worker import execute
from tests.factories import dispatch_of
from tests.orchestration.conftest import wait_for


def submit(user, type: str = "demo.noop", **spec) -> Job:
    return services.job_submit(owner_id=user.pk, spec=JobSpec(type=type, **spec)).job


def envelope_of(job: Job) -> DispatchEnvelope:
    return dispatch_of(job)


@pytest.mark.django_db
def test_success_records_result_and_history(user):
    job = submit(user, "demo.echo", payload={"x": 1})
    outcome = execute(envelope_of(job), worker="w1")
    assert (outcome.status, outcome.recorded) == ("SUCCEEDED", True)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.result == {"x": 1}
    assert job.attempts == 1
    assert job.finished_at is not None
    attempt = JobAttempt.objects.get(job=job)
    assert (attempt.attempt, attempt.status, attempt.worker) == (1, AttemptStatus.SUCCEEDED, "w1")


@pytest.mark.django_db
def test_a_duplicate_delivery_does_nothing(user):
    job = submit(user)
    assert execute(envelope_of(job)).status == "SUCCEEDED"
    assert execute(envelope_of(job)).status == "SKIPPED"
    assert JobAttempt.objects.filter(job=job).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicate_deliveries_run_one_attempt(user):
    job = submit(user, "demo.sleep", payload={"seconds": 0.3})
    results: list[str] = []

    def deliver() -> None:
        results.append(execute(envelope_of(job)).status)
        connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(results) == ["SKIPPED", "SKIPPED", "SKIPPED", "SUCCEEDED"]
    assert JobAttempt.objects.filter(job=job).count() == 1


@pytest.mark.django_db
def test_a_stale_message_of_an_earlier_dispatch_loses(user):
    job = submit(user)
    stale = envelope_of(job)
    transitions.mark_queued_many([transitions.Relayed(str(job.id), str(job.dispatch_token), 0, 0)])
    later = timezone.now() + timedelta(days=1)
    assert transitions.release_batch("stale", now=later, limit=1, stale_before=later, ids=[job.id])
    assert execute(stale).status == "SKIPPED"
    assert Job.objects.get(id=job.id).status == JobStatus.PENDING


@pytest.mark.django_db
def test_a_failure_schedules_a_retry_within_the_backoff(user):
    job = submit(
        user, "demo.fail", payload={"message": "boom"}, backoff={"initial": 10, "factor": 2, "max": 60, "jitter": 0.2}
    )
    before = timezone.now()
    assert execute(envelope_of(job)).status == "RETRYING"
    job.refresh_from_db()
    assert job.status == JobStatus.RETRYING
    assert "boom" in job.last_error
    assert before + timedelta(seconds=8) <= job.next_retry_at <= timezone.now() + timedelta(seconds=12)
    attempt = JobAttempt.objects.get(job=job)
    assert attempt.status == AttemptStatus.FAILED
    assert "DemoFailure: boom" in attempt.error
    assert "Traceback" in attempt.traceback


@pytest.mark.django_db
def test_a_permanent_failure_dead_letters_at_once(user):
    job = submit(user, "demo.fail", payload={"retryable": False})
    assert execute(envelope_of(job)).status == "DEAD_LETTER"
    job.refresh_from_db()
    assert job.status == JobStatus.DEAD_LETTER
    assert job.attempts == 1


@pytest.mark.django_db
def test_the_last_attempt_dead_letters(user):
    job = submit(user, "demo.fail", max_attempts=1)
    assert execute(envelope_of(job)).status == "DEAD_LETTER"


@pytest.mark.django_db
def test_a_timeout_stops_the_handler_and_counts_as_a_failed_attempt(user):
    job = submit(user, "demo.sleep", payload={"seconds": 30}, timeout_seconds=1)
    started = time.monotonic()
    assert execute(envelope_of(job)).status == "RETRYING"
    assert time.monotonic() - started < 5
    attempt = JobAttempt.objects.get(job=job)
    assert attempt.status == AttemptStatus.TIMED_OUT
    assert "timed out after 1s" in attempt.error


@pytest.mark.django_db(transaction=True)
def test_cancel_of_a_running_job_stops_it_within_seconds(user):
    job = submit(user, "demo.sleep", payload={"seconds": 60})

    def cancel_soon() -> None:
        wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.RUNNING, timeout=10)
        services.job_cancel(job_id=job.id)
        connection.close()

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    started = time.monotonic()
    outcome = execute(envelope_of(job))
    canceller.join(10)
    assert outcome.status == "CANCELLED"
    assert time.monotonic() - started < 5
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert JobAttempt.objects.get(job=job).status == AttemptStatus.CANCELLED


@pytest.mark.django_db
def test_a_late_result_after_the_job_moved_on_is_dropped(user):
    job = submit(user)
    claim = transitions.mark_running(job.id, dispatch_token=job.dispatch_token, worker="old", lease_seconds=1)
    assert claim is not None
    # The lease reaper failed it meanwhile (worker presumed lost).
    transitions.schedule_retry(
        job.id, attempt=claim.attempt, next_retry_at=timezone.now(), error="lost", attempt_status=AttemptStatus.LOST
    )
    assert not transitions.mark_succeeded(job.id, attempt=claim.attempt, result={"late": True})
    assert Job.objects.get(id=job.id).status == JobStatus.RETRYING


@pytest.mark.django_db
@pytest.mark.parametrize("seconds", ["nan", "-inf"])
def test_a_result_json_cannot_carry_ends_the_job_after_one_attempt(user, seconds):
    # demo.sleep returns {"slept": float(seconds)}: NaN and Infinity are not JSON. Every write
    # path stores them as null (orjson's reading), as the batch path always did; psycopg's
    # json.dumps wrote `NaN`, PostgreSQL refused it and the job ran again and again.
    job = submit(user, "demo.sleep", payload={"seconds": seconds})
    outcome = execute(envelope_of(job), worker="w1")
    assert (outcome.status, outcome.recorded) == ("SUCCEEDED", True)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.result) == (JobStatus.SUCCEEDED, 1, {"slept": None})
