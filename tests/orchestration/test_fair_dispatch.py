"""Fair dispatch in the relay (orchestration.fair_pick, orchestration.fairness) against real
PostgreSQL, Redis and Kafka: each queue's window, owners' shares by weight, the express lane,
priorities within an owner, rates shared by every relay. Nothing here runs a worker: a test
"runs" jobs by claiming them, which is what frees room in a window."""

from __future__ import annotations

import threading
import time
from collections import Counter

import orjson
import pytest
from django.db import connection

from jobs import transitions
from jobs.models import Job, JobStatus, Outbox, OwnerShare
from jobs.services import JobSpec, job_submit_bulk
from orchestration.fairness import FairShare, express_jobs, water_fill
from orchestration.relay import Relay
from tests.factories import UserFactory
from tests.orchestration.conftest import consume_all, declare

# -- the arithmetic -------------------------------------------------------------------------


def test_water_filling_gives_room_to_those_furthest_behind_by_weight():
    assert water_fill({1: 0.0, 2: 0.0}, {1: 1.0, 2: 1.0}, 10) == {1: 5, 2: 5}
    assert water_fill({1: 0.0, 2: 0.0}, {1: 3.0, 2: 1.0}, 8) == {1: 6, 2: 2}
    assert water_fill({1: 10.0, 2: 0.0}, {1: 1.0, 2: 1.0}, 4) == {2: 4}  # 1 is ahead: 2 catches up first
    assert water_fill({1: 2.0, 2: 0.0}, {1: 1.0, 2: 1.0}, 6) == {1: 2, 2: 4}
    assert sum(water_fill({o: 0.0 for o in range(7)}, dict.fromkeys(range(7), 1.0), 10).values()) == 10
    assert water_fill({1: 0.0}, {1: 1.0}, 0) == {}


def test_an_owner_back_from_idle_starts_at_the_level_not_with_credit():
    share = FairShare()
    weights = {1: 1.0}
    for _ in range(10):  # owner 1 alone for a while
        share.served("q", share.quotas("q", weights, 100), weights)
        share.forget_idle("q", weights)
    both = {1: 1.0, 2: 1.0}
    assert share.quotas("q", both, 100) == {1: 50, 2: 50}  # no credit for owner 2's idle time


def test_express_lane_is_a_small_part_of_the_window():
    assert [express_jobs(w) for w in (1, 15, 16, 100, 1000, 100_000)] == [1, 1, 1, 6, 62, 64]


# -- the relay --------------------------------------------------------------------------------


def submit(owner, n: int, queue: str = "default", **spec) -> list[Job]:
    specs = [JobSpec(type="demo.noop", queue=queue, **spec)] * n
    return [s.job for s in job_submit_bulk(owner_id=owner.pk, specs=specs)]


def run(jobs: list[Job] | None = None, queue: str | None = None) -> int:
    """Claim (as a worker would) the QUEUED jobs given, or all of a queue's: room in its window."""
    rows = Job.objects.filter(status=JobStatus.QUEUED)
    rows = rows.filter(id__in=[j.id for j in jobs]) if jobs is not None else rows.filter(queue=queue)
    pairs = [(str(i), str(t)) for i, t in rows.values_list("id", "dispatch_token")]
    return len(transitions.mark_running_many(pairs, worker="w", lease_seconds=60))


def queued(owner=None, queue: str | None = None) -> int:
    rows = Job.objects.filter(status=JobStatus.QUEUED)
    if owner is not None:
        rows = rows.filter(owner=owner)
    return rows.filter(queue=queue).count() if queue else rows.count()


@pytest.mark.django_db
def test_a_queue_dispatches_no_more_than_its_window(user, topics, settings, queue):
    declare(settings, queue, window=10)
    submit(user, 25, queue)
    relay = Relay()
    assert relay.run_once() == 10
    assert relay.waiting
    assert relay.run_once() == 0  # full: the rest waits in the outbox
    assert relay.waiting
    assert Outbox.objects.filter(queue=queue).count() == 15
    assert run(queue=queue) == 10
    assert relay.run_once() == 10
    assert run(queue=queue) == 10
    assert relay.run_once() == 5
    assert not Outbox.objects.exists()


@pytest.mark.django_db
def test_a_parked_queue_fills_its_own_window_and_holds_back_nothing_else(user, other_user, topics, settings, queue):
    # "parked": a queue whose workers are stopped (or a typo'd name, declared by mistake).
    declare(settings, "parked", window=5)
    submit(user, 2000, "parked")
    flowing = submit(other_user, 3, queue)
    relay = Relay()
    for _ in range(3):
        relay.run_once()
    assert queued(queue="parked") == 5
    assert queued(queue=queue) == 3
    later = submit(other_user, 2, queue)
    relay.run_once()
    assert set(Job.objects.filter(id__in=[j.id for j in flowing + later]).values_list("status", flat=True)) == {
        JobStatus.QUEUED
    }


@pytest.mark.django_db
def test_a_backlog_does_not_make_another_owner_wait_and_its_jobs_ride_the_express_lane(
    user, other_user, topics, settings, queue
):
    declare(settings, queue, window=100)
    submit(user, 1000, queue)  # first come...
    relay = Relay()
    relay.run_once()
    assert queued(user, queue) == 100
    run(queue=queue)
    light = submit(other_user, 3, queue)  # ...another owner's three, behind 900 of the first's
    relay.run_once()
    assert queued(other_user, queue) == 3  # in the very next round
    assert queued(user, queue) == 97
    lanes = {}
    for message in consume_all(topics["jobs"], 200):
        envelope = orjson.loads(message.value())
        lanes[envelope["job_id"]] = envelope.get("lane")
    assert [lanes[str(j.id)] for j in light] == ["express"] * 3
    # The heavy owner: express for its first six in flight (a sixteenth of the window), in each
    # round (the first round's were all claimed: nothing of it was in flight), then bulk.
    mine = Job.objects.filter(owner=user, status__in=["QUEUED", "RUNNING"]).values_list("id", flat=True)
    assert Counter(lanes[str(i)] for i in mine) == {"express": 12, None: 185}


@pytest.mark.django_db
def test_owners_share_a_queue_by_weight_however_large_their_backlogs(user, other_user, topics, settings, queue):
    declare(settings, queue, window=40)
    OwnerShare.objects.create(owner=user, weight=3.0)
    submit(user, 2000, queue)
    submit(other_user, 2000, queue)
    relay = Relay()
    for _ in range(25):
        relay.run_once()
        run(queue=queue)
    started = Counter(Job.objects.filter(status=JobStatus.RUNNING).values_list("owner_id", flat=True))
    assert started[user.pk] + started[other_user.pk] == 1000
    assert started[user.pk] == 750


@pytest.mark.django_db
def test_queues_share_a_relay_round_by_weight_and_pass_on_what_they_leave(user, topics, settings):
    """Queues with work waiting and a round of 100: shares 4:1 by weight while both have more
    than that, whichever goes first; a queue with little waiting leaves the rest to the ones
    after it, and the relay goes again at once rather than pausing."""
    busy, quiet, small = (f"q-{i}-{time.monotonic_ns()}" for i in range(3))
    declare(settings, busy, weight=4.0)
    declare(settings, quiet)
    submit(user, 1000, busy)
    submit(user, 1000, quiet)
    relay = Relay(batch_size=100)
    for _ in range(4):  # each queue first twice: the order rotates
        before = {q: queued(queue=q) for q in (busy, quiet)}
        assert relay.run_once() == 100
        assert {q: queued(queue=q) - before[q] for q in (busy, quiet)} == {busy: 80, quiet: 20}
    declare(settings, small, weight=4.0)
    submit(user, 5, small)
    before = queued(queue=busy) + queued(queue=quiet)
    relay.run_once()
    assert queued(queue=small) == 5  # a share of 44, wherever it came in the round
    assert queued(queue=busy) + queued(queue=quiet) - before >= 56  # at least their 5/9
    assert relay.again  # the busy ones had more than their share: the relay goes on at once
    Job.objects.filter(queue__in=(busy, quiet, small)).delete()
    Outbox.objects.filter(queue__in=(busy, quiet, small)).delete()


@pytest.mark.django_db
def test_many_owners_each_get_a_turn(topics, settings, queue):
    declare(settings, queue, window=30)
    owners = [UserFactory() for _ in range(12)]
    for owner in owners:
        submit(owner, 20, queue)
    relay = Relay()
    relay.pick.owners_per_round = 5  # fewer than the owners: the walk goes on from a cursor
    for _ in range(8):
        relay.run_once()
        run(queue=queue)
    started = Counter(Job.objects.filter(status=JobStatus.RUNNING).values_list("owner_id", flat=True))
    assert set(started) == {o.pk for o in owners}


@pytest.mark.django_db
def test_an_owners_higher_priority_goes_first(user, topics, settings, queue):
    declare(settings, queue, window=1)
    submit(user, 5, queue, priority=2)
    urgent = submit(user, 1, queue, priority=9)[0]
    relay = Relay()
    relay.run_once()
    assert Job.objects.get(id=urgent.id).status == JobStatus.QUEUED


@pytest.mark.django_db(transaction=True)
def test_a_rate_holds_across_relays(user, topics, settings, queue):
    declare(settings, queue, window=1000, rate=10.0, burst=5)
    submit(user, 200, queue)
    relays = [Relay(), Relay()]
    stop = time.monotonic() + 1.0

    def drain(relay: Relay) -> None:
        while time.monotonic() < stop:
            relay.run_once()
            time.sleep(0.01)
        connection.close()

    threads = [threading.Thread(target=drain, args=(r,)) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    sent = queued(queue=queue)
    assert 5 <= sent <= 5 + 10 * 1.3  # the burst, then 10 a second, whichever relay sent them


@pytest.mark.django_db
def test_a_queue_no_longer_declared_still_dispatches_with_the_defaults(user, topics, settings):
    jobs = submit(user, 3, "gone")  # written while "gone" was declared
    assert Relay().run_once() == 3
    assert queued(queue="gone") == 3
    assert {m.key().decode() for m in consume_all(topics["jobs"], 3)} == {str(j.id) for j in jobs}


@pytest.mark.django_db
def test_a_dispatch_row_without_its_queue_goes_at_once(user, topics):
    # Written by a web process from before outbox rows carried their queue (a rolling deploy).
    submit(user, 2)
    Outbox.objects.update(queue=None, owner_id=None, priority=None)
    assert Relay().run_once() == 2
    assert queued(user) == 2
