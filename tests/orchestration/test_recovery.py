"""Failure handling end to end, with every role as a real process: retries with backoff,
dead letters on `jobs.dead`, a worker SIGKILLed mid-job, and dispatch messages lost in Redis.
"""

from __future__ import annotations

import signal
import time

import orjson
import pytest

from config import broker
from jobs import services
from jobs.models import AttemptStatus, Job, JobAttempt, JobStatus
from jobs.services import JobSpec
from tests.orchestration.conftest import Stack, celery_messages, consume_all, wait_for

pytestmark = pytest.mark.slow

FAST = {"initial": 0.2, "factor": 2.0, "max": 1.0, "jitter": 0.1}


@pytest.fixture
def live(stack: Stack) -> Stack:
    stack.env.update(JOB_LEASE_SECONDS="3", DISPATCH_STALE_SECONDS="2", SCHEDULER_TICK_SECONDS="0.2")
    for role in ("relay", "bridge", "scheduler", "worker"):
        stack.start(role)
    return stack


def submit(user, queue: str, type: str, **spec) -> Job:
    return services.job_submit(owner_id=user.pk, spec=JobSpec(type=type, queue=queue, backoff=FAST, **spec)).job


def wait_status(job: Job, status: str, stack: Stack, timeout: float = 60) -> Job:
    try:
        wait_for(lambda: Job.objects.get(id=job.id).status == status, timeout=timeout, message=f"{job.id} {status}")
    except AssertionError:
        print(stack.logs())
        raise
    return Job.objects.get(id=job.id)


def test_flaky_succeeds_on_the_right_attempt(live, user, queue):
    job = wait_status(submit(user, queue, "demo.flaky", payload={"failures": 2}), JobStatus.SUCCEEDED, live)
    assert job.result == {"succeeded_on_attempt": 3}
    statuses = list(JobAttempt.objects.filter(job=job).order_by("attempt").values_list("status", flat=True))
    assert statuses == [AttemptStatus.FAILED, AttemptStatus.FAILED, AttemptStatus.SUCCEEDED]


def test_fail_dead_letters_with_every_attempt_and_is_published(live, user, queue, topics):
    job = wait_status(
        submit(user, queue, "demo.fail", payload={"message": "nope"}, max_attempts=3), JobStatus.DEAD_LETTER, live
    )
    attempts = list(JobAttempt.objects.filter(job=job).order_by("attempt"))
    assert [a.attempt for a in attempts] == [1, 2, 3]
    assert all(a.status == AttemptStatus.FAILED and "nope" in a.error for a in attempts)
    message = orjson.loads(consume_all(topics["dead"], 1)[0].value())
    assert message["job_id"] == str(job.id)
    assert message["attempts"] == 3
    assert "nope" in message["error"]


def test_a_worker_killed_mid_job_is_retried_and_finishes_once(live, user, queue):
    job = submit(user, queue, "demo.sleep", payload={"seconds": 2})
    wait_status(job, JobStatus.RUNNING, live)
    live.stop("worker", signal.SIGKILL)
    live.start("worker")
    job = wait_status(job, JobStatus.SUCCEEDED, live, timeout=90)
    attempts = list(JobAttempt.objects.filter(job=job).order_by("attempt").values_list("status", flat=True))
    assert attempts[0] == AttemptStatus.LOST
    assert attempts[-1] == AttemptStatus.SUCCEEDED
    assert attempts.count(AttemptStatus.SUCCEEDED) == 1


def test_messages_lost_in_redis_are_dispatched_again(stack, user, queue):
    stack.env.update(DISPATCH_STALE_SECONDS="1", SCHEDULER_TICK_SECONDS="0.2")
    for role in ("relay", "bridge", "scheduler"):
        stack.start(role)
    jobs = [submit(user, queue, "demo.noop") for _ in range(5)]
    wait_for(lambda: len(celery_messages(queue)) >= 5, timeout=60, message="5 jobs in Redis")
    broker.client().delete(*broker.list_names(queue))  # Redis flushed: messages gone
    time.sleep(0.5)
    stack.start("worker")
    for job in jobs:
        wait_status(job, JobStatus.SUCCEEDED, stack)
        assert JobAttempt.objects.filter(job=job).count() == 1


def test_a_worker_killed_mid_batch_loses_only_its_unfinished_jobs(stack, user, queue):
    """A batch [quick, slow, after] delivered straight to a worker (the relay is not running
    yet, so nothing else dispatches them); the worker is SIGKILLed while `slow` runs. `quick`
    finished and stays finished; `slow` and `after` go to the lease reaper and run again."""
    from config.celery import app

    stack.env.update(JOB_LEASE_SECONDS="3", DISPATCH_STALE_SECONDS="2", SCHEDULER_TICK_SECONDS="0.2",
                     BATCH_HAND_BACK_SECONDS="60")  # `after` stays in the batch until the kill  # fmt: skip
    stack.start("worker")
    quick, slow, after = (
        submit(user, queue, "demo.noop"), submit(user, queue, "demo.sleep", payload={"seconds": 4}),
        submit(user, queue, "demo.noop"),
    )  # fmt: skip
    batch = [{"v": 1, "job_id": str(j.id), "type": j.type, "queue": queue, "priority": 5, "attempt": 1,
              "dispatch_token": str(j.dispatch_token)} for j in (quick, slow, after)]  # fmt: skip
    app.send_task("orchestration.run_jobs", args=[batch], queue=queue)
    wait_status(quick, JobStatus.SUCCEEDED, stack, timeout=30)  # written while `slow` runs
    assert Job.objects.get(id=slow.id).status == JobStatus.RUNNING
    stack.stop("worker", signal.SIGKILL)
    for role in ("relay", "bridge", "scheduler", "worker"):
        stack.start(role)
    for job in (slow, after):
        wait_status(job, JobStatus.SUCCEEDED, stack, timeout=90)
    history = {
        j.id: list(JobAttempt.objects.filter(job=j).order_by("attempt").values_list("status", flat=True))
        for j in (quick, slow, after)
    }
    assert history[quick.id] == [AttemptStatus.SUCCEEDED]
    assert history[slow.id] == [AttemptStatus.LOST, AttemptStatus.SUCCEEDED]
    assert history[after.id] == [AttemptStatus.LOST, AttemptStatus.SUCCEEDED]
