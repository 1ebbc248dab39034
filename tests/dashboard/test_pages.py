"""The dashboard's pages with Django's test client: login, permissions, CSRF, actions."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

from jobs import schedules, transitions
from jobs.models import Job, JobStatus, Schedule
from tests.factories import submit_job
from tests.workflows.conftest import run_all, task

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged_in(client, user):
    client.force_login(user)
    return client


def test_every_page_needs_a_login(client):
    for url in ("/", "/jobs/", "/workflows/", "/logs/", "/schedules/", "/overview/panel/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/login/")


def test_the_favicon_is_served_without_login_and_linked_from_the_pages(client, user):
    """Browsers ask for /favicon.ico on every page (a 404 each time, before)."""
    response = client.get("/favicon.ico", follow=True)
    assert response.redirect_chain == [("/static/dashboard/favicon.svg", 302)]
    assert response.status_code == 200
    assert response["Content-Type"].startswith("image/svg+xml")
    assert b"<svg" in b"".join(response.streaming_content)
    link = '<link rel="icon" href="/static/dashboard/favicon.svg" type="image/svg+xml">'
    assert link in client.get("/login/").content.decode()
    client.force_login(user)
    assert link in client.get("/").content.decode()  # base.html: every dashboard page


def test_pages_render(logged_in, user, api):
    job = submit_job(user, type="demo.echo")
    wf = api.post("/api/v1/workflows/", {"tasks": [task("a"), task("b", "a")]}, format="json").json()
    run_all()
    for url in ("/", "/overview/panel/", "/jobs/", "/jobs/?status=SUCCEEDED&type=demo.echo", f"/jobs/{job.id}/",
                f"/jobs/{job.id}/panel/", "/workflows/", f"/workflows/{wf['id']}/", f"/workflows/{wf['id']}/panel/",
                "/schedules/"):  # fmt: skip
        response = logged_in.get(url)
        assert response.status_code == 200, (url, response.content[:500])
    page = logged_in.get(f"/workflows/{wf['id']}/").content.decode()
    assert "<svg" in page
    assert "SUCCEEDED" in page


def test_the_overview_shows_a_user_its_own_backlog_and_staff_the_platform(logged_in, user, other_user, client, staff):
    """The overview once showed every logged-in user the whole platform's backlog, queue
    depths and workers: another tenant's load, and the machines."""
    from jobs.services import JobSpec, job_submit_bulk

    job_submit_bulk(owner_id=user.pk, specs=[JobSpec(type="demo.noop")] * 2)
    job_submit_bulk(owner_id=other_user.pk, specs=[JobSpec(type="demo.noop")] * 5)
    mine = logged_in.get("/overview/panel/")
    assert [q["waiting"] for q in mine.context["queues"] if q["name"] == "default"] == [2]
    assert mine.context["platform"] is None
    page = mine.content.decode()
    for platform_only in ("Workers online", "Kafka (bridge lag)", "Open Flower"):
        assert platform_only not in page
    assert "Flower</a>" not in logged_in.get("/").content.decode()
    client.force_login(staff)
    everyone = client.get("/overview/panel/")
    assert [q["waiting"] for q in everyone.context["queues"] if q["name"] == "default"] == [7]
    assert "Workers online" in everyone.content.decode()
    assert "Flower</a>" in client.get("/").content.decode()


def test_a_jobs_page_shows_its_trace_and_links_it_when_a_trace_ui_is_set(logged_in, user, traced, settings):
    job = submit_job(user, type="demo.noop")
    page = logged_in.get(f"/jobs/{job.id}/").content.decode()
    assert job.trace_id in page
    assert "trace viewer" not in page
    settings.TRACE_UI_URL = "http://localhost:16686/trace/{trace_id}"
    page = logged_in.get(f"/jobs/{job.id}/").content.decode()
    assert f'href="http://localhost:16686/trace/{job.trace_id}"' in page


def test_users_see_only_their_own(client, user, other_user):
    theirs = submit_job(other_user)
    client.force_login(user)
    assert client.get(f"/jobs/{theirs.id}/").status_code == 404
    assert str(theirs.id)[:8] not in client.get("/jobs/").content.decode()
    response = client.post("/jobs/bulk/", {"action": "cancel", "ids": [str(theirs.id)]})
    assert response.status_code == 302
    assert Job.objects.get(id=theirs.id).status == JobStatus.PENDING  # untouched


def test_bulk_retry_of_dead_letters(logged_in, user):
    jobs = [submit_job(user, type="demo.fail", max_attempts=1) for _ in range(2)]
    for j in jobs:
        transitions.mark_running(j.id, dispatch_token=j.dispatch_token, worker="w", lease_seconds=30)
        transitions.move_to_dead_letter(j.id, attempt=1, error="boom")
    response = logged_in.post("/jobs/bulk/", {"action": "retry", "ids": [str(j.id) for j in jobs], "next": "/jobs/"})
    assert response.status_code == 302
    assert all(Job.objects.get(id=j.id).status == JobStatus.PENDING for j in jobs)


def test_actions_need_the_csrf_token(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    job = submit_job(user)
    assert client.post(f"/jobs/{job.id}/cancel/").status_code == 403
    assert client.post("/jobs/bulk/", {"action": "cancel", "ids": [str(job.id)]}).status_code == 403
    assert Job.objects.get(id=job.id).status == JobStatus.PENDING


def test_login_page_and_wrong_password(client, user):
    assert client.get("/login/").status_code == 200
    response = client.post("/login/", {"username": user.username, "password": "wrong"})
    assert "did not match" in response.content.decode()
    response = client.post("/login/", {"username": user.username, "password": "correct horse battery staple"})
    assert response.status_code == 302


@pytest.mark.parametrize("action", ["delete", "CANCEL", "cancel-all", "x"])
def test_an_unknown_job_action_is_404_and_leaves_the_job_alone(logged_in, user, action):
    job = submit_job(user)
    assert logged_in.post(f"/jobs/{job.id}/{action}/").status_code == 404
    assert Job.objects.get(id=job.id).status == JobStatus.PENDING
    assert logged_in.post(f"/jobs/{job.id}/cancel/").status_code == 302  # the real action still works
    assert Job.objects.get(id=job.id).status == JobStatus.CANCELLED


def test_toggling_another_users_schedule_or_none_is_404(client, user, other_user):
    data = {"name": "nightly", "cron": "0 3 * * *", "type": "demo.noop"}
    theirs = schedules.schedule_save(owner_id=other_user.pk, data=data)
    client.force_login(user)
    client.raise_request_exception = False  # a 500 must show as one, not as the test's exception
    for schedule_id in (theirs.id, uuid.uuid4()):
        assert client.post(f"/schedules/{schedule_id}/toggle/").status_code == 404
    assert Schedule.objects.get(id=theirs.id).enabled is True
    mine = schedules.schedule_save(owner_id=user.pk, data=data)
    assert client.post(f"/schedules/{mine.id}/toggle/").status_code == 302
    assert Schedule.objects.get(id=mine.id).enabled is False


def test_the_log_search_filters_by_trace_id(logged_in, user, ch_table):
    from tests.logs.conftest import record, store_records

    job = submit_job(user)
    mine, other = "a" * 32, "b" * 32
    store_records(record("in the trace", job_id=job.id, owner_id=user.pk, trace_id=mine),
                  record("outside it", job_id=job.id, owner_id=user.pk, trace_id=other))  # fmt: skip
    page = logged_in.get(f"/logs/?trace_id={mine.upper()}&window=all").content.decode()
    assert "in the trace" in page
    assert "outside it" not in page
    bad = logged_in.get("/logs/?trace_id=xyz&window=all").content.decode()
    assert "A trace id is 32 hexadecimal digits." in bad
