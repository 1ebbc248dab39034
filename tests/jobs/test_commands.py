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


def test_requeue_dead_with_filters_and_dry_run():
    from django.utils import timezone

    from jobs import transitions

    def dead(type_: str) -> str:
        job_id = run("submit", type_).strip()
        job = Job.objects.get(id=job_id)
        claim = transitions.mark_running(job.id, dispatch_token=job.dispatch_token, worker="w", lease_seconds=5)
        transitions.move_to_dead_letter(job.id, attempt=claim.attempt, error="x")
        return job_id

    echo, noop = dead("demo.echo"), dead("demo.noop")
    out = run("requeue-dead", "--type", "demo.echo", "--dry-run")
    assert echo in out
    assert noop not in out
    assert "1 dead-lettered job(s) would be requeued" in out
    assert Job.objects.get(id=echo).status == JobStatus.DEAD_LETTER
    future = (timezone.now() + timezone.timedelta(hours=1)).isoformat()
    assert "requeued 0" in run("requeue-dead", "--since", future)
    assert "requeued 2" in run("requeue-dead")
    assert set(Job.objects.filter(id__in=[echo, noop]).values_list("status", flat=True)) == {JobStatus.PENDING}
    with pytest.raises(CommandError, match="not an ISO 8601"):
        run("requeue-dead", "--since", "yesterday")


def test_submit_with_a_unique_key():
    first = run("submit", "demo.echo", "--unique-key", "daily", "--unique-policy", "keep_existing").strip()
    assert run("submit", "demo.echo", "--unique-key", "daily", "--unique-policy", "keep_existing").strip() == first
    with pytest.raises(CommandError, match=f"unique key 'daily' is taken by job {first}"):
        run("submit", "demo.echo", "--unique-key", "daily")
    assert Job.objects.count() == 1
