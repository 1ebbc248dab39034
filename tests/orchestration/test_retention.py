"""Retention: finished jobs past their retention move to the ClickHouse archive with their
attempts and leave PostgreSQL; the API still serves them, read-only, and searches them."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from jobs import archive, tallies
from jobs.models import Job, JobAttempt, JobStatus, Outbox
from orchestration.scheduler import retention
from tests.factories import UserFactory, submit_job
from tests.logs.conftest import (
    ch_table,  # noqa: F401 (a fixture: a logs table of the test's own)
    record,
    store_records,
)
from tests.threads import in_thread

JOBS = "/api/v1/jobs/"


def finished(owner: Any, *, days_ago: float, status: str = JobStatus.SUCCEEDED, attempts: int = 1, **kw: Any) -> Job:
    """A job that finished `days_ago` days ago, with its attempts."""
    job = submit_job(owner, **kw)
    at = timezone.now() - timedelta(days=days_ago)
    for n in range(1, attempts + 1):
        last = n == attempts
        JobAttempt.objects.create(
            job=job, attempt=n, status="SUCCEEDED" if last and status == JobStatus.SUCCEEDED else "FAILED",
            started_at=at - timedelta(seconds=2), finished_at=at, error="" if last else f"boom {n}", worker="w1",
        )  # fmt: skip
    Job.objects.filter(id=job.id).update(
        status=status, attempts=attempts, attempt_seq=attempts, created_at=at - timedelta(seconds=5),
        started_at=at - timedelta(seconds=2), finished_at=at, result={"ok": True}, last_error="",
    )  # fmt: skip
    job.refresh_from_db()
    return job


def scan(epoch: int, passes: int = 1) -> int:
    run = retention.RetentionScan()
    return sum(run(epoch, timezone.now) for _ in range(passes))


@pytest.mark.django_db
def test_a_job_past_retention_moves_to_the_archive_and_the_api_still_serves_it(
    archive_table,
    ch_table,  # noqa: F811
    epoch,
    user,
    api,
    other_api,
    staff_api,
):
    old = finished(user, days_ago=40, status=JobStatus.DEAD_LETTER, attempts=3, payload={"n": 1, "s": "é\u2028"})
    recent = finished(user, days_ago=10)
    before = tallies.status_counts([user.pk])["DEAD_LETTER"]

    assert scan(epoch) == 1
    assert not Job.objects.filter(id=old.id).exists()
    # Attempts and outbox rows go first: no database constraint ties them to the job (issue 33).
    assert not JobAttempt.objects.filter(job_id=old.id).exists()
    assert not Outbox.objects.filter(job_id=old.id).exists()
    assert Job.objects.filter(id=recent.id).exists()
    assert tallies.status_counts([user.pk])["DEAD_LETTER"] == before - 1

    body = api.get(f"{JOBS}{old.id}/").json()
    assert body["archived"] is True
    assert body["status"] == "DEAD_LETTER"
    assert body["payload"] == {"n": 1, "s": "é\u2028"}
    assert [h["attempt"] for h in body["history"]] == [1, 2, 3]
    assert body["history"][0]["error"] == "boom 1"
    assert "last_log_lines" in body["history"][0]
    assert api.get(f"{JOBS}{recent.id}/").json()["archived"] is False

    assert other_api.get(f"{JOBS}{old.id}/").status_code == 404  # another user's archived job
    assert staff_api.get(f"{JOBS}{old.id}/").json()["archived"] is True
    response = api.post(f"{JOBS}{old.id}/retry/")
    assert response.status_code == 409
    assert "archived" in response.json()["detail"]
    assert api.get(f"{JOBS}{old.id}/logs/").status_code == 200
    # The log search finds an archived job's lines too (it once asked PostgreSQL only, and
    # answered as for another user's job: nothing), for its owner only.
    store_records(record("the old job's line", job_id=old.id, owner_id=user.pk, attempt=3))
    assert [r["message"] for r in api.get(f"/api/v1/logs/?job_id={old.id}").json()["results"]] == ["the old job's line"]
    assert other_api.get(f"/api/v1/logs/?job_id={old.id}").json()["results"] == []

    listed = api.get(JOBS + "?archived=true").json()["results"]
    assert [j["id"] for j in listed] == [str(old.id)]
    assert api.get(JOBS + "?archived=true&status=SUCCEEDED").json()["results"] == []
    assert other_api.get(JOBS + "?archived=true").json()["results"] == []
    assert str(old.id) not in [j["id"] for j in api.get(JOBS).json()["results"]]


@pytest.mark.django_db
def test_archived_pages_follow_the_cursor_and_keep_filters(archive_table, epoch, user, api):
    jobs = [finished(user, days_ago=40 + i, queue="reports" if i % 2 else "default") for i in range(7)]
    assert scan(epoch) == 7
    seen, url = [], JOBS + "?archived=true&page_size=2"
    while url:
        page = api.get(url).json()
        seen += [j["id"] for j in page["results"]]
        url = page["next"]
    assert seen == [str(j.id) for j in sorted(jobs, key=lambda j: j.created_at, reverse=True)]
    reports = api.get(JOBS + "?archived=true&queue=reports").json()["results"]
    assert {j["id"] for j in reports} == {str(j.id) for j in jobs[1::2]}
    assert api.get(JOBS + "?archived=true&cursor=bm9wZQ==").status_code == 400
    assert api.get(JOBS + "?archived=maybe").status_code == 400


@pytest.mark.django_db
def test_what_retention_leaves_alone(archive_table, epoch, settings, user):
    from workflows.models import Workflow

    settings.JOB_RETENTION_DAYS_BY_QUEUE = {"keep": 0, "short": 1}
    waiting = submit_job(user, run_at=timezone.now() + timedelta(days=1))
    Job.objects.filter(id=waiting.id).update(created_at=timezone.now() - timedelta(days=60))
    kept_queue = finished(user, days_ago=400, queue="keep")
    short = finished(user, days_ago=2, queue="short")
    workflow = Workflow.objects.create(owner=user, name="w", status="RUNNING")
    in_flight = finished(user, days_ago=40)
    Job.objects.filter(id=in_flight.id).update(workflow=workflow)
    assert scan(epoch) == 1
    assert set(Job.objects.filter(owner=user).values_list("id", flat=True)) == {waiting.id, kept_queue.id, in_flight.id}
    assert not Job.objects.filter(id=short.id).exists()
    Workflow.objects.filter(id=workflow.id).update(status="SUCCEEDED")
    assert scan(epoch) == 1  # its workflow finished: now it goes


@pytest.mark.django_db
def test_a_full_window_of_jobs_not_due_cannot_hide_a_due_one(archive_table, epoch, settings, user):
    settings.JOB_RETENTION_SCAN_ROWS = 5
    for _ in range(12):  # older than the due job, and waiting: never due
        job = submit_job(user, run_at=timezone.now() + timedelta(days=1))
        Job.objects.filter(id=job.id).update(created_at=timezone.now() - timedelta(days=90))
    due = finished(user, days_ago=40)
    run = retention.RetentionScan()
    moved = [run(epoch, timezone.now) for _ in range(3)]
    assert moved == [0, 0, 1]
    assert not Job.objects.filter(id=due.id).exists()


@pytest.mark.django_db
def test_a_job_retried_after_the_page_was_read_stays(archive_table, epoch, user):
    job = finished(user, days_ago=40, status=JobStatus.DEAD_LETTER)
    Job.objects.filter(id=job.id).update(status=JobStatus.PENDING, finished_at=None)  # retried meanwhile
    policy = retention.Policy.from_settings()
    assert retention.archive_batch(epoch, timezone.now(), [job.id], policy) == 0
    assert Job.objects.filter(id=job.id).exists()


@pytest.mark.django_db(transaction=True)
def test_a_job_locked_by_a_transition_is_skipped_then_archived(archive_table, epoch):
    user = UserFactory()
    job = finished(user, days_ago=40)
    locked, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def hold() -> None:
        with transaction.atomic():
            Job.objects.select_for_update().get(id=job.id)
            locked.set()
            release.wait(20)

    holder = in_thread(outcome, "hold", hold)
    assert locked.wait(10)
    try:
        assert scan(epoch) == 0  # not waited for: skipped
    finally:
        release.set()
        holder.join(20)
    assert scan(epoch) == 1


@pytest.mark.django_db
def test_an_archive_interrupted_before_postgres_commits_is_done_again_once(archive_table, epoch, user, api):
    job = finished(user, days_ago=40)
    policy = retention.Policy.from_settings()

    def crash_after_the_insert() -> None:
        with transaction.atomic():
            retention.archive_batch(epoch, timezone.now(), [job.id], policy)
            raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        crash_after_the_insert()
    assert Job.objects.filter(id=job.id).exists()
    assert api.get(f"{JOBS}{job.id}/").json()["archived"] is False  # PostgreSQL's copy wins
    assert scan(epoch) == 1
    listed = api.get(JOBS + "?archived=true").json()["results"]
    assert [j["id"] for j in listed] == [str(job.id)]  # one copy, whatever was inserted twice


@pytest.mark.django_db
def test_a_workflow_task_keeps_its_row_and_shows_its_archived_job(archive_table, epoch, user, api):
    """Its job's link goes with the job, but the workflow still shows the task as it ended
    (it once showed PENDING, as if never released), with its job and its compensation's."""
    from workflows.models import Workflow, WorkflowTask

    workflow = Workflow.objects.create(owner=user, name="w", status="FAILED")
    job = finished(user, days_ago=40)
    undo = finished(user, days_ago=40, status=JobStatus.DEAD_LETTER)
    Job.objects.filter(id__in=[job.id, undo.id]).update(workflow=workflow)
    task = WorkflowTask.objects.create(
        workflow=workflow, task_id="a", position=0, type="demo.noop", job_id=job.id, compensation_job_id=undo.id,
        compensation={"type": "demo.noop"}, compensation_state="FAILED",
    )  # fmt: skip
    assert scan(epoch) == 2
    task.refresh_from_db()
    assert (task.job_id, task.compensation_job_id) == (None, None)
    assert archive.get(job.id, owners=[user.pk]).workflow_id == workflow.id
    [shown] = api.get(f"/api/v1/workflows/{workflow.id}/").json()["tasks"]
    assert (shown["status"], shown["job"]) == ("SUCCEEDED", str(job.id))
    assert (shown["compensation_status"], shown["compensation_job"]) == ("DEAD_LETTER", str(undo.id))
    assert shown["finished_at"] is not None


@pytest.mark.django_db
def test_the_dashboard_shows_archived_jobs_read_only(archive_table, epoch, user, client):
    job = finished(user, days_ago=40, status=JobStatus.DEAD_LETTER)
    assert scan(epoch) == 1
    client.force_login(user)
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert "ARCHIVED" in page
    assert f"/jobs/{job.id}/retry/" not in page  # no buttons for an archived job
    listing = client.get("/jobs/?archived=true").content.decode()
    assert str(job.id)[:8] in listing
    assert "Retry selected" not in listing
    assert str(job.id)[:8] not in client.get("/jobs/").content.decode()
    assert client.post(f"/jobs/{job.id}/retry/").status_code == 404  # no live job to act on
    assert not Job.objects.filter(id=job.id).exists()


@pytest.mark.django_db
def test_the_admin_shows_archived_jobs_to_staff_only(archive_table, epoch, user, staff, client):
    job = finished(user, days_ago=40, status=JobStatus.DEAD_LETTER, attempts=2)
    assert scan(epoch) == 1
    client.force_login(user)
    assert client.get("/admin/orchestration_jobs/job/archive/").status_code == 302  # to the admin login
    client.force_login(staff)
    assert "Archived jobs" in client.get("/admin/orchestration_jobs/job/").content.decode()
    listing = client.get("/admin/orchestration_jobs/job/archive/?status=DEAD_LETTER").content.decode()
    assert str(job.id) in listing
    assert str(job.id) not in client.get("/admin/orchestration_jobs/job/archive/?status=SUCCEEDED").content.decode()
    assert str(job.id) in client.get(f"/admin/orchestration_jobs/job/archive/?q={job.id}").content.decode()
    assert str(job.id) not in client.get(f"/admin/orchestration_jobs/job/archive/?q={uuid.uuid4()}").content.decode()
    refused = client.get("/admin/orchestration_jobs/job/archive/?status=EXPLODED").content.decode()
    assert "status: Select a valid choice" in refused  # named, not an empty page
    assert str(job.id) not in refused
    page = client.get(f"/admin/orchestration_jobs/job/archive/{job.id}/").content.decode()
    assert "boom 1" in page
    assert "read-only" in page
    assert client.get(f"/admin/orchestration_jobs/job/archive/{uuid.uuid4()}/").status_code == 404


@pytest.mark.django_db
def test_a_tick_archives_one_batch_and_the_next_goes_on(archive_table, epoch, settings, user):
    settings.JOB_RETENTION_BATCH = 2
    for i in range(5):
        finished(user, days_ago=40 + i)
    run = retention.RetentionScan()
    assert [run(epoch, timezone.now) for _ in range(4)] == [2, 2, 1, 0]


@pytest.mark.django_db
def test_retention_waits_while_a_burst_is_being_dispatched_and_between_batches(archive_table, epoch, settings, user):
    settings.JOB_RETENTION_PAUSE_BACKLOG = 3
    finished(user, days_ago=40)
    queued = submit_job(user)
    Job.objects.filter(id=queued.id).update(status=JobStatus.QUEUED)
    Outbox.objects.all().delete()  # relayed
    waiting = [submit_job(user) for _ in range(2)]  # two outbox rows and a QUEUED job: a burst
    run = retention.RetentionScan()
    assert run(epoch, timezone.now) == 0
    Outbox.objects.filter(job_id__in=[j.id for j in waiting]).delete()
    assert run(epoch, timezone.now) == 1
    settings.JOB_RETENTION_INTERVAL_SECONDS = 60
    finished(user, days_ago=41)
    assert run(epoch, timezone.now) == 1  # this call's batch, then a minute's wait
    finished(user, days_ago=42)
    assert run(epoch, timezone.now) == 0


@pytest.mark.django_db
def test_one_queues_backlog_pauses_only_that_queues_retention(archive_table, epoch, settings, user, other_user):
    """A tenant's parked (or rate-limited) queue keeps a backlog for good: retention once
    paused for everyone while 100 jobs of any queue waited."""
    from tests.orchestration.conftest import declare

    settings.JOB_RETENTION_PAUSE_BACKLOG = 3
    declare(settings, "parked")
    parked_old = finished(user, days_ago=40, queue="parked")
    for _ in range(5):
        submit_job(user, queue="parked")  # a backlog that will not drain
    elsewhere = finished(other_user, days_ago=40)
    run = retention.RetentionScan()
    assert run(epoch, timezone.now) == 1
    assert not Job.objects.filter(id=elsewhere.id).exists()  # archived
    assert Job.objects.filter(id=parked_old.id).exists()  # waits for its queue's quiet moment
    Outbox.objects.filter(queue="parked").delete()  # the backlog went
    run.after = None
    assert run(epoch, timezone.now) == 1
    assert not Job.objects.filter(id=parked_old.id).exists()


@pytest.mark.django_db
def test_an_archived_job_keeps_its_trace_context(archive_table, epoch, user, api):
    carrier = {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01", "tracestate": "v=1", "baggage": "k=v"}
    old = finished(user, days_ago=40)
    Job.objects.filter(id=old.id).update(trace_context=carrier)
    assert scan(epoch) == 1
    (archived,) = archive.page(archive.Filters(), owners={user.pk}, after=None, size=10)
    assert archived.trace_context == carrier
    assert api.get(f"{JOBS}{old.id}/").json()["trace_id"] == "a" * 32


@pytest.mark.django_db
def test_an_archive_table_from_before_the_carrier_reads_its_traceparents(archive_table, user, api):
    """A table made when the archive kept `traceparent` gets `trace_context`, computed from it
    for the rows it already has."""
    from logs import store

    old_schema = archive.create_table_sql(archive_table).replace("trace_context       Nullable(String)",
                                                                 "traceparent         Nullable(String)")  # fmt: skip
    store.client().command(old_schema)
    job = finished(user, days_ago=40)
    row = dict(zip(archive.COLUMNS, archive.row_of(
        {c: getattr(job, c) for c in archive.COLUMNS if c not in ("history", "archived_at")}
        | {"backoff": "{}", "payload": "{}", "result": None, "trace_context": None}, [], timezone.now(),
    ), strict=True))  # fmt: skip
    row.pop("trace_context")
    columns = [c if c != "trace_context" else "traceparent" for c in archive.COLUMNS]
    store.client().insert(archive_table, [[row.get(c, f"00-{'c' * 32}-{'d' * 16}-01") for c in columns]],
                          column_names=columns)  # fmt: skip
    Job.objects.filter(id=job.id).delete()
    archive.migrate()
    assert archive.get(job.id, owners={user.pk}).trace_context == {"traceparent": f"00-{'c' * 32}-{'d' * 16}-01"}
    archive.migrate()  # again: nothing to add
