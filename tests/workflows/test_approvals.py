"""Approval steps (issue 31): N distinct users of a group approve, one rejection fails the step
and the saga compensates, a timeout fails it too; every decision is recorded and shown, and
the decisions of racing users and a racing timeout are decided one after the other."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from jobs.models import Job
from tests.conftest import client_for
from tests.factories import UserFactory
from tests.threads import in_thread
from tests.workflows.conftest import pending_dispatches, run_all, task, undo
from tests.workflows.test_wait_steps import URL, step, submit, wake
from workflows import steps
from workflows.models import StepState, Workflow, WorkflowDecision, WorkflowTask

pytestmark = pytest.mark.django_db


def approval(id: str, *deps: str, **rule: Any) -> dict[str, Any]:
    return {"id": id, "approval": rule, "depends_on": list(deps)}


def decide(client: Any, workflow_id: str, task_id: str, decision: str, comment: str = "") -> Any:
    return client.post(f"{URL}{workflow_id}/approvals/{task_id}", {"decision": decision, "comment": comment},
                       format="json")  # fmt: skip


@pytest.fixture
def managers(db) -> Group:
    return Group.objects.create(name="managers")


def manager(group: Group) -> Any:
    user = UserFactory()
    user.groups.add(group)
    return user


def test_two_managers_approve_and_the_next_task_sees_who(api, managers):
    flow = submit(api, [task("charge"), approval("ok", "charge", approvers=2, group="managers"), task("ship", "ok")])
    assert run_all() == ["charge"]
    assert step(flow["id"], "ok").state == StepState.WAITING
    alice, bob = manager(managers), manager(managers)
    first = decide(client_for(alice), flow["id"], "ok", "approve", "looks right")
    assert first.status_code == 200, first.content
    assert (first.json()["state"], first.json()["approvals"], first.json()["approvers"]) == ("WAITING", 1, 2)
    again = decide(client_for(alice), flow["id"], "ok", "approve")  # one user counts once
    assert (again.status_code, again.json()["code"]) == (409, "already_decided")
    assert run_all() == []
    second = decide(client_for(bob), flow["id"], "ok", "approve")
    assert second.json()["state"] == "SUCCEEDED"
    assert run_all() == ["ship"]
    ship = Job.objects.get(workflow_task__workflow_id=flow["id"], workflow_task__task_id="ship")
    assert ship.payload["parents"]["ok"]["approved_by"] == [alice.username, bob.username]
    assert Workflow.objects.get(id=flow["id"]).status == "SUCCEEDED"
    row = {t["id"]: t for t in api.get(f"{URL}{flow['id']}/").json()["tasks"]}["ok"]
    assert (row["kind"], row["status"], row["approval"]["approvers"]) == ("approval", "SUCCEEDED", 2)
    assert [(d["user"], d["decision"], d["comment"]) for d in row["decisions"]] == [
        (alice.username, "approve", "looks right"), (bob.username, "approve", ""),
    ]  # fmt: skip


def test_one_rejection_fails_it_and_the_saga_compensates(api, managers):
    flow = submit(api, [
        task("charge", compensation=undo("charge")), approval("ok", "charge", approvers=3, group="managers"),
        task("ship", "ok"),
    ])  # fmt: skip
    run_all()
    decide(client_for(manager(managers)), flow["id"], "ok", "approve")
    carol = manager(managers)
    answer = decide(client_for(carol), flow["id"], "ok", "reject", "wrong address")
    assert answer.json()["state"] == "FAILED"
    assert run_all() == ["undo-charge"]
    workflow = Workflow.objects.get(id=flow["id"])
    assert (workflow.status, workflow.failed_task) == ("FAILED", "ok")
    result = step(flow["id"], "ok").result
    assert result["rejected_by"] == carol.username
    assert [d["decision"] for d in result["decisions"]] == ["approve", "reject"]
    late = decide(client_for(manager(managers)), flow["id"], "ok", "approve")
    assert late.status_code == 409


def test_who_may_decide(api, user, other_api, staff_api, managers):
    flow = submit(api, [approval("ok", group="managers")])
    user.groups.add(managers)
    own = decide(api, flow["id"], "ok", "approve")  # the submitter, in the group: no self-approval
    assert own.status_code == 403
    assert "allow_self" in own.json()["detail"]
    assert decide(other_api, flow["id"], "ok", "approve").status_code == 404  # cannot see it at all
    staff = decide(staff_api, flow["id"], "ok", "approve")  # sees it, but not in the group
    assert staff.status_code == 403
    assert "managers" in staff.json()["detail"]
    assert not WorkflowDecision.objects.exists()
    mine = submit(api, [approval("ok", allow_self=True)])  # no group: its owner (allowed) or staff
    assert decide(api, mine["id"], "ok", "approve").json()["state"] == "SUCCEEDED"
    nobody = submit(api, [approval("ok")])
    assert decide(staff_api, nobody["id"], "ok", "reject").json()["state"] == "FAILED"


def test_decisions_before_the_step_is_reached_or_on_no_such_step(api, managers):
    flow = submit(api, [task("charge"), approval("ok", "charge", group="managers")])
    boss = client_for(manager(managers))
    early = decide(boss, flow["id"], "ok", "approve")
    assert (early.status_code, early.json()["code"], early.json()["state"]) == (409, "approval_not_open", "NONE")
    assert decide(api, flow["id"], "charge", "approve").status_code == 404  # a job step takes no decision
    assert decide(api, flow["id"], "nope", "approve").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [({"decision": "maybe"}, "decision"), ({}, "decision"), ({"decision": "approve", "comment": "a\x00b"}, "comment"),
     ({"decision": "approve", "comment": "x" * 2001}, "comment")],
)  # fmt: skip
def test_a_bad_decision_is_a_400_naming_the_field(api, body, field):
    flow = submit(api, [approval("ok", allow_self=True)])
    response = api.post(f"{URL}{flow['id']}/approvals/ok", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]
    assert step(flow["id"], "ok").state == StepState.WAITING


@pytest.mark.parametrize(
    ("rule", "message"),
    [({"group": "nobody-has-this"}, "no group named"), ({"approvers": 0}, "approvers"),
     ({"approvers": 1, "timeout_seconds": 0}, "timeout_seconds")],
)  # fmt: skip
def test_bad_approval_steps_are_400(api, rule, message):
    response = api.post(URL, {"tasks": [approval("ok", **rule)]}, format="json")
    assert response.status_code == 400, response.content
    assert message in str(response.json())
    both = {"id": "x", "type": "demo.echo", "approval": {}}
    assert "exactly one of" in str(api.post(URL, {"tasks": [both]}, format="json").json())


def test_a_timeout_fails_it_with_the_decisions_so_far(api, managers):
    flow = submit(api, [
        task("charge", compensation=undo("charge")),
        approval("ok", "charge", approvers=2, group="managers", timeout_seconds=3600),
    ])  # fmt: skip
    run_all()
    decide(client_for(manager(managers)), flow["id"], "ok", "approve")
    assert wake(1800) == 0
    assert wake(3601) == 1
    result = step(flow["id"], "ok").result
    assert result["timed_out"] is True
    assert len(result["decisions"]) == 1
    assert run_all() == ["undo-charge"]
    assert Workflow.objects.get(id=flow["id"]).status == "FAILED"


def test_cancelling_the_workflow_stops_its_approval(api, managers):
    flow = submit(api, [approval("ok", group="managers")])
    api.post(f"{URL}{flow['id']}/cancel/")
    assert step(flow["id"], "ok").state == StepState.CANCELLED
    assert decide(client_for(manager(managers)), flow["id"], "ok", "approve").status_code == 409


@pytest.mark.django_db(transaction=True)
def test_the_last_approval_racing_a_rejection_and_the_timeout_is_decided_once(user):
    """An approval that would complete the step, a rejection and the timeout's wake land
    together, ten times: exactly one of them decides the step, the others find it ended."""
    from django.db import transaction

    from workflows.serializers import WorkflowInputSerializer
    from workflows.services import workflow_submit

    group = Group.objects.create(name="racers")
    yes, no = manager(group), manager(group)
    for _ in range(10):
        s = WorkflowInputSerializer(data={"tasks": [
            approval("ok", group="racers", timeout_seconds=1), task("ship", "ok"),
        ]})  # fmt: skip
        s.is_valid(raise_exception=True)
        workflow, _ = workflow_submit(owner_id=user.pk, spec=s.to_spec(s.validated_data), max_tasks=10)
        WorkflowTask.objects.filter(workflow=workflow, task_id="ok").update(wake_at=timezone.now())
        outcome: dict[str, Any] = {}

        def deciding(who: Any, decision: str, workflow_id: Any = workflow.id) -> Any:
            def run() -> Any:
                with transaction.atomic():
                    return steps.decide(workflow_id=workflow_id, task_id="ok", user=who, decision=decision)

            return run

        threads = [
            in_thread(outcome, "approve", deciding(yes, "approve")),
            in_thread(outcome, "reject", deciding(no, "reject")),
            in_thread(outcome, "wake", lambda: wake(5)),
        ]
        for thread in threads:
            thread.join()
        ok = step(str(workflow.id), "ok")
        won = [name for name in ("approve", "reject") if not isinstance(outcome[name], Exception)]
        timed_out = outcome["wake"] == 1
        assert len(won) + timed_out == 1, outcome  # exactly one of the three
        if timed_out:
            assert ok.state == StepState.FAILED
            assert ok.result["timed_out"]
        else:
            assert ok.state == (StepState.SUCCEEDED if won == ["approve"] else StepState.FAILED)
        losers = [outcome[name] for name in ("approve", "reject") if name not in won]
        assert {type(e).__name__ for e in losers} <= {"ApprovalNotOpen", "WorkflowFinished"}, losers
        assert WorkflowDecision.objects.filter(task=ok).count() == len(won)
        pending_dispatches()


def test_the_dashboard_shows_decisions_and_decides_with_buttons(api, client, managers):
    flow = submit(api, [approval("ok", approvers=2, group="managers"), task("ship", "ok")])
    alice, bob = manager(managers), manager(managers)
    client.force_login(alice)  # not the owner: an approver sees the workflow to decide on it
    page = client.get(f"/workflows/{flow['id']}/").content.decode()
    assert "needs 2 approvals from group" in page
    assert 'data-confirm="Approve step ok?"' in page
    assert "Cancel workflow" not in page  # an approver decides, nothing else
    url = f"/workflows/{flow['id']}/approvals/ok/"
    assert client.post(url, {"decision": "approve", "comment": "fine by me"}).status_code == 302
    assert client.post(url, {"decision": "yes"}).status_code == 404  # never a default
    client.force_login(bob)
    client.post(url, {"decision": "approve"})
    assert step(flow["id"], "ok").state == StepState.SUCCEEDED
    panel = client.get(f"/workflows/{flow['id']}/panel/").content.decode()
    assert "fine by me" in panel
    assert panel.count("decision-approve") == 2
    client.force_login(UserFactory())  # neither owner, staff nor approver
    assert client.get(f"/workflows/{flow['id']}/").status_code == 404
    assert client.post(url, {"decision": "reject"}).status_code == 404


def test_the_cli_approves_and_rejects(api, managers, capsys):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    flow = submit(api, [approval("ok", approvers=2, group="managers")])
    alice, outsider = manager(managers), UserFactory()
    call_command("workflows", "approve", flow["id"], "ok", "--as", alice.username, "--comment", "ok")
    assert "approved ok: it is WAITING" in capsys.readouterr().out
    with pytest.raises(CommandError, match="from the group 'managers' only"):
        call_command("workflows", "approve", flow["id"], "ok", "--as", outsider.username)
    with pytest.raises(CommandError, match="already decided"):
        call_command("workflows", "approve", flow["id"], "ok", "--as", alice.username, "--reject")
    call_command("workflows", "approve", flow["id"], "ok", "--as", manager(managers).username, "--reject")
    assert step(flow["id"], "ok").state == StepState.FAILED


def test_the_admin_shows_decisions(api, managers, admin_client):
    flow = submit(api, [approval("ok", group="managers")])
    decide(client_for(manager(managers)), flow["id"], "ok", "reject", "not this quarter")
    page = admin_client.get(f"/admin/orchestration_workflows/workflow/{flow['id']}/change/").content.decode()
    assert "not this quarter" in page
