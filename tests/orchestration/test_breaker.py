"""Circuit breakers per owner and job type, in real Redis, through the real worker code: they open on
failures, hold jobs back without using attempts, let one probe through and close on success."""

from __future__ import annotations

import time

import pytest

from jobs import services
from jobs.dispatch import DispatchEnvelope
from jobs.models import Job, JobStatus
from jobs.services import JobSpec
from orchestration import breaker
from orchestration.breaker import BREAKERS
from orchestration.scheduler import Scheduler
from orchestration.worker import execute
from tests.factories import dispatch_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def quick_breaker(settings):
    settings.BREAKER_MIN_CALLS = 4
    settings.BREAKER_FAILURE_RATIO = 0.5
    settings.BREAKER_OPEN_SECONDS = 0.5
    settings.BREAKER_FLUSH_SECONDS = 0  # count every result at once
    settings.BREAKER_CACHE_SECONDS = 0
    settings.SCHEDULER_LOCK_KEY = f"test-breaker-scheduler-{time.monotonic_ns()}"
    return settings


def submit(user, type_: str, **payload) -> Job:
    return services.job_submit(owner_id=user.pk, spec=JobSpec(type=type_, payload=payload, max_attempts=5)).job


def envelope(job: Job) -> DispatchEnvelope:
    return dispatch_of(job)


def test_failures_open_the_breaker_and_jobs_are_held_without_using_attempts(user, quick_breaker):
    for _ in range(4):
        assert execute(envelope(submit(user, "demo.fail"))).status == "RETRYING"
    assert breaker.state_of(user.pk, "demo.fail").state == "open"
    held = submit(user, "demo.fail")
    outcome = execute(envelope(held))
    assert outcome.status == "PAUSED"
    held.refresh_from_db()
    assert (held.status, held.attempts, held.dispatch_token) == (JobStatus.PENDING, 0, None)
    assert held.breaker_held_at is not None
    # other types are not affected
    assert execute(envelope(submit(user, "demo.noop"))).status == "SUCCEEDED"


def test_a_successful_probe_closes_the_breaker_and_the_scheduler_releases_held_jobs(user, quick_breaker):
    for _ in range(4):
        execute(envelope(submit(user, "demo.flaky", failures=1)))
    assert breaker.state_of(user.pk, "demo.flaky").state == "open"
    held = [submit(user, "demo.flaky", failures=0) for _ in range(3)]
    assert [execute(envelope(j)).status for j in held] == ["PAUSED"] * 3

    scheduler = Scheduler()
    assert scheduler.tick().paused_released == 0  # still open: nothing goes out
    time.sleep(0.6)
    assert breaker.state_of(user.pk, "demo.flaky").state == "half_open"
    assert scheduler.tick().paused_released == 1  # one probe
    probe = next(j for j in held if Job.objects.get(id=j.id).dispatch_token is not None)
    assert execute(envelope(probe)).status == "SUCCEEDED"
    assert breaker.state_of(user.pk, "demo.flaky").state == "closed"
    assert scheduler.tick().paused_released == 2
    for j in held:
        if j.id != probe.id:
            assert execute(envelope(j)).status == "SUCCEEDED"
    assert all(Job.objects.get(id=j.id).attempts == 1 for j in held)


def test_a_failed_probe_opens_the_breaker_again(user, quick_breaker):
    for _ in range(4):
        execute(envelope(submit(user, "demo.fail")))
    time.sleep(0.6)
    assert BREAKERS.allow(user.pk, "demo.fail", probe_seconds=60) == breaker.PROBE
    assert BREAKERS.allow(user.pk, "demo.fail", probe_seconds=60) == breaker.HOLD  # one probe at a time
    BREAKERS.record(user.pk, "demo.fail", ok=False, probe=True)
    state = breaker.state_of(user.pk, "demo.fail")
    assert state.state == "open"
    assert not state.probe_running


def test_permanent_errors_do_not_count(user, quick_breaker):
    for _ in range(6):
        job = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.fail", payload={"retryable": False})).job
        assert execute(envelope(job)).status == "DEAD_LETTER"
    assert breaker.state_of(user.pk, "demo.fail").state == "closed"


def test_the_api_shows_breakers(api, user, quick_breaker):
    for _ in range(4):
        execute(envelope(submit(user, "demo.fail")))
    body = api.get("/api/v1/breakers/").json()
    (entry,) = [b for b in body["results"] if b["type"] == "demo.fail"]
    assert entry["state"] == "open"
    assert entry["failures"] == 4
    one = api.get("/api/v1/breakers/demo.fail/").json()
    assert one["state"] == "open"
    assert api.get("/api/v1/breakers/demo.noop/").json()["state"] == "closed"


def test_one_owners_failures_never_hold_another_owners_jobs_of_the_type(user, other_user, quick_breaker):
    # One tenant's failing (or timing-out) jobs of a type open its own breaker only.
    for _ in range(4):
        assert execute(envelope(submit(user, "demo.flaky", failures=1))).status == "RETRYING"
    assert breaker.state_of(user.pk, "demo.flaky").state == "open"
    assert breaker.state_of(other_user.pk, "demo.flaky").state == "closed"
    assert execute(envelope(submit(user, "demo.flaky", failures=0))).status == "PAUSED"
    assert execute(envelope(submit(other_user, "demo.flaky", failures=0))).status == "SUCCEEDED"


def test_each_owner_sees_its_own_breakers_and_staff_sees_all(api, other_api, staff_api, user, quick_breaker):
    for _ in range(4):
        execute(envelope(submit(user, "demo.fail")))
    mine = api.get("/api/v1/breakers/").json()["results"]
    assert [(b["owner"], b["type"], b["state"]) for b in mine] == [(user.pk, "demo.fail", "open")]
    assert other_api.get("/api/v1/breakers/").json()["results"] == []
    assert other_api.get("/api/v1/breakers/demo.fail/").json()["state"] == "closed"
    assert other_api.get(f"/api/v1/breakers/?owner={user.pk}").json()["results"] == []  # not staff: ignored
    everyone = staff_api.get("/api/v1/breakers/").json()["results"]
    assert (user.pk, "demo.fail", "open") in [(b["owner"], b["type"], b["state"]) for b in everyone]
    assert staff_api.get(f"/api/v1/breakers/demo.fail/?owner={user.pk}").json()["state"] == "open"
    assert staff_api.get("/api/v1/breakers/?owner=x").status_code == 400
