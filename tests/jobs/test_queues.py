"""Declared queues (config.queues): a job for any other queue is refused on every submit path
with the declared names, nothing is written, and `GET /api/v1/queues/` lists them with their
backlog (the caller's own; staff: everyone's)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from config import queues
from config.queues import Queue, QueueError
from jobs.models import Job, Outbox, Schedule
from jobs.services import JobSpec, job_submit_bulk
from jobs.task_backend.framework import InvalidTask
from workflows.models import Workflow

pytestmark = pytest.mark.django_db

DECLARED = "the declared queues are: default"


@pytest.fixture(autouse=True)
def _only_default(settings):
    settings.QUEUES = {"default": Queue("default", window=1000, slot_share=0.5)}


def refused(response, *path: str | int) -> str:
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    for step in path:
        errors = errors[step]
    return " ".join(errors) if isinstance(errors, list) else str(errors)


def test_a_single_submit_to_an_undeclared_queue_is_a_400_naming_the_declared_ones(api):
    message = refused(api.post("/api/v1/jobs/", {"type": "demo.noop", "queue": "parked"}, format="json"), "queue")
    assert "'parked' is not a declared queue" in message
    assert DECLARED in message
    assert not Job.objects.exists()


def test_a_bulk_with_one_undeclared_queue_writes_nothing(api):
    body = {"jobs": [{"type": "demo.noop"}, {"type": "demo.noop", "queue": "typo"}, {"type": "demo.noop"}]}
    message = refused(api.post("/api/v1/jobs/bulk/", body, format="json"), "jobs", "1", "queue")
    assert "'typo' is not a declared queue" in message
    assert not Job.objects.exists()
    assert not Outbox.objects.exists()


def test_a_schedule_for_an_undeclared_queue_is_refused(api):
    body = {"name": "nightly", "cron": "0 3 * * *", "type": "demo.noop", "queue": "parked"}
    assert DECLARED in refused(api.post("/api/v1/schedules/", body, format="json"), "queue")
    assert not Schedule.objects.exists()


@pytest.mark.parametrize(
    ("task", "where"),
    [
        ({"id": "a", "type": "demo.noop", "queue": "parked"}, ("tasks", "0", "queue")),
        (
            {"id": "a", "type": "demo.noop", "compensation": {"type": "demo.noop", "queue": "parked"}},
            ("tasks", "0", "compensation", "queue"),
        ),
    ],
)
def test_a_workflow_task_or_compensation_for_an_undeclared_queue_is_refused(api, task, where):
    assert DECLARED in refused(api.post("/api/v1/workflows/", {"tasks": [task]}, format="json"), *where)
    assert not Workflow.objects.exists()


def test_a_django_task_for_an_undeclared_queue_is_refused_at_enqueue(tasks_app):
    with pytest.raises(InvalidTask) as caught:
        tasks_app.multiply.using(queue_name="parked").enqueue(1, 2)
    assert "'parked' is not a declared queue" in str(caught.value)
    assert DECLARED in str(caught.value)
    assert not Job.objects.exists()


def test_a_declared_queue_is_taken(api, settings):
    settings.QUEUES = {**settings.QUEUES, "emails": Queue("emails", window=10)}
    response = api.post("/api/v1/jobs/", {"type": "demo.noop", "queue": "emails"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["queue"] == "emails"


def test_queues_list_each_declared_queue_with_the_callers_backlog(api, user, other_user, staff_api, settings):
    settings.QUEUES = {**settings.QUEUES, "emails": Queue("emails", window=10, rate=5.0, burst=10)}
    job_submit_bulk(owner_id=user.pk, specs=[JobSpec(type="demo.noop", queue="emails")] * 3)
    job_submit_bulk(owner_id=other_user.pk, specs=[JobSpec(type="demo.noop", queue="emails")] * 4)
    body = api.get("/api/v1/queues/").json()
    by_name = {q["name"]: q for q in body["results"]}
    assert set(by_name) == {"default", "emails"}
    emails = by_name["emails"]
    assert (emails["window"], emails["rate_per_second"], emails["burst"]) == (10, 5.0, 10)
    assert (emails["depth"], emails["in_flight"]) == (3, 0)  # its own jobs only
    assert emails["lag_seconds"] >= 0
    assert isinstance(emails["consumers"], int)
    assert by_name["default"]["depth"] == 0
    everyone = {q["name"]: q for q in staff_api.get("/api/v1/queues/").json()["results"]}
    assert everyone["emails"]["depth"] == 7


def test_queues_need_a_token(client):
    assert client.get("/api/v1/queues/").status_code in (401, 403)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "declares no queue"),
        ("default; default", "declared twice"),
        ("b@d", "is not a queue name"),
        ("emails rate=fast", "rate 'fast' is not a positive rate"),
        ("emails rate=0/s", "is not a positive rate"),
        ("emails burst=3", "burst needs a rate"),
        ("emails window=0", "window must be at least 1"),
        ("emails window=x", "invalid literal"),
        ("emails slot_share=1.5", "slot_share must be above 0 and at most 1"),
        ("emails colour=red", "'colour=red' is not one of"),
        ("emails weight=0", "weight must be from 0.01 to 1000, not 0"),
        ("emails weight=nan", "weight must be from 0.01 to 1000, not nan"),
    ],
)
def test_a_bad_declaration_names_the_queue_and_the_problem(text, problem):
    with pytest.raises(QueueError) as caught:
        queues.parse(text, window=100, slot_share=0.5)
    assert problem in str(caught.value)


def test_a_declaration_reads_rates_per_second():
    parsed = queues.parse(
        "default weight=4; emails rate=120/m; reports window=5 slot_share=0.25", window=100, slot_share=0.5
    )
    assert list(parsed) == ["default", "emails", "reports"]
    assert parsed["default"] == Queue("default", window=100, slot_share=0.5, weight=4.0)
    assert parsed["emails"] == Queue("emails", window=100, rate=2.0, burst=2, slot_share=0.5)
    assert parsed["reports"] == Queue("reports", window=5, slot_share=0.25)


def test_settings_refuse_workers_of_an_undeclared_queue():
    import subprocess
    import sys

    from tests.orchestration.conftest import REPO

    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgres://x@127.0.0.1/x", "REDIS_URL": "redis://127.0.0.1/0",
           "QUEUES": "default", "WORKER_QUEUES": "default,parked"}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=REPO, env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"}, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode != 0
    assert ImproperlyConfigured.__name__ in run.stderr
    assert "WORKER_QUEUES: 'parked' is not a declared queue" in run.stderr
