"""`ctx.progress(fraction, message)`: throttled writes a tight loop cannot turn into a storm,
the latest value written by the monitor if the handler goes quiet, guarded by the attempt,
shown by the API and the dashboard while the job runs."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs.models import Job, JobStatus
from jobs.progress import Reporter, checked
from orchestration.worker import claim_many, execute
from tests.factories import submit_job
from tests.workflows.conftest import pending_dispatches

pytestmark = pytest.mark.django_db


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def running(user) -> tuple[Job, int]:
    job = submit_job(user, type="demo.noop")
    [claim] = claim_many([(str(job.id), str(job.dispatch_token))], worker="w")
    return job, claim.attempt


def progress_writes(queries: CaptureQueriesContext) -> int:
    return sum("SET progress" in q["sql"] for q in queries.captured_queries)


def test_a_tight_loop_writes_once_per_interval_and_the_last_word_is_kept(user, settings):
    settings.JOB_PROGRESS_INTERVAL_SECONDS = 0.5
    job, attempt = running(user)
    clock = Clock()
    reporter = Reporter(job.id, attempt, clock=clock)
    with CaptureQueriesContext(connection) as queries:
        for i in range(100_000):
            reporter.report(i / 100_000, f"row {i}")
        assert progress_writes(queries) == 1  # the first, at once; the rest kept back
        clock.now += 0.5
        reporter.report(0.75, "three quarters")  # due again: written, the pending one with it
        reporter.report(0.8, "later")
        reporter.flush()  # what the monitor's tick does
        reporter.flush()  # nothing pending: no statement
    assert progress_writes(queries) == 3
    job.refresh_from_db()
    assert (job.progress, job.progress_message) == (0.8, "later")


def test_a_report_of_an_attempt_that_lost_its_job_changes_nothing(user):
    job, attempt = running(user)
    Reporter(job.id, attempt + 1).report(0.5, "stale")
    job.refresh_from_db()
    assert job.progress is None


@pytest.mark.parametrize(
    ("fraction", "message", "error"),
    [
        (1.5, "", "from 0 to 1, got 1.5"),
        (-0.1, "", "from 0 to 1"),
        (float("nan"), "", "from 0 to 1"),
        (True, "", "a number from 0 to 1, not bool"),
        ("half", "", "not str"),
        (0.5, 7, "message must be text"),
    ],
)
def test_a_bad_report_is_a_value_error_saying_what_is_wrong(fraction, message, error):
    with pytest.raises(ValueError, match=error):
        checked(fraction, message)


def test_a_long_message_is_cut_and_nul_made_storable():
    fraction, message = checked(1, "a\x00" + "x" * 500)
    assert fraction == 1.0
    assert len(message) <= 200
    assert "\x00" not in message


def test_the_api_and_the_dashboard_show_a_running_jobs_progress(user, api, client):
    job, attempt = running(user)
    Reporter(job.id, attempt).report(0.42, "indexing shard 3")
    body = api.get(f"/api/v1/jobs/{job.id}/").json()
    assert body["status"] == "RUNNING"
    assert body["progress"]["fraction"] == 0.42
    assert body["progress"]["message"] == "indexing shard 3"
    assert body["progress"]["at"]
    client.force_login(user)
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert 'id="job-progress"' in page
    assert "42%" in page
    assert "indexing shard 3" in page
    other = submit_job(user, type="demo.noop")
    assert api.get(f"/api/v1/jobs/{other.id}/").json()["progress"] is None


@pytest.mark.django_db(transaction=True)  # the monitor writes on a connection of its own
def test_the_worker_gives_handlers_progress_and_the_monitor_writes_what_was_kept_back(user, settings):
    settings.JOB_PROGRESS_INTERVAL_SECONDS = 60  # only the first report is due: the monitor writes the rest
    job = submit_job(user, type="demo.progress", payload={"steps": 4, "seconds": 1.2})
    [envelope] = pending_dispatches()
    assert execute(envelope, worker="w").status == "SUCCEEDED"
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.progress is not None
    assert job.progress > 0.25  # later than the first report: written by the monitor's tick
    assert job.progress_message.startswith("step ")
