"""The dashboard in a real browser (headless Chromium through Playwright): log in, the
overview, a job reaching SUCCEEDED on its page without a reload, a bulk retry of a
dead-lettered job, a workflow's graph, a log search, schedules. Screenshots of each page go
to tests/artifacts/."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import transitions
from jobs.models import Job, JobStatus, Schedule
from orchestration.worker import execute
from tests.conftest import client_for
from tests.dashboard.conftest import login, shot
from tests.factories import dispatch_of
from tests.logs.conftest import record, store_records
from tests.workflows.conftest import run_all, task

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_overview_and_a_job_reaching_succeeded_live(page, user):
    login(page, user.username)
    assert page.get_by_role("heading", name="Overview").is_visible()
    assert page.get_by_role("heading", name="Queues your jobs").is_visible()
    shot(page, "01-overview")

    created = client_for(user).post(
        "/api/v1/jobs/", {"type": "demo.echo", "payload": {"hello": "browser"}}, format="json"
    )
    job_id = created.json()["id"]
    page.goto(f"/jobs/{job_id}/")
    status = page.locator("#job-status")
    assert status.inner_text() == "PENDING"
    job = Job.objects.get(id=job_id)
    execute(dispatch_of(job))
    status.filter(has_text="SUCCEEDED").wait_for(timeout=10_000)  # the panel refreshed itself
    assert "browser" in page.locator("main").inner_text()
    shot(page, "02-job-succeeded")


def test_bulk_retry_of_a_dead_lettered_job(page, user):
    job = Job.objects.get(id=client_for(user).post("/api/v1/jobs/", {"type": "demo.fail", "max_attempts": 1},
                                                    format="json").json()["id"])  # fmt: skip
    transitions.mark_running(job.id, dispatch_token=job.dispatch_token, worker="w", lease_seconds=30)
    transitions.move_to_dead_letter(job.id, attempt=1, error="DemoFailure: upstream said no")
    login(page, user.username)
    page.goto("/jobs/?status=DEAD_LETTER")
    assert page.get_by_text("upstream said no").is_visible()
    shot(page, "03-jobs-dead-letters")
    page.get_by_label(f"Select job {job.id}").check()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Retry selected").click()
    page.get_by_text("Retried 1 job(s).").wait_for()
    assert Job.objects.get(id=job.id).status == JobStatus.PENDING
    shot(page, "04-jobs-after-retry")


def test_a_workflow_graph(page, user):
    api = client_for(user)
    tasks = [task("extract"), task("clean", "extract"), task("enrich", "extract"), task("load", "clean", "enrich")]
    wf = api.post("/api/v1/workflows/", {"name": "nightly-etl", "tasks": tasks}, format="json").json()
    run_all()
    login(page, user.username)
    page.goto("/workflows/")
    page.get_by_role("link", name=wf["id"][:8]).click()
    page.locator("#workflow-status").filter(has_text="SUCCEEDED").wait_for()
    graph = page.get_by_role("img", name="workflow dependency graph")
    assert graph.is_visible()
    assert graph.locator("rect").count() == 4
    shot(page, "05-workflow-graph")


def test_log_search(page, user, ch_table):
    job = Job.objects.get(id=client_for(user).post("/api/v1/jobs/", {"type": "demo.noop"}, format="json").json()["id"])
    now = timezone.now()
    store_records(
        record("payment gateway timeout after 30s", level="ERROR", job_id=job.id, owner_id=user.pk,
               when=now - timedelta(minutes=2)),
        record("payment accepted", job_id=job.id, owner_id=user.pk, when=now - timedelta(minutes=1)),
    )  # fmt: skip
    login(page, user.username)
    page.goto("/logs/")
    page.get_by_label("Text").fill("timeout")
    page.get_by_role("button", name="Search").click()
    row = page.get_by_role("row").filter(has_text="payment gateway timeout")
    row.wait_for()
    assert page.get_by_role("row").filter(has_text="payment accepted").count() == 0
    shot(page, "06-log-search")
    row.get_by_role("link").click()
    page.locator("#job-status").wait_for()
    page.locator(".log").get_by_text("payment accepted").wait_for()  # the job page's live log tail
    shot(page, "07-job-log-tail")


def test_schedules_enable_and_disable(page, user):
    from jobs import schedules

    schedules.schedule_save(owner_id=user.pk, data={"name": "nightly-report", "cron": "0 3 * * *", "type": "demo.noop"})
    login(page, user.username)
    page.goto("/schedules/")
    page.get_by_role("button", name="Enabled: disable").click()
    page.get_by_text("Schedule nightly-report disabled.").wait_for()
    assert Schedule.objects.get(name="nightly-report").enabled is False
    shot(page, "08-schedules")


def test_keyboard_users_can_reach_the_content(page, user):
    login(page, user.username)
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    assert skip.evaluate("el => el === document.activeElement")
    started = time.monotonic()
    page.keyboard.press("Enter")
    assert time.monotonic() - started < 5
    assert page.evaluate("location.hash") == "#main"
