"""The `viewer` group (issue 32): operators who see what staff see and may do nothing. Every
action is refused (403) through the API, the dashboard and the CLI, and hidden in the
dashboard; the admin stays staff's."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Group

from jobs.models import Job, JobStatus, Schedule
from jobs.services import JobSpec, job_submit
from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewer(db) -> Any:
    user = UserFactory()
    user.groups.add(Group.objects.get(name="viewer"))  # made by a migration
    return user


@pytest.fixture
def theirs(user) -> Job:
    """Another user's waiting job."""
    return job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop")).job


def test_a_viewer_sees_everyones_jobs_and_workflows(viewer, theirs, api):
    look = client_for(viewer)
    assert str(theirs.id) in {j["id"] for j in look.get("/api/v1/jobs/").json()["results"]}
    assert look.get(f"/api/v1/jobs/{theirs.id}/").status_code == 200
    flow = api.post("/api/v1/workflows/", {"tasks": [{"id": "a", "type": "demo.noop"}]}, format="json").json()
    assert look.get(f"/api/v1/workflows/{flow['id']}/").status_code == 200
    assert look.get("/api/v1/jobs/stats/").json()["total"] >= 1


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/v1/jobs/", {"type": "demo.noop"}),
        ("post", "/api/v1/jobs/bulk/", {"jobs": [{"type": "demo.noop"}]}),
        ("post", "/api/v1/jobs/{job}/cancel/", None),
        ("post", "/api/v1/jobs/{job}/retry/", None),
        ("post", "/api/v1/jobs/bulk-actions/", {"action": "cancel", "filter": {"status": "PENDING"}}),
        ("post", "/api/v1/workflows/", {"tasks": [{"id": "a", "type": "demo.noop"}]}),
        ("post", "/api/v1/schedules/", {"name": "n", "cron": "* * * * *", "type": "demo.noop"}),
        ("patch", "/api/v1/schedules/{schedule}/", {"enabled": False}),
        ("delete", "/api/v1/schedules/{schedule}/", None),
        ("post", "/api/v1/rate-limits/", {"pattern": "k", "rate": "1/s"}),
        ("post", "/api/v1/batches/", {"jobs": [{"type": "demo.noop"}]}),
    ],
)
def test_every_api_action_is_a_403_for_a_viewer(viewer, theirs, user, method, path, body):
    schedule = Schedule.objects.create(owner=user, name="nightly", cron="0 3 * * *", type="demo.noop")
    url = path.format(job=theirs.id, schedule=schedule.id)
    response = getattr(client_for(viewer), method)(url, body, format="json")
    assert response.status_code == 403, (url, response.content[:200])
    assert "viewers may look, not act" in response.json()["detail"]
    theirs.refresh_from_db()
    assert theirs.status == JobStatus.PENDING
    assert Schedule.objects.get(id=schedule.id).enabled
    assert not Job.objects.filter(owner=viewer).exists()


def test_a_viewer_cannot_decide_on_an_approval_even_in_its_group(viewer, api):
    group = Group.objects.create(name="managers")
    viewer.groups.add(group)
    body = {"tasks": [{"id": "ok", "approval": {"group": "managers"}}]}
    flow = api.post("/api/v1/workflows/", body, format="json").json()
    answer = client_for(viewer).post(f"/api/v1/workflows/{flow['id']}/approvals/ok", {"decision": "approve"},
                                     format="json")  # fmt: skip
    assert answer.status_code == 403


def test_the_dashboard_shows_a_viewer_everything_and_no_action(viewer, theirs, client):
    client.force_login(viewer)
    page = client.get(f"/jobs/{theirs.id}/").content.decode()
    assert str(theirs.id) in page
    assert "data-confirm" not in page  # no Cancel, no Retry
    listing = client.get("/jobs/").content.decode()
    assert str(theirs.id)[:8] in listing
    assert "Cancel selected" not in listing
    assert "cancel-matching" not in listing
    assert client.get("/").context["platform"] is not None  # the platform's state, as staff see it
    assert client.post(f"/jobs/{theirs.id}/cancel/").status_code == 403
    assert client.post("/jobs/bulk/", {"action": "cancel", "ids": [str(theirs.id)]}).status_code == 403
    assert client.get("/jobs/bulk-action/?action=cancel").status_code == 403
    theirs.refresh_from_db()
    assert theirs.status == JobStatus.PENDING


def test_the_admin_and_the_cli_refuse_a_viewer(viewer, api, client, capsys):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    client.force_login(viewer)
    assert client.get("/admin/").status_code == 302  # to the admin's login: staff only
    body = {"tasks": [{"id": "ok", "approval": {}}]}
    flow = api.post("/api/v1/workflows/", body, format="json").json()
    with pytest.raises(CommandError, match="viewers may look, not act"):
        call_command("workflows", "approve", flow["id"], "ok", "--as", viewer.username)


def test_others_are_unaffected(user, api, theirs):
    assert api.post(f"/api/v1/jobs/{theirs.id}/cancel/").status_code == 200
    other = client_for(UserFactory())
    assert other.get(f"/api/v1/jobs/{uuid.uuid4()}/").status_code == 404
