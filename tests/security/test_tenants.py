"""Every endpoint, walked as two tenants: what one owns, the other can neither see, list,
count, search nor act on, through the API or the dashboard (jobs.visibility, the one rule).

The walk is checked against the URL configuration: an endpoint added without a line here
fails `test_the_walk_covers_every_route`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from jobs.models import Batch, Job, JobStatus, RateLimit, Schedule
from jobs.services import JobSpec, job_submit
from orchestration.breaker import BREAKERS
from tests.conftest import client_for
from workflows.models import Workflow

pytestmark = pytest.mark.django_db

# Routes that hold nothing of a tenant's: the login, the docs and probes, Django's own.
NOT_A_TENANTS = {
    "auth-token", "schema", "api-docs", "health-live", "health-ready", "metrics", "dashboard:login",
    "dashboard:logout", "dashboard:favicon",
}  # fmt: skip


@dataclass(frozen=True)
class Owned:
    """What the first tenant owns."""

    job: Job
    dead: Job
    workflow: Workflow
    schedule: Schedule
    batch: Batch
    rate_limit: RateLimit


@pytest.fixture
def owned(user, api) -> Owned:
    job = job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop")).job
    dead = job_submit(owner_id=user.pk, spec=JobSpec(type="demo.fail", max_attempts=1)).job
    Job.objects.filter(id=dead.id).update(status=JobStatus.DEAD_LETTER)
    body = {"tasks": [{"id": "a", "type": "demo.noop"}]}
    workflow = Workflow.objects.get(id=api.post("/api/v1/workflows/", body, format="json").json()["id"])
    schedule = Schedule.objects.create(owner=user, name="nightly", cron="0 3 * * *", type="demo.noop")
    BREAKERS.record(user.pk, "demo.fail", ok=False, probe=True)  # the first tenant's breaker: open
    body = {"jobs": [{"type": "demo.noop"}], "open": True, "description": "tenant-a-import"}
    made = api.post("/api/v1/batches/", body, format="json")
    batch = Batch.objects.get(id=made.json()["batch"]["id"])
    rate_limit = RateLimit.objects.create(owner=user, pattern="tenant-a-key", limit=5, period_seconds=1)
    return Owned(job, dead, workflow, schedule, batch, rate_limit)


def ids(response: Any, key: str = "id") -> set[str]:
    return {str(r[key]) for r in response.json()["results"]}


# name of the route → a check of what the second tenant gets, given its API client, its
# logged-in dashboard client and what the first tenant owns.
Check = Callable[[Any, Any, Owned], None]


def _404(response: Any) -> None:
    assert response.status_code == 404, (response.status_code, response.content[:300])


WALK: dict[str, Check] = {
    "job-list": lambda api, web, o: (
        _no(ids(api.get("/api/v1/jobs/")), o.job.id),
        _no(ids(api.get("/api/v1/jobs/?status=DEAD_LETTER")), o.dead.id),
        _no(ids(api.get(f"/api/v1/jobs/?workflow={o.workflow.id}")), o.job.id),
    ),
    "job-bulk": lambda api, web, o: None,  # creates only the caller's own (a bulk names no one else's)
    "job-stats": lambda api, web, o: _equal(api.get("/api/v1/jobs/stats/").json()["total"], 0),
    "job-detail": lambda api, web, o: _404(api.get(f"/api/v1/jobs/{o.job.id}/")),
    "job-cancel": lambda api, web, o: _404(api.post(f"/api/v1/jobs/{o.job.id}/cancel/")),
    "job-retry": lambda api, web, o: _404(api.post(f"/api/v1/jobs/{o.dead.id}/retry/")),
    "job-logs": lambda api, web, o: _404(api.get(f"/api/v1/jobs/{o.job.id}/logs/")),
    "schedule-list": lambda api, web, o: _no(ids(api.get("/api/v1/schedules/")), o.schedule.id),
    "schedule-detail": lambda api, web, o: (
        _404(api.get(f"/api/v1/schedules/{o.schedule.id}/")),
        _404(api.patch(f"/api/v1/schedules/{o.schedule.id}/", {"enabled": False}, format="json")),
        _404(api.delete(f"/api/v1/schedules/{o.schedule.id}/")),
    ),
    "log-list": lambda api, web, o: _equal(api.get(f"/api/v1/logs/?job_id={o.job.id}").json()["results"], []),
    "log-stats": lambda api, web, o: _equal(
        sum(api.get(f"/api/v1/logs/stats/?job_id={o.job.id}").json()["by_level"].values()), 0
    ),
    "workflow-list": lambda api, web, o: _no(ids(api.get("/api/v1/workflows/")), o.workflow.id),
    "workflow-detail": lambda api, web, o: _404(api.get(f"/api/v1/workflows/{o.workflow.id}/")),
    "workflow-cancel": lambda api, web, o: _404(api.post(f"/api/v1/workflows/{o.workflow.id}/cancel/")),
    "workflow-signal": lambda api, web, o: _404(
        api.post(f"/api/v1/workflows/{o.workflow.id}/signals/approved", {"ok": True}, format="json")
    ),
    "workflow-map-results": lambda api, web, o: _404(api.get(f"/api/v1/workflows/{o.workflow.id}/maps/a/results/")),
    "workflow-approve": lambda api, web, o: _404(  # no approval of theirs names a group the caller is in
        api.post(f"/api/v1/workflows/{o.workflow.id}/approvals/a", {"decision": "approve"}, format="json")
    ),
    "audit-list": lambda api, web, o: _equal(api.get("/api/v1/audit/").status_code, 403),  # staff and viewers only
    "queue-list": lambda api, web, o: _equal(
        {q["name"]: q["depth"] for q in api.get("/api/v1/queues/").json()["results"]}["default"], 0
    ),
    "breaker-list": lambda api, web, o: _equal(api.get("/api/v1/breakers/").json()["results"], []),
    "breaker-detail": lambda api, web, o: _equal(api.get("/api/v1/breakers/demo.fail/").json()["state"], "closed"),
    "dashboard:overview": lambda api, web, o: _absent(web.get("/"), o.dead.id),
    "dashboard:overview-panel": lambda api, web, o: _equal(
        sum(web.get("/overview/panel/").context["stats"]["by_status"].values()), 0
    ),
    "dashboard:workflow-decide": lambda api, web, o: _404(
        web.post(f"/workflows/{o.workflow.id}/approvals/a/", {"decision": "approve"})
    ),
    "dashboard:audit": lambda api, web, o: _equal(web.get("/audit/").status_code, 403),
    "dashboard:jobs": lambda api, web, o: _absent(web.get("/jobs/"), o.job.id),
    "dashboard:jobs-bulk": lambda api, web, o: (
        web.post("/jobs/bulk/", {"action": "cancel", "ids": [str(o.job.id)]}),
        _equal(Job.objects.get(id=o.job.id).status, JobStatus.PENDING),
    ),
    "dashboard:job": lambda api, web, o: _404(web.get(f"/jobs/{o.job.id}/")),
    "dashboard:job-panel": lambda api, web, o: _404(web.get(f"/jobs/{o.job.id}/panel/")),
    "dashboard:job-logs": lambda api, web, o: _404(web.get(f"/jobs/{o.job.id}/logs/")),
    "dashboard:job-action": lambda api, web, o: (
        _404(web.post(f"/jobs/{o.job.id}/cancel/")),
        _equal(Job.objects.get(id=o.job.id).status, JobStatus.PENDING),
    ),
    "dashboard:workflows": lambda api, web, o: _absent(web.get("/workflows/"), o.workflow.id),
    "dashboard:workflow": lambda api, web, o: _404(web.get(f"/workflows/{o.workflow.id}/")),
    "dashboard:workflow-panel": lambda api, web, o: _404(web.get(f"/workflows/{o.workflow.id}/panel/")),
    "dashboard:workflow-cancel": lambda api, web, o: _404(web.post(f"/workflows/{o.workflow.id}/cancel/")),
    "dashboard:logs": lambda api, web, o: _absent(web.get(f"/logs/?job_id={o.job.id}"), "demo.noop line"),
    "batch-list": lambda api, web, o: (
        _no(ids(api.get("/api/v1/batches/")), o.batch.id),
        _equal(api.get("/api/v1/jobs/", {"batch": str(o.batch.id)}).json()["results"], []),
    ),
    "batch-detail": lambda api, web, o: _404(api.get(f"/api/v1/batches/{o.batch.id}/")),
    "batch-jobs": lambda api, web, o: (
        _404(api.post(f"/api/v1/batches/{o.batch.id}/jobs/", {"jobs": [{"type": "demo.noop"}]}, format="json")),
        _equal(Job.objects.filter(batch_id=o.batch.id).count(), 1),
    ),
    "batch-close": lambda api, web, o: (
        _404(api.post(f"/api/v1/batches/{o.batch.id}/close/")),
        _equal(Batch.objects.get(id=o.batch.id).state, "open"),
    ),
    "batch-cancel": lambda api, web, o: (
        _404(api.post(f"/api/v1/batches/{o.batch.id}/cancel/")),
        _equal(Batch.objects.get(id=o.batch.id).state, "open"),
    ),
    "rate-limit-list": lambda api, web, o: _no(ids(api.get("/api/v1/rate-limits/")), o.rate_limit.id),
    "rate-limit-detail": lambda api, web, o: (
        _404(api.get(f"/api/v1/rate-limits/{o.rate_limit.id}/")),
        _404(api.patch(f"/api/v1/rate-limits/{o.rate_limit.id}/", {"rate": "1000/s"}, format="json")),
        _404(api.delete(f"/api/v1/rate-limits/{o.rate_limit.id}/")),
        _equal(RateLimit.objects.get(id=o.rate_limit.id).limit, 5),
    ),
    "dashboard:batches": lambda api, web, o: _absent(web.get("/batches/"), "tenant-a-import"),
    "dashboard:batch": lambda api, web, o: _404(web.get(f"/batches/{o.batch.id}/")),
    "dashboard:batch-panel": lambda api, web, o: _404(web.get(f"/batches/{o.batch.id}/panel/")),
    "dashboard:batch-cancel": lambda api, web, o: (
        _404(web.post(f"/batches/{o.batch.id}/cancel/")),
        _equal(Batch.objects.get(id=o.batch.id).state, "open"),
    ),
    "dashboard:schedules": lambda api, web, o: _absent(web.get("/schedules/"), "nightly"),
    "dashboard:schedule-toggle": lambda api, web, o: (
        web.post(f"/schedules/{o.schedule.id}/toggle/"),
        _equal(Schedule.objects.get(id=o.schedule.id).enabled, True),
    ),
}

# Last: they leave a job of the other tenant's behind (its action), which the checks above count.
WALK |= {
    "job-bulk-action": lambda api, web, o: (
        _equal(
            api.post(
                "/api/v1/jobs/bulk-actions/", {"action": "cancel", "filter": {}, "dry_run": True}, format="json"
            ).json()["count"],
            0,
        ),
        _run_bulk_action(
            api.post("/api/v1/jobs/bulk-actions/", {"action": "cancel", "filter": {}}, format="json").json()["job"]
        ),
        _equal(Job.objects.get(id=o.job.id).status, JobStatus.PENDING),
    ),
    "dashboard:jobs-bulk-action": lambda api, web, o: (
        _contains(web.get("/jobs/bulk-action/?action=cancel"), "<strong>0</strong>"),
        _run_bulk_action(web.post("/jobs/bulk-action/", {"action": "cancel"})["Location"].rstrip("/").split("/")[-1]),
        _equal(Job.objects.get(id=o.job.id).status, JobStatus.PENDING),
    ),
}


def _no(found: set[str], theirs: Any) -> None:
    assert str(theirs) not in found


def _equal(got: Any, expected: Any) -> None:
    assert got == expected, (got, expected)


def _absent(response: Any, theirs: Any) -> None:
    assert response.status_code == 200, response.status_code
    assert str(theirs) not in response.content.decode()


def routes() -> set[str]:
    """Every named route of the project, with its namespace."""
    found: set[str] = set()

    def walk(patterns: Any, namespace: str) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                ns = f"{namespace}{p.namespace}:" if p.namespace else namespace
                if p.app_name != "admin":  # the admin is staff-only as a whole (tested on its own)
                    walk(p.url_patterns, ns)
            elif isinstance(p, URLPattern) and p.name:
                found.add(f"{namespace}{p.name}")

    walk(get_resolver().url_patterns, "")
    return found


def _run_bulk_action(job_id: str) -> None:
    """Carry out a bulk action at once, as its worker would."""
    from jobs import bulk_actions, services
    from jobs.handlers import JobContext

    job = Job.objects.get(id=job_id)
    bulk_actions.run(job.payload, JobContext(job_id=job.id, attempt=1, type=job.type))
    services.job_cancel(job_id=job.id)  # done: it must not wait in the walk's queues for the checks after it


def _contains(response: Any, text: str) -> None:
    assert text in response.content.decode(), f"{text!r} not on the page"


def test_the_walk_covers_every_route():
    assert routes() - NOT_A_TENANTS == set(WALK)


def test_another_tenant_sees_and_touches_nothing_of_the_first_ones(owned, other_user, client):
    other_api = client_for(other_user)
    client.force_login(other_user)
    for name, check in WALK.items():
        try:
            check(other_api, client, owned)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
    assert Job.objects.get(id=owned.job.id).status == JobStatus.PENDING  # nothing acted on it
    assert Workflow.objects.get(id=owned.workflow.id).cancel_requested_at is None


def test_the_first_tenant_sees_its_own(owned, api):
    """The walk's checks are not vacuous: the owner sees what the other tenant did not."""
    assert str(owned.job.id) in ids(api.get("/api/v1/jobs/"))
    assert api.get(f"/api/v1/jobs/{owned.job.id}/").status_code == 200
    assert api.get("/api/v1/jobs/stats/").json()["total"] >= 2
    assert [b["state"] for b in api.get("/api/v1/breakers/").json()["results"]] == ["open"]
    assert {q["name"]: q["depth"] for q in api.get("/api/v1/queues/").json()["results"]}["default"] >= 1


def test_nobody_in_particular_sees_nothing():
    from jobs import visibility
    from jobs.selectors import job_visible_to

    for nobody in (None, type("Anonymous", (), {"is_authenticated": False, "is_active": True})()):
        with pytest.raises(visibility.Nobody):
            job_visible_to(nobody)
