"""The Django Tasks backend (jobs.task_backend): enqueue through the framework's API, the job
it becomes, the worker's code running it in-process (as relay + bridge + worker would), and
the TaskResult that comes back. Through the real roles: tests/orchestration/test_task_pipeline.py."""

from __future__ import annotations

import sys
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from jobs import services, transitions
from jobs.handlers import JobCancelled, PermanentError
from jobs.models import Job, JobStatus, Outbox
from jobs.services import JobSpec
from jobs.task_backend.backend import InvalidTaskArguments, enqueue_many
from jobs.task_backend.framework import InvalidTask, Task, TaskResultDoesNotExist, TaskResultStatus, signals, task
from jobs.task_backend.results import from_job_priority, to_job_priority
from orchestration.worker import execute
from tests.workflows.conftest import pending_dispatches

pytestmark = pytest.mark.django_db


def run_dispatched() -> int:
    """Run what the outbox holds through the worker's own code; returns how many ran."""
    envelopes = pending_dispatches()
    for envelope in envelopes:
        execute(envelope, worker="test-worker")
    return len(envelopes)


def release_retries() -> None:
    released = transitions.release_batch("retries", now=timezone.now() + timedelta(days=1), limit=100)
    services.job_dispatch_released(released)


def stray() -> None:
    """A function of a module that is not in JOB_TASK_MODULES."""


# --- enqueue → job → worker → get_result -------------------------------------------------


def test_an_enqueued_task_becomes_a_job_runs_and_its_result_comes_back(tasks_app):
    result = tasks_app.multiply.enqueue(6, 7)

    assert result.status == TaskResultStatus.READY
    assert result.args == [6, 7]
    assert result.kwargs == {}
    job = Job.objects.get(id=result.id)
    assert job.type == "tests.tasks_app.tasks.multiply" == tasks_app.multiply.module_path
    assert job.payload == {"args": [6, 7], "kwargs": {}}
    assert (job.queue, job.priority, job.status) == ("default", 5, JobStatus.PENDING)
    assert job.owner.username == "tasks"
    assert not job.owner.has_usable_password()
    assert Outbox.objects.filter(job_id=job.id).exists()

    assert run_dispatched() == 1
    done = tasks_app.multiply.get_result(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.return_value == 42
    assert done.worker_ids == ["test-worker"]
    assert done.attempts == 1
    assert done.errors == []
    assert done.enqueued_at == job.created_at
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.last_attempted_at is not None
    result.refresh()  # the framework's own refresh goes through get_result
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 42


def test_a_task_that_takes_context_gets_its_job_as_a_running_result(tasks_app):
    result = tasks_app.whoami.enqueue(tag="ctx")
    run_dispatched()
    value = tasks_app.whoami.get_result(result.id).return_value
    assert value == {
        "id": result.id, "attempt": 1, "status": "RUNNING", "tag": "ctx", "workers": ["test-worker"],
        "args": [], "kwargs": {"tag": "ctx"},
    }  # fmt: skip


def test_an_async_task_runs_in_its_own_event_loop(tasks_app):
    result = tasks_app.async_double.enqueue(21)
    run_dispatched()
    assert tasks_app.async_double.get_result(result.id).return_value == 42


def test_a_failing_task_is_failed_with_our_recorded_error(tasks_app):
    result = tasks_app.explode.enqueue("kaboom")
    run_dispatched()
    failed = tasks_app.explode.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert Job.objects.get(id=result.id).status == JobStatus.DEAD_LETTER
    [error] = failed.errors
    assert error.exception_class_path == "jobs.handlers.PermanentError"
    assert error.exception_class is PermanentError
    assert "kaboom" in error.traceback
    assert "Traceback (most recent call last)" in error.traceback
    assert failed.finished_at is not None
    with pytest.raises(ValueError, match="failed"):
        _ = failed.return_value


def test_a_retried_task_is_ready_again_with_the_first_error_then_succeeds(tasks_app):
    result = tasks_app.flaky.enqueue("first time")
    run_dispatched()
    waiting = tasks_app.flaky.get_result(result.id)
    assert Job.objects.get(id=result.id).status == JobStatus.RETRYING
    assert waiting.status == TaskResultStatus.READY
    assert [e.exception_class_path for e in waiting.errors] == ["tests.tasks_app.tasks.Boom"]
    assert "first time" in waiting.errors[0].traceback
    assert waiting.finished_at is None

    release_retries()
    assert run_dispatched() == 1
    done = tasks_app.flaky.get_result(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.return_value == 2
    assert done.attempts == 2
    assert len(done.errors) == 1
    assert done.last_attempted_at > done.started_at


def test_a_cancelled_task_is_failed_with_the_cancel_as_its_error(tasks_app):
    result = tasks_app.multiply.enqueue(1, 1)
    services.job_cancel(job_id=result.id)
    cancelled = tasks_app.multiply.get_result(result.id)
    assert cancelled.status == TaskResultStatus.FAILED
    assert [e.exception_class for e in cancelled.errors] == [JobCancelled]


def test_the_frameworks_signals_are_sent(tasks_app, django_capture_on_commit_callbacks):
    seen: list[tuple[str, str]] = []

    def receiver(name: str) -> Any:
        def receive(sender: Any, task_result: Any, **kwargs: Any) -> None:
            seen.append((name, str(task_result.status)))

        return receive

    receivers = {s: receiver(n) for n, s in [("enqueued", signals.task_enqueued), ("started", signals.task_started),
                                              ("finished", signals.task_finished)]}  # fmt: skip
    for sig, fn in receivers.items():
        sig.connect(fn)
    try:
        tasks_app.multiply.enqueue(2, 3)
        with django_capture_on_commit_callbacks(execute=True):
            run_dispatched()
    finally:
        for sig, fn in receivers.items():
            sig.disconnect(fn)
    assert seen == [("enqueued", "READY"), ("started", "RUNNING"), ("finished", "SUCCESSFUL")]


# --- transactions --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_enqueue_in_a_rolled_back_transaction_leaves_no_job_and_no_dispatch(tasks_app):
    enqueued: list[str] = []

    def view() -> None:
        with transaction.atomic():
            enqueued.append(tasks_app.multiply.enqueue(1, 2).id)
            assert Job.objects.filter(id=enqueued[0]).exists()  # written in the caller's transaction
            raise RuntimeError("the view failed after enqueueing")

    with pytest.raises(RuntimeError):
        view()
    result_id = enqueued[0]
    assert not Job.objects.filter(id=result_id).exists()
    assert not Outbox.objects.filter(job_id=result_id).exists()
    assert not get_user_model().objects.filter(username="tasks").exists()  # made in it: gone with it

    with transaction.atomic():
        kept = tasks_app.multiply.enqueue(3, 4)  # the owner is made again; nothing stale was cached
    assert Job.objects.filter(id=kept.id).exists()
    assert Outbox.objects.filter(job_id=kept.id).exists()


def test_the_owner_is_the_named_user_who_must_exist(tasks_app, settings, user):
    backend = settings.TASKS["default"]
    settings.TASKS = {"default": {**backend, "OPTIONS": {"OWNER": "nobody"}}}
    with pytest.raises(ImproperlyConfigured, match="user 'nobody' \\(TASKS_OWNER\\), does not exist"):
        tasks_app.multiply.enqueue(1, 1)
    settings.TASKS = {"default": {**backend, "OPTIONS": {"OWNER": user.username}}}
    result = tasks_app.multiply.enqueue(1, 1)
    assert Job.objects.get(id=result.id).owner_id == user.pk


# --- what enqueue refuses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (({1, 2},), {}, "args[0] is a set, which JSON cannot carry"),
        ((), {"when": timezone.now()}, "kwargs['when'] is a datetime"),
        (("x" * (2 * 1024 * 1024 + 1),), {}, "the limit is 2,097,152 (JOB_PAYLOAD_MAX_BYTES)"),
        ((), {"data": {"k\x00": 1}}, "a key in kwargs['data'] contains NUL (U+0000)"),
        (([1, "a\x00"],), {}, "args[0][1] contains NUL (U+0000)"),
        ((float("nan"),), {}, "args[0] is nan"),
        ((2**64,), {}, "args[0] is an integer outside the 64-bit range"),
        (({1: "a"},), {}, "a key in args[0] is int 1, not text"),
        ((b"raw",), {}, "args[0] is a bytes"),
    ],
)
def test_arguments_that_are_not_storable_json_are_refused_at_enqueue(tasks_app, args, kwargs, message):
    with pytest.raises(InvalidTaskArguments) as caught:
        tasks_app.multiply.enqueue(*args, **kwargs)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, InvalidTask)
    assert not Job.objects.exists()
    assert not Outbox.objects.exists()


def test_tuples_travel_as_lists(tasks_app):
    result = tasks_app.multiply.enqueue((1, 2), b={"t": (3,)})
    assert Job.objects.get(id=result.id).payload == {"args": [[1, 2]], "kwargs": {"b": {"t": [3]}}}


def test_a_task_outside_job_task_modules_is_refused_with_a_hint(tasks_app):
    with pytest.raises(InvalidTask, match="not in JOB_TASK_MODULES: add the module there"):
        task(stray)


def test_a_bad_queue_name_is_refused_and_a_good_one_is_the_jobs_queue(tasks_app):
    with pytest.raises(InvalidTask, match="not a valid queue name"):
        tasks_app.multiply.using(queue_name="no spaces please")
    result = tasks_app.multiply.using(queue_name="emails").enqueue(1, 1)
    assert Job.objects.get(id=result.id).queue == "emails"
    assert tasks_app.multiply.get_result(result.id).task.queue_name == "emails"


def test_run_after_waits_in_postgresql_as_the_jobs_run_at(tasks_app):
    later = timezone.now() + timedelta(hours=1)
    result = tasks_app.multiply.using(run_after=later).enqueue(1, 1)
    job = Job.objects.get(id=result.id)
    assert job.run_at == later
    assert job.dispatch_token is None
    assert not Outbox.objects.filter(job_id=job.id).exists()  # the scheduler releases it when due
    assert tasks_app.multiply.get_result(result.id).task.run_after == later


# --- priority ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("framework", "ours"),
    [(-100, 0), (-81, 0), (-80, 1), (-21, 3), (-20, 4), (-1, 4), (0, 5), (1, 6), (25, 6), (26, 7), (75, 8),
     (76, 9), (100, 9)],
)  # fmt: skip
def test_priority_maps_onto_ours_keeping_its_sign(framework, ours):
    assert to_job_priority(framework) == ours


def test_priority_bands_round_trip():
    assert [to_job_priority(from_job_priority(p)) for p in range(10)] == list(range(10))
    assert (from_job_priority(0), from_job_priority(5), from_job_priority(9)) == (-100, 0, 100)


def test_priority_at_the_edges_reaches_the_job_and_comes_back(tasks_app):
    for priority, expected in [(100, 9), (-100, 0), (0, 5), (30, 7)]:
        result = tasks_app.multiply.using(priority=priority).enqueue(1, 1)
        assert Job.objects.get(id=result.id).priority == expected
        # The band's top comes back when the job's priority is not the registered task's own.
        assert tasks_app.multiply.get_result(result.id).task.priority == (50 if priority == 30 else priority)
    with pytest.raises(InvalidTask, match="priority"):
        tasks_app.multiply.using(priority=101)


# --- bulk ----------------------------------------------------------------------------------


def test_enqueue_many_is_one_bulk_submit_all_or_nothing(tasks_app, django_assert_max_num_queries):
    calls = [(tasks_app.multiply, (i, i), {}) for i in range(50)] + [(tasks_app.whoami, (), {"tag": "t"})]
    with django_assert_max_num_queries(12):  # the owner (made on first use), a savepoint, the COPYs: not 51
        results = enqueue_many(calls)
    assert [r.status for r in results] == [TaskResultStatus.READY] * 51
    assert Job.objects.filter(id__in=[r.id for r in results]).count() == 51
    assert run_dispatched() == 51
    assert [tasks_app.multiply.get_result(r.id).return_value for r in results[:3]] == [0, 1, 4]

    Job.objects.all().delete()
    with pytest.raises(InvalidTaskArguments, match=r"calls\[1\]: args\[0\] is a set"):
        enqueue_many([(tasks_app.multiply, (1, 2), {}), (tasks_app.multiply, ({3},), {})])
    assert not Job.objects.exists()


# --- get_result ----------------------------------------------------------------------------


@pytest.mark.parametrize("result_id", [str(uuid.uuid4()), "not-a-uuid", ""])
def test_get_result_of_an_unknown_id_does_not_exist(tasks_app, result_id):
    with pytest.raises(TaskResultDoesNotExist):
        tasks_app.multiply.get_backend().get_result(result_id)


def test_get_result_of_a_job_that_is_no_task_does_not_exist(tasks_app, user):
    job = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.echo")).job
    with pytest.raises(TaskResultDoesNotExist):
        tasks_app.multiply.get_backend().get_result(str(job.id))


# --- the worker and the API ----------------------------------------------------------------


def test_a_payload_not_of_the_tasks_shape_dead_letters_with_the_reason(tasks_app, user):
    job = services.job_submit(
        owner_id=user.pk, spec=JobSpec(type=tasks_app.multiply.module_path, payload={"args": "6, 7"})
    ).job
    run_dispatched()
    job.refresh_from_db()
    assert job.status == JobStatus.DEAD_LETTER
    assert job.attempts == 1
    assert "must be {'args': [...], 'kwargs': {...}}" in job.last_error


@pytest.mark.parametrize("type_", ["os.system", "tests.tasks_app.unlisted.run", "subprocess.run"])
def test_the_api_refuses_a_type_no_handler_has_and_imports_nothing(tasks_app, api, type_):
    response = api.post("/api/v1/jobs/", {"type": type_, "payload": {"args": ["id"]}}, format="json")
    assert response.status_code == 400
    assert "no handler is registered" in response.json()["detail"]
    assert "tests.tasks_app.unlisted" not in sys.modules  # a real module, never to be imported
    assert not Job.objects.exists()


def test_the_api_refuses_a_registered_task_its_arguments_are_the_codes_to_choose(tasks_app, api):
    path = tasks_app.multiply.module_path
    response = api.post("/api/v1/jobs/", {"type": path, "payload": {"args": [1, 2]}}, format="json")
    assert response.status_code == 400
    assert "is a Django task: enqueue it from your Django code" in response.json()["detail"]
    workflow = {"name": "w", "tasks": [{"id": "a", "type": path}]}
    response = api.post("/api/v1/workflows/", workflow, format="json")
    assert response.status_code == 400
    assert "is a Django task" in response.json()["detail"]
    assert not Job.objects.exists()


def test_tasks_are_listed_and_filtered_like_any_job(tasks_app, staff_api):
    tasks_app.multiply.enqueue(1, 2)
    response = staff_api.get("/api/v1/jobs/", {"type": tasks_app.multiply.module_path})
    assert response.status_code == 200
    [job] = response.json()["results"]
    assert job["payload"] == {"args": [1, 2], "kwargs": {}}


def test_the_demo_tasks_are_registered_and_run():
    from orchestration import demo_tasks

    assert isinstance(demo_tasks.add, Task)
    results = enqueue_many([(demo_tasks.add, (2, 3), {}), (demo_tasks.greet, ("Ada",), {}),
                            (demo_tasks.fail, (), {}), (demo_tasks.pause, (0.01,), {})])  # fmt: skip
    run_dispatched()
    add, greet, fail, pause = (demo_tasks.add.get_backend().get_result(r.id) for r in results)
    assert add.return_value == 5
    assert greet.return_value == {"greeting": "Hello, Ada!", "result_id": results[1].id, "attempt": 1}
    assert Job.objects.get(id=results[1].id).priority == 7  # @task(priority=50)
    assert fail.status == TaskResultStatus.READY  # retrying: a demo failure is an ordinary exception
    assert fail.errors[0].exception_class_path == "orchestration.demo_tasks.DemoTaskFailure"
    assert pause.return_value == 0.01
