"""Batches: jobs submitted together, counted as they end (in the ending job's own
transaction), with callback jobs made exactly once when the batch ends."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from jobs import batches, services
from jobs.models import Batch, Job, JobStatus
from orchestration.scheduler import batch_callbacks
from orchestration.scheduler.fencing import next_epoch
from orchestration.worker import execute
from tests.threads import in_thread
from tests.workflows.conftest import pending_dispatches

pytestmark = pytest.mark.django_db
URL = "/api/v1/batches/"


def tick(epoch: int | None = None) -> int:
    """The scheduler's batch step, as a leader runs it."""
    epoch = epoch or next_epoch(settings.SCHEDULER_LOCK_KEY)
    return batch_callbacks.fire_batch_callbacks(epoch, timezone.now, limit=100)


def run_all() -> list[str]:
    return [str(execute(e, worker="w").status) for e in pending_dispatches()]


def create(api: Any, jobs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    response = api.post(URL, {"jobs": jobs, **extra}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def callbacks_of(batch_id: str) -> list[Job]:
    return list(Job.objects.filter(idempotency_key__startswith=f"batch:{batch_id}:").order_by("idempotency_key"))


ECHO = {"type": "demo.echo", "payload": {"n": 1}}
CALLBACKS = {"on_success": {"type": "demo.echo", "payload": {"said": "all good"}},
             "on_complete": {"type": "demo.echo", "payload": {"said": "done"}}}  # fmt: skip


def test_a_batch_that_succeeds_makes_both_callbacks_once(api):
    made = create(api, [ECHO, ECHO, ECHO], description="nightly", **CALLBACKS)
    batch_id = made["batch"]["id"]
    assert made["batch"] | {"id": "", "created_at": "", "closed_at": ""} == {
        "id": "", "description": "nightly", "state": "closed", "total": 3,
        "counts": dict.fromkeys(JobStatus.values, 0) | {"PENDING": 3}, "percent": 0.0,
        "on_success": {"template": CALLBACKS["on_success"] | {"queue": "default", "priority": 5, "max_attempts": 4,
                                                             "timeout_seconds": 300}, "job": None},
        "on_complete": made["batch"]["on_complete"], "created_at": "", "closed_at": "", "completed_at": None,
        "cancelled_at": None,
    }  # fmt: skip
    assert {j["id"] for j in made["jobs"]} == {
        str(i) for i in Job.objects.filter(batch_id=batch_id).values_list("id", flat=True)
    }
    assert tick() == 0  # nothing ended yet
    assert run_all() == ["SUCCEEDED"] * 3
    assert tick() == 2
    assert tick() == 0  # once
    complete, success = callbacks_of(batch_id)
    assert complete.payload == {"said": "done", "batch": {"id": batch_id, "total": 3, "succeeded": 3,
                                                          "dead_letter": 0, "cancelled": 0}}  # fmt: skip
    assert success.payload["said"] == "all good"
    assert complete.batch_id is None  # a callback is not a job of its batch
    body = api.get(f"{URL}{batch_id}/").json()
    assert (body["state"], body["percent"], body["counts"]["SUCCEEDED"]) == ("complete", 100.0, 3)
    assert (body["on_success"]["job"], body["on_complete"]["job"]) == (str(success.id), str(complete.id))
    assert run_all() == ["SUCCEEDED", "SUCCEEDED"]  # the callbacks themselves run as jobs


def test_a_failed_job_makes_on_complete_only_until_it_is_retried_and_succeeds(api, user):
    made = create(api, [ECHO, {"type": "demo.fail", "max_attempts": 1}], **CALLBACKS)
    batch_id = made["batch"]["id"]
    assert sorted(run_all()) == ["DEAD_LETTER", "SUCCEEDED"]
    assert tick() == 1
    [complete] = callbacks_of(batch_id)
    assert complete.payload["batch"]["dead_letter"] == 1
    failed = Job.objects.get(batch_id=batch_id, status=JobStatus.DEAD_LETTER)
    Job.objects.filter(id=failed.id).update(type="demo.echo")  # the bug was fixed
    services.job_retry(job_id=failed.id)
    assert batches.batch_counts(batch_id).by_status["DEAD_LETTER"] == 0  # it left the count
    assert run_all() == ["SUCCEEDED", "SUCCEEDED"]  # on_complete's job, and the retried one
    assert tick() == 1  # now every job succeeded: on_success, once; on_complete not again
    assert [j.idempotency_key.rsplit(":", 1)[1] for j in callbacks_of(batch_id)] == ["on_complete", "on_success"]


def test_an_open_batch_takes_more_jobs_and_waits_to_be_closed(api, other_api):
    made = create(api, [ECHO], open=True, **CALLBACKS)
    batch_id = made["batch"]["id"]
    assert made["batch"]["state"] == "open"
    run_all()
    assert tick() == 0  # open: more may come
    added = api.post(f"{URL}{batch_id}/jobs/", {"jobs": [ECHO, ECHO]}, format="json")
    assert added.status_code == 201
    assert added.json()["batch"]["total"] == 3
    assert other_api.post(f"{URL}{batch_id}/jobs/", {"jobs": [ECHO]}, format="json").status_code == 404
    run_all()
    assert api.post(f"{URL}{batch_id}/close/").json()["state"] == "closed"
    refused = api.post(f"{URL}{batch_id}/jobs/", {"jobs": [ECHO]}, format="json")
    assert refused.status_code == 409
    assert "is closed: no more jobs" in refused.json()["detail"]
    assert tick() == 2  # closed with every job done: the next tick makes the callbacks
    assert Job.objects.filter(batch_id=batch_id).count() == 3


def test_adding_with_close_closes_it(api):
    batch_id = create(api, [], open=True)["batch"]["id"]
    added = api.post(f"{URL}{batch_id}/jobs/", {"jobs": [ECHO], "close": True}, format="json").json()
    assert added["batch"]["state"] == "closed"


def test_an_empty_closed_batch_completes_at_once(api):
    batch_id = create(api, [], **CALLBACKS)["batch"]["id"]
    assert tick() == 2
    assert api.get(f"{URL}{batch_id}/").json()["state"] == "complete"


def test_cancelling_a_batch_cancels_its_unfinished_jobs_in_the_background(api):
    made = create(api, [ECHO, ECHO, ECHO], **CALLBACKS)
    batch_id = made["batch"]["id"]
    first = pending_dispatches()
    execute(first[0], worker="w")  # one finished before the cancel
    answer = api.post(f"{URL}{batch_id}/cancel/").json()
    assert (answer["batch"]["state"], answer["matched"]) == ("cancelled", 2)
    assert api.post(f"{URL}{batch_id}/jobs/", {"jobs": [ECHO]}, format="json").status_code == 409
    assert run_all() == ["SUCCEEDED"]  # the bulk action ran; the stale dispatches of the rest are gone
    for envelope in first[1:]:
        assert not execute(envelope, worker="w").recorded
    counts = batches.batch_counts(batch_id).by_status
    assert (counts["SUCCEEDED"], counts["CANCELLED"]) == (1, 2)
    assert tick() == 1
    assert [j.idempotency_key.rsplit(":", 1)[1] for j in callbacks_of(batch_id)] == ["on_complete"]


def test_the_percentage_counts_the_progress_of_running_jobs(api, user):
    batch_id = create(api, [ECHO, ECHO])["batch"]["id"]
    one, two = Job.objects.filter(batch_id=batch_id)
    Job.objects.filter(id=one.id).update(status=JobStatus.RUNNING, progress=0.5)
    assert batches.batch_counts(batch_id).percent == 25.0
    Job.objects.filter(id=two.id).update(status=JobStatus.SUCCEEDED, finished_at=timezone.now())
    assert batches.batch_counts(batch_id).percent == 75.0


def test_a_duplicate_delivery_counts_once(api):
    batch_id = create(api, [ECHO])["batch"]["id"]
    [envelope] = pending_dispatches()
    assert [str(execute(envelope, worker="w").status) for _ in range(3)] == ["SUCCEEDED", "SKIPPED", "SKIPPED"]
    counts = batches.batch_counts(batch_id)
    assert (counts.total, counts.by_status["SUCCEEDED"], counts.unfinished) == (1, 1, 0)


def test_batches_are_their_owners(api, other_api, staff_api):
    batch_id = create(api, [ECHO])["batch"]["id"]
    assert other_api.get(f"{URL}{batch_id}/").status_code == 404
    assert other_api.post(f"{URL}{batch_id}/cancel/").status_code == 404
    assert other_api.get(URL).json()["results"] == []
    assert [b["id"] for b in api.get(URL).json()["results"]] == [batch_id]
    assert staff_api.get(f"{URL}{batch_id}/").status_code == 200
    listed = api.get("/api/v1/jobs/", {"batch": batch_id}).json()["results"]
    assert len(listed) == 1
    assert other_api.get("/api/v1/jobs/", {"batch": batch_id}).json()["results"] == []
    assert api.get(f"{URL}{uuid.uuid4()}/").status_code == 404


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"jobs": [ECHO | {"idempotency_key": "k"}]}, "jobs"),
        ({"jobs": [ECHO | {"unique_key": "k"}]}, "jobs"),
        ({"jobs": [{"type": "no.such.type"}]}, "jobs"),
        ({"jobs": [ECHO], "on_success": {"type": "demo.echo", "run_at": "2030-01-01T00:00:00Z"}}, "on_success"),
        ({"jobs": [ECHO], "on_complete": {"type": "no.such.type"}}, "on_complete"),
        ({"jobs": [ECHO], "on_complete": {"type": "demo.echo", "idempotency_key": "batch:x"}}, "on_complete"),
        ({"jobs": [ECHO], "description": "x" * 201}, "description"),
        ({"jobs": "many"}, "jobs"),
    ],
)
def test_bad_batches_are_400_naming_the_field_and_make_nothing(api, body, where):
    response = api.post(URL, body, format="json")
    assert response.status_code == 400, response.content
    assert where in response.json()["errors"]
    assert not Batch.objects.exists()
    assert not Job.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_last_jobs_ending_together_and_two_ticks_racing_make_each_callback_once(user):
    """Eight workers end the batch's last jobs at once while two scheduler ticks run: whatever
    the interleaving, one on_complete and one on_success."""
    spec = services.JobSpec(type="demo.echo")
    for _ in range(5):
        batch, _jobs = batches.batch_create(
            owner_id=user.pk, specs=[spec] * 16,
            callbacks={name: {"type": "demo.echo"} for name in batches.CALLBACKS},
        )  # fmt: skip
        envelopes = pending_dispatches()
        epoch = next_epoch(settings.SCHEDULER_LOCK_KEY)
        outcome: dict[str, Any] = {}
        threads = [
            in_thread(outcome, f"w{n}", lambda part=envelopes[n::8]: [execute(e, worker="w") for e in part])
            for n in range(8)
        ] + [in_thread(outcome, f"tick{n}", lambda e=epoch: tick(e)) for n in range(2)]  # one leader's, twice
        for thread in threads:
            thread.join()
        assert not [v for v in outcome.values() if isinstance(v, Exception)], outcome
        tick()
        assert len(callbacks_of(str(batch.id))) == 2
        assert Batch.objects.get(id=batch.id).completed_at is not None


def test_the_dashboard_shows_batches_with_a_live_bar_and_cancels_them(api, user, other_user, client):
    batch_id = create(api, [ECHO, ECHO], description="import", **CALLBACKS)["batch"]["id"]
    execute(pending_dispatches()[0], worker="w")
    client.force_login(user)
    listing = client.get("/batches/").content.decode()
    assert "import" in listing
    assert 'value="50.000000"' in listing
    panel = client.get(f"/batches/{batch_id}/panel/").content.decode()
    assert "50.0% done" in panel
    assert "not yet" in panel
    page = client.get(f"/batches/{batch_id}/").content.decode()
    assert f'data-refresh="/batches/{batch_id}/panel/"' in page
    client.force_login(other_user)
    assert client.get(f"/batches/{batch_id}/").status_code == 404
    assert client.post(f"/batches/{batch_id}/cancel/").status_code == 404
    client.force_login(user)
    client.post(f"/batches/{batch_id}/cancel/")
    assert Batch.objects.get(id=batch_id).state == "cancelled"
    jobs_page = client.get(f"/jobs/?batch={batch_id}").content.decode()
    assert jobs_page.count("demo.echo") >= 2


def test_the_admin_shows_batches_to_staff(api, admin_client):
    batch_id = create(api, [ECHO], description="import")["batch"]["id"]
    assert "import" in admin_client.get("/admin/orchestration_jobs/batch/").content.decode()
    page = admin_client.get(f"/admin/orchestration_jobs/batch/{batch_id}/change/").content.decode()
    assert "PENDING 1" in page
    admin_client.post("/admin/orchestration_jobs/batch/", {"action": "cancel_batches", "_selected_action": [batch_id]})
    assert Batch.objects.get(id=batch_id).state == "cancelled"


def test_the_cli_creates_shows_and_cancels_batches(user, tmp_path, capsys):
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text('[{"type": "demo.echo"}, {"type": "demo.noop"}]')
    call_command("jobs", "batch", "create", "--jobs", str(jobs_file), "--on-complete", '{"type": "demo.echo"}',
                 "--description", "from the cli", "--owner", user.username)  # fmt: skip
    created = orjson.loads(capsys.readouterr().out)
    assert (created["total"], created["state"], created["description"]) == (2, "closed", "from the cli")
    call_command("jobs", "batch", "cancel", created["id"], "--owner", user.username)
    assert orjson.loads(capsys.readouterr().out)["state"] == "cancelled"
    with pytest.raises(CommandError, match="needs the batch's id"):
        call_command("jobs", "batch", "show")
    with pytest.raises(CommandError, match="invalid batch"):
        call_command("jobs", "batch", "create", "--on-success", '{"type": "no.such"}')


def test_a_worker_killed_running_the_callback_leaves_one_callback_that_succeeds_once(api):
    """The callback's worker dies mid-run (its lease runs out): the reaper gives the same job
    another attempt, no tick makes a second callback, and it succeeds once."""
    from datetime import timedelta

    from jobs import transitions
    from orchestration.scheduler.reaper import reap_expired_leases
    from orchestration.scheduler.release import release_due

    batch_id = create(api, [ECHO], on_complete={"type": "demo.echo"})["batch"]["id"]
    run_all()
    assert tick() == 1
    [callback] = callbacks_of(batch_id)
    [envelope] = pending_dispatches()
    assert transitions.mark_running(callback.id, dispatch_token=envelope.dispatch_token, worker="dead:1",
                                    lease_seconds=1) is not None  # fmt: skip
    later = timezone.now() + timedelta(seconds=120)
    epoch = next_epoch(settings.SCHEDULER_LOCK_KEY)
    assert reap_expired_leases(epoch, lambda: later, batch=100) == 1
    release_due(epoch, lambda: later + timedelta(hours=1), scan="retries", batch=100, batches=1)  # its backoff over
    assert tick() == 0
    assert run_all() == ["SUCCEEDED"]
    [callback] = callbacks_of(batch_id)
    assert (callback.status, callback.attempt_seq) == (JobStatus.SUCCEEDED, 2)
    assert callback.history.filter(status="SUCCEEDED").count() == 1


def test_a_complete_or_cancelled_batch_cannot_be_cancelled(api):
    batch_id = create(api, [ECHO])["batch"]["id"]
    run_all()
    tick()
    refused = api.post(f"{URL}{batch_id}/cancel/")
    assert refused.status_code == 409
    assert "is complete: there is nothing left to cancel" in refused.json()["detail"]
    other = create(api, [ECHO])["batch"]["id"]
    assert api.post(f"{URL}{other}/cancel/").status_code == 200
    assert api.post(f"{URL}{other}/cancel/").status_code == 409
    assert Job.objects.filter(type="platform.bulk_action").count() == 1  # no second action


def test_one_batch_that_fails_its_look_does_not_stop_the_others(api, monkeypatch):
    first = create(api, [], **CALLBACKS)["batch"]["id"]
    second = create(api, [], **CALLBACKS)["batch"]["id"]
    original = batches.fire_callbacks

    def broken_for_first(batch_id: uuid.UUID, **kwargs: Any) -> Any:
        if str(batch_id) == first:
            raise RuntimeError("this batch's trouble")
        return original(batch_id, **kwargs)

    monkeypatch.setattr(batches, "fire_callbacks", broken_for_first)
    assert tick() == 2  # the second's callbacks
    assert Batch.objects.get(id=second).state == "complete"
    assert Batch.objects.get(id=first).check_needed  # still flagged: looked at again next tick
    monkeypatch.setattr(batches, "fire_callbacks", original)
    assert tick() == 2
