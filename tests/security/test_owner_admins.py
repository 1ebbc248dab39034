"""Per-owner admins (issue 32): a user staff made an admin of another owner's tenant sees and
acts on that owner's objects as the owner can, besides its own, and reaches nothing of any
other owner's, through the API, the dashboard and the CLI; the Django admin stays staff's,
where the grants are made; a viewer who holds a grant still only looks; a revoked grant ends
with the next request."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError

from jobs.models import AuditRecord, Batch, Job, JobStatus, OwnerAdmin, RateLimit, Schedule
from tests.conftest import client_for
from tests.factories import UserFactory, submit_job
from tests.security.test_tenants import WALK, Owned, _run_bulk_action, ids
from workflows.models import Workflow

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(user) -> Any:
    """An admin of `user`'s tenant (and owner of nothing yet)."""
    granted = UserFactory()
    OwnerAdmin.objects.create(owner=user, admin=granted)
    return granted


def dead(owner: Any) -> Job:
    job = submit_job(owner)
    Job.objects.filter(id=job.id).update(status=JobStatus.DEAD_LETTER)
    return job


def test_an_admin_sees_and_acts_on_the_owners_jobs_through_the_api(owned: Owned, user, admin, other_user):
    mine, theirs = submit_job(admin), submit_job(other_user)
    api = client_for(admin)
    listed = ids(api.get("/api/v1/jobs/?page_size=1000"))
    assert {str(owned.job.id), str(owned.dead.id), str(mine.id)} <= listed
    assert str(theirs.id) not in listed
    assert api.get("/api/v1/jobs/stats/").json()["total"] == Job.objects.filter(owner__in=[user, admin]).count()
    assert api.get(f"/api/v1/jobs/{owned.job.id}/").status_code == 200
    assert api.get(f"/api/v1/jobs/{theirs.id}/").status_code == 404
    assert api.post(f"/api/v1/jobs/{theirs.id}/cancel/").status_code == 404

    assert api.post(f"/api/v1/jobs/{owned.job.id}/cancel/").json()["status"] == JobStatus.CANCELLED
    assert api.post(f"/api/v1/jobs/{owned.dead.id}/retry/").json()["status"] == JobStatus.PENDING
    cancel = AuditRecord.objects.get(action="job.cancel", target_id=str(owned.job.id))
    assert (cancel.actor_id, cancel.target_owner_id, cancel.source) == (admin.pk, user.pk, "api")

    assert str(owned.workflow.id) in ids(api.get("/api/v1/workflows/"))
    assert api.post(f"/api/v1/workflows/{owned.workflow.id}/cancel/").status_code == 200
    assert str(owned.schedule.id) in ids(api.get("/api/v1/schedules/"))
    assert api.patch(f"/api/v1/schedules/{owned.schedule.id}/", {"enabled": False}, format="json").status_code == 200
    assert not Schedule.objects.get(id=owned.schedule.id).enabled
    assert api.patch(f"/api/v1/rate-limits/{owned.rate_limit.id}/", {"rate": "9/s"}, format="json").status_code == 200
    assert RateLimit.objects.get(id=owned.rate_limit.id).limit == 9
    assert str(owned.batch.id) in ids(api.get("/api/v1/batches/"))
    assert api.post(f"/api/v1/batches/{owned.batch.id}/close/").json()["state"] != "open"
    assert [b["owner"] for b in api.get("/api/v1/breakers/").json()["results"]] == [user.pk]
    assert api.get(f"/api/v1/breakers/demo.fail/?owner={user.pk}").json()["state"] == "open"
    assert api.get(f"/api/v1/breakers/demo.fail/?owner={other_user.pk}").status_code == 404
    assert api.get(f"/api/v1/breakers/?owner={other_user.pk}").json()["results"] == []
    depth = {q["name"]: q for q in api.get("/api/v1/queues/").json()["results"]}["default"]
    assert depth["depth"] + depth["in_flight"] >= 2  # the owner's waiting jobs and the admin's own
    # What the admin creates is its own, as for anyone.
    made = api.post("/api/v1/jobs/", {"type": "demo.noop"}, format="json").json()
    assert Job.objects.get(id=made["id"]).owner_id == admin.pk


def test_an_admins_signal_and_a_group_approval_reach_the_owners_workflow(user, api, admin):
    flow = api.post("/api/v1/workflows/", {"tasks": [{"id": "gate", "wait": {"signal": "go"}}]}, format="json")
    sent = client_for(admin).post(f"/api/v1/workflows/{flow.json()['id']}/signals/go", {"ok": 1}, format="json")
    assert sent.status_code == 200, sent.content
    # Approvals: by the group the step names, as for anyone; a step with no group is the
    # owner's (or staff's) alone.
    managers = Group.objects.create(name="managers")
    admin.groups.add(managers)
    tasks = [{"id": "ok", "approval": {"group": "managers"}}, {"id": "own", "approval": {"allow_self": True}}]
    flow = api.post("/api/v1/workflows/", {"tasks": tasks}, format="json").json()
    decider = client_for(admin)
    url = f"/api/v1/workflows/{flow['id']}/approvals/"
    assert decider.post(f"{url}ok", {"decision": "approve"}, format="json").status_code == 200
    refused = decider.post(f"{url}own", {"decision": "approve"}, format="json")
    assert refused.status_code == 403
    assert "names no group" in refused.json()["detail"]


def test_a_bulk_action_covers_the_owners_and_the_admins_jobs_and_no_one_elses(user, admin, other_user):
    owners, theirs = [submit_job(user), submit_job(admin)], submit_job(other_user)
    api = client_for(admin)
    body = {"action": "cancel", "filter": {"type": "demo.noop"}}
    assert api.post("/api/v1/jobs/bulk-actions/", {**body, "dry_run": True}, format="json").json()["count"] == 2
    started = api.post("/api/v1/jobs/bulk-actions/", body, format="json").json()
    record = AuditRecord.objects.get(action="jobs.bulk_action")
    assert record.details["owners"] == sorted([user.pk, admin.pk])
    _run_bulk_action(started["job"])
    assert {Job.objects.get(id=j.id).status for j in owners} == {JobStatus.CANCELLED}
    assert Job.objects.get(id=theirs.id).status == JobStatus.PENDING


def test_a_bulk_action_asked_before_the_grant_was_revoked_leaves_the_owners_jobs(user, admin):
    owners = submit_job(user)
    started = client_for(admin).post("/api/v1/jobs/bulk-actions/", {"action": "cancel", "filter": {}}, format="json")
    OwnerAdmin.objects.filter(admin=admin).delete()
    _run_bulk_action(started.json()["job"])
    assert Job.objects.get(id=owners.id).status == JobStatus.PENDING


@pytest.mark.clickhouse
def test_an_admins_log_search_covers_the_owners_records_only(user, admin, other_user, ch_table):
    from tests.logs.conftest import record, store_records

    jobs = {u.pk: submit_job(u) for u in (user, admin, other_user)}
    store_records(*(record(f"line of {owner}", job_id=job.id, owner_id=owner) for owner, job in jobs.items()))
    api = client_for(admin)
    found = {r["message"] for r in api.get("/api/v1/logs/?q=line").json()["results"]}
    assert found == {f"line of {user.pk}", f"line of {admin.pk}"}
    assert api.get(f"/api/v1/logs/?job_id={jobs[other_user.pk].id}").json()["results"] == []
    assert api.get(f"/api/v1/jobs/{jobs[user.pk].id}/logs/").status_code == 200
    listed = ids(api.get("/api/v1/jobs/?log_contains=line"))
    assert listed == {str(jobs[user.pk].id), str(jobs[admin.pk].id)}
    assert sum(api.get("/api/v1/logs/stats/").json()["by_level"].values()) == 2


@pytest.mark.clickhouse
def test_an_admin_reads_the_owners_archived_jobs_only(archive_table, ch_table, epoch, user, admin, other_user):
    from tests.orchestration.test_retention import finished, scan

    old = {u.pk: finished(u, days_ago=40) for u in (user, admin, other_user)}
    assert scan(epoch) == 3
    api = client_for(admin)
    assert ids(api.get("/api/v1/jobs/?archived=true")) == {str(old[user.pk].id), str(old[admin.pk].id)}
    assert api.get(f"/api/v1/jobs/{old[user.pk].id}/").status_code == 200
    assert api.get(f"/api/v1/jobs/{old[other_user.pk].id}/").status_code == 404


def test_the_dashboard_shows_an_admin_the_owners_jobs_with_their_actions(owned: Owned, user, admin, other_user, client):
    theirs = submit_job(other_user)
    client.force_login(admin)
    page = client.get(f"/jobs/{owned.job.id}/").content.decode()
    assert "data-confirm" in page  # its Cancel button
    listing = client.get("/jobs/").content.decode()
    assert str(owned.job.id) in listing
    assert str(theirs.id) not in listing
    assert client.get(f"/jobs/{theirs.id}/").status_code == 404
    overview = client.get("/").context
    assert overview["platform"] is None  # the platform's own state stays staff's
    assert sum(overview["stats"]["by_status"].values()) == Job.objects.filter(owner__in=[user, admin]).count()
    assert client.get(f"/workflows/{owned.workflow.id}/").context["can_cancel"]
    confirm = client.get("/jobs/bulk-action/?action=cancel").content.decode()
    assert "yours and the 1 owner(s) you administer" in confirm
    client.post("/jobs/bulk/", {"action": "cancel", "ids": [str(owned.job.id), str(theirs.id)]})
    assert Job.objects.get(id=owned.job.id).status == JobStatus.CANCELLED
    assert Job.objects.get(id=theirs.id).status == JobStatus.PENDING
    client.post(f"/schedules/{owned.schedule.id}/toggle/")
    assert not Schedule.objects.get(id=owned.schedule.id).enabled
    client.post(f"/batches/{owned.batch.id}/cancel/")
    assert Batch.objects.get(id=owned.batch.id).state == "cancelled"
    record = AuditRecord.objects.get(action="schedule.update")
    assert (record.actor_id, record.target_owner_id, record.source) == (admin.pk, user.pk, "dashboard")


def test_a_viewer_holding_a_grant_still_only_looks(owned: Owned, admin, client):
    admin.groups.add(Group.objects.get(name="viewer"))
    api = client_for(admin)
    assert api.get(f"/api/v1/jobs/{owned.job.id}/").status_code == 200
    assert api.post(f"/api/v1/jobs/{owned.job.id}/cancel/").status_code == 403
    client.force_login(admin)
    assert client.post(f"/jobs/{owned.job.id}/cancel/").status_code == 403
    with pytest.raises(CommandError, match="viewers may look, not act"):
        call_command("jobs", "cancel", str(owned.job.id), "--as", admin.username)
    with pytest.raises(CommandError, match="viewers may look, not act"):
        call_command("jobs", "bulk-action", "cancel", "--owner", admin.username)
    assert Job.objects.get(id=owned.job.id).status == JobStatus.PENDING


def test_the_cli_acts_as_an_admin_on_the_owners_jobs_only(user, admin, other_user, capsys):
    owners, theirs = submit_job(user), submit_job(other_user)
    with pytest.raises(CommandError, match="not found"):
        call_command("jobs", "cancel", str(theirs.id), "--as", admin.username)
    call_command("jobs", "cancel", str(owners.id), "--as", admin.username)
    assert Job.objects.get(id=owners.id).status == JobStatus.CANCELLED
    record = AuditRecord.objects.get(action="job.cancel")
    assert (record.actor_id, record.target_owner_id, record.source) == (admin.pk, user.pk, "cli")
    call_command("jobs", "retry", str(owners.id), "--as", admin.username)
    assert Job.objects.get(id=owners.id).status == JobStatus.PENDING
    capsys.readouterr()
    call_command("jobs", "bulk-action", "cancel", "--owner", admin.username, "--dry-run")
    assert capsys.readouterr().out.strip() == "1 jobs match"  # the owner's, not the other tenant's
    call_command("jobs", "cancel", str(theirs.id))  # without --as: the operator, every job
    assert Job.objects.get(id=theirs.id).status == JobStatus.CANCELLED


def test_staff_grant_and_revoke_in_the_admin_which_refuses_an_owner_admin(client, staff, user, admin, other_user):
    client.force_login(admin)
    assert client.get("/admin/").status_code == 302  # to the admin's login: staff only
    assert client.get("/admin/orchestration_jobs/owneradmin/").status_code == 302
    client.force_login(staff)
    added = client.post("/admin/orchestration_jobs/owneradmin/add/", {"owner": other_user.pk, "admin": admin.pk})
    assert added.status_code == 302, added.content[:500]
    grant = OwnerAdmin.objects.get(owner=other_user)
    created = AuditRecord.objects.get(action="owner_admin.create")
    assert (created.target_owner_id, created.details["admin"], created.source) == (other_user.pk, admin.pk, "admin")
    itself = client.post("/admin/orchestration_jobs/owneradmin/add/", {"owner": user.pk, "admin": user.pk})
    assert itself.status_code == 200  # the form again: nobody administers itself
    changed = client.post(f"/admin/orchestration_jobs/owneradmin/{grant.pk}/change/", {"owner": user.pk})
    assert changed.status_code == 403
    assert OwnerAdmin.objects.get(pk=grant.pk).owner_id == other_user.pk  # never edited
    client.post(f"/admin/orchestration_jobs/owneradmin/{grant.pk}/delete/", {"post": "yes"})
    assert not OwnerAdmin.objects.filter(pk=grant.pk).exists()
    deleted = AuditRecord.objects.get(action="owner_admin.delete")
    assert (deleted.target_owner_id, deleted.details["admin_name"]) == (other_user.pk, admin.username)


def test_a_revoked_grant_ends_with_the_next_request(owned: Owned, admin, client):
    api = client_for(admin)
    client.force_login(admin)
    assert api.get(f"/api/v1/jobs/{owned.job.id}/").status_code == 200
    assert client.get(f"/jobs/{owned.job.id}/").status_code == 200
    OwnerAdmin.objects.filter(admin=admin).delete()
    assert api.get(f"/api/v1/jobs/{owned.job.id}/").status_code == 404
    assert client.get(f"/jobs/{owned.job.id}/").status_code == 404


def _walk(owned: Owned, walker: Any, client: Any) -> None:
    client.force_login(walker)
    for name, check in WALK.items():
        try:
            check(client_for(walker), client, owned)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
    assert Job.objects.get(id=owned.job.id).status == JobStatus.PENDING
    assert Workflow.objects.get(id=owned.workflow.id).cancel_requested_at is None


def test_an_admin_of_another_tenant_reaches_nothing_of_the_first(owned: Owned, client):
    """The tenant walk, by a user whose scope is several owners (its own and the one it
    administers): none of them is the first tenant."""
    walker = UserFactory()
    OwnerAdmin.objects.create(owner=UserFactory(), admin=walker)
    _walk(owned, walker, client)


def test_once_revoked_an_admin_reaches_nothing_of_the_tenant(owned: Owned, user, admin, client):
    OwnerAdmin.objects.filter(admin=admin).delete()
    _walk(owned, admin, client)


def test_a_grant_names_two_different_users_once():
    from django.db import IntegrityError, transaction

    owner, admin = UserFactory(), UserFactory()
    OwnerAdmin.objects.create(owner=owner, admin=admin)
    for pair in ((owner, admin), (owner, owner)):
        with pytest.raises(IntegrityError), transaction.atomic():
            OwnerAdmin.objects.create(owner=pair[0], admin=pair[1])


def test_a_grant_reaches_one_way_only(user, admin):
    """The owner sees nothing of its admin's: scope reads the grants the user holds."""
    submit_job(admin)
    assert client_for(user).get("/api/v1/jobs/").json()["results"] == []
