"""The counts and latency histograms the stats read instead of scanning jobs_job (jobs.tallies):
exact under concurrent writers and concurrent folds, right after deletes and truncates, and
percentiles within the buckets' 5 %."""

from __future__ import annotations

import math
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from dashboard.queries import per_minute
from jobs import tallies
from jobs.models import Job, JobCountDelta, JobMinute, JobStatus
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
