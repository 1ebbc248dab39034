"""Steps that are not jobs: waits for a signal, a sleep or a time, and approvals. They hold no
worker and no Celery message: a waiting step is a row (`state` WAITING, `wake_at` when to
look), the scheduler's wake scan looks at those due (a range of one partial index, bounded per
tick), and a signal or a decision completes its step in the request that sends it.

    reached (its parents succeeded) → WAITING: wake_at = its time, or its signal's timeout
      (now, when its signal was sent before it was reached: kept, delivered at the next look)
    signal arrives while WAITING → SUCCEEDED, the signal's payload its result
    its time comes → SUCCEEDED ({"woke_at": ...}); a signal's timeout → on_timeout:
      "continue" → SUCCEEDED ({"timed_out": true}), "fail" → FAILED, and the saga runs
    approval WAITING: the N-th distinct approval → SUCCEEDED ({"approved_by", "decisions"});
      one rejection, or its timeout → FAILED, and the saga runs

Every move happens with the workflow's row locked (as every move of `workflows.advance`), so
a signal racing its timeout, or two signals, are decided one after the other: exactly one wins,
and the other gets WaitEnded (a 409).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from jobs import audit, visibility
from workflows import advance, maps
from workflows.errors import (
    AlreadyDecided,
    ApprovalNotOpen,
    NoSuchApproval,
    NoSuchSignal,
    NotAnApprover,
    SignalAlreadyKept,
    WaitEnded,
    WorkflowFinished,
)
from workflows.models import (
    WORKFLOW_TERMINAL,
    Decision,
    StepKind,
    StepState,
    Workflow,
    WorkflowDecision,
    WorkflowSignal,
    WorkflowStatus,
    WorkflowTask,
)

SIGNAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}\Z")  # a wait's signal: the API's rule
WAKE_BATCH = 1000  # steps the scheduler looks at a tick at most


def arm(workflow: Workflow, step: WorkflowTask, now: datetime) -> None:
    """The step is reached: it waits for its signal or its time (the workflow is locked)."""
    wait = step.wait or {}
    if step.kind == StepKind.APPROVAL:
        timeout = wait.get("timeout_seconds")
        wake_at = now + timedelta(seconds=timeout) if timeout else None
    elif "signal" in wait:
        kept = _kept(workflow, wait["signal"]).exists()
        timeout = wait.get("timeout_seconds")
        wake_at = now if kept else (now + timedelta(seconds=timeout) if timeout else None)
    elif "sleep_seconds" in wait:
        wake_at = now + timedelta(seconds=float(wait["sleep_seconds"]))
    else:
        wake_at = parse_datetime(str(wait["until"])) or now
    step.state, step.wake_at = StepState.WAITING, wake_at
    step.save(update_fields=["state", "wake_at"])


def signal(*, workflow_id: uuid.UUID | str, name: str, payload: Any, sent_by: int | None) -> WorkflowTask | None:
    """Deliver a signal: the step waiting for it succeeds with the payload as its result; a step
    not reached yet gets it when it is (kept). Returns the step it completed, or None when kept.
    NoSuchSignal: no step waits for it; WaitEnded: its step is done already; SignalAlreadyKept:
    one is kept for it already; WorkflowFinished: the workflow is not running."""
    if SIGNAL_NAME.fullmatch(name) is None:  # no step can wait for it: a NUL, 1 MB of text
        raise NoSuchSignal(workflow_id, name[:200])
    workflow = Workflow.objects.select_for_update().get(id=workflow_id)
    if workflow.status != WorkflowStatus.RUNNING:
        raise WorkflowFinished(workflow.id, workflow.status, f"take signal {name!r}")
    step = WorkflowTask.objects.filter(workflow=workflow, wait__signal=name).first()
    if step is None:
        raise NoSuchSignal(workflow.id, name)
    if step.state in (StepState.SUCCEEDED, StepState.FAILED, StepState.CANCELLED):
        raise WaitEnded(workflow.id, step.task_id, name, step.state)
    sent = WorkflowSignal(workflow=workflow, name=name, payload=payload, sent_by_id=sent_by)
    audit.record("workflow.signal", "workflow", workflow.id, owner_id=workflow.owner_id, signal=name)
    if step.state == StepState.NONE:
        if _kept(workflow, name).exists():
            raise SignalAlreadyKept(workflow.id, name)
        sent.save()
        return None
    sent.task = step
    sent.save()
    advance.step_succeeded(workflow, step, payload)
    return step


def due(*, now: datetime, limit: int = WAKE_BATCH) -> list[tuple[uuid.UUID, int]]:
    """(workflow, step) of waiting steps whose time came, earliest first (the index's range)."""
    rows = WorkflowTask.objects.filter(state=StepState.WAITING, wake_at__lte=now).order_by("wake_at")
    return [(w, pk) for pk, w in rows.values_list("pk", "workflow_id")[:limit]]


def wake(workflow_id: uuid.UUID, step_pk: int, *, now: datetime) -> str | None:
    """Look at one due step (in the caller's transaction): what became of it, or None when it
    had moved on meanwhile (a signal won the race, the saga stopped it)."""
    workflow = Workflow.objects.select_for_update().get(id=workflow_id)
    step = WorkflowTask.objects.filter(pk=step_pk, state=StepState.WAITING, wake_at__lte=now).first()
    if step is None:
        return None
    if step.kind == StepKind.WORKFLOW:
        return _child_moved(workflow, step, now)
    if workflow.status != WorkflowStatus.RUNNING:
        _end(step, StepState.CANCELLED, None, now)
        return StepState.CANCELLED
    if step.kind == StepKind.MAP:  # a fan-out the process that began it did not finish: go on with it
        maps.fan_out_chunk(workflow, step)
        return StepState.WAITING
    wait = step.wait or {}
    if step.kind == StepKind.APPROVAL:  # nobody decided in time: not approved
        _fail(workflow, step, {"timed_out": True, "decisions": _decisions(step)}, now)
        return StepState.FAILED
    if "signal" not in wait:
        advance.step_succeeded(workflow, step, {"woke_at": now.isoformat()})
        return StepState.SUCCEEDED
    sent = _kept(workflow, wait["signal"]).order_by("id").first()
    if sent is not None:
        WorkflowSignal.objects.filter(pk=sent.pk).update(task=step)
        advance.step_succeeded(workflow, step, sent.payload)
        return StepState.SUCCEEDED
    if wait.get("on_timeout") == "continue":
        advance.step_succeeded(workflow, step, {"timed_out": True})
        return StepState.SUCCEEDED
    _fail(workflow, step, {"timed_out": True}, now)
    return StepState.FAILED


def _child_moved(workflow: Workflow, step: WorkflowTask, now: datetime) -> str | None:
    """A sub-workflow step woken by its child's end: the child's outcome is the step's."""
    child = Workflow.objects.filter(parent_task_id=step.pk).values_list("id", "status").first()
    status = child[1] if child else WorkflowStatus.CANCELLED
    if status not in WORKFLOW_TERMINAL:  # not ended after all: its end wakes the step again
        WorkflowTask.objects.filter(pk=step.pk).update(wake_at=None)
        return None
    result = {"workflow": str(child[0]) if child else None, "status": status}
    if workflow.status != WorkflowStatus.RUNNING:  # the saga waited for it
        _end(step, StepState.CANCELLED, result, now)
        advance.advance_saga(workflow)
        return StepState.CANCELLED
    if status == WorkflowStatus.SUCCEEDED:
        advance.step_succeeded(workflow, step, result)
        return StepState.SUCCEEDED
    _fail(workflow, step, result, now)
    return StepState.FAILED


def may_decide(workflow: Workflow, task_id: str, rule: dict[str, Any], user: Any) -> str:
    """Why `user` may not decide on the approval step `task_id` whose rule (its `approval`) is
    `rule` ("" when they may): a viewer, a group the step names that they are not in, or their
    own workflow when the step does not allow it."""
    if not visibility.may_act(user):
        return visibility.VIEWERS_LOOK_ONLY
    if not rule.get("allow_self") and workflow.owner_id == user.pk:
        return f"step {task_id!r} does not allow its workflow's owner to decide (allow_self is false)"
    group = rule.get("group")
    if group and not user.groups.filter(name=group).exists():
        return f"step {task_id!r} takes decisions from the group {group!r} only"
    if not group and not user.is_staff and workflow.owner_id != user.pk:
        return f"step {task_id!r} names no group: only its workflow's owner or staff may decide"
    return ""


def decide(*, workflow_id: uuid.UUID | str, task_id: str, user: Any, decision: str, comment: str = "") -> WorkflowTask:
    """Record `user`'s decision on an approval step (in the caller's transaction, with the
    workflow locked, so decisions and the step's timeout are decided one after the other).
    The N-th distinct approval succeeds the step; a rejection fails it and the saga runs.
    NoSuchApproval, NotAnApprover, ApprovalNotOpen (not reached, or ended), AlreadyDecided,
    WorkflowFinished."""
    workflow = Workflow.objects.select_for_update().get(id=workflow_id)
    step = WorkflowTask.objects.filter(workflow=workflow, task_id=task_id, kind=StepKind.APPROVAL).first()
    if step is None:
        raise NoSuchApproval(workflow.id, task_id[:200])
    if why := may_decide(workflow, step.task_id, step.wait or {}, user):
        raise NotAnApprover(why)
    if workflow.status != WorkflowStatus.RUNNING:
        raise WorkflowFinished(workflow.id, workflow.status, f"take a decision on {task_id!r}")
    if step.state != StepState.WAITING:
        raise ApprovalNotOpen(workflow.id, step.task_id, step.state)
    try:
        with transaction.atomic():  # a savepoint: the unique constraint decides a user's racing clicks
            WorkflowDecision.objects.create(
                workflow=workflow, task=step, user=user, username=user.get_username(), decision=decision,
                comment=comment,
            )  # fmt: skip
    except IntegrityError:
        earlier = WorkflowDecision.objects.get(task=step, user=user)
        raise AlreadyDecided(step.task_id, user.get_username(), earlier.decision) from None
    audit.record("workflow.decide", "workflow", workflow.id, owner_id=workflow.owner_id, actor=user, task=step.task_id,
                 decision=decision, comment=comment[:200])  # fmt: skip
    decisions = _decisions(step)
    now = timezone.now()
    if decision == Decision.REJECT:
        _fail(workflow, step, {"rejected_by": user.get_username(), "decisions": decisions}, now)
        return step
    approved_by = [d["user"] for d in decisions if d["decision"] == Decision.APPROVE]
    if len(approved_by) >= int((step.wait or {}).get("approvers", 1)):
        advance.step_succeeded(workflow, step, {"approved_by": approved_by, "decisions": decisions})
    return step


def decisions_of(step_pks: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The decisions on each of these approval steps, oldest first, in one query."""
    out: dict[int, list[dict[str, Any]]] = {pk: [] for pk in step_pks}
    rows = WorkflowDecision.objects.filter(task_id__in=step_pks).order_by("id")
    for task_pk, user, decision, comment, at in rows.values_list("task_id", "username", "decision", "comment",
                                                                 "created_at"):  # fmt: skip
        out[task_pk].append({"user": user, "decision": decision, "comment": comment, "at": at.isoformat()})
    return out


def _decisions(step: WorkflowTask) -> list[dict[str, Any]]:
    return decisions_of([step.pk])[step.pk]


def _fail(workflow: Workflow, step: WorkflowTask, result: Any, now: datetime) -> None:
    """The step failed (timed out, rejected): the saga runs."""
    _end(step, StepState.FAILED, result, now)
    advance.start_saga(workflow, failed_task=step.task_id)


def _kept(workflow: Workflow, name: str) -> QuerySet[WorkflowSignal]:
    """Signals of that name sent before their step was reached, not delivered yet."""
    return WorkflowSignal.objects.filter(workflow=workflow, name=name, task__isnull=True)


def _end(step: WorkflowTask, state: str, result: Any, now: datetime) -> None:
    step.state, step.result, step.ended_at, step.wake_at = state, result, now, None
    step.save(update_fields=["state", "result", "ended_at", "wake_at"])
