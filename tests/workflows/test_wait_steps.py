"""Wait steps (issue 31): a step that waits for a signal, a sleep or a time holds no worker and
no message; the scheduler wakes it, a signal completes it, and its result reaches its
dependents under `parents` like a job's."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from jobs.models import Job
from orchestration.scheduler.fencing import next_epoch
from orchestration.scheduler.waits import wake_steps
from tests.threads import in_thread
from tests.workflows.conftest import pending_dispatches, run_all, task, undo
from workflows import steps
from workflows.models import StepState, Workflow, WorkflowSignal, WorkflowTask

pytestmark = pytest.mark.django_db
URL = "/api/v1/workflows/"


def submit(api: Any, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    response = api.post(URL, {"name": "waits", "tasks": tasks}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def wake(after_seconds: float = 0.0) -> int:
    later = timezone.now() + timedelta(seconds=after_seconds)
    return wake_steps(next_epoch(settings.SCHEDULER_LOCK_KEY), lambda: later, limit=1000)


def step(workflow_id: str, task_id: str) -> WorkflowTask:
    return WorkflowTask.objects.get(workflow_id=workflow_id, task_id=task_id)


def signal(api: Any, workflow_id: str, name: str, body: Any) -> Any:
    return api.post(f"{URL}{workflow_id}/signals/{name}", body, format="json")


def wait_for(id: str, *deps: str, **wait: Any) -> dict[str, Any]:
    return {"id": id, "wait": wait, "depends_on": list(deps)}


def test_a_sleep_holds_no_worker_and_its_dependents_run_after_it(api):
    flow = submit(api, [task("a"), wait_for("nap", "a", sleep_seconds=60), task("b", "nap")])
    assert run_all() == ["a"]
    napping = step(flow["id"], "nap")
    assert napping.state == StepState.WAITING
    assert timezone.now() + timedelta(seconds=58) < napping.wake_at <= timezone.now() + timedelta(seconds=60)
    assert not pending_dispatches()  # no message, no job: a row
    assert wake(30) == 0
    assert wake(61) == 1
    assert run_all() == ["b"]
    b = Job.objects.get(workflow_task__workflow_id=flow["id"], workflow_task__task_id="b")
    assert "woke_at" in b.payload["parents"]["nap"]
    assert Workflow.objects.get(id=flow["id"]).status == "SUCCEEDED"
    rows = {t["id"]: t for t in api.get(f"{URL}{flow['id']}/").json()["tasks"]}
    assert (rows["nap"]["kind"], rows["nap"]["status"], rows["nap"]["job"]) == ("wait", "SUCCEEDED", None)


def test_until_a_time(api):
    at = (timezone.now() + timedelta(hours=1)).isoformat()
    flow = submit(api, [wait_for("later", until=at), task("b", "later")])
    assert wake(3500) == 0
    assert wake(3601) == 1
    assert run_all() == ["b"]
    assert Workflow.objects.get(id=flow["id"]).status == "SUCCEEDED"


def test_a_signal_completes_its_step_with_its_payload_once(api):
    flow = submit(api, [wait_for("approval", signal="approved"), task("ship", "approval")])
    assert step(flow["id"], "approval").state == StepState.WAITING
    answer = signal(api, flow["id"], "approved", {"by": "manager", "note": "ok"})
    assert answer.status_code == 200
    assert answer.json() == {"signal": "approved", "delivered_to": "approval", "kept": False}
    assert run_all() == ["ship"]
    ship = Job.objects.get(workflow_task__task_id="ship", workflow_task__workflow_id=flow["id"])
    assert ship.payload["parents"] == {"approval": {"by": "manager", "note": "ok"}}
    again = signal(api, flow["id"], "approved", {"by": "someone else"})
    assert again.status_code == 409
    assert "comes too late" in again.json()["detail"] or "cannot take signal" in again.json()["detail"]


def test_a_signal_sent_before_its_step_is_reached_is_kept(api):
    flow = submit(api, [task("charge"), wait_for("approval", "charge", signal="approved"), task("ship", "approval")])
    kept = signal(api, flow["id"], "approved", {"early": True})
    assert kept.json() == {"signal": "approved", "delivered_to": None, "kept": True}
    assert signal(api, flow["id"], "approved", {"early": "again"}).status_code == 409  # one is kept already
    assert run_all() == ["charge"]
    assert step(flow["id"], "approval").state == StepState.WAITING  # due at once: the next tick delivers it
    assert wake() == 1
    assert run_all() == ["ship"]
    assert step(flow["id"], "approval").result == {"early": True}
    assert WorkflowSignal.objects.get(workflow_id=flow["id"]).task == step(flow["id"], "approval")


def test_a_timeout_that_fails_runs_the_saga(api):
    flow = submit(api, [
        task("charge", compensation=undo("charge")),
        wait_for("approval", "charge", signal="approved", timeout_seconds=3600),
        task("ship", "approval"),
    ])  # fmt: skip
    assert run_all() == ["charge"]
    assert wake(3601) == 1
    assert step(flow["id"], "approval").state == StepState.FAILED
    assert run_all() == ["undo-charge"]
    workflow = Workflow.objects.get(id=flow["id"])
    assert (workflow.status, workflow.failed_task) == ("FAILED", "approval")
    assert signal(api, flow["id"], "approved", {}).status_code == 409  # too late


def test_a_timeout_that_continues_gives_its_dependents_timed_out(api):
    flow = submit(api, [
        wait_for("approval", signal="approved", timeout_seconds=60, on_timeout="continue"), task("ship", "approval"),
    ])  # fmt: skip
    assert wake(61) == 1
    assert run_all() == ["ship"]
    assert step(flow["id"], "approval").result == {"timed_out": True}
    assert Workflow.objects.get(id=flow["id"]).status == "SUCCEEDED"


def test_cancelling_a_workflow_stops_its_waits(api):
    flow = submit(api, [wait_for("nap", sleep_seconds=60), task("b", "nap")])
    api.post(f"{URL}{flow['id']}/cancel/")
    assert step(flow["id"], "nap").state == StepState.CANCELLED
    assert wake(120) == 0
    assert Workflow.objects.get(id=flow["id"]).status == "CANCELLED"


def test_only_the_owner_or_staff_may_signal(api, other_api, staff_api):
    flow = submit(api, [wait_for("approval", signal="approved"), wait_for("second", signal="second")])
    assert signal(other_api, flow["id"], "approved", {}).status_code == 404
    assert step(flow["id"], "approval").state == StepState.WAITING
    assert signal(staff_api, flow["id"], "approved", {}).status_code == 200
    assert signal(api, flow["id"], "nobody-waits", {}).status_code == 404
    assert signal(api, flow["id"], "second", ["not", "an", "object"]).status_code == 400


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        (
            [{"id": "w", "type": "demo.echo", "wait": {"sleep_seconds": 1}}],
            "exactly one of a job `type`",
        ),
        ([{"id": "w"}], "exactly one of a job `type`"),
        ([{"id": "w", "wait": {"sleep_seconds": 1, "signal": "s"}}], "exactly one of"),
        ([{"id": "w", "wait": {"sleep_seconds": 1, "timeout_seconds": 5}}], "only a signal's wait"),
        ([{"id": "w", "wait": {"signal": "s", "on_timeout": "continue"}}], "needs timeout_seconds"),
        ([{"id": "w", "wait": {"signal": "bad name"}}], "signal"),
        ([{"id": "w", "wait": {"sleep_seconds": -1}}], "sleep_seconds"),
        ([{"id": "w", "wait": {"signal": "s"}, "compensation": {"type": "demo.echo"}}], "nothing to compensate"),
        ([{"id": "a", "wait": {"signal": "s"}}, {"id": "b", "wait": {"signal": "s"}}], "waited for by 'a' already"),
    ],
)
def test_bad_wait_steps_are_400_naming_them(api, tasks, message):
    response = api.post(URL, {"tasks": tasks}, format="json")
    assert response.status_code == 400, response.content
    assert message in str(response.json())
    assert not Workflow.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_signal_racing_its_timeout_is_decided_once(user):
    """A signal and the timeout's wake land together, twenty times: each time exactly one of
    them completes the step, the other finds it done."""
    from django.db import transaction

    from workflows.serializers import WorkflowInputSerializer
    from workflows.services import workflow_submit

    for _ in range(20):
        s = WorkflowInputSerializer(data={"tasks": [
            wait_for("approval", signal="approved", timeout_seconds=1, on_timeout="fail"), task("ship", "approval"),
        ]})  # fmt: skip
        s.is_valid(raise_exception=True)
        workflow, _ = workflow_submit(owner_id=user.pk, spec=s.to_spec(s.validated_data), max_tasks=10)
        WorkflowTask.objects.filter(workflow=workflow, task_id="approval").update(wake_at=timezone.now())
        outcome: dict[str, Any] = {}

        def send(workflow_id: Any = workflow.id) -> Any:
            with transaction.atomic():
                return steps.signal(workflow_id=workflow_id, name="approved", payload={"ok": 1}, sent_by=user.pk)

        threads = [in_thread(outcome, "signal", send), in_thread(outcome, "wake", lambda: wake(5))]
        for thread in threads:
            thread.join()
        approval = WorkflowTask.objects.get(workflow=workflow, task_id="approval")
        signalled = not isinstance(outcome["signal"], Exception)
        timed_out = outcome["wake"] == 1
        assert signalled != timed_out, outcome  # exactly one of them
        assert approval.state == (StepState.SUCCEEDED if signalled else StepState.FAILED)
        if not signalled:
            assert type(outcome["signal"]).__name__ in ("WaitEnded", "WorkflowFinished")
        pending_dispatches()  # the next task's dispatch, if any: not this test's concern


def test_the_wake_scan_is_bounded_per_tick(api):
    for _ in range(3):
        submit(api, [wait_for("nap", sleep_seconds=1)])
    later = timezone.now() + timedelta(seconds=5)
    assert len(steps.due(now=later, limit=2)) == 2
    assert wake_steps(next_epoch(settings.SCHEDULER_LOCK_KEY), lambda: later, limit=2) == 2
    assert wake_steps(next_epoch(settings.SCHEDULER_LOCK_KEY), lambda: later, limit=2) == 1
    assert not Job.objects.exists()  # waits hold no job


def test_the_cli_signals(api, capsys):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    flow = submit(api, [wait_for("approval", signal="approved"), task("ship", "approval")])
    call_command("workflows", "signal", flow["id"], "approved", "--payload", '{"by": "cli"}')
    assert "delivered to approval" in capsys.readouterr().out
    with pytest.raises(CommandError, match="comes too late"):
        call_command("workflows", "signal", flow["id"], "approved")


def test_the_dashboard_draws_a_waiting_step(api, user, client):
    flow = submit(api, [wait_for("approval", signal="approved"), task("ship", "approval")])
    client.force_login(user)
    page = client.get(f"/workflows/{flow['id']}/panel/").content.decode()
    assert "approval: WAITING" in page
    assert "#e9d5ff" in page


def test_a_workflow_past_its_deadline_fails_and_its_saga_runs(api):
    from orchestration.scheduler.waits import expire_deadlines

    body = {"deadline_seconds": 60, "tasks": [task("charge", compensation=undo("charge")),
                                              wait_for("approval", "charge", signal="approved")]}  # fmt: skip
    response = api.post(URL, body, format="json")
    assert response.status_code == 201, response.content
    flow = response.json()
    assert flow["deadline_at"] is not None
    assert run_all() == ["charge"]
    epoch = next_epoch(settings.SCHEDULER_LOCK_KEY)
    assert expire_deadlines(epoch, lambda: timezone.now() + timedelta(seconds=30), limit=10) == 0
    assert expire_deadlines(epoch, lambda: timezone.now() + timedelta(seconds=61), limit=10) == 1
    assert step(flow["id"], "approval").state == StepState.CANCELLED
    assert run_all() == ["undo-charge"]
    workflow = Workflow.objects.get(id=flow["id"])
    assert (workflow.status, workflow.failed_task) == ("FAILED", "<deadline>")
    assert expire_deadlines(epoch, lambda: timezone.now() + timedelta(seconds=61), limit=10) == 0
    assert api.post(URL, {"deadline_seconds": 0, "tasks": [task("a")]}, format="json").status_code == 400


@pytest.mark.parametrize("name", ["a%00b", "x" * 5000, "%E2%80%AE", "approved%0A"])
def test_a_signal_name_no_step_can_wait_for_is_a_404_not_a_crash(api, name):
    flow = submit(api, [wait_for("approval", signal="approved")])
    response = api.post(f"{URL}{flow['id']}/signals/{name}", {}, format="json")
    assert response.status_code == 404, response.content[:300]
    assert step(flow["id"], "approval").state == StepState.WAITING
