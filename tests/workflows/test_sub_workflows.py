"""Sub-workflows (issue 31): a step starts a child workflow and waits for it; the child's
outcome is the step's; cancelling the parent cancels the child, and the parent's saga waits
for it to end; the graph links to the child."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.models import Job
from tests.workflows.conftest import run_all, task, undo
from tests.workflows.test_wait_steps import URL, step, submit, wake
from workflows.models import StepState, Workflow

pytestmark = pytest.mark.django_db


def sub(id: str, *deps: str, tasks: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": id, "workflow": {"name": f"child-{id}", "tasks": tasks}, "depends_on": list(deps), **extra}


def child_of(workflow_id: str, task_id: str) -> Workflow:
    return Workflow.objects.get(parent_task=step(workflow_id, task_id))


def test_a_child_workflow_runs_and_its_success_is_the_steps(api):
    flow = submit(api, [task("charge"), sub("ship", "charge", tasks=[task("pack"), task("post", "pack")]),
                        task("notify", "ship")])  # fmt: skip
    assert run_all() == ["charge", "pack", "post"]
    child = child_of(flow["id"], "ship")
    assert (child.status, child.owner_id, child.name) == ("SUCCEEDED", Workflow.objects.get(id=flow["id"]).owner_id,
                                                          "child-ship")  # fmt: skip
    assert step(flow["id"], "ship").state == StepState.WAITING  # the scheduler's wake scan looks next
    assert wake() == 1
    assert run_all() == ["notify"]
    notify = Job.objects.get(workflow_task__workflow_id=flow["id"], workflow_task__task_id="notify")
    assert notify.payload["parents"]["ship"] == {"workflow": str(child.id), "status": "SUCCEEDED"}
    assert Workflow.objects.get(id=flow["id"]).status == "SUCCEEDED"
    shown = api.get(f"{URL}{child.id}/").json()
    assert shown["parent_task"] == {"workflow": flow["id"], "task": "ship"}
    row = {t["id"]: t for t in api.get(f"{URL}{flow['id']}/").json()["tasks"]}["ship"]
    assert (row["kind"], row["workflow"]["id"], row["workflow"]["status"]) == ("workflow", str(child.id), "SUCCEEDED")


def test_a_failed_child_fails_the_step_and_the_parents_saga_runs(api):
    flow = submit(api, [task("charge", compensation=undo("charge")),
                        sub("ship", "charge", tasks=[task("pack", type="demo.fail", max_attempts=1)])])  # fmt: skip
    assert run_all() == ["charge", "pack"]
    assert child_of(flow["id"], "ship").status == "FAILED"
    assert wake() == 1
    assert run_all() == ["undo-charge"]
    workflow = Workflow.objects.get(id=flow["id"])
    assert (workflow.status, workflow.failed_task) == ("FAILED", "ship")
    assert step(flow["id"], "ship").result["status"] == "FAILED"


def test_cancelling_the_parent_cancels_the_child_and_waits_for_its_compensation(api):
    flow = submit(api, [
        task("charge", compensation=undo("charge")),
        sub("ship", "charge", tasks=[task("pack", compensation=undo("pack")), {"id": "gate", "depends_on": ["pack"],
                                                                                "wait": {"signal": "go"}}]),
    ])  # fmt: skip
    assert run_all() == ["charge", "pack"]
    child = child_of(flow["id"], "ship")
    api.post(f"{URL}{flow['id']}/cancel/")
    child.refresh_from_db()
    assert child.status == "COMPENSATING"  # its own saga undoes pack first
    assert step(flow["id"], "ship").state == StepState.WAITING  # the parent's saga waits for it
    assert run_all() == ["undo-pack"]
    child.refresh_from_db()
    assert child.status == "CANCELLED"
    assert wake() == 1  # the child's end woke the step: the parent's saga goes on
    assert run_all() == ["undo-charge"]
    assert Workflow.objects.get(id=flow["id"]).status == "CANCELLED"
    assert step(flow["id"], "ship").state == StepState.CANCELLED


def test_a_child_that_ends_at_once_on_cancel_does_not_hold_the_parent(api):
    flow = submit(api, [sub("ship", tasks=[{"id": "gate", "wait": {"signal": "go"}}])])
    child = child_of(flow["id"], "ship")
    api.post(f"{URL}{flow['id']}/cancel/")
    child.refresh_from_db()
    assert child.status == "CANCELLED"
    assert Workflow.objects.get(id=flow["id"]).status == "CANCELLED"


def test_a_signal_reaches_the_childs_wait_not_the_parents(api):
    flow = submit(api, [sub("ship", tasks=[{"id": "gate", "wait": {"signal": "go"}}])])
    assert api.post(f"{URL}{flow['id']}/signals/go", {}, format="json").status_code == 404
    child = child_of(flow["id"], "ship")
    assert api.post(f"{URL}{child.id}/signals/go", {"ok": 1}, format="json").status_code == 200
    assert wake() == 1
    assert Workflow.objects.get(id=flow["id"]).status == "SUCCEEDED"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (sub("s", tasks=[task("a", type="nope.nothing")]), "unknown job type"),
        (sub("s", tasks=[]), "at least one task"),
        ({"id": "s", "workflow": "x"}, "an object with its tasks"),
        (sub("s", tasks=[task("a")]) | {"workflow": {"tasks": [task("a")], "idempotency_key": "k"}}, "idempotency"),
        (sub("s", tasks=[sub("t", tasks=[sub("u", tasks=[sub("v", tasks=[task("a")])])])]), "at most 3 deep"),
    ],
)
def test_bad_sub_workflows_are_400_naming_them(api, spec, message):
    response = api.post(URL, {"tasks": [spec]}, format="json")
    assert response.status_code == 400, response.content
    assert message in str(response.json())


def test_the_graph_links_to_the_child(api, user, client):
    flow = submit(api, [sub("ship", tasks=[{"id": "gate", "wait": {"signal": "go"}}])])
    child = child_of(flow["id"], "ship")
    client.force_login(user)
    page = client.get(f"/workflows/{flow['id']}/panel/").content.decode()
    assert f'<a href="/workflows/{child.id}/">' in page


def test_the_openapi_schema_describes_every_step_kind(client):
    schema = client.get("/api/schema/?format=json").json()
    assert "/api/v1/workflows/{workflow_id}/approvals/{task_id}" in schema["paths"]
    assert "/api/v1/workflows/{workflow_id}/maps/{task_id}/results/" in schema["paths"]
    task_input = schema["components"]["schemas"]["TaskInputRequest"]["properties"]
    assert {"type", "wait", "approval", "map", "workflow"} <= set(task_input)
    task = schema["components"]["schemas"]["Task"]["properties"]
    assert {"kind", "approval", "decisions", "map", "workflow"} <= set(task)


def test_a_childs_job_delivered_twice_runs_once_and_moves_the_parent_once(api):
    from orchestration.worker import execute
    from tests.workflows.conftest import pending_dispatches

    flow = submit(api, [sub("ship", tasks=[task("pack")]), task("notify", "ship")])
    envelopes = pending_dispatches()  # pack's, the child's only task
    for envelope in envelopes + envelopes:  # at least once: twice
        execute(envelope, worker="test")
    child = child_of(flow["id"], "ship")
    assert (child.status, Job.objects.get(workflow=child).attempts) == ("SUCCEEDED", 1)
    assert wake() == 1
    assert wake() == 0  # the step moved once
    assert run_all() == ["notify"]
    assert Workflow.objects.get(id=flow["id"]).status == "SUCCEEDED"
