"""The workflows API: validation in one pass, shapes, ownership, idempotency, cancel."""

from __future__ import annotations

import uuid

import pytest

from jobs.models import Job
from tests.workflows.conftest import run_all, task

pytestmark = pytest.mark.django_db


def post(api, tasks, **extra):
    return api.post("/api/v1/workflows/", {"name": "w", "tasks": tasks, **extra}, format="json")


def test_submit_releases_the_roots_and_shows_every_task(api):
    response = post(api, [task("a"), task("b", "a", compensation={"type": "demo.noop"})])
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "RUNNING"
    a, b = body["tasks"]
    assert (a["id"], a["type"], a["depends_on"], a["status"]) == ("a", "demo.echo", [], "PENDING")
    assert a["job"] is not None
    assert (b["id"], b["depends_on"], b["status"], b["job"], b["compensation_job"]) == (
        "b",
        ["a"],
        "PENDING",
        None,
        None,
    )
    job = api.get(f"/api/v1/jobs/{a['job']}/").json()
    assert job["workflow"] == body["id"]
    assert [j["id"] for j in api.get(f"/api/v1/jobs/?workflow={body['id']}").json()["results"]] == [a["job"]]
    run_all()
    done = api.get(f"/api/v1/workflows/{body['id']}/").json()
    assert done["status"] == "SUCCEEDED"
    assert [t["status"] for t in done["tasks"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert done["tasks"][0]["started_at"]
    assert done["tasks"][0]["finished_at"]


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([], "a workflow needs at least one task"),
        ([task("a"), task("a")], "duplicate task id 'a'"),
        ([task("a", "ghost")], "task 'a' depends on unknown task 'ghost'"),
        ([task("a", "c"), task("b", "a"), task("c", "b")], "cycle: "),
        ([task("a", type="no.such.handler")], "task 'a': unknown job type 'no.such.handler'"),
        ([task("a", compensation={"type": "nope"})], "task 'a': unknown compensation type 'nope'"),
    ],
)
def test_every_validation_error_is_400_and_names_the_problem(api, tasks, message):
    response = post(api, tasks)
    assert response.status_code == 400, response.content
    problems = response.json()["errors"]["tasks"]
    assert any(p.startswith(message) for p in problems), problems
    assert not Job.objects.exists()


def test_all_problems_are_reported_together(api):
    response = post(api, [task("a", "ghost"), task("a"), task("b", type="nope")])
    problems = response.json()["errors"]["tasks"]
    assert len(problems) == 3


def test_too_many_tasks(api, settings):
    settings.WORKFLOW_MAX_TASKS = 3
    response = post(api, [task(f"t{i}") for i in range(4)])
    assert response.status_code == 400
    assert "at most 3 tasks" in response.json()["errors"]["tasks"][0]


def test_a_cycle_names_the_tasks_on_it(api):
    response = post(api, [task("x"), task("a", "c", "x"), task("b", "a"), task("c", "b")])
    (problem,) = response.json()["errors"]["tasks"]
    assert set(problem.removeprefix("cycle: ").replace("'", "").split(" -> ")) == {"a", "b", "c"}


def test_bad_task_fields_are_400_by_position(api):
    response = post(api, [{"id": "a", "type": "demo.noop", "priority": 99}])
    assert response.status_code == 400
    assert "priority" in response.json()["errors"]["tasks"]["0"]


def test_idempotency_keys_replay_or_conflict(api):
    first = post(api, [task("a")], idempotency_key="nightly-1")
    again = post(api, [task("a")], idempotency_key="nightly-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    other = post(api, [task("b")], idempotency_key="nightly-1")
    assert other.status_code == 409
    assert other.json()["workflow"] == first.json()["id"]


def test_keys_reserved_for_the_platform_are_refused(api):
    for response in (
        post(api, [task("a")], idempotency_key="schedule:1:2"),
        api.post("/api/v1/workflows/", {"tasks": [task("a")]}, format="json", HTTP_IDEMPOTENCY_KEY="schedule:x"),
    ):
        assert response.status_code == 400
        assert "reserved for the platform" in response.json()["errors"]["idempotency_key"][0]


def test_users_see_only_their_own_workflows(api, other_api, staff_api):
    mine = post(api, [task("a")]).json()["id"]
    assert other_api.get(f"/api/v1/workflows/{mine}/").status_code == 404
    assert other_api.post(f"/api/v1/workflows/{mine}/cancel/").status_code == 404
    assert other_api.get("/api/v1/workflows/").json()["results"] == []
    assert [w["id"] for w in api.get("/api/v1/workflows/").json()["results"]] == [mine]
    assert staff_api.get(f"/api/v1/workflows/{mine}/").status_code == 200
    assert api.get(f"/api/v1/workflows/{uuid.uuid4()}/").status_code == 404


def test_list_filters_by_status_and_pages(api):
    ids = [post(api, [task("a")]).json()["id"] for _ in range(3)]
    run_all()
    post(api, [task("a")])
    body = api.get("/api/v1/workflows/?status=SUCCEEDED&page_size=2").json()
    assert len(body["results"]) == 2
    rest = api.get(body["next"]).json()
    assert sorted(w["id"] for w in body["results"] + rest["results"]) == sorted(ids)
    assert api.get("/api/v1/workflows/?status=NOPE").status_code == 400


def test_cancel_and_cancel_again(api):
    wf = post(api, [task("a"), task("b", "a")]).json()
    response = api.post(f"/api/v1/workflows/{wf['id']}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "CANCELLED"  # nothing ran: nothing to compensate
    again = api.post(f"/api/v1/workflows/{wf['id']}/cancel/")
    assert again.status_code == 409
    assert again.json()["status"] == "CANCELLED"


def test_a_job_of_a_workflow_is_not_retried_on_its_own(api):
    wf = post(api, [{"id": "a", "type": "demo.fail", "payload": {"retryable": False}}]).json()
    run_all()
    job_id = api.get(f"/api/v1/workflows/{wf['id']}/").json()["tasks"][0]["job"]
    response = api.post(f"/api/v1/jobs/{job_id}/retry/")
    assert response.status_code == 409
    assert "workflow" in response.json()["detail"]


def test_every_endpoint_needs_a_token(client):
    assert client.get("/api/v1/workflows/").status_code == 401
    assert client.post("/api/v1/workflows/", {}, content_type="application/json").status_code == 401
    assert client.get(f"/api/v1/workflows/{uuid.uuid4()}/").status_code == 401
