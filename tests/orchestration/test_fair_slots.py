"""A fair share of the running slots (orchestration.fair_slots) in real Redis and PostgreSQL:
one owner's long jobs never hold every worker, short jobs are not limited, a job over its
owner's share waits without using an attempt and goes when the owner's long jobs end."""

from __future__ import annotations

import itertools
import time
import uuid

import pytest

from jobs import services, transitions
from jobs.models import Job, JobAttempt, JobStatus, Outbox, OwnerShare
from jobs.services import JobSpec
from orchestration import fair_slots
from orchestration.fair_slots import SHORT, Slot, Slots
from orchestration.scheduler import Scheduler
from orchestration.worker.monitor import Monitor
from orchestration.worker.running import run_claimed

pytestmark = pytest.mark.django_db


def workers(*names: str, queues: tuple[str, ...] = ("default",)) -> list[Slots]:
    """Worker processes (their views of the slots), alive and consuming `queues`."""
    out = []
    for name in names:
        slots = Slots()
        slots.configure(name, list(queues))
        slots.beat()
        out.append(slots)
    return out


def take(slots: Slots, owner: int, type_: str = "demo.sleep", queue: str = "default", share: float = 0.5,
         queue_share: float = 0.5) -> Slot | str:  # fmt: skip
    return slots.take(queue=queue, owner=owner, type_=type_, share=share, queue_share=queue_share)


def test_an_owners_long_jobs_hold_at_most_its_share_of_the_workers(user, other_user):
    w1, w2, w3, _ = workers("w1", "w2", "w3", "w4")
    assert isinstance(take(w1, user.pk), Slot)
    assert isinstance(take(w2, user.pk), Slot)  # half of four
    assert take(w3, user.pk) == "owner"
    assert isinstance(take(w3, other_user.pk), Slot)  # another owner's job finds a worker
    assert fair_slots.taken_counts("default") == (4, {user.pk: 2, other_user.pk: 1})


def test_one_worker_is_one_slot_and_an_owner_always_gets_one(user):
    (w1,) = workers("w1")
    assert isinstance(take(w1, user.pk), Slot)
    w2 = Slots()  # not counted among the queue's workers: still one slot, the owner's one
    w2.configure("w2", ["default"])
    assert take(w2, user.pk) == "owner"


def test_a_kind_known_short_takes_no_long_slot_and_a_long_run_makes_it_long(user, settings):
    settings.FAIR_LONG_SECONDS = 0.2
    w1, w2 = workers("w1", "w2")
    first = take(w1, user.pk, "demo.noop")
    assert isinstance(first, Slot)
    assert first.taken
    w1.done(first)  # a quick run: the kind is short
    assert w2.kind(user.pk, "demo.noop") == SHORT
    busy = take(w2, user.pk, "demo.sleep")
    assert isinstance(busy, Slot)
    free = take(w1, user.pk, "demo.noop")  # the owner's share is full, but the kind is short
    assert isinstance(free, Slot)
    assert not free.taken
    w1.ran_long(free)  # ... until a run of it takes long: from then on it holds a slot
    assert free.taken
    assert fair_slots.taken_counts("default")[1] == {user.pk: 2}
    w1.done(free)
    w3 = Slots()
    w3.configure("w3", ["default"])
    assert w3.kind(user.pk, "demo.noop") == fair_slots.LONG  # not short again after a long run
    assert take(w3, user.pk, "demo.noop") == "owner"


def test_a_long_kind_is_short_again_after_quick_runs_in_a_row(user, settings):
    """One run stretched by a stalled machine (SIGSTOP, a swap storm) calls its kind long; the
    kind's next runs, quick again, say otherwise before long rather than after ten minutes.
    A long run among them starts the count over; a short verdict taken back doubles it (an
    owner alternating quick and long runs, to have its long ones run unregistered on every
    worker, pays more each time)."""
    settings.FAIR_LONG_SECONDS = 0.5
    (w1,) = workers("w1")
    long, short, first = fair_slots.LONG, SHORT, fair_slots.QUICK_RUNS_TO_SHORT

    def run(type_: str, *, ran_long: bool = False) -> str | None:
        slot = take(w1, user.pk, type_, share=1.0)
        assert isinstance(slot, Slot)
        if ran_long:
            w1.ran_long(slot)
        w1.done(slot)
        return Slots().kind(user.pk, type_)  # what another worker reads

    def quick_runs(type_: str, n: int) -> list[str | None]:
        return [run(type_) for _ in range(n)]

    assert run("demo.sleep", ran_long=True) == long  # a new kind whose first run is long
    assert quick_runs("demo.sleep", first) == [long] * (first - 1) + [short]

    assert run("demo.echo") == short
    assert run("demo.echo", ran_long=True) == long  # a short verdict taken back: twice the runs
    assert quick_runs("demo.echo", 2 * first - 1) == [long] * (2 * first - 1)
    assert run("demo.echo", ran_long=True) == long  # the count starts over
    assert quick_runs("demo.echo", 2 * first) == [long] * (2 * first - 1) + [short]
    assert run("demo.echo", ran_long=True) == long  # taken back again: twice again
    assert quick_runs("demo.echo", 4 * first)[-2:] == [long, short]


@pytest.mark.django_db(transaction=True)  # the monitor's thread asks about cancel requests
def test_a_job_that_ended_while_the_monitor_was_busy_is_not_called_long(settings):
    """The monitor ticks the batch before it looks at the job: a tick held up (a log flush
    waiting for Kafka) must not make the job it watched before look long once it is over."""
    settings.FAIR_LONG_SECONDS = 1.0
    told: list[uuid.UUID] = []

    class SlowTick:
        def tick(self, *, running_for: float) -> None:
            time.sleep(2.0)

    class Heard:
        def __init__(self, job_id: uuid.UUID) -> None:
            self.job_id = job_id

        def ran_long(self) -> None:
            told.append(self.job_id)

        def renew(self) -> None:
            pass

    monitor = Monitor()
    monitor.hold(SlowTick())
    quick, slow = uuid.uuid4(), uuid.uuid4()
    monitor.watch(quick, 1, Heard(quick))
    time.sleep(0.3)  # the monitor is in the tick by now; the job ends meanwhile
    monitor.clear()
    time.sleep(2.5)
    monitor.watch(slow, 1, Heard(slow))
    time.sleep(3.0)  # this one runs through a tick and beyond
    monitor.clear()
    monitor.release()
    assert told == [slow]


def test_a_worker_of_several_queues_keeps_each_queues_long_jobs_to_its_share(user, other_user):
    w1, w2 = workers("w1", "w2", queues=("default", "reports"))
    assert isinstance(take(w1, user.pk, queue="reports", share=1.0), Slot)
    assert take(w2, other_user.pk, queue="reports", share=1.0) == "queue"  # reports holds half of them
    assert isinstance(take(w2, other_user.pk, queue="default", share=1.0), Slot)


def test_an_owners_own_share_overrides_the_default(user, settings):
    OwnerShare.objects.create(owner=user, slot_share=1.0)
    assert fair_slots.shares(user.pk, "default") == (1.0, settings.FAIR_SLOT_SHARE)


def submit(owner, type_: str = "demo.sleep", **payload) -> Job:
    return services.job_submit(owner_id=owner.pk, spec=JobSpec(type=type_, payload=payload)).job


def claim(job: Job, worker: str) -> transitions.Claim:
    [won] = transitions.mark_running_many([(str(job.id), str(job.dispatch_token))], worker=worker, lease_seconds=60)
    return won


def test_a_job_over_its_owners_share_waits_unclaimed_and_goes_when_a_long_job_ends(user, settings):
    settings.SCHEDULER_LOCK_KEY = f"slots-test-{time.monotonic_ns()}"
    other, _ = workers("other", "here")
    long_one = take(other, user.pk)  # the owner's one slot of two, held on another worker
    assert isinstance(long_one, Slot)
    fair_slots.SLOTS.configure("here", ["default"])
    try:
        job = submit(user, seconds=0.01)
        outcome = run_claimed(claim(job, "here"))
        assert outcome.status == "DEFERRED"
        job.refresh_from_db()
        assert (job.status, job.attempts, job.attempt_seq, job.dispatch_token) == (JobStatus.PENDING, 0, 0, None)
        assert job.slot_held_at is not None
        assert not JobAttempt.objects.filter(job=job).exists()
        Outbox.objects.filter(job=job).delete()
        scheduler = Scheduler()
        assert scheduler.tick().deferred_released == 0  # the owner's long job still runs
        other.done(long_one)
        assert scheduler.tick().deferred_released == 1
        job.refresh_from_db()
        assert (job.status, job.slot_held_at) == (JobStatus.PENDING, None)
        assert Outbox.objects.filter(job=job, topic="jobs").count() == 1
        assert run_claimed(claim(job, "here")).status == "SUCCEEDED"
        assert Job.objects.get(id=job.id).attempts == 1
    finally:
        fair_slots.SLOTS.configure("", [])


def test_held_jobs_whose_kind_turned_out_short_go_at_once(user, settings):
    """A new tenant's burst of a new kind waits while one run says what the kind is; once it
    is known short, all of the held ones go in the next tick, not one per freed slot."""
    from config import broker

    settings.SCHEDULER_LOCK_KEY = f"slots-test-{time.monotonic_ns()}"
    other, _ = workers("other", "here")
    assert isinstance(take(other, user.pk), Slot)  # the owner's share is held meanwhile
    fair_slots.SLOTS.configure("here", ["default"])
    try:
        jobs = [submit(user, "demo.noop") for _ in range(5)]
        assert {run_claimed(claim(j, "here")).status for j in jobs} == {"DEFERRED"}
        Outbox.objects.all().delete()
        broker.client().set(fair_slots.kind_key(user.pk, "demo.noop"), SHORT)  # a run elsewhere ended quickly
        fair_slots.SLOTS._kinds.clear()  # the scheduler is another process: it has not cached the old verdict
        assert Scheduler().tick().deferred_released == 5
        assert Outbox.objects.filter(topic="jobs").count() == 5
    finally:
        fair_slots.SLOTS.configure("", [])


def test_a_held_long_kind_goes_one_by_one_as_each_run_ends_not_after_a_pause(user, settings):
    """The owner's share is one slot: a released job counts against it while on its way (the
    next tick releases nothing more), and as soon as it ran the next one goes."""
    from config import broker

    settings.SCHEDULER_LOCK_KEY = f"slots-test-{time.monotonic_ns()}"
    other, _ = workers("other", "here")
    busy = take(other, user.pk)
    assert isinstance(busy, Slot)
    broker.client().set(fair_slots.kind_key(user.pk, "demo.sleep"), fair_slots.LONG)
    fair_slots.SLOTS.configure("here", ["default"])
    try:
        jobs = [submit(user, seconds=0.01) for _ in range(3)]
        assert {run_claimed(claim(j, "here")).status for j in jobs} == {"DEFERRED"}
        other.done(busy)
        scheduler = Scheduler()
        assert scheduler.tick().deferred_released == 1
        assert scheduler.tick().deferred_released == 0  # on its way: the share is spoken for
        [released] = Job.objects.filter(id__in=[j.id for j in jobs], slot_held_at__isnull=True)
        assert run_claimed(claim(released, "here")).status == "SUCCEEDED"
        assert scheduler.tick().deferred_released == 1  # it ran: the next goes now, not seconds later
    finally:
        fair_slots.SLOTS.configure("", [])


@pytest.mark.django_db(transaction=True)  # the worker's monitor thread reads the cancel request
def test_a_job_with_a_cancel_request_runs_to_be_cancelled_rather_than_waiting(user):
    other, _ = workers("other", "here")
    assert isinstance(take(other, user.pk), Slot)
    fair_slots.SLOTS.configure("here", ["default"])
    try:
        job = submit(user, seconds=5)
        claimed = claim(job, "here")
        transitions.request_cancel(job.id)
        assert run_claimed(claimed).status == "CANCELLED"
    finally:
        fair_slots.SLOTS.configure("", [])


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_long_jobs_of_one_owner_leave_a_worker_for_anothers_short_ones(stack, user, other_user, queue):
    """Through every role, two workers: the first owner's sleeps run one at a time (its share
    of two workers), the second owner's no-op jobs start at once on the other worker instead
    of waiting for the sleeps to end."""
    from datetime import timedelta

    from tests.orchestration.conftest import wait_for

    for role in ("relay", "bridge", "scheduler"):
        stack.start(role)
    stack.start("worker", "worker1")
    stack.start("worker", "worker2")
    wait_for(lambda: fair_slots.taken_counts(queue)[0] == 2, timeout=60, message="two workers counted")
    sleeps = [s.job for s in services.job_submit_bulk(
        owner_id=user.pk, specs=[JobSpec(type="demo.sleep", payload={"seconds": 5}, queue=queue)] * 3
    )]  # fmt: skip
    wait_for(lambda: JobAttempt.objects.filter(job__in=sleeps).exists(), timeout=60, message="a sleep started")
    time.sleep(1.5)  # the sleep is long by now, and the others have met the owner's full share
    quick = [s.job for s in services.job_submit_bulk(
        owner_id=other_user.pk, specs=[JobSpec(type="demo.noop", queue=queue)] * 20
    )]  # fmt: skip
    wait_for(
        lambda: Job.objects.filter(id__in=[j.id for j in quick], status=JobStatus.SUCCEEDED).count() == 20,
        timeout=30, message="the other owner's jobs ran",
    )  # fmt: skip
    waits = [j.started_at - j.created_at for j in Job.objects.filter(id__in=[j.id for j in quick])]
    assert max(waits) < timedelta(seconds=2), (max(waits), stack.logs())
    wait_for(
        lambda: Job.objects.filter(id__in=[j.id for j in sleeps], status=JobStatus.SUCCEEDED).count() == 3,
        timeout=60, message="the sleeps ran, one after the other",
    )  # fmt: skip
    runs = sorted(JobAttempt.objects.filter(job__in=sleeps).values_list("started_at", "finished_at"))
    assert len(runs) == 3  # held, not burned: one attempt each
    for (_, finished), (started, _) in itertools.pairwise(runs):
        assert started >= finished - timedelta(milliseconds=50), runs  # never two at once
