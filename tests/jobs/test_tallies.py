"""The counts and latency histograms the stats read instead of scanning jobs_job (jobs.tallies):
exact under concurrent writers and concurrent folds, right after deletes and truncates, and
percentiles within the buckets' 5 %."""

from __future__ import annotations

import importlib
import math
import random
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from dashboard.queries import per_minute
from jobs import tallies
from jobs.models import Job, JobCountDelta, JobMinute, JobMinuteDelta, JobStatus
from jobs.selectors import job_get_stats
from tests.factories import UserFactory, submit_job
from tests.threads import in_thread


def _table_counts(owner_id: int) -> dict[str, int]:
    counts = dict.fromkeys(JobStatus.values, 0)
    for status in Job.objects.filter(owner_id=owner_id).values_list("status", flat=True):
        counts[status] += 1
    return counts


def _clear_of_a_minute_boundary() -> None:
    """Per-minute figures are checked against one minute: start well inside it."""
    second = timezone.now().second
    if second >= 50:
        time.sleep(61 - second)


def _finish(jobs: list[Job], status: str, *, end_to_end: timedelta, wait: timedelta = timedelta(0)) -> None:
    """Finish jobs as the worker's outcome statement would: one UPDATE, times set."""
    now = timezone.now()
    Job.objects.filter(id__in=[j.id for j in jobs]).update(
        status=status, created_at=now - end_to_end, queued_at=now - end_to_end, started_at=now - end_to_end + wait,
        finished_at=now,
    )  # fmt: skip


@pytest.mark.django_db
def test_counts_follow_inserts_updates_deletes_and_folds(user, other_user):
    jobs = [submit_job(user) for _ in range(5)]
    submit_job(other_user)
    Job.objects.filter(id__in=[j.id for j in jobs[:2]]).update(status=JobStatus.RUNNING)
    Job.objects.filter(id=jobs[0].id).update(status=JobStatus.RUNNING)  # no change: no delta
    assert tallies.status_counts([user.pk]) == _table_counts(user.pk)
    tallies.fold(now=timezone.now())
    assert not JobCountDelta.objects.exists()
    Job.objects.filter(id=jobs[4].id).delete()
    assert tallies.status_counts([user.pk]) == _table_counts(user.pk) | {"PENDING": 2, "RUNNING": 2}
    assert tallies.status_counts([other_user.pk])["PENDING"] == 1
    assert tallies.status_counts()["PENDING"] == 3  # everyone's
    other_user.delete()  # its jobs go by cascade: their counts with them
    tallies.fold(now=timezone.now())
    assert tallies.status_counts()["PENDING"] == 2


@pytest.mark.django_db(transaction=True)
def test_truncating_the_jobs_clears_the_tallies():
    user = UserFactory()
    _finish([submit_job(user)], JobStatus.SUCCEEDED, end_to_end=timedelta(seconds=1))
    tallies.fold(now=timezone.now())
    with connection.cursor() as cur:
        cur.execute("TRUNCATE jobs_job CASCADE")
    assert tallies.status_counts() == dict.fromkeys(JobStatus.values, 0)
    assert not JobMinute.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_counts_are_exact_with_writers_and_folds_running_at_once():
    """Four writers submit and finish jobs while two threads fold; uncommitted deltas are
    invisible to a fold and a delta is folded once, so totals + deltas equal the table."""
    users = [UserFactory() for _ in range(2)]
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def write(owner) -> None:
        for _ in range(15):
            with transaction.atomic():
                jobs = [submit_job(owner) for _ in range(3)]
                _finish(jobs[:2], JobStatus.SUCCEEDED, end_to_end=timedelta(milliseconds=20))

    def fold() -> None:
        while not stop.is_set():
            tallies.fold(now=timezone.now())

    folders = [in_thread(outcome, f"fold{i}", fold) for i in range(2)]
    writers = [in_thread(outcome, f"write{i}", lambda u=users[i % 2]: write(u)) for i in range(4)]
    for t in writers:
        t.join(60)
    stop.set()
    for t in folders:
        t.join(60)
    assert not any(isinstance(v, Exception) for v in outcome.values()), outcome
    for u in users:
        assert (
            tallies.status_counts([u.pk])
            == _table_counts(u.pk)
            == dict.fromkeys(JobStatus.values, 0)
            | {
                "PENDING": 30,
                "SUCCEEDED": 60,
            }
        )
    minute = tallies.minutes_since(timezone.now() - timedelta(minutes=2), [users[0].pk])
    assert sum(m.finished[JobStatus.SUCCEEDED] for m in minute.values()) == 60


@pytest.mark.django_db(transaction=True)
def test_a_fold_waiting_on_another_does_not_count_twice():
    """A second fold blocks on the rows the first has taken; when the first commits it skips
    them instead of adding them again."""
    user = UserFactory()
    for _ in range(3):
        submit_job(user)
    took, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def first() -> None:
        with transaction.atomic():
            tallies.fold(now=timezone.now())
            took.set()
            release.wait(20)

    one = in_thread(outcome, "first", first)
    assert took.wait(10)
    two = in_thread(outcome, "second", lambda: tallies.fold(now=timezone.now()))
    two.join(1)  # blocked on the first's row locks (or done, having nothing to take)
    release.set()
    one.join(20)
    two.join(20)
    assert outcome["second"] == 0, outcome
    assert tallies.status_counts([user.pk])["PENDING"] == 3


@pytest.mark.django_db
def test_stats_and_the_overview_read_throughput_and_percentiles_from_the_histograms(user, other_user):
    _clear_of_a_minute_boundary()
    latencies = [0.01 * (i + 1) for i in range(100)]  # 10 ms to 1 s
    for seconds in latencies:
        _finish([submit_job(user)], JobStatus.SUCCEEDED, end_to_end=timedelta(seconds=seconds),
                wait=timedelta(seconds=seconds / 2))  # fmt: skip
    _finish([submit_job(user)], JobStatus.DEAD_LETTER, end_to_end=timedelta(seconds=5))
    _finish([submit_job(other_user)], JobStatus.SUCCEEDED, end_to_end=timedelta(hours=1))
    tallies.fold(now=timezone.now())
    _finish([submit_job(user)], JobStatus.SUCCEEDED, end_to_end=timedelta(seconds=0.5))  # left unfolded

    stats = job_get_stats(user=user)
    assert stats["by_status"]["SUCCEEDED"] == 101
    assert stats["throughput"]["succeeded_last_minute"] == 101
    assert stats["throughput"]["succeeded_per_minute_last_hour"] == round(101 / 60, 2)
    exact = sorted([*latencies, 0.5])
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        true = exact[math.ceil(q * len(exact)) - 1]
        assert abs(stats["latency_seconds"]["end_to_end"][name] - true) <= 0.05 * true, (name, stats)
    assert stats["latency_seconds"]["queue_wait"]["p50"] == pytest.approx(exact[50] / 2, rel=0.05)

    minutes = per_minute(user)
    assert len(minutes["labels"]) == 60
    assert minutes["succeeded"][-1] == 101
    assert minutes["dead"][-1] == 1
    assert minutes["p95"][-1] == pytest.approx(exact[math.ceil(0.95 * 101) - 1], rel=0.05)


@pytest.mark.django_db
def test_a_retried_job_that_finishes_again_counts_each_time(user):
    job = submit_job(user)
    _finish([job], JobStatus.DEAD_LETTER, end_to_end=timedelta(seconds=1))
    Job.objects.filter(id=job.id).update(status=JobStatus.PENDING, finished_at=None)
    _finish([job], JobStatus.SUCCEEDED, end_to_end=timedelta(seconds=2))
    finished: dict[str, int] = {}
    for minute in tallies.minutes_since(timezone.now() - timedelta(minutes=1), [user.pk]).values():
        for status, n in minute.finished.items():
            finished[status] = finished.get(status, 0) + n
    assert finished == {"DEAD_LETTER": 1, "SUCCEEDED": 1}


@pytest.mark.django_db
def test_minutes_past_the_kept_window_are_dropped(user):
    _finish([submit_job(user)], JobStatus.SUCCEEDED, end_to_end=timedelta(seconds=1))
    tallies.fold(now=timezone.now())
    assert JobMinute.objects.exists()
    tallies.fold(now=timezone.now() + timedelta(minutes=tallies.MINUTES_KEPT + 1))
    assert not JobMinute.objects.exists()


CHEAPER = importlib.import_module("jobs.migrations.0034_cheaper_tally_update")


def _minute_deltas(ids: list[Any], statuses: list[str], finished: list[Any], started: list[Any]) -> list[tuple]:
    """The minute deltas one UPDATE of these jobs writes (it ends some, moves others)."""
    JobMinuteDelta.objects.all().delete()
    with connection.cursor() as cur:
        cur.execute(
            """UPDATE jobs_job j SET status = u.status, finished_at = u.finished, started_at = u.started
                 FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[], %s::timestamptz[])
                      AS u(id, status, finished, started)
                WHERE j.id = u.id""",
            [ids, statuses, finished, started],
        )
    return sorted(JobMinuteDelta.objects.values_list("minute", "owner_id", "status", "metric", "bucket", "n"))


@pytest.mark.django_db
def test_the_cheaper_update_trigger_writes_what_the_first_one_did(user, other_user):
    """Migration 0034's trigger body against 0012's, on the same statement: jobs of two owners
    ending in every way, over two minutes, with and without a start, some ended before (a
    retried job's second end counts; an end moved to another end does not)."""
    rng = random.Random(33)
    now = timezone.now().replace(second=30, microsecond=0)
    jobs = [submit_job(rng.choice([user, other_user])) for _ in range(120)]
    Job.objects.filter(id__in=[j.id for j in jobs[:20]]).update(status=JobStatus.DEAD_LETTER, finished_at=now)
    ids, statuses, finished, started = [], [], [], []
    for job in jobs:
        ids.append(job.id)
        statuses.append(rng.choice([*JobStatus.values, JobStatus.SUCCEEDED, JobStatus.SUCCEEDED]))
        finished.append(now + timedelta(seconds=rng.choice([-40, 0, 20, 45])) if rng.random() < 0.95 else None)
        # Latencies from under a millisecond to a day, some on a bucket's edge (1.1^k ms).
        wait = timedelta(milliseconds=rng.choice([0.2, 1.0, 1.1**7, 1.1**40, rng.uniform(1, 1e8)]))
        started.append(job.created_at + wait if rng.random() < 0.8 else None)
    with transaction.atomic():
        written = _minute_deltas(ids, statuses, finished, started)
        transaction.set_rollback(True)
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute(CHEAPER.functions(CHEAPER.BUCKET_0012, CHEAPER.MINUTE_DELTAS_0012))
        before = _minute_deltas(ids, statuses, finished, started)
        transaction.set_rollback(True)
    assert written == before
    assert {row[3] for row in written} == {0, 1, 2}  # counts and both latencies
    assert len({row[1] for row in written}) == 2
    with connection.cursor() as cur:  # the rollback put the new body back
        cur.execute("SELECT prosrc LIKE '%%GROUPING SETS%%' FROM pg_proc WHERE proname = 'jobs_tally_update'")
        assert cur.fetchone() == (True,)


@pytest.mark.django_db
def test_a_bucket_in_double_precision_differs_only_on_an_edge():
    with connection.cursor() as cur:
        for name, body in (("new", CHEAPER.BUCKET), ("old", CHEAPER.BUCKET_0012)):
            cur.execute(f"CREATE FUNCTION pg_temp.bucket_{name}(d interval) RETURNS int2 LANGUAGE sql AS $${body}$$")
        cur.execute(
            """SELECT count(*) FILTER (WHERE a <> b), coalesce(max(abs(a - b)), 0) FROM (
                  SELECT pg_temp.bucket_new(d) AS a, pg_temp.bucket_old(d) AS b
                    FROM (SELECT (random() * 1000) ^ 3 * interval '1 millisecond' AS d
                            FROM generate_series(1, 20000)) x) t"""
        )
        differ, most = cur.fetchone()
    assert differ <= 2
    assert most <= 1
