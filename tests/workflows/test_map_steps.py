"""Map steps (issue 31): a child job per element of a parent's result list, run as a batch;
dependents get a reference and read the results a page at a time; a child's failure fails the
map and the saga undoes every child that succeeded, latest first."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.test import TestCase
from django.utils import timezone

from jobs.models import Batch, Job, JobStatus
from orchestration.scheduler.batch_callbacks import fire_batch_callbacks
from orchestration.scheduler.fencing import next_epoch
from orchestration.worker import execute as worker_execute
from tests.workflows.conftest import pending_dispatches, run_all, task, undo
from tests.workflows.test_wait_steps import URL, step, submit, wake
from workflows import maps
from workflows.models import StepState, Workflow

pytestmark = pytest.mark.django_db


def fan(id: str, over: str, *, type: str = "demo.echo", path: str = "items", **extra: Any) -> dict[str, Any]:
    rule = {"over": over, "path": path, "task": {"type": type, "payload": {"name": id}, "max_attempts": 1}}
    return {"id": id, "map": {**rule, **extra.pop("rule", {})}, **extra}


def split(items: Any, **extra: Any) -> dict[str, Any]:
    return {**task("split", **extra), "payload": {"name": "split", "items": items}}


def execute(envelope: Any, worker: str) -> None:
    with TestCase.captureOnCommitCallbacks(execute=True):
        worker_execute(envelope, worker=worker)


def look() -> int:
    """The scheduler's batch look, as one tick would run it."""
    return fire_batch_callbacks(next_epoch(settings.SCHEDULER_LOCK_KEY), timezone.now, limit=100)


def settle(rounds: int = 6) -> list[str]:
    """Run jobs and the scheduler's batch look in turn, as the roles would."""
    ran: list[str] = []
    for _ in range(rounds):
        ran += run_all()
        look()
    return ran


def test_a_map_runs_a_child_per_element_and_its_dependent_reads_them_by_reference(api):
    flow = submit(api, [split(["a", "b", "c"]), fan("fan", "split"), task("join", "fan")])
    assert run_all() == ["split", "fan", "fan", "fan"]
    fanned = step(flow["id"], "fan")
    assert fanned.state == StepState.WAITING  # all three succeeded: the scheduler's look moves it on
    look()
    assert step(flow["id"], "fan").state == StepState.SUCCEEDED
    assert run_all() == ["join"]
    join = Job.objects.get(workflow_task__workflow_id=flow["id"], workflow_task__task_id="join")
    ref = join.payload["parents"]["fan"]
    assert (ref["count"], ref["succeeded"], ref["map"]) == (3, 3, "fan")
    assert "item" not in str(ref)  # a reference, never the results
    assert [(i, r["item"]) for i, r in maps.results(ref, page_size=2)] == [(0, "a"), (1, "b"), (2, "c")]
    page = api.get(f"{URL}{flow['id']}/maps/fan/results/?page_size=2").json()
    assert [r["result"]["item"] for r in page["results"]] == ["a", "b"]
    rest = api.get(page["next"]).json()
    assert ([r["index"] for r in rest["results"]], rest["next"]) == ([2], None)
    assert Workflow.objects.get(id=flow["id"]).status == "SUCCEEDED"
    row = {t["id"]: t for t in api.get(f"{URL}{flow['id']}/").json()["tasks"]}["fan"]
    assert (row["kind"], row["status"]) == ("map", "SUCCEEDED")
    assert row["map"]["children"] == {"total": 3, "waiting": 0, "running": 0, "succeeded": 3, "failed": 0}
    assert Job.objects.filter(batch_id=fanned.batch_id, workflow_id__isnull=True).count() == 3  # the batch's jobs


def test_an_empty_list_completes_the_map_at_the_next_look(api):
    flow = submit(api, [split([]), fan("fan", "split"), task("join", "fan")])
    assert run_all() == ["split"]
    look()
    assert run_all() == ["join"]
    assert Workflow.objects.get(id=flow["id"]).status == "SUCCEEDED"


@pytest.mark.parametrize(
    ("items", "path", "why"),
    [
        ("abc", "items", "is a str, not a list"),
        (["a"], "nope", "has no 'nope'"),
        (list(range(5)), "items", "over max_width 4"),
    ],
)
def test_a_map_that_cannot_fan_out_fails_and_the_saga_runs(api, items, path, why):
    flow = submit(api, [split(items, compensation=undo("split")),
                        fan("fan", "split", path=path, rule={"max_width": 4})])  # fmt: skip
    assert run_all() == ["split", "undo-split"]
    fanned = step(flow["id"], "fan")
    assert fanned.state == StepState.FAILED
    assert why in fanned.result["error"]
    workflow = Workflow.objects.get(id=flow["id"])
    assert (workflow.status, workflow.failed_task) == ("FAILED", "fan")


def test_a_failing_child_fails_the_map_stops_its_siblings_and_undoes_what_succeeded(api):
    flow = submit(api, [split(["a", "b", "c"], compensation=undo("split")),
                        fan("fan", "split", compensation=undo("fan"))])  # fmt: skip
    execute(pending_dispatches()[0], worker="test")  # split
    children = pending_dispatches()
    execute(children[0], worker="test")  # fan[0] succeeds
    Job.objects.filter(id=children[1].job_id).update(type="demo.fail")  # fan[1] will fail (max_attempts 1)
    execute(children[1], worker="test")
    assert step(flow["id"], "fan").state == StepState.WAITING  # the scheduler's look decides
    look()
    fanned = step(flow["id"], "fan")
    assert fanned.state == StepState.FAILED
    assert Job.objects.get(id=children[2].job_id).status == JobStatus.CANCELLED  # its sibling, stopped
    assert run_all() == ["undo-fan", "undo-split"]
    undone = Job.objects.filter(workflow_id=flow["id"], payload__compensates__isnull=False).order_by("created_at")
    assert [j.payload["compensates"]["task"] for j in undone] == ["fan[0]", "split"]
    workflow = Workflow.objects.get(id=flow["id"])
    assert (workflow.status, workflow.failed_task) == ("FAILED", "fan")


def test_a_later_failure_undoes_every_child_latest_success_first(api):
    flow = submit(api, [
        split(["a", "b", "c"], compensation=undo("split")), fan("fan", "split", compensation=undo("fan")),
        task("charge", "fan", type="demo.fail", max_attempts=1),
    ])  # fmt: skip
    settle()
    undone = Job.objects.filter(workflow_id=flow["id"], payload__compensates__isnull=False).order_by("created_at")
    assert [j.payload["compensates"]["task"] for j in undone] == ["fan[2]", "fan[1]", "fan[0]", "split"]
    assert undone[0].payload["compensates"]["result"]["item"] == "c"
    workflow = Workflow.objects.get(id=flow["id"])
    assert (workflow.status, workflow.failed_task) == ("FAILED", "charge")
    assert step(flow["id"], "fan").compensation_state == "SUCCEEDED"


def test_cancelling_the_workflow_stops_the_children_and_undoes_those_that_succeeded(api):
    flow = submit(api, [split(["a", "b", "c"]), fan("fan", "split", compensation=undo("fan"))])
    execute(pending_dispatches()[0], worker="test")
    children = pending_dispatches()
    execute(children[0], worker="test")
    api.post(f"{URL}{flow['id']}/cancel/")
    assert {Job.objects.get(id=c.job_id).status for c in children[1:]} == {JobStatus.CANCELLED}
    assert run_all() == ["undo-fan"]
    assert Workflow.objects.get(id=flow["id"]).status == "CANCELLED"


def test_a_child_delivered_twice_runs_once_and_counts_once(api):
    flow = submit(api, [split(["a", "b"]), fan("fan", "split"), task("join", "fan")])
    execute(pending_dispatches()[0], worker="test")
    children = pending_dispatches()
    for envelope in children + children:  # at least once: every child twice
        execute(envelope, worker="test")
    look()
    assert run_all() == ["join"]
    ref = Job.objects.get(workflow_task__workflow_id=flow["id"], workflow_task__task_id="join").payload["parents"]
    assert (ref["fan"]["count"], ref["fan"]["succeeded"]) == (2, 2)
    assert Batch.objects.get(id=step(flow["id"], "fan").batch_id).completed_at is not None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (fan("fan", "split", type="nope.nothing"), "unknown job type 'nope.nothing'"),
        (fan("fan", "ghost"), "unknown task 'ghost'"),
        (fan("fan", "split", rule={"max_width": 10**9}), "max_width"),
        ({**fan("fan", "split"), "type": "demo.echo"}, "exactly one of"),
    ],
)
def test_bad_map_steps_are_400(api, spec, message):
    response = api.post(URL, {"tasks": [split([1]), spec]}, format="json")
    assert response.status_code == 400, response.content
    assert message in str(response.json())


def test_the_results_api_is_the_owners_and_checks_its_parameters(api, other_api):
    flow = submit(api, [split(["a"]), fan("fan", "split")])
    run_all()
    assert other_api.get(f"{URL}{flow['id']}/maps/fan/results/").status_code == 404
    assert api.get(f"{URL}{flow['id']}/maps/split/results/").status_code == 404  # not a map
    assert api.get(f"{URL}{flow['id']}/maps/fan/results/?page_size=0").status_code == 400
    assert api.get(f"{URL}{flow['id']}/maps/fan/results/?after=x").status_code == 400
    assert api.get(f"{URL}{flow['id']}/maps/fan/results/?after=-2").status_code == 400
    assert api.get(f"{URL}{flow['id']}/maps/fan/results/?after={'9' * 1000}").status_code == 400


def test_a_fan_out_its_process_did_not_finish_is_finished_by_the_scheduler(api, monkeypatch):
    """The parent's success commits, and its process dies before the children go in (here:
    its after-commit fan-out never runs). Past the grace, the scheduler's wake scan submits
    them a chunk a tick, from the batch's count: each child once."""
    monkeypatch.setattr(maps, "FAN_OUT_CHUNK", 2)
    flow = submit(api, [split(list("abcde")), fan("fan", "split"), task("join", "fan")])
    run_all(after_commit=False)  # the fan-out after its commit never starts
    fanned = step(flow["id"], "fan")
    assert (fanned.state, Job.objects.filter(batch_id=fanned.batch_id).count()) == (StepState.WAITING, 0)
    assert wake(1) == 0  # within the grace: the process that began it may still be at it
    assert wake(6) == 1
    assert Job.objects.filter(batch_id=fanned.batch_id).count() == 2
    look()  # not closed yet: two children are not the map
    assert step(flow["id"], "fan").state == StepState.WAITING
    wake(7), wake(8)
    assert step(flow["id"], "fan").wake_at is None  # all five in, the batch closed
    wake(9)
    indexes = sorted(j.payload["index"] for j in Job.objects.filter(batch_id=fanned.batch_id))
    assert indexes == [0, 1, 2, 3, 4]
    assert settle() == ["fan"] * 5 + ["join"]
    assert Workflow.objects.get(id=flow["id"]).status == "SUCCEEDED"


def test_a_fan_out_stops_when_the_workflow_is_cancelled_between_chunks(api, monkeypatch):
    monkeypatch.setattr(maps, "FAN_OUT_CHUNK", 2)
    flow = submit(api, [split(list("abcde")), fan("fan", "split")])
    run_all(after_commit=False)
    wake(6)
    api.post(f"{URL}{flow['id']}/cancel/")
    wake(12)
    fanned = step(flow["id"], "fan")
    assert Job.objects.filter(batch_id=fanned.batch_id).count() == 2
    assert set(Job.objects.filter(batch_id=fanned.batch_id).values_list("status", flat=True)) == {"CANCELLED"}
    assert Workflow.objects.get(id=flow["id"]).status == "CANCELLED"
