"""`manage.py jobs ...` through call_command, against the real database."""

from __future__ import annotations

import io
import uuid

import orjson
import pytest
from django.core.management import CommandError, call_command

from jobs.models import Job, JobStatus

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("jobs", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_submit_show_list_cancel_retry():
    job_id = run("submit", "demo.echo", "--payload", '{"x": 1}').strip()
    job = Job.objects.get(id=job_id)
    assert job.payload == {"x": 1}
    assert job.status == JobStatus.PENDING
    shown = orjson.loads(run("show", job_id))
    assert shown["id"] == job_id
    assert shown["history"] == []
    assert job_id in run("list", "--status", "PENDING")
    assert "CANCELLED" in run("cancel", job_id)
    assert "PENDING" in run("retry", job_id)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("submit", "no.such.type"), "Unknown job type"),
        (("submit", "demo.echo", "--payload", "[1"), "not valid JSON"),
        (("submit", "demo.echo", "--payload", "[1]"), "payload must be a JSON object"),
        (("show", str(uuid.UUID(int=0))), "not found"),
        (("retry", str(uuid.UUID(int=0))), "not found"),
    ],
)
def test_errors_are_clear(args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)


def test_cancel_twice_names_the_state():
    job_id = run("submit", "demo.noop").strip()
    run("cancel", job_id)
    with pytest.raises(CommandError, match="is CANCELLED, cannot cancel"):
        run("cancel", job_id)


def test_wait_times_out_while_no_worker_runs_it():
    with pytest.raises(CommandError, match="still PENDING"):
        run("submit", "demo.noop", "--wait", "--timeout", "0.3")
