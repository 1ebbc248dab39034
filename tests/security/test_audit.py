"""The audit log (issue 32): every operator action is recorded with who, when, what, the
target, the source (API, dashboard, admin, CLI) and the request id; staff and viewers read it
(API and admin); nothing edits it; the platform's own moves are not operators' actions."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import DatabaseError, transaction

from jobs.models import AuditRecord, Job, JobStatus
from jobs.services import JobSpec, job_submit
from tests.conftest import client_for
from tests.factories import UserFactory
from tests.workflows.conftest import run_all

pytestmark = pytest.mark.django_db


def last(**match: Any) -> AuditRecord:
    return AuditRecord.objects.filter(**match).latest("id")


@pytest.fixture
def job(user) -> Job:
    return job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop")).job


def test_api_actions_are_recorded_with_who_what_where_and_the_request_id(api, user, job):
    response = api.post(f"/api/v1/jobs/{job.id}/cancel/", HTTP_X_REQUEST_ID="req-42")
    assert response["X-Request-ID"] == "req-42"
    record = last(action="job.cancel")
    assert (record.actor, record.actor_id, record.source, record.request_id) == (
        user.username,
        user.pk,
        "api",
        "req-42",
    )
    assert (record.target_type, record.target_id, record.target_owner_id) == ("job", str(job.id), user.pk)
    api.post(f"/api/v1/jobs/{job.id}/retry/")
    assert last(action="job.retry").target_id == str(job.id)
    made = api.post("/api/v1/schedules/", {"name": "n", "cron": "0 3 * * *", "type": "demo.noop"}, format="json")
    api.patch(f"/api/v1/schedules/{made.json()['id']}/", {"enabled": False}, format="json")
    api.delete(f"/api/v1/schedules/{made.json()['id']}/")
    limit = api.post("/api/v1/rate-limits/", {"pattern": "k", "rate": "5/s"}, format="json").json()
    api.delete(f"/api/v1/rate-limits/{limit['id']}/")
    api.post("/api/v1/jobs/bulk-actions/", {"action": "cancel", "filter": {"status": "PENDING"}}, format="json")
    actions = list(AuditRecord.objects.order_by("id").values_list("action", flat=True))
    assert actions == ["job.cancel", "job.retry", "schedule.create", "schedule.update", "schedule.delete",
                       "rate_limit.create", "rate_limit.delete", "jobs.bulk_action"]  # fmt: skip
    assert last(action="schedule.update").details == {"changed": ["enabled"]}


def test_a_bad_request_id_is_replaced_and_a_failed_action_leaves_no_record(api, job):
    api.post(f"/api/v1/jobs/{job.id}/cancel/")
    again = api.post(f"/api/v1/jobs/{job.id}/cancel/", HTTP_X_REQUEST_ID="bad id\n" + "x" * 100)  # finished: 409
    assert again.status_code == 409
    assert len(again["X-Request-ID"]) == 32  # ours, not theirs
    assert AuditRecord.objects.filter(action="job.cancel").count() == 1


def test_workflow_actions_and_tokens_are_recorded(api, user, client):
    group = Group.objects.create(name="approvers")
    boss = UserFactory()
    boss.groups.add(group)
    body = {"tasks": [{"id": "go", "wait": {"signal": "go"}}, {"id": "ok", "approval": {"group": "approvers"},
                                                                 "depends_on": ["go"]}]}  # fmt: skip
    flow = api.post("/api/v1/workflows/", body, format="json").json()
    api.post(f"/api/v1/workflows/{flow['id']}/signals/go", {}, format="json")
    client_for(boss).post(f"/api/v1/workflows/{flow['id']}/approvals/ok", {"decision": "reject", "comment": "no"},
                          format="json")  # fmt: skip
    decided = last(action="workflow.decide")
    assert (decided.actor, decided.details["decision"], decided.target_owner_id) == (boss.username, "reject", user.pk)
    assert last(action="workflow.signal").details == {"signal": "go"}
    user.set_password("pw-for-the-test")
    user.save()
    client.post("/api/v1/auth/token/", {"username": user.username, "password": "pw-for-the-test"})
    token = last(action="token.obtain")
    assert (token.actor, token.target_id) == (user.username, str(user.pk))


def test_dashboard_admin_and_cli_actions_are_recorded_with_their_source(user, client, admin_client, job, staff):
    from django.core.management import call_command

    client.force_login(user)
    client.post(f"/jobs/{job.id}/cancel/")
    assert last(action="job.cancel").source == "dashboard"
    client.post(f"/jobs/{job.id}/retry/")
    admin_client.post("/admin/orchestration_jobs/job/", {"action": "cancel_jobs", "_selected_action": [str(job.id)]})
    assert last(action="job.cancel").source == "admin"
    Job.objects.filter(id=job.id).update(status=JobStatus.DEAD_LETTER)
    call_command("jobs", "retry", str(job.id))
    record = last(action="job.retry")
    assert (record.source, record.actor_id) == ("cli", None)
    assert record.actor.startswith("cli:")


def test_the_platforms_own_moves_are_not_operator_actions(api):
    body = {"tasks": [{"id": "a", "type": "demo.noop"}, {"id": "b", "type": "demo.fail", "depends_on": ["a"],
                                                           "payload": {"retryable": False}}]}  # fmt: skip
    api.post("/api/v1/workflows/", body, format="json")
    run_all()  # the worker's ends, the saga's own cancels
    assert not AuditRecord.objects.exists()


def test_staff_and_viewers_read_it_others_get_a_403(api, staff_api, user, job):
    api.post(f"/api/v1/jobs/{job.id}/cancel/")
    assert api.get("/api/v1/audit/").status_code == 403
    page = staff_api.get(f"/api/v1/audit/?actor={user.username}&action=job.cancel").json()
    assert [r["target_id"] for r in page["results"]] == [str(job.id)]
    assert staff_api.get("/api/v1/audit/?action=job.retry").json()["results"] == []
    viewer = UserFactory()
    viewer.groups.add(Group.objects.get(name="viewer"))
    assert len(client_for(viewer).get("/api/v1/audit/").json()["results"]) == 1
    assert staff_api.post("/api/v1/audit/", {}, format="json").status_code == 405


def test_nothing_edits_a_record(api, job, admin_client):
    api.post(f"/api/v1/jobs/{job.id}/cancel/")
    record = last(action="job.cancel")
    for attempt in (lambda: AuditRecord.objects.filter(id=record.id).update(actor="someone else"),
                    lambda: AuditRecord.objects.filter(id=record.id).delete()):  # fmt: skip
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            attempt()
    assert AuditRecord.objects.get(id=record.id).actor == record.actor
    change = f"/admin/orchestration_jobs/auditrecord/{record.id}/change/"
    assert admin_client.get(change).status_code == 200  # staff read it
    assert admin_client.post(change, {"actor": "x"}).status_code == 403
    assert admin_client.post(f"/admin/orchestration_jobs/auditrecord/{record.id}/delete/").status_code == 403


def test_the_dashboard_shows_it_to_staff_and_viewers_with_filters(api, job, client, staff, user):
    api.post(f"/api/v1/jobs/{job.id}/cancel/")
    client.force_login(user)
    assert client.get("/audit/").status_code == 403
    assert "/audit/" not in client.get("/").content.decode()  # no link either
    client.force_login(staff)
    page = client.get("/audit/").content.decode()
    assert "<code>job.cancel</code>" in page
    assert str(job.id)[:8] in page
    assert "<code>job.cancel</code>" not in client.get("/audit/?source=cli").content.decode()
    viewer = UserFactory()
    viewer.groups.add(Group.objects.get(name="viewer"))
    client.force_login(viewer)
    assert "<code>job.cancel</code>" in client.get(f"/audit/?actor={user.username}").content.decode()


def test_admin_edits_of_weights_limits_and_schedules_are_recorded(admin_client, user):
    from jobs.models import OwnerShare, Schedule

    share = OwnerShare.objects.create(owner=user, weight=1, slot_share=0.5)
    response = admin_client.post(f"/admin/orchestration_jobs/ownershare/{share.pk}/change/",
                                 {"owner": user.pk, "weight": 5, "slot_share": "0.5"})  # fmt: skip
    assert response.status_code == 302, response.content[:500]
    record = last(action="owner_share.update")
    assert (record.source, record.target_owner_id, record.details) == ("admin", user.pk, {"changed": ["weight"]})
    schedule = Schedule.objects.create(owner=user, name="nightly", cron="0 3 * * *", type="demo.noop")
    admin_client.post("/admin/orchestration_jobs/schedule/", {"action": "disable", "_selected_action": [schedule.pk]})
    assert last(action="schedule.update").details == {"changed": ["enabled"]}
    assert not Schedule.objects.get(pk=schedule.pk).enabled
