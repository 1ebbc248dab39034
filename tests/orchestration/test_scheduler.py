"""The scheduler against real PostgreSQL, Redis and Kafka: due retries and delayed jobs,
lost workers, lost messages, leader election and fencing."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from config import broker
from jobs import services, transitions
from jobs.dispatch import DispatchEnvelope
from jobs.models import AttemptStatus, Job, JobAttempt, JobStatus, Outbox
from jobs.services import JobSpec
from orchestration.relay import Relay
from orchestration.scheduler import Fenced, Scheduler, fence


@pytest.fixture
def scheduler_keys(settings):
    # A leadership of this test's own: no other scheduler (a dev stack's, another test's) competes.
    settings.SCHEDULER_LOCK_KEY = f"test-scheduler-{uuid.uuid4().hex}"
    yield broker.client()
    broker.client().delete(f"{settings.SCHEDULER_LOCK_KEY}:leader", f"{settings.SCHEDULER_LOCK_KEY}:epoch")


def submit(user, type: str = "demo.noop", **spec) -> Job:
    return services.job_submit(owner_id=user.pk, spec=JobSpec(type=type, **spec)).job


def claim(job: Job, lease: float = 30) -> transitions.Claim:
    result = transitions.mark_running(job.id, dispatch_token=job.dispatch_token, worker="w", lease_seconds=lease)
    assert result is not None
    return result


@pytest.mark.django_db
def test_due_retries_and_delayed_jobs_go_back_through_the_outbox(user, scheduler_keys, topics):
    due, later = submit(user), submit(user)
    for job, when in ((due, -1), (later, 3600)):
        c = claim(job)
        transitions.schedule_retry(
            job.id, attempt=c.attempt, next_retry_at=timezone.now() + timedelta(seconds=when), error="x"
        )
    delayed = submit(user, run_at=timezone.now() + timedelta(seconds=3600))
    Job.objects.filter(id=delayed.id).update(run_at=timezone.now() - timedelta(seconds=1))
    Outbox.objects.all().delete()

    result = Scheduler().tick()
    assert result is not None
    assert (result.retries, result.delayed) == (1, 1)
    for job in (due, delayed):
        job.refresh_from_db()
        assert job.status == JobStatus.PENDING
        assert job.dispatch_token is not None
        envelope = Outbox.objects.get(job=job).envelope
        assert envelope["dispatch_token"] == str(job.dispatch_token)
    assert Outbox.objects.get(job=due).envelope["attempt"] == 2
    assert Job.objects.get(id=later.id).status == JobStatus.RETRYING
    assert Scheduler().tick() is None  # another instance: the lock is taken


@pytest.mark.django_db
def test_an_expired_lease_fails_the_attempt_as_lost(user, scheduler_keys, topics):
    retried = submit(user)
    dead = submit(user, max_attempts=1)
    alive = submit(user)
    for job in (retried, dead):
        claim(job, lease=0.001)
    claim(alive, lease=60)
    result = Scheduler().tick()
    assert result is not None
    assert result.lost_workers == 2
    assert Job.objects.get(id=retried.id).status == JobStatus.RETRYING
    assert Job.objects.get(id=dead.id).status == JobStatus.DEAD_LETTER
    assert Job.objects.get(id=alive.id).status == JobStatus.RUNNING
    attempt = JobAttempt.objects.get(job_id=retried.id)
    assert attempt.status == AttemptStatus.LOST
    assert "worker lost" in attempt.error
    dead_message = Outbox.objects.get(job_id=dead.id, topic="jobs.dead").envelope
    assert dead_message["job_id"] == str(dead.id)
    assert "worker lost" in dead_message["error"]


@pytest.mark.django_db
def test_a_message_lost_after_the_bridge_took_it_is_dispatched_again(user, scheduler_keys, topics, settings, queue):
    settings.DISPATCH_STALE_SECONDS = 0
    job = submit(user, queue=queue)
    Relay().run_once()
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    assert job.dispatch_offset is not None
    old_token = job.dispatch_token

    # Not consumed yet: it waits in the Kafka backlog, nothing is lost.
    scheduler = Scheduler()
    result = scheduler.tick()
    assert result is not None
    assert result.stale_dispatches == 0

    # The bridge consumed and committed it, but Redis lost it (its queue is empty).
    from confluent_kafka import Consumer, TopicPartition

    from config import kafka

    consumer = Consumer(kafka.consumer_config(settings.KAFKA_BRIDGE_GROUP, **{"enable.auto.commit": False}))
    consumer.commit(
        offsets=[TopicPartition(topics["jobs"], job.dispatch_partition, job.dispatch_offset + 1)], asynchronous=False
    )
    consumer.close()
    result = scheduler.tick()
    assert result is not None
    assert result.stale_dispatches == 1
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING
    assert job.dispatch_token != old_token
    assert Outbox.objects.filter(job=job, topic="jobs").exists()


@pytest.mark.django_db
def test_a_message_the_broker_lost_is_dispatched_again(user, scheduler_keys, topics, settings):
    settings.DISPATCH_STALE_SECONDS = 0
    job = submit(user)
    Relay().run_once()
    # The broker restarted empty: the message's offset lies beyond the (new) partition's end.
    Job.objects.filter(id=job.id).update(dispatch_offset=10_000)
    result = Scheduler().tick()
    assert result is not None
    assert result.stale_dispatches == 1
    assert Job.objects.get(id=job.id).status == JobStatus.PENDING


@pytest.mark.django_db
def test_one_leader_at_a_time_and_a_standby_takes_over(scheduler_keys, settings):
    settings.SCHEDULER_LOCK_TTL_SECONDS = 0.5
    first, second = Scheduler(identity="first"), Scheduler(identity="second")
    assert first.tick() is not None
    assert second.tick() is None
    first_epoch = first.lock.epoch
    import time

    time.sleep(0.7)  # the leader died: its lock expires
    assert second.tick() is not None
    assert second.lock.epoch > first_epoch
    # The old leader wakes up: it cannot renew, and its old epoch is fenced out.
    assert first.tick() is None
    with pytest.raises(Fenced):
        fence(first_epoch)


@pytest.mark.django_db
def test_the_leader_fires_due_cron_slots(user, scheduler_keys, topics):
    from jobs.models import Schedule

    schedule = Schedule.objects.create(
        owner=user, name="every-minute", cron="* * * * *", type="demo.noop", next_fire_at=timezone.now()
    )
    result = Scheduler().tick()
    assert result is not None
    assert result.cron_fired == 1
    assert Job.objects.filter(idempotency_key__startswith=f"schedule:{schedule.id}:").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_concurrency_key_is_never_exceeded(user, scheduler_keys, topics):
    import threading
    import time

    import orjson
    from django.db import connection

    from orchestration.worker import execute

    jobs = [
        submit(user, "demo.sleep", payload={"seconds": 0.2}, concurrency_key="account-7", concurrency_limit=2)
        for _ in range(8)
    ]
    free = submit(user, "demo.noop")
    done = threading.Event()
    outcomes: list[str] = []

    def worker() -> None:  # stands in for relay + bridge + Celery: takes dispatches from the outbox
        while not done.is_set():
            with connection.cursor() as cur:
                cur.execute(
                    "DELETE FROM jobs_outbox WHERE id = (SELECT id FROM jobs_outbox WHERE topic = 'jobs' "
                    "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING envelope"
                )
                row = cur.fetchone()
            if row is None:
                time.sleep(0.02)
                continue
            envelope = orjson.loads(row[0]) if isinstance(row[0], str) else row[0]
            outcomes.append(execute(DispatchEnvelope.parse(envelope)).status)
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    scheduler = Scheduler()
    deadline = time.monotonic() + 60
    try:
        while Job.objects.exclude(status=JobStatus.SUCCEEDED).exists() and time.monotonic() < deadline:
            scheduler.tick()
            time.sleep(0.1)
    finally:
        done.set()
        for t in threads:
            t.join(10)
    assert set(Job.objects.values_list("status", flat=True)) == {JobStatus.SUCCEEDED}
    assert "BLOCKED" in outcomes  # the limit really blocked jobs
    attempts = list(JobAttempt.objects.filter(job__in=jobs).values_list("started_at", "finished_at"))
    assert len(attempts) == 8  # each keyed job ran exactly once
    for start, _ in attempts:  # at no start were more than 2 attempts of the key running
        assert sum(1 for s, f in attempts if s <= start < f) <= 2
    assert Job.objects.get(id=free.id).attempts == 1
    from jobs.models import ConcurrencySlot

    assert ConcurrencySlot.objects.get(key=ConcurrencySlot.key_for(user.pk, "account-7")).running == 0


@pytest.mark.django_db
def test_a_cancel_survives_the_loss_of_its_worker(user, scheduler_keys, topics):
    job = submit(user, "demo.sleep", payload={"seconds": 60})
    claim(job, lease=0.001)
    services.job_cancel(job_id=job.id)  # requested while RUNNING; then the worker dies
    result = Scheduler().tick()
    assert result is not None
    assert result.lost_workers == 1
    assert Job.objects.get(id=job.id).status == JobStatus.CANCELLED
    assert JobAttempt.objects.get(job_id=job.id).status == AttemptStatus.CANCELLED


@pytest.mark.django_db
def test_leaders_still_write_after_redis_lost_its_data(scheduler_keys, settings):
    """Redis restarting empty forgets the lock (and used to reset the epoch counter, which put
    every later leader behind the PostgreSQL fence for good)."""
    first = Scheduler(identity="first")
    assert first.tick() is not None
    epoch = first.lock.epoch
    scheduler_keys.delete(f"{settings.SCHEDULER_LOCK_KEY}:leader")  # what a Redis restart does
    second = Scheduler(identity="second")
    assert second.tick() is not None  # leads and writes: not fenced
    assert second.lock.epoch is not None
    assert epoch is not None
    assert second.lock.epoch > epoch
    assert first.tick() is None  # the old leader lost its lock and cannot write


def hold_by_key(user, key: str, limit: int = 1, **spec) -> tuple[Job, Job]:
    """A job running under `key` (its slot taken through the worker's own path) and a second
    one that the worker held because the key was full (PENDING, no dispatch). Their outbox
    rows are gone, as if relayed."""
    from orchestration.worker.claims import claim_within_limit

    running = submit(user, concurrency_key=key, concurrency_limit=limit)
    claimed = claim_within_limit(DispatchEnvelope.parse(Outbox.objects.get(job=running).envelope), "w")
    assert isinstance(claimed, transitions.Claim)
    held = submit(user, concurrency_key=key, concurrency_limit=limit, **spec)
    if held.dispatch_token is None:  # waiting for its run_at: dispatched now, as the scheduler would
        Job.objects.filter(id=held.id).update(dispatch_token=uuid.uuid4())
        held.refresh_from_db()
        services.job_dispatch_released(
            [transitions.Released(held.id, held.type, held.queue, held.priority, 1, held.dispatch_token, key, limit)]
        )
    assert claim_within_limit(DispatchEnvelope.parse(Outbox.objects.get(job=held).envelope), "w") == "BLOCKED"
    Outbox.objects.filter(job__in=[running, held]).delete()
    held.refresh_from_db()
    assert (held.status, held.dispatch_token) == (JobStatus.PENDING, None)
    return running, held


@pytest.mark.django_db
def test_a_schedule_whose_slot_key_is_taken_skips_that_slot_and_the_tick_goes_on(user, scheduler_keys, topics, caplog):
    """A user job that took the idempotency key of a schedule's next slot used to crash every
    tick: that schedule never fired again and the scans after cron stopped."""
    from jobs.models import Schedule

    now = timezone.now()
    slot = now.replace(second=0, microsecond=0)
    broken = Schedule.objects.create(owner=user, name="broken", cron="* * * * *", type="demo.noop", next_fire_at=slot)
    fine = Schedule.objects.create(owner=user, name="fine", cron="* * * * *", type="demo.noop", next_fire_at=slot)
    squatter = submit(
        user, "demo.echo", payload={"mine": True}, idempotency_key=f"schedule:{broken.id}:{slot.isoformat()}"
    )
    running, held = hold_by_key(user, "k-tick")
    Job.objects.filter(id=running.id).update(status=JobStatus.SUCCEEDED)
    transitions.give_back_slot(running.id)

    clock = {"now": now}
    scheduler = Scheduler(clock=lambda: clock["now"])
    result = scheduler.tick()
    assert result is not None
    assert result.cron_fired == 1  # the other schedule fired
    assert Job.objects.filter(idempotency_key=f"schedule:{fine.id}:{slot.isoformat()}").exists()
    assert result.blocked_released == 1  # a scan after cron still ran
    assert Job.objects.get(id=held.id).dispatch_token is not None
    broken.refresh_from_db()
    assert broken.next_fire_at == slot + timedelta(minutes=1)  # the taken slot is skipped, not retried
    assert Job.objects.get(id=squatter.id).payload == {"mine": True}  # the user's job is left alone
    warning = next(r for r in caplog.records if r.getMessage() == "schedule.slot_taken")
    assert warning.schedule_id == str(broken.id)
    assert warning.taken_by == str(squatter.id)

    clock["now"] = slot + timedelta(minutes=1, seconds=5)
    result = scheduler.tick()
    assert result is not None
    assert result.cron_fired == 2  # the broken schedule's next slot fires normally
    nxt = (slot + timedelta(minutes=1)).isoformat()
    assert Job.objects.filter(idempotency_key=f"schedule:{broken.id}:{nxt}").exists()


@pytest.mark.django_db
def test_a_failing_scan_is_logged_and_counted_and_the_other_scans_run(
    user, scheduler_keys, topics, monkeypatch, caplog
):
    from jobs import schedules
    from metrics import prom

    def broken(**kwargs):
        raise RuntimeError("a bug in the cron scan")

    monkeypatch.setattr(schedules, "fire_due", broken)  # a fault injected into our own code
    running, held = hold_by_key(user, "k-scan")
    Job.objects.filter(id=running.id).update(status=JobStatus.SUCCEEDED)
    transitions.give_back_slot(running.id)
    before = prom.SCHEDULER_ERRORS.labels("cron")._value.get()
    result = Scheduler().tick()
    assert result is not None
    assert result.blocked_released == 1
    assert Job.objects.get(id=held.id).dispatch_token is not None
    assert prom.SCHEDULER_ERRORS.labels("cron")._value.get() == before + 1
    failed = next(r for r in caplog.records if r.getMessage() == "scheduler.scan_failed")
    assert failed.scan == "cron"
    assert failed.exc_info is not None
    assert any("cron" in s for s in result.skipped)


@pytest.mark.django_db
def test_a_fenced_tick_still_stops_at_once(user, scheduler_keys, settings):
    scheduler = Scheduler()
    assert scheduler.tick() is not None
    epoch = scheduler.lock.epoch
    fence(epoch + 5)  # a newer leader wrote meanwhile
    assert scheduler.tick() is None
    assert scheduler.lock.epoch is None


@pytest.mark.django_db
def test_a_held_job_with_a_run_at_waits_for_its_key_and_is_dispatched_once(user, scheduler_keys, topics):
    """A job held by its concurrency key that also has a (past) run_at used to be released by
    the delayed scan on every tick: a dispatch message per tick, forever."""
    running, held = hold_by_key(user, "k-run-at", run_at=timezone.now() - timedelta(seconds=5))
    # and a keyed job whose run_at comes while the key is full: it joins the queue of the key
    later = submit(user, concurrency_key="k-run-at", concurrency_limit=1, run_at=timezone.now() + timedelta(hours=1))
    Job.objects.filter(id=later.id).update(run_at=timezone.now() - timedelta(seconds=1))
    scheduler = Scheduler()
    for _ in range(5):
        result = scheduler.tick()
        assert result is not None
    assert Outbox.objects.filter(job__in=[held, later]).count() == 0
    assert Job.objects.get(id=held.id).dispatch_token is None

    claim_ = Job.objects.get(id=running.id).attempt_seq
    assert transitions.mark_succeeded(running.id, attempt=claim_, result={})  # the slot frees
    for _ in range(5):
        scheduler.tick()
    assert Outbox.objects.filter(job=held).count() == 1  # the oldest goes, once
    assert Outbox.objects.filter(job=later).count() == 0  # the key has room for one only


@pytest.mark.django_db
def test_a_job_paused_by_its_breaker_with_a_run_at_waits_for_its_breaker(user, scheduler_keys, topics, settings):
    from orchestration.breaker import BREAKERS
    from orchestration.worker import execute

    settings.BREAKER_OPEN_SECONDS = 1.0
    settings.BREAKER_CACHE_SECONDS = 0
    BREAKERS.record(user.pk, "demo.fail", ok=False, probe=True)  # a failed probe: open at once
    job = submit(user, "demo.fail", run_at=timezone.now() - timedelta(seconds=5))
    assert execute(DispatchEnvelope.parse(Outbox.objects.get(job=job).envelope)).status == "PAUSED"
    Outbox.objects.filter(job=job).delete()
    scheduler = Scheduler()
    for _ in range(5):
        assert scheduler.tick() is not None
    assert Outbox.objects.filter(job=job).count() == 0
    assert Job.objects.get(id=job.id).breaker_held_at is not None

    import time

    time.sleep(1.1)  # the open period is over: the breaker lets one probe through
    assert scheduler.tick().paused_released == 1
    for _ in range(3):
        scheduler.tick()
    assert Outbox.objects.filter(job=job).count() == 1


def insert_held(
    user,
    keys: list[str],
    *,
    age_seconds: float = 60,
    type: str = "demo.noop",
    breaker: bool = False,
    run_at: datetime | None = None,
    register: bool = True,
) -> None:
    """One held job per key, as the worker leaves it (PENDING, no dispatch), `age_seconds` old:
    held by its concurrency key, or with `breaker` by its owner's breaker for its type (`keys`
    are types)."""
    from django.db import connection

    then = timezone.now() - timedelta(seconds=age_seconds)
    with connection.cursor() as cur:
        cur.execute(
            """INSERT INTO jobs_job (id, owner_id, type, payload, queue, priority, status, attempts, attempt_seq,
                 max_attempts, backoff, timeout_seconds, request_hash, last_error, worker, created_at, updated_at,
                 concurrency_key, concurrency_limit, breaker_held_at, run_at)
               SELECT gen_random_uuid(), %(owner)s, CASE WHEN %(breaker)s THEN k ELSE %(type)s END, '{}', 'default',
                      5, 'PENDING', 0, 0, 4, '{}', 300, '', '', '', %(then)s, %(then)s,
                      CASE WHEN %(breaker)s THEN NULL ELSE k END, CASE WHEN %(breaker)s THEN NULL ELSE 1 END,
                      CASE WHEN %(breaker)s THEN %(then)s::timestamptz END, %(run_at)s
                 FROM unnest(%(keys)s::text[]) AS k""",
            {"owner": user.pk, "type": type, "then": then, "keys": keys, "breaker": breaker, "run_at": run_at},
        )
    if register and not breaker:  # as the worker's hold (or a submit of a job due later) registers its key
        transitions.register_blocked_keys([(user.pk, k, run_at or then) for k in dict.fromkeys(keys)])


@pytest.mark.django_db
def test_held_keys_without_room_do_not_hide_a_key_with_room(user, scheduler_keys, topics):
    """The held-keys scan looked at 100 keys, in no order, room or not: with more than 100 full
    keys, a key with room could wait forever."""
    from jobs.models import ConcurrencySlot

    full = [f"a-full-{i:03}" for i in range(150)]
    insert_held(user, full, age_seconds=600)  # older than the one that can go
    ConcurrencySlot.objects.bulk_create(
        [ConcurrencySlot(key=ConcurrencySlot.key_for(user.pk, k), running=1) for k in full]
    )
    insert_held(user, ["z-free"], age_seconds=1)
    result = Scheduler().tick()
    assert result is not None
    assert result.blocked_released == 1
    assert Job.objects.get(concurrency_key="z-free").dispatch_token is not None
    assert not Job.objects.filter(concurrency_key__in=full, dispatch_token__isnull=False).exists()


@pytest.mark.django_db
def test_the_held_scan_visits_every_key_from_a_cursor(user, scheduler_keys, topics):
    """keys_per_tick keys a tick, from where the last tick stopped, wrapping round: 250 keys
    at 100 a tick are all served in three ticks, none twice."""
    keys = [f"k-{i:03}" for i in range(250)]
    insert_held(user, keys, age_seconds=60)
    scheduler = Scheduler()
    scheduler.pairs_per_tick = 100
    released = [scheduler.tick().blocked_released for _ in range(3)]
    assert released == [100, 100, 50]
    assert not Job.objects.filter(concurrency_key__in=keys, dispatch_token__isnull=True).exists()
    assert Outbox.objects.count() == 250


@pytest.mark.django_db
def test_a_key_releases_its_jobs_in_the_order_they_became_due(user, scheduler_keys, topics):
    """Within a key, the job due first goes first: a job created earlier with a run_at after
    a later job's creation waits for it; one due tomorrow does not go at all."""
    insert_held(user, ["k"], age_seconds=600, run_at=timezone.now() - timedelta(seconds=60))
    insert_held(user, ["k"], age_seconds=300)
    insert_held(user, ["k"], age_seconds=900, run_at=timezone.now() + timedelta(days=1))
    tomorrow, later, plain = Job.objects.order_by("created_at").values_list("id", flat=True)
    scheduler = Scheduler()
    released = []
    for _ in range(3):
        assert scheduler.tick().blocked_released == (1 if len(released) < 2 else 0)
        dispatched = Job.objects.filter(dispatch_token__isnull=False)
        released += list(dispatched.values_list("id", flat=True))
        dispatched.update(status="SUCCEEDED", dispatch_token=None)  # done: the key has room again
    assert released == [plain, later]  # due 300 s ago, then 60 s ago; tomorrow's waits
    assert Job.objects.get(id=tomorrow).status == "PENDING"


def _analyze() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("ANALYZE jobs_job")


def _buffers(sql: str, params: dict) -> int:
    """Shared buffers a statement touches (hit or read): its cost, measured without a clock."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
        plan = cur.fetchone()[0][0]["Plan"]
    return plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]


@pytest.mark.django_db
def test_a_huge_held_backlog_costs_the_held_scan_nothing(user, other_user, scheduler_keys, topics):
    """The scan aggregated every held job each tick (and counted each key's jobs to find its
    room): one owner's 40,000 held jobs, half of them due tomorrow, slowed every tick for
    every owner. Now a key costs a few index probes, however many jobs it holds."""
    from jobs import selectors

    insert_held(other_user, ["mine"], age_seconds=1)
    params = {"now": timezone.now(), "limit": 1000}
    small = _buffers(selectors._BLOCKED_KEYS_DUE_SQL, params)
    insert_held(user, ["flood"] * 20_000, age_seconds=60)
    insert_held(user, ["later"] * 20_000, age_seconds=120, run_at=timezone.now() + timedelta(days=1))
    _analyze()  # the table's statistics as autovacuum would have them by now
    big = _buffers(selectors._BLOCKED_KEYS_DUE_SQL, params)
    assert big <= small + 30, (small, big)
    condition, order = transitions._RELEASE_SCANS["blocked"]
    release = transitions._RELEASE_SQL.format(condition=condition, order=order)
    later = {"now": timezone.now(), "limit": 1, "key": "later", "owner": user.pk, "stale_before": None, "ids": []}
    assert _buffers(release, later) < 30  # nothing due: the range is empty
    keys = selectors.job_blocked_keys_due(now=timezone.now(), limit=1000)
    assert [(k.key, k.room) for k in keys if k.owner == other_user.pk] == [("mine", 1)]
    assert {k.key: k.room for k in keys if k.owner == user.pk} == {"flood": 1}  # "later" is not due: not looked at
    assert Scheduler().tick().blocked_released == 2  # "mine" and one of "flood"


@pytest.mark.django_db
def test_far_future_keyed_jobs_never_make_a_due_key_wait(user, other_user, scheduler_keys, topics):
    """The walk visited every pair, due or not, 1,000 a tick: one owner's million keys of
    far-future jobs made another owner's due key wait a thousand ticks. Only pairs whose time
    has come are looked at now."""
    first, second = sorted([user, other_user], key=lambda u: u.pk)  # the old walk's order: owner first
    insert_held(first, [f"later-{i:05}" for i in range(3000)], run_at=timezone.now() + timedelta(days=1))
    insert_held(second, ["now"], age_seconds=1)
    scheduler = Scheduler()
    scheduler.pairs_per_tick = 100
    assert scheduler.tick().blocked_released == 1
    assert Job.objects.get(owner=second, concurrency_key="now").dispatch_token is not None


@pytest.mark.django_db
def test_a_key_held_without_being_registered_is_found_by_the_sweep(user, scheduler_keys, topics):
    """A worker of older code (a rolling deploy) holds a job without registering its key: the
    sweep, a hundred pairs a tick, registers it, and it goes."""
    insert_held(user, [f"old-{i:03}" for i in range(150)], age_seconds=60, register=False)
    scheduler = Scheduler()
    assert [scheduler.tick().blocked_released for _ in range(3)] == [100, 50, 0]


@pytest.mark.django_db
def test_a_full_key_is_looked_at_again_as_soon_as_a_slot_frees(user, scheduler_keys, topics):
    """A full key is not looked at every tick (FULL_REVISIT_SECONDS at the latest), but the
    statement that ends a keyed attempt brings its next look forward to now."""
    running = submit(user, concurrency_key="k", concurrency_limit=1)
    claimed = transitions.mark_running(running.id, dispatch_token=running.dispatch_token, worker="w",
                                       lease_seconds=60)  # fmt: skip
    assert claimed is not None
    assert transitions.take_slot(running.id, 1)
    insert_held(user, ["k"], age_seconds=5)
    scheduler = Scheduler()
    assert scheduler.tick().blocked_released == 0  # full
    assert scheduler.tick().blocked_released == 0  # and not looked at again yet
    assert transitions.mark_succeeded(running.id, attempt=claimed.attempt, result={})
    assert scheduler.tick().blocked_released == 1  # the slot freed: looked at, and released


@pytest.mark.django_db
@pytest.mark.parametrize(("pages", "found_per_tick"), [(None, [1]), (1, [0, 1])])
def test_lost_messages_behind_a_full_page_of_legitimate_backlog_are_found(
    user, scheduler_keys, topics, settings, pages, found_per_tick
):
    """The stale scan looked at the SCHEDULER_BATCH_SIZE oldest QUEUED jobs only: when those
    were all still in the Kafka backlog, a lost message behind them was never found."""
    settings.DISPATCH_STALE_SECONDS = 0
    settings.SCHEDULER_BATCH_SIZE = 3
    jobs = [submit(user) for _ in range(4)]
    Relay().run_once()  # all four in Kafka; the bridge has consumed none: a legitimate backlog
    now = timezone.now()
    for i, job in enumerate(jobs):
        Job.objects.filter(id=job.id).update(queued_at=now - timedelta(seconds=60 - i))
    lost = jobs[-1]
    Job.objects.filter(id=lost.id).update(dispatch_offset=10_000)  # beyond the partition's end
    # One more message per partition, each in a batch of its own: the embedded broker (Tansu)
    # reports a partition's high watermark as its last batch's first offset + 1, which would
    # make the relay's batch look partly beyond the end.
    from confluent_kafka import Producer

    from config import kafka

    producer = Producer(kafka.producer_config())
    for partition in (0, 1):
        producer.produce(topics["jobs"], value=b"{}", partition=partition)
        assert producer.flush(10) == 0
    scheduler = Scheduler()
    if pages is not None:
        scheduler.stale_pages = pages  # one page a tick: the next tick goes on where this one stopped
    assert [scheduler.tick().stale_dispatches for _ in found_per_tick] == found_per_tick
    assert Job.objects.get(id=lost.id).status == JobStatus.PENDING
    assert set(Job.objects.filter(id__in=[j.id for j in jobs[:3]]).values_list("status", flat=True)) == {"QUEUED"}


@pytest.mark.django_db
def test_open_breakers_do_not_hide_a_closed_one(user, scheduler_keys, topics, settings):
    """The breaker scan looked at 100 held types, in no order: with more than 100 types whose
    breaker is open, a type whose breaker closed could keep its jobs held for good."""
    from orchestration.breaker import BREAKERS

    settings.BREAKER_OPEN_SECONDS = 600
    open_types = [f"a-open-{i:03}" for i in range(150)]
    for type_ in open_types:
        BREAKERS.record(user.pk, type_, ok=False, probe=True)  # a failed probe: open
    insert_held(user, open_types, breaker=True)
    insert_held(user, ["z-closed"], breaker=True, age_seconds=1)
    result = Scheduler().tick()
    assert result is not None
    assert result.paused_released == 1
    assert Job.objects.get(type="z-closed").dispatch_token is not None


@pytest.mark.django_db
def test_one_owners_open_breakers_do_not_hide_anothers_closed_one(user, other_user, scheduler_keys, topics, settings):
    """Breakers are per owner: the scan walks (owner, type) pairs from a cursor, so an owner
    with more open breakers than a tick visits cannot hold another owner's released jobs."""
    from orchestration.breaker import BREAKERS

    settings.BREAKER_OPEN_SECONDS = 600
    open_types = [f"a-open-{i:03}" for i in range(30)]
    first, second = sorted([user, other_user], key=lambda u: u.pk)  # the walk's order: owner first
    for type_ in open_types:
        BREAKERS.record(first.pk, type_, ok=False, probe=True)
    insert_held(first, open_types, breaker=True)
    insert_held(second, ["a-open-000"], breaker=True, age_seconds=1)  # the same type, its own breaker closed
    scheduler = Scheduler()
    scheduler.pairs_per_tick = 10
    released = [scheduler.tick().paused_released for _ in range(4)]
    assert released == [0, 0, 0, 1]  # 31 pairs at 10 a tick: the fourth tick reaches it
    assert Job.objects.get(owner=second, type="a-open-000").dispatch_token is not None
    assert not Job.objects.filter(owner=first, dispatch_token__isnull=False).exists()


@pytest.mark.django_db
def test_a_due_backlog_is_released_a_bounded_amount_a_tick(user, scheduler_keys, topics):
    """release_due looped until the due backlog was empty: one tenant's million due delayed
    jobs made one tick of minutes, and reaping, cron, the tally fold and the lock's renewal
    waited behind it."""
    insert_held(user, [f"d{i}" for i in range(25)], age_seconds=5, run_at=timezone.now() - timedelta(seconds=1))
    Job.objects.filter(owner=user).update(concurrency_key=None, concurrency_limit=None)  # plain delayed jobs
    scheduler = Scheduler()
    scheduler.batch, scheduler.release_batches = 4, 2
    assert [scheduler.tick().delayed for _ in range(4)] == [8, 8, 8, 1]
