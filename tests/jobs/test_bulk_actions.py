"""Bulk actions by filter (jobs.bulk_actions): a dry run that counts, then the action as a
background job that reports its progress, on the caller's jobs only (staff: everyone's), safe
to run twice."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from jobs import bulk_actions, services
from jobs.handlers import JobContext
from jobs.models import Job, JobStatus
from orchestration.worker import execute
from tests.factories import submit_job
from tests.workflows.conftest import pending_dispatches

pytestmark = pytest.mark.django_db
ACTIONS = "/api/v1/jobs/bulk-actions/"


def run_action(job_id: str) -> Job:
    """Run what the outbox holds for the action job (as a worker would), and return it."""
    for envelope in pending_dispatches():
        if envelope.job_id == job_id:
            execute(envelope, worker="w")
    return Job.objects.get(id=job_id)


def test_a_dry_run_counts_the_callers_matching_jobs_only(api, staff_api, user, other_user):
    for _ in range(3):
        submit_job(user, type="demo.sleep")
    submit_job(user, type="demo.echo")
    submit_job(other_user, type="demo.sleep")
    mine = api.post(ACTIONS, {"action": "cancel", "filter": {"type": "demo.sleep"}, "dry_run": True}, format="json")
    assert mine.status_code == 200
    assert mine.json() == {"action": "cancel", "count": 3, "job": None}
    everyone = staff_api.post(ACTIONS, {"action": "cancel", "filter": {"type": "demo.sleep"}, "dry_run": True},
                              format="json")  # fmt: skip
    assert everyone.json()["count"] == 4
    assert not Job.objects.filter(status=JobStatus.CANCELLED).exists()  # a dry run changes nothing


def test_cancel_by_filter_runs_in_the_background_and_reports_its_progress(api, user, other_user):
    mine = [submit_job(user, type="demo.sleep") for _ in range(3)]
    kept = submit_job(user, type="demo.echo")
    theirs = submit_job(other_user, type="demo.sleep")
    started = api.post(ACTIONS, {"action": "cancel", "filter": {"type": "demo.sleep", "status": "PENDING"}},
                       format="json")  # fmt: skip
    assert started.status_code == 202
    assert started.json()["count"] == 3
    later = submit_job(user, type="demo.sleep")  # made after the request: not the action's
    Job.objects.filter(id=later.id).update(created_at=timezone.now() + timedelta(seconds=5))
    action = run_action(started.json()["job"])
    assert action.status == JobStatus.SUCCEEDED
    assert action.result == {"action": "cancel", "matched": 3, "done": 3, "skipped": 0}
    assert action.progress == 1.0
    assert {j.status for j in Job.objects.filter(id__in=[j.id for j in mine])} == {JobStatus.CANCELLED}
    for untouched in (kept, theirs, later):
        assert Job.objects.get(id=untouched.id).status == JobStatus.PENDING


def test_retry_by_filter(api, user):
    dead = [submit_job(user, type="demo.fail") for _ in range(2)]
    Job.objects.filter(id__in=[j.id for j in dead]).update(status=JobStatus.DEAD_LETTER, dispatch_token=None)
    started = api.post(ACTIONS, {"action": "retry", "filter": {"status": "DEAD_LETTER"}}, format="json")
    run_action(started.json()["job"])
    assert {j.status for j in Job.objects.filter(id__in=[j.id for j in dead])} == {JobStatus.PENDING}


def test_a_rerun_with_an_edited_payload_makes_new_jobs_once_however_often_it_runs(api, user):
    old = submit_job(user, type="demo.echo", payload={"region": "eu", "n": 1})
    Job.objects.filter(id=old.id).update(status=JobStatus.DEAD_LETTER, dispatch_token=None)
    started = api.post(ACTIONS, {"action": "rerun", "filter": {"status": "DEAD_LETTER"}, "payload": {"n": 2}},
                       format="json")  # fmt: skip
    action_id = started.json()["job"]
    action = run_action(action_id)
    assert action.result["done"] == 1
    [new] = Job.objects.filter(type="demo.echo").exclude(id=old.id)
    assert new.payload == {"region": "eu", "n": 2}
    # Delivered twice: the second pass makes nothing new.
    again = bulk_actions.run(action.payload, JobContext(job_id=action.id, attempt=2, type=bulk_actions.TYPE))
    assert again["done"] == 0
    assert Job.objects.filter(type="demo.echo").count() == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "cancel", "filter": {"colour": "red"}}, "filter"),
        ({"action": "cancel", "filter": {"status": "SLEEPY"}}, "filter"),
        ({"action": "cancel", "filter": {}, "payload": {"x": 1}}, "payload"),
        ({"action": "explode", "filter": {}}, "action"),
    ],
)
def test_a_bad_request_is_400_naming_the_field(api, body, field):
    response = api.post(ACTIONS, body, format="json")
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_the_action_type_cannot_be_submitted_directly(api):
    body = {"type": bulk_actions.TYPE, "payload": {"action": "cancel", "filter": {}, "all_owners": True}}
    assert api.post("/api/v1/jobs/", body, format="json").status_code == 400


def test_the_cli_counts_and_acts(user):
    for _ in range(2):
        submit_job(user, type="demo.sleep")
    out = io.StringIO()
    call_command("jobs", "bulk-action", "cancel", "--type", "demo.sleep", "--dry-run", stdout=out)
    assert out.getvalue().strip() == "2 jobs match"
    out = io.StringIO()
    call_command("jobs", "bulk-action", "cancel", "--type", "demo.sleep", stdout=out, stderr=io.StringIO())
    action_id = out.getvalue().split()[-1]
    assert run_action(action_id).result["done"] == 2
    assert services.Job.objects.filter(type="demo.sleep", status=JobStatus.CANCELLED).count() == 2


def test_the_dashboard_shows_the_count_then_starts_the_action_on_confirmation(client, user, other_user):
    for _ in range(2):
        submit_job(user, type="demo.sleep")
    submit_job(other_user, type="demo.sleep")
    client.force_login(user)
    listing = client.get("/jobs/?type=demo.sleep").content.decode()
    assert 'id="cancel-matching"' in listing
    confirm = client.get("/jobs/bulk-action/?action=cancel&type=demo.sleep")
    assert confirm.status_code == 200
    assert "<strong>2</strong> job(s) of yours match" in confirm.content.decode()
    assert not Job.objects.filter(status=JobStatus.CANCELLED).exists()  # nothing yet: it only asks
    started = client.post("/jobs/bulk-action/", {"action": "cancel", "type": "demo.sleep"})
    assert started.status_code == 302
    action_id = started["Location"].rstrip("/").split("/")[-1]
    assert run_action(action_id).result["done"] == 2
    assert Job.objects.filter(owner=other_user, status=JobStatus.PENDING).count() == 1
    assert client.get("/jobs/bulk-action/?action=delete").status_code == 404
