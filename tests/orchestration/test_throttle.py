"""`ctx.throttle(seconds)`: the downstream asked to slow down, so the job goes back to wait
without using an attempt of its budget, its concurrency slot freed; it runs again when due."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from jobs import services, transitions
from jobs.handlers import JobContext, handler
from jobs.models import BlockedKey, ConcurrencySlot, Job, JobAttempt, JobStatus
from orchestration.worker import execute
from tests.factories import submit_job
from tests.workflows.conftest import pending_dispatches

pytestmark = pytest.mark.django_db


@handler("test.throttled_once")
def throttled_once(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    if ctx.attempt == 1:
        ctx.throttle(payload.get("seconds", 30))
    return {"attempt": ctx.attempt}


def run_all() -> list[str]:
    return [str(execute(envelope, worker="w").status) for envelope in pending_dispatches()]


def release_due(after_seconds: float) -> None:
    now = timezone.now() + timedelta(seconds=after_seconds)
    services.job_dispatch_released(transitions.release_batch("delayed", now=now, limit=100))


def test_a_throttled_job_waits_without_using_an_attempt_then_runs(user):
    job = submit_job(user, type="test.throttled_once", payload={"seconds": 30}, max_attempts=1)
    assert run_all() == ["THROTTLED"]
    job.refresh_from_db()
    assert (job.status, job.attempts, job.attempt_seq, job.dispatch_token) == (JobStatus.PENDING, 0, 1, None)
    assert timezone.now() + timedelta(seconds=28) < job.run_at <= timezone.now() + timedelta(seconds=30)
    [first] = JobAttempt.objects.filter(job=job)
    assert first.status == "FAILED"  # the history keeps that it ran, and why it stopped
    assert "throttled for 30s" in first.error
    assert first.error_class == "jobs.handlers.Throttled"

    release_due(5)
    assert run_all() == []  # not yet
    release_due(31)
    assert run_all() == ["SUCCEEDED"]
    job.refresh_from_db()
    assert (job.status, job.result, job.attempts) == (JobStatus.SUCCEEDED, {"attempt": 2}, 1)  # within max_attempts=1


def test_a_throttled_keyed_job_frees_its_slot_and_waits_for_the_blocked_scan(user):
    job = submit_job(user, type="test.throttled_once", concurrency_key="api", concurrency_limit=1)
    assert run_all() == ["THROTTLED"]
    assert ConcurrencySlot.objects.get(key=f"{user.pk}:api").running == 0
    assert BlockedKey.objects.filter(owner_id=user.pk, key="api").exists()
    assert Job.objects.get(id=job.id).status == JobStatus.PENDING


def test_a_throttled_job_with_a_cancel_request_ends_cancelled(user, monkeypatch):
    job = submit_job(user, type="test.throttled_once")
    [envelope] = pending_dispatches()
    original = transitions.throttle_back

    def cancel_first(*args: Any, **kwargs: Any) -> bool:
        Job.objects.filter(id=job.id).update(cancel_requested_at=timezone.now())
        return original(*args, **kwargs)

    monkeypatch.setattr(transitions, "throttle_back", cancel_first)  # the cancel lands just before
    assert str(execute(envelope, worker="w").status) == "CANCELLED"
    assert Job.objects.get(id=job.id).status == JobStatus.CANCELLED


@pytest.mark.parametrize("seconds", [0, -1, 86401, float("nan"), True, "5"])
def test_a_bad_throttle_is_a_value_error(seconds):
    ctx = JobContext(job_id=uuid.uuid4(), attempt=1, type="x")
    with pytest.raises(ValueError, match="throttle seconds must be"):
        ctx.throttle(seconds)
