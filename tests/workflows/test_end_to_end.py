"""Workflows through every real role as a process (relay, bridge, Celery worker, scheduler):
shapes succeed with each task once and in order, and a failing task compensates."""

from __future__ import annotations

import pytest

from jobs.models import Job
from tests.orchestration.conftest import wait_for
from tests.workflows.conftest import task, undo
from workflows import maps
from workflows.models import StepState, Workflow, WorkflowStatus, WorkflowTask

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

DIAMOND = [task("a", compensation=undo("a")), task("b", "a"), task("c", "a"), task("d", "b", "c")]
FAN = [task("root"), *(task(f"w{i}", "root") for i in range(30)), task("join", *(f"w{i}" for i in range(30)))]
# Wait steps: no worker; the scheduler role wakes the sleep and delivers the kept signal.
WAITS = [
    task("a"),
    {"id": "nap", "wait": {"sleep_seconds": 1}, "depends_on": ["a"]},
    {"id": "approval", "wait": {"signal": "approved", "timeout_seconds": 600}, "depends_on": ["nap"]},
    task("b", "approval"),
]
# Every other step kind: a map of 12 children, an approval, a sub-workflow.
GROWING = [
    {**task("split"), "payload": {"name": "split", "items": list(range(12))}},
    {"id": "fan", "map": {"over": "split", "path": "items", "task": {"type": "demo.echo", "payload": {}}}},
    {"id": "ok", "approval": {"allow_self": True}, "depends_on": ["fan"]},
    {"id": "child", "workflow": {"tasks": [task("x"), task("y", "x")]}, "depends_on": ["ok"]},
    task("done", "child"),
]
SAGA = [
    task("a", compensation=undo("a")),
    task("b", "a", compensation=undo("b")),
    {"id": "c", "type": "demo.fail", "payload": {"retryable": False}, "depends_on": ["b"]},
]


def test_workflows_run_through_the_real_roles(stack, api, queue):
    for role in ("relay", "bridge", "worker", "scheduler"):
        stack.start(role)

    def on_queue(tasks):
        for t in tasks:
            if "map" in t:
                t["map"]["task"]["queue"] = queue
            elif "workflow" in t:
                on_queue(t["workflow"]["tasks"])
            elif "type" in t:
                t["queue"] = queue
            if t.get("compensation"):
                t["compensation"]["queue"] = queue

    def submit(tasks):
        on_queue(tasks)
        response = api.post("/api/v1/workflows/", {"tasks": tasks}, format="json")
        assert response.status_code == 201, response.content
        return response.json()["id"]

    ids = {"diamond": submit(DIAMOND), "fan": submit(FAN), "saga": submit(SAGA), "waits": submit(WAITS),
           "growing": submit(GROWING)}  # fmt: skip
    # Sent before its step is reached: kept, then delivered by the scheduler once it is.
    sent = api.post(f"/api/v1/workflows/{ids['waits']}/signals/approved", {"by": "e2e"}, format="json")
    assert sent.json()["kept"] is True
    try:
        ok = WorkflowTask.objects.filter(workflow_id=ids["growing"], task_id="ok")
        wait_for(lambda: ok.get().state == StepState.WAITING, timeout=60, message="the map done, the approval reached")
        decided = api.post(f"/api/v1/workflows/{ids['growing']}/approvals/ok", {"decision": "approve"}, format="json")
        assert decided.json()["state"] == "SUCCEEDED", decided.content
        wait_for(
            lambda: all(Workflow.objects.get(id=i).status in ("SUCCEEDED", "FAILED") for i in ids.values()),
            timeout=120, message="workflows finished",
        )  # fmt: skip
    except AssertionError:
        print(stack.logs())
        raise
    waits = Workflow.objects.get(id=ids["waits"])
    assert waits.status == WorkflowStatus.SUCCEEDED
    b = Job.objects.get(workflow=waits, workflow_task__task_id="b")
    assert b.payload["parents"] == {"approval": {"by": "e2e"}}
    growing = Workflow.objects.get(id=ids["growing"])
    assert growing.status == WorkflowStatus.SUCCEEDED
    fan = WorkflowTask.objects.get(workflow=growing, task_id="fan")
    assert sorted(i for i, _ in maps.results(fan.result)) == list(range(12))
    assert Job.objects.filter(batch_id=fan.batch_id, attempts=1, status="SUCCEEDED").count() == 12
    child = Workflow.objects.get(parent_task__workflow=growing)
    assert (child.status, child.tasks_succeeded) == (WorkflowStatus.SUCCEEDED, 2)
    for name in ("diamond", "fan"):
        workflow = Workflow.objects.get(id=ids[name])
        assert workflow.status == WorkflowStatus.SUCCEEDED
        jobs = {
            j.workflow_task.task_id: j for j in Job.objects.filter(workflow=workflow).select_related("workflow_task")
        }
        assert all(j.attempts == 1 for j in jobs.values())
        for t in workflow.tasks.all():
            for dep in t.depends_on:
                assert jobs[dep].finished_at <= jobs[t.task_id].started_at
    saga = Workflow.objects.get(id=ids["saga"])
    assert saga.status == WorkflowStatus.FAILED
    undone = Job.objects.filter(workflow=saga, compensated_task__isnull=False).order_by("started_at")
    assert [j.payload["name"] for j in undone] == ["undo-b", "undo-a"]
