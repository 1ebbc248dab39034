"""The audit log is kept past job retention (issue 32): the scheduler's retention pass copies
every record, whole, to ClickHouse beside the archived jobs, once each and in id order, a
bounded batch a call, whatever crashes; PostgreSQL keeps every record (append-only) and
ClickHouse being down only delays the copy. Real PostgreSQL and ClickHouse throughout."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import DatabaseError, transaction
from django.utils import timezone

from jobs import archive
from jobs.models import AuditRecord, Job
from jobs.services import JobSpec, job_submit
from logs import store
from orchestration.scheduler import retention
from orchestration.scheduler.leader import Scheduler
from tests.threads import in_thread

FIELDS = ("id", "created_at", "actor_id", "actor", "action", "target_type", "target_id", "target_owner_id", "source",
          "request_id", "trace_id", "details")  # fmt: skip


@pytest.fixture
def audit_copy(archive_table: str) -> Iterator[str]:
    """The audit log's copy of the test's own (beside its archive table)."""
    name = archive.audit_table()
    yield name
    store.connect().command(f"DROP TABLE IF EXISTS {name}")
    archive._migrated.discard(name)


def stored(name: str) -> int:
    """Rows in the copy as stored, duplicates included (no FINAL, no LIMIT BY)."""
    return int(store.client().query(f"SELECT count() FROM {name}").result_rows[0][0])  # noqa: S608


def add(n: int, **fields: Any) -> list[AuditRecord]:
    return [
        AuditRecord.objects.create(
            actor="ops", action="job.cancel", target_type="job", target_id=str(uuid.uuid4()), source="api", **fields
        )
        for _ in range(n)
    ]


def as_dict(record: AuditRecord) -> dict[str, Any]:
    return {f: getattr(record, f) for f in FIELDS}


@pytest.mark.django_db
def test_every_record_is_copied_whole_and_postgresql_keeps_it_append_only(audit_copy, epoch, user, api):
    job = job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop")).job
    api.post(f"/api/v1/jobs/{job.id}/cancel/", HTTP_X_REQUEST_ID="req-77")  # a real action, recorded by the API
    AuditRecord.objects.create(
        created_at=timezone.now() - timedelta(days=400), actor_id=None, actor="cli:root", action="jobs.bulk_action",
        target_type="job", target_id="x" * 200, target_owner_id=None, source="cli", request_id="r" * 64,
        trace_id="ab" * 16, details={"verb": "retry", "filter": {"status": ["DEAD_LETTER"]}, "s": "é\u2028\"'", "n": 3},
    )  # fmt: skip
    records = list(AuditRecord.objects.order_by("id"))
    assert len(records) == 2

    assert retention.AuditArchiveScan()(epoch, timezone.now) == 2
    copied = archive.audit_records()
    assert [as_dict(r) for r in copied] == [as_dict(r) for r in records]  # who, when, what, target, source, ids
    assert all(r.archived for r in copied)
    assert (copied[0].request_id, copied[0].target_owner_id) == ("req-77", user.pk)
    assert [r.id for r in archive.audit_records(target_type="job", target_id=str(job.id))] == [records[0].id]
    assert archive.audit_records(actor="cli:root")[0].details["s"] == "é\u2028\"'"

    # PostgreSQL keeps every record, and still refuses to change or delete one.
    assert [as_dict(r) for r in AuditRecord.objects.order_by("id")] == [as_dict(r) for r in records]
    for attempt in (lambda: AuditRecord.objects.filter(id=records[0].id).update(actor="someone else"),
                    lambda: AuditRecord.objects.all().delete()):  # fmt: skip
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            attempt()
    assert AuditRecord.objects.count() == 2


@pytest.mark.django_db
def test_a_backlog_goes_a_batch_a_call_and_a_new_leader_goes_on_after_the_copy(audit_copy, epoch, settings):
    settings.JOB_RETENTION_BATCH = 2
    records = add(5)
    first = retention.AuditArchiveScan()
    assert first(epoch, timezone.now) == 2
    second = retention.AuditArchiveScan()  # the scheduler restarted: it starts from what ClickHouse has
    assert [second(epoch, timezone.now) for _ in range(3)] == [2, 1, 0]
    assert [r.id for r in archive.audit_records()] == [r.id for r in records]
    assert stored(audit_copy) == 5
    add(1)
    settings.JOB_RETENTION_DAYS = 0  # retention off: nothing goes to the archive
    assert second(epoch, timezone.now) == 0
    settings.JOB_RETENTION_DAYS = 30
    settings.JOB_RETENTION_INTERVAL_SECONDS = 60
    assert second(epoch, timezone.now) == 1  # this call's batch, then a minute's wait
    add(1)
    assert second(epoch, timezone.now) == 0


@pytest.mark.django_db
def test_a_pass_sent_again_after_a_crash_stores_each_record_once(audit_copy, epoch, settings):
    settings.JOB_RETENTION_BATCH = 2
    records = add(5)
    scan = retention.AuditArchiveScan()
    assert [scan(epoch, timezone.now) for _ in range(4)] == [2, 2, 1, 0]
    # Crashes between an insert and the watermark's move: the same batches are sent again,
    # with the same tokens, and ClickHouse stores them once.
    scan.after = 0
    assert [scan(epoch, timezone.now) for _ in range(3)] == [2, 2, 1]
    assert stored(audit_copy) == 5
    # Sent again in other batches (other tokens): stored twice for a while, read once, and
    # merged into one row per id.
    settings.JOB_RETENTION_BATCH = 3
    scan.after = 0
    assert scan(epoch, timezone.now) == 3
    assert [r.id for r in archive.audit_records()] == [r.id for r in records]
    store.client().command(f"OPTIMIZE TABLE {audit_copy} FINAL")
    assert stored(audit_copy) == 5
    assert AuditRecord.objects.count() == 5


@pytest.mark.django_db(transaction=True)
def test_a_record_that_commits_after_a_newer_one_is_not_passed_over(audit_copy, epoch):
    before = add(1)
    scan = retention.AuditArchiveScan()
    assert scan(epoch, timezone.now) == 1
    held, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def slow_action() -> AuditRecord:
        with transaction.atomic():
            [record] = add(1)  # draws its id now, commits later
            held.set()
            release.wait(20)
        return record

    thread = in_thread(outcome, "slow", slow_action)
    assert held.wait(10)
    try:
        after = add(1)  # a newer id, committed first
        assert [scan(epoch, timezone.now) for _ in range(2)] == [0, 0]  # not past the open transaction
        assert [r.id for r in archive.audit_records()] == [before[0].id]
    finally:
        release.set()
        thread.join(20)
    slow = outcome["slow"]
    assert slow.id < after[0].id
    assert scan(epoch, timezone.now) == 2
    assert [r.id for r in archive.audit_records()] == [before[0].id, slow.id, after[0].id]


@pytest.fixture
def scheduler_keys(settings: Any) -> Iterator[None]:
    from config import broker

    settings.SCHEDULER_LOCK_KEY = f"test-audit-archive-{uuid.uuid4().hex[:12]}"
    yield
    broker.client().delete(f"{settings.SCHEDULER_LOCK_KEY}:leader")


@pytest.mark.django_db
def test_clickhouse_down_stops_only_the_copy_which_goes_on_when_it_is_back(audit_copy, scheduler_keys, settings, user):
    add(3)
    scheduler = Scheduler()
    assert scheduler.tick().audit_archived == 3  # type: ignore[union-attr]
    records = add(2)
    later = JobSpec(type="demo.noop", run_at=timezone.now() + timedelta(hours=1))
    delayed = job_submit(owner_id=user.pk, spec=later).job
    Job.objects.filter(id=delayed.id).update(run_at=timezone.now() - timedelta(seconds=1))
    good_url = settings.CLICKHOUSE_URL
    settings.CLICKHOUSE_URL = "http://default:@127.0.0.1:9/default"  # nothing listens there

    result = scheduler.tick()
    assert result is not None
    assert "audit scan failed" in result.skipped
    assert result.audit_archived == 0
    assert result.delayed == 1  # the other scans ran
    assert AuditRecord.objects.count() == 5

    settings.CLICKHOUSE_URL = good_url
    result = scheduler.tick()
    assert result is not None
    assert result.audit_archived == 2
    assert "audit scan failed" not in result.skipped
    assert [r.id for r in archive.audit_records()][-2:] == [r.id for r in records]
    assert stored(audit_copy) == 5
