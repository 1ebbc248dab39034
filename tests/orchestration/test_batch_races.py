"""The worker's batch path under unlucky timing and odd handler output (issue 16): each test
is a scenario that once ran a job twice, lost a success or a cancel, or crashed a batch.
Real PostgreSQL and real worker code; handlers registered here run in this process."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import Counter
from typing import Any

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from jobs import services, transitions
from jobs.dispatch import DispatchEnvelope
from jobs.handlers import handler
from jobs.models import AttemptStatus, Job, JobAttempt, JobStatus, Outbox
from jobs.services import JobSpec
from orchestration import worker
from orchestration.worker import claims
from orchestration.worker.batch import execute_batch
from tests.factories import dispatch_of
from tests.orchestration.conftest import wait_for

FAST = {"initial": 0.2, "factor": 2.0, "max": 1.0, "jitter": 0.0}
RUNS: Counter[str] = Counter()  # job id → how many times a test handler started for it
HOOKS: dict[str, Any] = {}  # job id → what a test handler does besides counting


@handler("test.race")
def _race(payload: dict[str, Any], ctx: Any) -> Any:
    RUNS[str(ctx.job_id)] += 1
    hook = HOOKS.get(str(ctx.job_id))
    return hook(ctx) if hook else {"ran": True}


@pytest.fixture(autouse=True)
def _fresh_counters():
    RUNS.clear()
    HOOKS.clear()


def submit(user, type: str = "test.race", **spec) -> Job:
    return services.job_submit(owner_id=user.pk, spec=JobSpec(type=type, backoff=FAST, **spec)).job


def envelope(job: Job) -> DispatchEnvelope:
    return dispatch_of(job)


def status(job: Job) -> str:
    return Job.objects.get(id=job.id).status


@pytest.mark.django_db
def test_a_duplicate_dispatch_inside_one_batch_runs_the_handler_once(user):
    job, other = submit(user), submit(user)
    outcomes = execute_batch([envelope(job), envelope(job), envelope(other)], worker="w1")
    assert RUNS[str(job.id)] == 1
    assert sorted(o.status for o in outcomes if o.job_id == str(job.id)) == ["SKIPPED", "SUCCEEDED"]
    assert JobAttempt.objects.filter(job=job).count() == 1
    assert status(job) == status(other) == JobStatus.SUCCEEDED


@pytest.mark.django_db(transaction=True)
def test_a_handed_back_job_is_not_kept_alive_by_the_batch_that_gave_it_away(user, settings, queue):
    settings.JOB_LEASE_SECONDS = 0.9  # the batch renews every 0.3 s
    settings.BATCH_HAND_BACK_SECONDS = 0.2
    slow = submit(user, "demo.sleep", payload={"seconds": 2.5}, queue=queue)
    waiting = submit(user, queue=queue)
    leases: list[Any] = []

    def second_worker_claims_then_dies() -> None:
        wait_for(
            lambda: status(waiting) == JobStatus.QUEUED and status(slow) == JobStatus.RUNNING, 10, message="hand-back"
        )
        claim = transitions.mark_running(
            waiting.id, dispatch_token=waiting.dispatch_token, worker="w2", lease_seconds=0.9
        )
        assert claim is not None  # w2 now owns the attempt, and dies without renewing it
        leases.append(claim.lease_expires_at)
        time.sleep(1.5)  # the first batch's slow job still runs
        leases.append(Job.objects.get(id=waiting.id).lease_expires_at)
        connection.close()

    thief = threading.Thread(target=second_worker_claims_then_dies)
    thief.start()
    outcomes = {o.job_id: o.status for o in execute_batch([envelope(slow), envelope(waiting)], worker="w1")}
    thief.join(15)
    assert outcomes[str(waiting.id)] == "HANDED_BACK"
    assert leases[0] == leases[1], "the batch that handed the job back renewed another worker's lease"
    assert RUNS[str(waiting.id)] == 0


@pytest.mark.django_db(transaction=True)
def test_a_batch_does_not_start_a_job_it_no_longer_owns(user, settings):
    settings.BATCH_HAND_BACK_SECONDS = 60
    first, second = submit(user), submit(user)

    def reaped_meanwhile(ctx: Any) -> Any:
        # The batch's leases lapsed while this handler ran (it held the GIL, or the database
        # hung): the reaper retried `second`, and another worker runs it now.
        claim_of_second = Job.objects.get(id=second.id).attempt_seq
        assert transitions.schedule_retry(
            second.id, attempt=claim_of_second, next_retry_at=timezone.now(), error="worker lost",
            attempt_status=AttemptStatus.LOST,
        )  # fmt: skip
        time.sleep(1.1)  # long enough that the batch must look again before the next job
        return {}

    HOOKS[str(first.id)] = reaped_meanwhile
    outcomes = {o.job_id: o for o in execute_batch([envelope(first), envelope(second)], worker="w1")}
    assert RUNS[str(second.id)] == 0, "the batch ran a job the reaper had taken from it"
    assert outcomes[str(second.id)].status == "SKIPPED"
    assert status(second) == JobStatus.RETRYING


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["single", "batch"])
def test_a_cancel_requested_during_a_failing_attempt_is_honoured(user, path):
    job, other = submit(user, max_attempts=4), submit(user)

    def cancelled_then_fails(ctx: Any) -> Any:
        services.job_cancel(job_id=ctx.job_id)  # a RUNNING job: a cancel request
        raise RuntimeError("boom")

    HOOKS[str(job.id)] = cancelled_then_fails
    if path == "single":
        outcome = worker.execute(envelope(job), worker="w1")
    else:
        [outcome] = [o for o in execute_batch([envelope(job), envelope(other)]) if o.job_id == str(job.id)]
    assert outcome.status == "CANCELLED"
    assert status(job) == JobStatus.CANCELLED
    attempt = JobAttempt.objects.get(job=job)
    assert attempt.status == AttemptStatus.FAILED
    assert "boom" in attempt.error


@pytest.mark.django_db(transaction=True)
def test_a_cancel_requested_during_a_timed_out_attempt_is_honoured(user, settings):
    settings.JOB_CANCEL_GRACE_SECONDS = 60  # the timeout, not the cancel, interrupts it
    job = submit(user, timeout_seconds=1, max_attempts=4)

    def cancelled_then_hangs(ctx: Any) -> Any:
        services.job_cancel(job_id=ctx.job_id)
        time.sleep(5)

    HOOKS[str(job.id)] = cancelled_then_hangs
    assert worker.execute(envelope(job), worker="w1").status == "CANCELLED"
    assert status(job) == JobStatus.CANCELLED
    assert JobAttempt.objects.get(job=job).status == AttemptStatus.TIMED_OUT


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("exc", [SystemExit(2), asyncio.CancelledError(), GeneratorExit()])
def test_a_handler_raising_base_exception_fails_its_attempt_and_the_batch_goes_on(user, exc):
    before, bad, after = submit(user), submit(user, max_attempts=1), submit(user)

    def raises(ctx: Any) -> Any:
        raise exc

    HOOKS[str(bad.id)] = raises
    outcomes = {o.job_id: o.status for o in execute_batch([envelope(before), envelope(bad), envelope(after)])}
    assert outcomes == {str(before.id): "SUCCEEDED", str(bad.id): "DEAD_LETTER", str(after.id): "SUCCEEDED"}
    assert [status(j) for j in (before, bad, after)] == [
        JobStatus.SUCCEEDED, JobStatus.DEAD_LETTER, JobStatus.SUCCEEDED
    ]  # fmt: skip
    assert type(exc).__name__ in Job.objects.get(id=bad.id).last_error


@pytest.mark.django_db(transaction=True)
def test_a_worker_interrupted_mid_batch_keeps_its_successes_and_hands_the_rest_back(user, queue):
    before, bad, after = submit(user, queue=queue), submit(user, queue=queue), submit(user, queue=queue)

    def interrupted(ctx: Any) -> Any:
        raise KeyboardInterrupt  # the worker process is being stopped

    HOOKS[str(bad.id)] = interrupted
    with pytest.raises(KeyboardInterrupt):
        execute_batch([envelope(before), envelope(bad), envelope(after)])
    assert status(before) == JobStatus.SUCCEEDED  # recorded, not left to be reaped as LOST
    assert status(bad) == JobStatus.RETRYING
    assert status(after) == JobStatus.QUEUED  # handed back, never started
    assert RUNS[str(after.id)] == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["single", "batch"])
def test_a_result_or_error_with_nul_is_stored_marked_and_loses_no_sibling(user, path):
    nul_result, nul_error, plain = submit(user), submit(user, max_attempts=1), submit(user)
    HOOKS[str(nul_result.id)] = lambda ctx: {"text": "a\x00b", "k\x00": 1}

    def fails(ctx: Any) -> Any:
        raise RuntimeError("bad\x00byte")

    HOOKS[str(nul_error.id)] = fails
    jobs = (nul_result, nul_error, plain)
    if path == "single":
        for j in jobs:
            worker.execute(envelope(j), worker="w1")
    else:
        execute_batch([envelope(j) for j in jobs])
    assert [status(j) for j in jobs] == [JobStatus.SUCCEEDED, JobStatus.DEAD_LETTER, JobStatus.SUCCEEDED]
    assert Job.objects.get(id=nul_result.id).result == {"text": "a\ufffdb", "k\ufffd": 1}
    assert "bad\ufffdbyte" in Job.objects.get(id=nul_error.id).last_error


@pytest.mark.django_db(transaction=True)
def test_huge_results_and_errors_are_truncated_with_a_marker(user, settings):
    settings.JOB_RESULT_MAX_BYTES = 10_000
    settings.JOB_ERROR_MAX_CHARS = 1_000
    big_result, big_error = submit(user), submit(user, max_attempts=1)
    HOOKS[str(big_result.id)] = lambda ctx: {"blob": "x" * 50_000}

    def fails(ctx: Any) -> Any:
        raise RuntimeError("y" * 50_000)

    HOOKS[str(big_error.id)] = fails
    execute_batch([envelope(big_result), envelope(big_error)])
    result = Job.objects.get(id=big_result.id).result
    assert result["truncated"] is True
    assert result["bytes"] > 50_000
    assert result["limit"] == 10_000
    job = Job.objects.get(id=big_error.id)
    assert job.status == JobStatus.DEAD_LETTER
    assert len(job.last_error) <= 1_000
    assert "truncated" in job.last_error
    attempt = JobAttempt.objects.get(job=big_error)
    assert len(attempt.error) <= 1_000
    # The jobs.dead message carries the bounded error too: it always fits in a Kafka message.
    envelope_error = Outbox.objects.get(job_id=big_error.id, topic="jobs.dead").envelope["error"]
    assert len(envelope_error) <= 1_000


@pytest.mark.django_db(transaction=True)
def test_a_claim_whose_reply_was_lost_is_taken_back_not_orphaned(user, monkeypatch):
    job = submit(user, max_attempts=1)
    real = transitions.mark_running_many
    calls = {"n": 0}

    def commits_then_loses_the_reply(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            connection.close()
            raise OperationalError("server closed the connection unexpectedly")
        return result

    monkeypatch.setattr(transitions, "mark_running_many", commits_then_loses_the_reply)
    outcomes = execute_batch([envelope(job), envelope(submit(user))], worker="w1")
    assert RUNS[str(job.id)] == 1
    assert {o.status for o in outcomes} == {"SUCCEEDED"}
    assert status(job) == JobStatus.SUCCEEDED
    assert JobAttempt.objects.filter(job=job).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrency_keys_are_each_owners_own(user, other_user, settings):
    from orchestration.scheduler import Scheduler

    settings.SCHEDULER_LOCK_KEY = f"test-keys-{time.monotonic_ns()}"

    def keyed(job: Job, limit: int = 1) -> DispatchEnvelope:
        return dataclasses.replace(envelope(job), concurrency_key="shared-name", concurrency_limit=limit)

    mine, held_mine = (submit(user, concurrency_key="shared-name", concurrency_limit=1) for _ in range(2))
    theirs = submit(other_user, concurrency_key="shared-name", concurrency_limit=1)
    # One owner's running job holds its own slot of "shared-name" only...
    first = claims.claim_within_limit(keyed(mine), "w1")
    assert isinstance(first, transitions.Claim)
    # ...so another owner's job with the same key name still runs at once,
    assert isinstance(claims.claim_within_limit(keyed(theirs), "w2"), transitions.Claim), "a tenant took a slot"
    # while the owner's own second job is held by the owner's limit.
    assert claims.claim_within_limit(keyed(held_mine), "w3") == "BLOCKED"
    # Another owner's wider limit under the same name does not widen this owner's slots.
    wide = submit(other_user, concurrency_key="shared-name", concurrency_limit=5)
    transitions.block_for_key(wide.id, dispatch_token=wide.dispatch_token)
    scheduler = Scheduler()
    scheduler.tick()
    assert Job.objects.get(id=held_mine.id).dispatch_token is None, "released past its owner's limit"
    assert Job.objects.get(id=wide.id).dispatch_token is not None  # its own owner has room
    # When the owner's running job ends, its own slot frees and its held job goes out.
    assert transitions.mark_succeeded(first.job_id, attempt=first.attempt, result={})
    scheduler.tick()
    assert Job.objects.get(id=held_mine.id).dispatch_token is not None
