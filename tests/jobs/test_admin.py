"""The Django admin: staff only, read-only, and actions through the same services as the API."""

from __future__ import annotations

import pytest
from django.utils import timezone

from jobs.models import Job, JobStatus
from jobs.transitions import mark_running, move_to_dead_letter
from tests.factories import submit_job

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/orchestration_jobs/job/"


def test_admin_is_for_staff_only(client, user):
    client.force_login(user)
    response = client.get(CHANGELIST)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_changelist_filters_and_search(client, staff, user):
    job = submit_job(user, type="demo.echo", idempotency_key="order-77")
    client.force_login(staff)
    assert client.get(CHANGELIST).status_code == 200
    assert client.get(CHANGELIST, {"status__exact": "PENDING"}).status_code == 200
    found = client.get(CHANGELIST, {"q": str(job.id)})
    assert str(job.id) in found.content.decode()
    by_key = client.get(CHANGELIST, {"q": "order-77"})
    assert str(job.id) in by_key.content.decode()
    assert client.get(CHANGELIST, {"q": "no such thing"}).status_code == 200


def test_job_page_is_read_only_with_history(client, staff, user):
    job = submit_job(user, type="demo.echo", payload={"hello": "world"})
    mark_running(job.id, dispatch_token=job.dispatch_token, worker="worker-1", lease_seconds=30)
    client.force_login(staff)
    page = client.get(f"{CHANGELIST}{job.id}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "&quot;hello&quot;: &quot;world&quot;" in html  # pretty-printed payload
    assert "worker-1" in html  # attempt history inline
    assert 'name="_save"' not in html  # nothing to save
    before = Job.objects.get(id=job.id).status
    client.post(f"{CHANGELIST}{job.id}/change/", {"status": "SUCCEEDED"})
    assert Job.objects.get(id=job.id).status == before
    assert client.get(f"{CHANGELIST}add/").status_code == 403


def test_retry_and_cancel_actions(client, staff, user):
    pending = submit_job(user)
    dead = submit_job(user)
    claim = mark_running(dead.id, dispatch_token=dead.dispatch_token, worker="w", lease_seconds=30)
    move_to_dead_letter(dead.id, attempt=claim.attempt, error="boom")
    client.force_login(staff)
    response = client.post(
        CHANGELIST, {"action": "retry_jobs", "_selected_action": [str(dead.id), str(pending.id)]}, follow=True
    )
    assert response.status_code == 200
    assert Job.objects.get(id=dead.id).status == JobStatus.PENDING
    assert "is PENDING, cannot retry" in response.content.decode()
    client.post(CHANGELIST, {"action": "cancel_jobs", "_selected_action": [str(pending.id)]})
    assert Job.objects.get(id=pending.id).status == JobStatus.CANCELLED


def test_staff_set_an_owners_weight_and_share_and_the_relay_reads_it(client, staff, user):
    from jobs.models import OwnerShare
    from jobs.selectors import owner_weights

    client.force_login(staff)
    response = client.post(
        "/admin/orchestration_jobs/ownershare/add/", {"owner": user.pk, "weight": "3", "slot_share": "0.25"}
    )
    assert response.status_code == 302, response.content[:500]
    assert (OwnerShare.objects.get(owner=user).weight, OwnerShare.objects.get(owner=user).slot_share) == (3.0, 0.25)
    assert owner_weights([user.pk, staff.pk]) == {user.pk: 3.0, staff.pk: 1.0}
    refused = client.post(
        "/admin/orchestration_jobs/ownershare/add/", {"owner": staff.pk, "weight": "0", "slot_share": "2"}
    )
    assert refused.status_code == 200  # the form again, with its errors
    assert not OwnerShare.objects.filter(owner=staff).exists()


def test_a_schedule_for_an_undeclared_queue_is_refused_in_the_admin_too(client, staff, user):
    from jobs.models import Schedule

    client.force_login(staff)
    body = {"owner": user.pk, "name": "n", "enabled": "on", "cron": "* * * * *", "timezone": "UTC",
            "misfire_policy": "fire_once", "type": "demo.noop", "payload": "{}", "queue": "parked", "priority": 5,
            "max_attempts": 4, "backoff": '{"initial": 2, "factor": 2, "max": 3600, "jitter": 0.2}',
            "timeout_seconds": 300}  # fmt: skip
    response = client.post("/admin/orchestration_jobs/schedule/add/", body)
    assert "is not a declared queue" in response.content.decode()
    assert not Schedule.objects.exists()


def test_staff_see_unique_keys_and_a_jobs_progress(client, staff, user):
    from jobs.models import UniqueLock

    job = submit_job(user, type="demo.echo", unique_key="nightly-report", unique_policy="keep_existing")
    Job.objects.filter(id=job.id).update(progress=0.5, progress_message="half way", progress_at=timezone.now())
    client.force_login(staff)
    locks = client.get("/admin/orchestration_jobs/uniquelock/?q=nightly-report").content.decode()
    assert "nightly-report" in locks
    assert str(job.id) in locks
    assert UniqueLock.objects.count() == 1
    page = client.get(f"/admin/orchestration_jobs/job/{job.id}/change/").content.decode()
    assert "50% · half way" in page
