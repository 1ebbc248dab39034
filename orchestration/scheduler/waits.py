"""Workflow steps that wait (a signal's timeout, a sleep, a time) whose moment came → woken
(workflows.steps), and running workflows past their deadline → failed (their saga runs):
bounded work a tick, however many wait, earliest first. Each is looked at in a fenced
transaction of its own with its workflow locked, so a signal racing its timeout is decided
once, and a deposed leader moves nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from django.db import transaction

from orchestration.scheduler.fencing import fence
from workflows import services, steps
from workflows.models import Workflow, WorkflowStatus

logger = logging.getLogger("orchestration.scheduler")


def wake_steps(epoch: int, clock: Callable[[], datetime], *, limit: int) -> int:
    now = clock()
    woken = 0
    for workflow_id, step_pk in steps.due(now=now, limit=limit):
        with transaction.atomic():
            fence(epoch)
            became = steps.wake(workflow_id, step_pk, now=now)
        if became is not None:
            woken += 1
            logger.info("workflow.step_woken", extra={"workflow_id": str(workflow_id), "state": became})
    return woken


def expire_deadlines(epoch: int, clock: Callable[[], datetime], *, limit: int) -> int:
    now = clock()
    due = Workflow.objects.filter(status=WorkflowStatus.RUNNING, deadline_at__lte=now).order_by("deadline_at")
    expired = 0
    for workflow_id in due.values_list("id", flat=True)[:limit]:
        with transaction.atomic():
            fence(epoch)
            failed = services.workflow_expire(workflow_id=workflow_id, now=now)
        if failed:
            expired += 1
            logger.info("workflow.deadline_passed", extra={"workflow_id": str(workflow_id)})
    return expired
