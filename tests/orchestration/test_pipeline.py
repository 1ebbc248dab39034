"""End to end through the real roles as processes: API service → outbox → relay → Kafka →
bridge → Celery (Redis) → solo worker → PostgreSQL."""

from __future__ import annotations

import orjson
import pytest

from jobs import services
from jobs.models import JobAttempt, JobStatus
from jobs.services import JobSpec
from tests.orchestration.conftest import produce, wait_for

pytestmark = pytest.mark.slow


def status_of(job_id) -> str:
    from jobs.models import Job

    return Job.objects.get(id=job_id).status


def test_jobs_flow_through_every_role(stack, user, queue):
    for role in ("relay", "bridge", "worker"):
        stack.start(role)
    jobs = [
        services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.echo", payload={"i": i}, queue=queue)).job
        for i in range(20)
    ]
    try:
        wait_for(
            lambda: all(status_of(j.id) == JobStatus.SUCCEEDED for j in jobs), timeout=90, message="20 jobs succeeded"
        )
    except AssertionError:
        print(stack.logs())
        raise
    from jobs.models import Job

    assert sorted(Job.objects.get(id=j.id).result["i"] for j in jobs) == list(range(20))

    # The same dispatch message arriving again (e.g. the relay crashed before deleting its
    # outbox row) is claimed by nobody: still exactly one attempt.
    again = {
        "v": 1, "job_id": str(jobs[0].id), "type": "demo.echo", "queue": queue, "priority": 5, "attempt": 1,
        "dispatch_token": str(jobs[0].dispatch_token),
    }  # fmt: skip
    produce(stack.env["KAFKA_JOBS_TOPIC"], [orjson.dumps(again)])
    late = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop", queue=queue)).job
    wait_for(lambda: status_of(late.id) == JobStatus.SUCCEEDED, timeout=60, message="a later job succeeded")
    assert JobAttempt.objects.filter(job_id=jobs[0].id).count() == 1


def test_a_job_survives_a_bridge_killed_before_it_committed(stack, user, queue):
    stack.env["BRIDGE_COMMIT_SECONDS"] = "3600"
    stack.start("relay")
    stack.start("bridge")
    job = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop", queue=queue)).job
    from config import broker

    wait_for(lambda: broker.depths([queue])[queue] == 1, timeout=60, message="the job enqueued")
    stack.stop("bridge", sig=9)  # enqueued, offset never committed
    stack.env["BRIDGE_COMMIT_SECONDS"] = "1"
    stack.start("bridge")
    wait_for(lambda: broker.depths([queue])[queue] == 2, timeout=60, message="the job enqueued again")
    stack.start("worker")
    wait_for(lambda: status_of(job.id) == JobStatus.SUCCEEDED, timeout=60, message="the job succeeded")
    wait_for(lambda: broker.depths([queue])[queue] == 0, timeout=30, message="the duplicate consumed")
    assert JobAttempt.objects.filter(job_id=job.id).count() == 1
