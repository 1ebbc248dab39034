"""Rate limits per key at the worker: a job over its key's rate waits for the start slot it
reserved, holding no worker, and comes back once, at its time; every worker and process
shares the count (Redis); duplicates and races cannot start more than the rate allows."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import orjson
import pytest
from django.conf import settings
from django.utils import timezone

from config.key_rates import KeyRate
from jobs import rate_limits, services, transitions
from jobs.handlers import JobContext, handler
from jobs.models import BlockedKey, Job, JobStatus, RateLimit
from orchestration import breaker, ratelimit
from orchestration.worker import execute
from orchestration.worker.outcomes import Status
from tests.factories import UserFactory, submit_job
from tests.threads import in_thread
from tests.workflows.conftest import pending_dispatches

pytestmark = pytest.mark.django_db


@handler("test.rate_throttles")
def rate_throttles(payload: dict[str, Any], ctx: JobContext) -> None:
    if ctx.attempt == 1:
        ctx.throttle(30)


def run_all() -> list[str]:
    return [str(execute(envelope, worker="w").status) for envelope in pending_dispatches()]


def release_due(after_seconds: float) -> int:
    now = timezone.now() + timedelta(seconds=after_seconds)
    released = transitions.release_batch("delayed", now=now, limit=1000)
    services.job_dispatch_released(released)
    return len(released)


def limit(owner: Any, pattern: str, count: int, period: int = 1, burst: int = 1) -> None:
    RateLimit.objects.create(owner=owner, pattern=pattern, limit=count, period_seconds=period, burst=burst)


def test_reservations_are_spaced_by_the_rate_after_the_burst():
    rate = KeyRate("k", 10, 1, burst=3)
    delays = [ratelimit.reserve(1, "k", rate, reserved=False) for _ in range(6)]
    assert all(d <= 0 for d in delays[:3])  # the burst starts at once
    for n, delay in enumerate(delays[3:], start=1):
        assert n * 0.1 - 0.05 < delay <= n * 0.1 + 0.001
    assert ratelimit.reserve(1, "k", rate, reserved=True) == 0  # a reserved job starts when it comes back
    assert ratelimit.reserve(2, "k", rate, reserved=False) <= 0  # another owner's key is its own


def test_a_pause_holds_back_even_jobs_that_reserved_their_slot():
    ratelimit.pause(1, "k", 20)
    assert 19 < ratelimit.reserve(1, "k", None, reserved=True) <= 20
    assert 19 < ratelimit.reserve(1, "k", KeyRate("k", 1000, 1), reserved=False) <= 20


def test_jobs_over_the_rate_wait_without_a_worker_each_for_its_own_slot(user):
    limit(user, "stripe-*", 2)  # one start every 0.5 s
    jobs = [submit_job(user, rate_limit_key="stripe-acct") for _ in range(5)]
    assert sorted(run_all()) == ["RATE_LIMITED"] * 4 + ["SUCCEEDED"]
    waiting = Job.objects.filter(id__in=[j.id for j in jobs], status=JobStatus.PENDING).order_by("rate_slot_at")
    assert len(waiting) == 4
    for job in waiting:
        assert (job.attempts, job.attempt_seq, job.dispatch_token, job.run_at) == (0, 0, None, job.rate_slot_at)
    slots = [j.rate_slot_at for j in waiting]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(slots)]
    assert all(0.49 < gap < 0.51 for gap in gaps), gaps
    assert release_due(0) == 0  # not yet: nothing comes back before its slot
    assert release_due(10) == 4
    assert run_all() == ["SUCCEEDED"] * 4  # each came back once, and started without asking again
    assert set(Job.objects.filter(id__in=[j.id for j in jobs]).values_list("status", "rate_slot_at")) == {
        (JobStatus.SUCCEEDED, None)
    }


def test_one_owners_busy_key_does_not_slow_another_owners_key_of_the_same_name(user, other_user):
    limit(None, "api", 1, period=3600)
    submit_job(user, rate_limit_key="api")
    submit_job(user, rate_limit_key="api")
    submit_job(other_user, rate_limit_key="api")
    assert sorted(run_all()) == ["RATE_LIMITED", "SUCCEEDED", "SUCCEEDED"]
    assert Job.objects.get(owner=other_user).status == JobStatus.SUCCEEDED


def test_a_duplicate_delivery_starts_nothing_more(user):
    limit(user, "k", 1, period=60)
    first = submit_job(user, rate_limit_key="k")
    second = submit_job(user, rate_limit_key="k")
    envelopes = pending_dispatches()
    outcomes = [execute(e, worker="w") for e in envelopes + envelopes]  # every message twice
    assert [str(o.status) for o in outcomes[:2]] == ["SUCCEEDED", "RATE_LIMITED"]
    assert [o.recorded for o in outcomes[2:]] == [False, False]  # the copies win nothing
    assert Job.objects.get(id=first.id).attempts == 1
    assert Job.objects.get(id=second.id).status == JobStatus.PENDING


def test_a_job_with_a_concurrency_key_waits_for_the_blocked_scan(user):
    limit(user, "k", 1, period=60)
    submit_job(user, rate_limit_key="k", concurrency_key="c", concurrency_limit=5)
    waiting = submit_job(user, rate_limit_key="k", concurrency_key="c", concurrency_limit=5)
    assert sorted(run_all()) == ["RATE_LIMITED", "SUCCEEDED"]
    slot = Job.objects.get(id=waiting.id).rate_slot_at
    assert BlockedKey.objects.get(owner_id=user.pk, key="c").visit_at <= slot


def test_a_throttling_handler_slows_its_whole_key(user):
    submit_job(user, type="test.rate_throttles", rate_limit_key="downstream")
    assert run_all() == ["THROTTLED"]
    later = submit_job(user, rate_limit_key="downstream")  # no limit declared: the pause alone holds it
    assert run_all() == ["RATE_LIMITED"]
    assert Job.objects.get(id=later.id).rate_slot_at > timezone.now() + timedelta(seconds=28)
    submit_job(user, rate_limit_key="elsewhere")
    assert run_all() == ["SUCCEEDED"]


def test_with_redis_away_the_job_waits_and_asks_again(user, redis_down):
    job = submit_job(user, rate_limit_key="k")
    [envelope] = pending_dispatches()
    outcome = execute(envelope, worker="w", gate_=breaker.RUN)  # (the breaker's own answer needs Redis too)
    assert (outcome.status, outcome.recorded) == (Status.RATE_LIMITED, True)
    job.refresh_from_db()
    assert (job.status, job.rate_slot_at, job.attempts) == (JobStatus.PENDING, None, 0)  # not reserved: asks again
    assert job.run_at <= timezone.now() + timedelta(seconds=3)


@pytest.mark.django_db(transaction=True)
def test_workers_racing_on_threads_start_one_and_space_the_rest():
    owner = UserFactory()
    limit(owner, "k", 1)
    for _ in range(24):
        submit_job(owner, rate_limit_key="k")
    envelopes = pending_dispatches()
    outcome: dict[str, Any] = {}
    threads = [
        in_thread(outcome, str(n), lambda part=envelopes[n::4]: [str(execute(e, worker="w").status) for e in part])
        for n in range(4)
    ]
    for thread in threads:
        thread.join()
    statuses = sorted(s for n in range(4) for s in outcome[str(n)])
    assert statuses == ["RATE_LIMITED"] * 23 + ["SUCCEEDED"]
    slots = sorted(Job.objects.filter(owner=owner, status=JobStatus.PENDING).values_list("rate_slot_at", flat=True))
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(slots)]
    assert min(gaps) > 0.99, gaps  # one start a second, however the workers interleave


RESERVER = """
import os, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()
from django.conf import settings
from config.key_rates import KeyRate
from orchestration import breaker, ratelimit
import orjson
settings.RATE_LIMIT_PREFIX = sys.argv[1]
rate = KeyRate("k", 50, 1, burst=5)
print(orjson.dumps([ratelimit.reserve(7, "k", rate, reserved=False) for _ in range(100)]).decode())
"""


def test_processes_sharing_a_key_never_get_more_than_the_rate():
    """Four processes reserve 400 starts at 50/s with a burst of 5: in Redis's clock the
    slots they get are the burst, then one every 20 ms, whatever the interleaving."""
    prefix = settings.RATE_LIMIT_PREFIX
    env = {**os.environ, "LOG_SHIPPING": "false"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RESERVER, prefix], cwd=settings.BASE_DIR, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    delays = [d for p in procs for d in orjson.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1])]
    assert len(delays) == 400
    # Each delay is relative to its own call's time; the last slot bounds them all: 395
    # intervals after the burst, so the 400 took at least 7.9 s of the key's time.
    assert max(delays) > 395 * 0.02 - 2.0  # (less the time the processes took to run)
    assert sum(1 for d in delays if d <= 0) <= 5 + 2 * 50  # the burst, and what 2 s of starting could let by


def test_the_dashboard_shows_a_job_waiting_for_its_slot(user, client):
    limit(user, "k", 1, period=60)
    submit_job(user, rate_limit_key="k")
    waiting = submit_job(user, rate_limit_key="k")
    run_all()
    client.force_login(user)
    page = client.get(f"/jobs/{waiting.id}/").content.decode()
    assert "Rate limit key <code>k</code>" in page
    assert "over its rate: starts at its slot" in page


def test_a_job_back_late_for_its_slot_starts_without_asking_again(user):
    """A reserved slot is the job's: however late a busy pipeline brings it back, it starts (a
    late job that reserved again, at the back of the key's queue, could wait forever)."""
    limit(user, "k", 1, period=60)
    submit_job(user, rate_limit_key="k")
    late = submit_job(user, rate_limit_key="k")
    run_all()
    long_ago = timezone.now() - timedelta(seconds=30)
    Job.objects.filter(id=late.id).update(rate_slot_at=long_ago, run_at=long_ago)
    assert release_due(0) == 1
    assert run_all() == ["SUCCEEDED"]


def test_a_deleted_limit_frees_its_key_and_a_loosened_one_shortens_its_queue(user):
    slow = KeyRate("k", 1, 1)
    for _ in range(100):
        ratelimit.reserve(1, "k", slow, reserved=False)  # the key is booked 100 s ahead
    assert 98 < ratelimit.reserve(1, "k", slow, reserved=False) < 101
    assert 9.5 < ratelimit.reserve(1, "k", KeyRate("k", 10, 1), reserved=False) < 10.5  # 10x faster: a tenth
    assert ratelimit.reserve(1, "k", None, reserved=False) <= 0  # no limit now: nothing holds it back


def test_thousands_a_second_are_counted_to_the_microsecond():
    rate = KeyRate("k", 5000, 1)
    delays = [ratelimit.reserve(1, "fast", rate, reserved=False) for _ in range(1000)]
    # 999 intervals of 200 µs after the first, less the time the calls took.
    assert 0.1998 - 1.0 < delays[-1] <= 0.1998 + 0.001
    assert all(b - a > -0.01 for a, b in itertools.pairwise(delays))


def test_an_owners_burst_cannot_loosen_a_staff_limit(user):
    limit(None, "stripe-*", 100)
    limit(user, "stripe-acct", 1, period=86400, burst=100_000)
    rate = rate_limits.limit_for(user.pk, "stripe-acct")
    assert (rate.limit, rate.period_seconds, rate.burst) == (1, 86400, 1)


def test_a_job_released_for_its_slot_goes_ahead_of_jobs_that_have_not_asked(user):
    limit(user, "k", 1, period=60)
    submit_job(user, rate_limit_key="k", priority=2)
    waiting = submit_job(user, rate_limit_key="k", priority=2)
    run_all()
    Job.objects.filter(id=waiting.id).update(run_at=timezone.now())
    release_due(0)
    [envelope] = pending_dispatches()
    assert (envelope.priority, envelope.rate_slot is not None) == (9, True)
    assert Job.objects.get(id=waiting.id).priority == 2  # the job keeps its own
