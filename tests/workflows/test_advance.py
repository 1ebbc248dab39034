"""Workflows executed by the real worker code against real PostgreSQL: shapes, order,
exactly-once release, the saga and cancel."""

from __future__ import annotations

import itertools
import threading

import pytest
from django.db import connection

from jobs import transitions
from jobs.models import Job
from orchestration.worker import execute
from tests.workflows.conftest import pending_dispatches, run_all, task, undo
from workflows import services
from workflows.models import Workflow, WorkflowStatus
from workflows.serializers import WorkflowInputSerializer

pytestmark = pytest.mark.django_db


def submit(user, tasks, name: str = "wf") -> Workflow:
    s = WorkflowInputSerializer(data={"name": name, "tasks": tasks})
    s.is_valid(raise_exception=True)
    workflow, created = services.workflow_submit(owner_id=user.pk, spec=s.to_spec(s.validated_data), max_tasks=10_000)
    assert created
    return workflow


def statuses(workflow: Workflow) -> dict[str, str]:
    return {
        t.task_id: (t.job.status if t.job_id else ("SKIPPED" if t.skipped else "PENDING"))
        for t in workflow.tasks.select_related("job")
    }


def assert_ran_once_in_order(workflow: Workflow, order: list[str]) -> None:
    jobs = {
        j.workflow_task.task_id: j
        for j in Job.objects.filter(workflow_task__workflow=workflow).select_related("workflow_task")
    }
    assert all(j.attempts == 1 for j in jobs.values())
    for t in workflow.tasks.all():
        for dep in t.depends_on:
            assert jobs[dep].finished_at <= jobs[t.task_id].started_at, f"{t.task_id} started before {dep} finished"
    assert Job.objects.filter(workflow=workflow).count() == len(order)


@pytest.mark.parametrize(
    "tasks",
    [
        pytest.param([task("a"), task("b", "a"), task("c", "b")], id="linear"),
        pytest.param([task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c")], id="diamond"),
        pytest.param(
            [task("root"), *(task(f"w{i}", "root") for i in range(20)), task("join", *(f"w{i}" for i in range(20)))],
            id="fan-out-fan-in",
        ),
    ],
)
def test_shapes_succeed_with_each_task_once_in_dependency_order(user, tasks):
    workflow = submit(user, tasks)
    ran = run_all()
    workflow.refresh_from_db()
    assert workflow.status == WorkflowStatus.SUCCEEDED
    assert workflow.finished_at is not None
    assert sorted(ran) == sorted(t["id"] for t in tasks)
    assert set(statuses(workflow).values()) == {"SUCCEEDED"}
    assert_ran_once_in_order(workflow, ran)


def test_a_task_receives_its_parents_results(user):
    workflow = submit(user, [task("a"), task("b"), task("c", "a", "b")])
    run_all()
    c = Job.objects.get(workflow_task__workflow=workflow, workflow_task__task_id="c")
    assert c.payload["parents"] == {"a": {"name": "a"}, "b": {"name": "b"}}
    assert c.result["parents"]["a"] == {"name": "a"}


def failing(id: str, *deps: str, **extra):
    return {
        "id": id,
        "type": "demo.fail",
        "payload": {"name": id, "retryable": False},
        "depends_on": list(deps),
        **extra,
    }


def test_linear_saga_compensates_in_reverse_order(user):
    workflow = submit(
        user,
        [
            task("a", compensation=undo("a")),
            task("b", "a", compensation=undo("b")),
            failing("c", "b", compensation=undo("c")),
            task("d", "c"),
        ],
    )
    ran = run_all()
    workflow.refresh_from_db()
    assert workflow.status == WorkflowStatus.FAILED
    assert workflow.failed_task == "c"
    assert ran == ["a", "b", "c", "undo-b", "undo-a"]  # c's own compensation never runs
    assert statuses(workflow)["d"] == "SKIPPED"
    assert workflow.failed_compensations == []


def test_diamond_saga_compensates_dependents_before_their_parents(user):
    workflow = submit(
        user,
        [
            task("a", compensation=undo("a")),
            task("b", "a", compensation=undo("b")),
            task("c", "a", compensation=undo("c")),
            failing("d", "b", "c"),
        ],
    )
    ran = run_all()
    workflow.refresh_from_db()
    assert workflow.status == WorkflowStatus.FAILED
    undos = [r for r in ran if r.startswith("undo-")]
    assert undos[-1] == "undo-a"
    assert sorted(undos[:2]) == ["undo-b", "undo-c"]
    # one at a time: each compensation started after the previous one finished
    comps = list(Job.objects.filter(workflow=workflow, compensated_task__isnull=False).order_by("started_at"))
    assert all(x.finished_at <= y.started_at for x, y in itertools.pairwise(comps))


def test_a_failed_compensation_is_recorded_and_the_rest_still_run(user):
    bad_undo = {"type": "demo.fail", "payload": {"name": "undo-b", "retryable": False}}
    workflow = submit(
        user, [task("a", compensation=undo("a")), task("b", "a", compensation=bad_undo), failing("c", "b")]
    )
    ran = run_all()
    workflow.refresh_from_db()
    assert workflow.status == WorkflowStatus.FAILED
    assert workflow.failed_compensations == ["b"]
    assert ran[-2:] == ["undo-b", "undo-a"]


def test_cancel_stops_the_workflow_compensates_and_ends_cancelled(user):
    workflow = submit(user, [task("a", compensation=undo("a")), task("b", "a"), task("c", "b")])
    # a runs; b is released and waits in the outbox
    (first,) = pending_dispatches()
    execute(first, worker="test")
    cancelled = services.workflow_cancel(workflow_id=workflow.id)
    assert cancelled.status == WorkflowStatus.COMPENSATING
    ran = run_all()
    workflow.refresh_from_db()
    assert workflow.status == WorkflowStatus.CANCELLED
    assert ran == ["undo-a"]  # b was cancelled before it ran; its dispatch is gone
    assert statuses(workflow) == {"a": "SUCCEEDED", "b": "CANCELLED", "c": "SKIPPED"}


def test_cancel_reaches_running_jobs_and_waits_for_them(user):
    workflow = submit(
        user,
        [task("a", compensation=undo("a")), task("slow", type="demo.sleep", payload={"name": "slow", "seconds": 30})],
    )
    envelopes = {e.type: e for e in pending_dispatches()}
    execute(envelopes["demo.echo"], worker="test")
    slow = Job.objects.get(workflow=workflow, type="demo.sleep")
    assert transitions.mark_running(slow.id, dispatch_token=slow.dispatch_token, worker="w", lease_seconds=30)
    services.workflow_cancel(workflow_id=workflow.id)
    slow.refresh_from_db()
    assert slow.cancel_requested_at is not None
    assert run_all() == []  # the compensation waits until the running task stops
    assert transitions.mark_cancelled(slow.id, attempt=1)
    assert run_all() == ["undo-a"]
    workflow.refresh_from_db()
    assert workflow.status == WorkflowStatus.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_a_task_with_two_parents_finishing_at_once_is_released_exactly_once(user):
    for _ in range(5):
        workflow = submit(user, [task("p1"), task("p2"), task("child", "p1", "p2")])
        parents = list(Job.objects.filter(workflow=workflow))
        for p in parents:
            transitions.mark_running(p.id, dispatch_token=p.dispatch_token, worker="w", lease_seconds=30)
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def finish(job: Job, barrier: threading.Barrier = barrier, errors: list[BaseException] = errors) -> None:
            try:
                barrier.wait()
                transitions.mark_succeeded(job.id, attempt=1, result={"p": str(job.id)}, in_workflow=True)
            except BaseException as exc:
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=finish, args=(p,)) for p in parents]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert Job.objects.filter(workflow=workflow, type="demo.echo").count() == 3  # 2 parents + 1 child
        child = workflow.tasks.get(task_id="child")
        assert child.job_id is not None
        assert child.pending_parents == 0


def test_a_fan_in_whose_parents_results_are_too_large_dead_letters_the_child(user, settings):
    # 1,000 parents of 1 MB each once made one child payload of 1 GB, built in the worker's
    # memory on every release. Their size is added up in PostgreSQL first: over
    # JOB_PAYLOAD_MAX_BYTES, the child dead-letters with the reason, nothing is loaded, and
    # the saga compensates what succeeded.
    settings.JOB_PAYLOAD_MAX_BYTES = 4000
    big = "x" * 1500
    parents = [task(f"p{i}", payload={"name": f"p{i}", "blob": big}, compensation=undo(f"p{i}")) for i in range(3)]
    workflow = submit(user, [*parents, task("join", *(f"p{i}" for i in range(3)))])
    ran = run_all()
    workflow.refresh_from_db()
    join = Job.objects.get(workflow_task__workflow=workflow, workflow_task__task_id="join")
    assert join.status == "DEAD_LETTER"
    assert join.attempts == 0
    assert "join" not in ran
    assert "JOB_PAYLOAD_MAX_BYTES" in join.last_error
    assert "p0: " in join.last_error
    assert "parents" not in join.payload
    assert workflow.status == WorkflowStatus.FAILED
    assert workflow.failed_task == "join"
    assert sorted(r for r in ran if r.startswith("undo-")) == ["undo-p0", "undo-p1", "undo-p2"]


def test_a_fan_in_within_the_limit_gets_every_parents_result(user, settings):
    settings.JOB_PAYLOAD_MAX_BYTES = 6000
    parents = [task(f"p{i}", payload={"name": f"p{i}", "blob": "x" * 1500}) for i in range(3)]
    workflow = submit(user, [*parents, task("join", *(f"p{i}" for i in range(3)))])
    run_all()
    join = Job.objects.get(workflow_task__workflow=workflow, workflow_task__task_id="join")
    assert join.status == "SUCCEEDED"
    assert sorted(join.payload["parents"]) == ["p0", "p1", "p2"]


def test_the_sagas_cancels_go_through_the_state_machine_and_are_counted(api):
    """The saga stops a workflow's waiting jobs through jobs.transitions: each is counted as a
    finished job, as every other end is."""
    from jobs.models import Job
    from metrics import prom
    from orchestration.worker import execute
    from tests.workflows.conftest import pending_dispatches

    counter = prom.JOBS_FINISHED.labels("CANCELLED", "demo.echo", "default")
    before = counter._value.get()
    body = {"tasks": [{"id": "boom", "type": "demo.fail", "max_attempts": 1}, {"id": "other", "type": "demo.echo"}]}
    flow = api.post("/api/v1/workflows/", body, format="json").json()
    boom = next(e for e in pending_dispatches() if e.type == "demo.fail")
    execute(boom, worker="w")
    other = Job.objects.get(workflow_task__workflow_id=flow["id"], workflow_task__task_id="other")
    assert other.status == "CANCELLED"
    assert counter._value.get() == before + 1
