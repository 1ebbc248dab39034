"""Batched execution (orchestration.worker.batch) against real PostgreSQL: one claim for many
jobs, per-job outcomes, duplicate batches, cancel inside a batch, leases of the jobs waiting
their turn. A worker SIGKILLed mid-batch is in test_recovery (it needs every role)."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from jobs import services, transitions
from jobs.dispatch import DispatchEnvelope
from jobs.models import AttemptStatus, Job, JobAttempt, JobStatus
from jobs.services import JobSpec
from orchestration.worker.batch import execute_batch
from tests.factories import dispatch_of
from tests.orchestration.conftest import celery_messages, wait_for

FAST = {"initial": 0.2, "factor": 2.0, "max": 1.0, "jitter": 0.0}


def submit(user, type: str = "demo.noop", **spec) -> Job:
    return services.job_submit(owner_id=user.pk, spec=JobSpec(type=type, backoff=FAST, **spec)).job


def envelopes(*jobs: Job) -> list[DispatchEnvelope]:
    return [dispatch_of(j) for j in jobs]


def statuses(*jobs: Job) -> list[str]:
    return [Job.objects.get(id=j.id).status for j in jobs]


@pytest.mark.django_db
def test_a_batch_runs_every_job_and_records_each_outcome(user):
    jobs = [submit(user) for _ in range(20)] + [submit(user, "demo.echo", payload={"n": 7})]
    outcomes = execute_batch(envelopes(*jobs), worker="w1")
    assert [(o.job_id, o.status, o.recorded) for o in outcomes] == [(str(j.id), "SUCCEEDED", True) for j in jobs]
    assert set(statuses(*jobs)) == {JobStatus.SUCCEEDED}
    assert Job.objects.get(id=jobs[-1].id).result == {"n": 7}
    attempts = JobAttempt.objects.filter(job__in=jobs)
    assert attempts.count() == len(jobs)
    assert {(a.attempt, a.status, a.worker) for a in attempts} == {(1, AttemptStatus.SUCCEEDED, "w1")}
    assert all(a.finished_at is not None for a in attempts)


@pytest.mark.django_db
def test_a_failing_job_in_a_batch_follows_its_own_policy(user):
    ok1, flaky, doomed, ok2 = (
        submit(user),
        submit(user, "demo.flaky", payload={"failures": 1}),
        submit(user, "demo.fail", payload={"message": "nope"}, max_attempts=1),
        submit(user, "demo.echo", payload={"x": 1}),
    )
    outcomes = {o.job_id: o.status for o in execute_batch(envelopes(ok1, flaky, doomed, ok2))}
    assert outcomes == {
        str(ok1.id): "SUCCEEDED",
        str(flaky.id): "RETRYING",
        str(doomed.id): "DEAD_LETTER",
        str(ok2.id): "SUCCEEDED",
    }
    assert statuses(ok1, flaky, doomed, ok2) == [
        JobStatus.SUCCEEDED, JobStatus.RETRYING, JobStatus.DEAD_LETTER, JobStatus.SUCCEEDED
    ]  # fmt: skip
    flaky.refresh_from_db()
    assert flaky.next_retry_at is not None
    assert flaky.last_error
    assert JobAttempt.objects.get(job=doomed).error.endswith("nope")


@pytest.mark.django_db
def test_a_duplicate_batch_claims_nothing_twice(user):
    jobs = [submit(user) for _ in range(5)]
    assert {o.status for o in execute_batch(envelopes(*jobs))} == {"SUCCEEDED"}
    assert {(o.status, o.recorded) for o in execute_batch(envelopes(*jobs))} == {("SKIPPED", False)}
    assert JobAttempt.objects.filter(job__in=jobs).count() == 5


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicate_batches_run_each_job_once(user):
    jobs = [submit(user, "demo.sleep", payload={"seconds": 0.05}) for _ in range(10)]
    results: list[str] = []

    def deliver(batch: list[dict[str, str]]) -> None:
        results.extend(o.status for o in execute_batch(batch))
        connection.close()

    # Four deliveries of the same jobs in different orders: row locks are taken in id order,
    # so they queue instead of deadlocking, and each job is claimed by exactly one.
    batches = [envelopes(*jobs), envelopes(*reversed(jobs)), envelopes(*jobs[5:], *jobs[:5]), envelopes(*jobs)]
    threads = [threading.Thread(target=deliver, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.count("SUCCEEDED") == 10
    assert results.count("SKIPPED") == 30
    assert JobAttempt.objects.filter(job__in=jobs).count() == 10
    assert set(statuses(*jobs)) == {JobStatus.SUCCEEDED}


@pytest.mark.django_db(transaction=True)
def test_a_cancel_reaches_a_job_waiting_inside_a_batch(user, settings):
    settings.BATCH_HAND_BACK_SECONDS = 60  # `after` stays in this batch
    slow, waiting, after = submit(user, "demo.sleep", payload={"seconds": 1.5}), submit(user), submit(user)

    def cancel_once_claimed() -> None:
        wait_for(lambda: Job.objects.get(id=waiting.id).status == JobStatus.RUNNING, message="batch claimed")
        services.job_cancel(job_id=waiting.id)  # RUNNING (held by the batch): a cancel request
        connection.close()

    canceller = threading.Thread(target=cancel_once_claimed)
    canceller.start()
    outcomes = {o.job_id: o.status for o in execute_batch(envelopes(slow, waiting, after))}
    canceller.join(10)
    assert outcomes == {str(slow.id): "SUCCEEDED", str(waiting.id): "CANCELLED", str(after.id): "SUCCEEDED"}
    waiting.refresh_from_db()
    assert waiting.status == JobStatus.CANCELLED
    assert waiting.result is None
    assert JobAttempt.objects.get(job=waiting).status == AttemptStatus.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_jobs_waiting_their_turn_keep_their_leases(user, settings):
    settings.JOB_LEASE_SECONDS = 1.2  # renewed every 0.4 s; the first job runs 2 s
    settings.BATCH_HAND_BACK_SECONDS = 60  # the waiting job stays in this batch
    slow, waiting = submit(user, "demo.sleep", payload={"seconds": 2.0}), submit(user)
    leases: list[object] = []

    def watch() -> None:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            running = Job.objects.filter(id=waiting.id, status=JobStatus.RUNNING)
            leases.extend(running.values_list("lease_expires_at", flat=True))
            time.sleep(0.1)
        connection.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    execute_batch(envelopes(slow, waiting))
    watcher.join(10)
    assert len(set(leases)) >= 3, "the waiting job's lease was not renewed"
    # Reaping now finds nothing: every lease was kept alive until the job finished.
    assert statuses(slow, waiting) == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED]
    assert JobAttempt.objects.filter(job__in=[slow, waiting]).count() == 2


@pytest.mark.django_db(transaction=True)
def test_successes_are_written_while_a_long_job_of_the_batch_runs(user):
    quick, slow = submit(user), submit(user, "demo.sleep", payload={"seconds": 1.5})
    seen: list[str] = []

    def watch() -> None:
        wait_for(lambda: Job.objects.get(id=slow.id).status == JobStatus.RUNNING, message="batch claimed")
        time.sleep(0.8)  # the slow job is running; the quick one finished long ago
        seen.append(Job.objects.get(id=quick.id).status)
        connection.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    execute_batch(envelopes(quick, slow))
    watcher.join(10)
    assert seen == [JobStatus.SUCCEEDED]


@pytest.mark.django_db
def test_a_late_batch_result_after_the_job_moved_on_is_dropped(user):
    job = submit(user)
    [claim] = transitions.mark_running_many([(str(job.id), str(job.dispatch_token))], worker="w", lease_seconds=30)
    assert transitions.mark_cancelled(job.id, attempt=claim.attempt)  # e.g. reaped and cancelled
    assert transitions.mark_succeeded_many([(job.id, claim.attempt, {"late": True})]) == set()
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert job.result is None


@pytest.mark.django_db(transaction=True)
def test_a_slow_batch_hands_its_waiting_jobs_back_for_other_workers(user, settings, queue):
    settings.BATCH_HAND_BACK_SECONDS = 0.3
    slow = submit(user, "demo.sleep", payload={"seconds": 1.0}, queue=queue)
    waiting = [submit(user, queue=queue) for _ in range(2)]
    outcomes = {o.job_id: o.status for o in execute_batch(envelopes(slow, *waiting))}
    assert outcomes == {str(slow.id): "SUCCEEDED", **{str(j.id): "HANDED_BACK" for j in waiting}}
    for job in waiting:  # the claim undone: queued again, nothing in its history
        job.refresh_from_db()
        assert (job.status, job.attempts, job.attempt_seq, job.lease_expires_at) == (JobStatus.QUEUED, 0, 0, None)
    assert not JobAttempt.objects.filter(job__in=waiting).exists()
    [batch] = celery_messages(queue, batches=True)  # dispatched again, as one batch
    assert sorted(e["job_id"] for e in batch) == sorted(str(j.id) for j in waiting)
    # Whichever worker takes it claims them as if for the first time.
    assert {o.status for o in execute_batch([DispatchEnvelope.parse(e) for e in batch])} == {"SUCCEEDED"}
    assert list(JobAttempt.objects.filter(job__in=waiting).values_list("attempt", flat=True)) == [1, 1]


@pytest.mark.django_db
def test_a_hand_back_leaves_jobs_with_a_cancel_request_or_another_attempt(user):
    cancelling, moved_on, fine = submit(user), submit(user), submit(user)
    claims = transitions.mark_running_many(
        [(str(j.id), str(j.dispatch_token)) for j in (cancelling, moved_on, fine)], worker="w", lease_seconds=30
    )
    assert transitions.request_cancel(cancelling.id)
    back = transitions.hand_back_many([(c.job_id, c.attempt + (c.job_id == moved_on.id)) for c in claims])
    assert back == {fine.id}
    assert statuses(cancelling, moved_on, fine) == [JobStatus.RUNNING, JobStatus.RUNNING, JobStatus.QUEUED]


@pytest.mark.django_db
def test_a_keyed_job_whose_result_json_cannot_carry_leaves_the_batch_whole(user):
    # The keyed job takes the single path inside the batch; its NaN result once aborted the
    # batch before the rest of it was claimed.
    keyed = submit(user, "demo.sleep", payload={"seconds": "nan"}, concurrency_key="k")
    plain = [submit(user) for _ in range(3)]
    outcomes = execute_batch(envelopes(keyed, *plain), worker="w1")
    assert sorted(o.status for o in outcomes) == ["SUCCEEDED"] * 4
    assert statuses(keyed, *plain) == [JobStatus.SUCCEEDED] * 4
    assert Job.objects.get(id=keyed.id).result == {"slept": None}


@pytest.mark.django_db(transaction=True)
def test_a_slow_keyed_job_first_in_a_batch_leaves_no_job_behind_it_unclaimed(user, other_user, settings, queue):
    # Another tenant's jobs behind a slow keyed job in the same message: claimed before the
    # keyed job runs, and handed back to other workers once it has run long, not left
    # QUEUED-but-held for its whole run, where neither the hand-back nor the stale scan went.
    settings.BATCH_HAND_BACK_SECONDS = 0.3
    keyed = submit(user, "demo.sleep", payload={"seconds": 1.0}, queue=queue, concurrency_key="k")
    behind = [submit(other_user, queue=queue) for _ in range(3)]
    seen: list[list[str]] = []

    def watch() -> None:
        wait_for(lambda: Job.objects.get(id=keyed.id).status == JobStatus.RUNNING, timeout=10)
        seen.append(statuses(*behind))
        connection.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    outcomes = {o.job_id: o.status for o in execute_batch(envelopes(keyed, *behind))}
    watcher.join(15)
    assert seen == [[JobStatus.RUNNING] * 3]  # claimed while the keyed job ran
    assert outcomes == {str(keyed.id): "SUCCEEDED", **{str(j.id): "HANDED_BACK" for j in behind}}
    assert statuses(*behind) == [JobStatus.QUEUED] * 3
    [batch] = celery_messages(queue, batches=True)
    assert sorted(e["job_id"] for e in batch) == sorted(str(j.id) for j in behind)


@pytest.mark.django_db(transaction=True)
def test_a_slow_job_hands_back_the_keyed_jobs_after_it_too(user, settings, queue):
    settings.BATCH_HAND_BACK_SECONDS = 0.3
    slow = submit(user, "demo.sleep", payload={"seconds": 1.0}, queue=queue)
    keyed = submit(user, queue=queue, concurrency_key="k")
    outcomes = {o.job_id: o.status for o in execute_batch(envelopes(slow, keyed))}
    assert outcomes == {str(slow.id): "SUCCEEDED", str(keyed.id): "HANDED_BACK"}
    assert statuses(keyed) == [JobStatus.PENDING]  # never claimed here (nor relayed): it goes as it came
    assert [e["job_id"] for e in celery_messages(queue)] == [str(keyed.id)]
