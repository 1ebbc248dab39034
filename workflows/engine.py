"""How a workflow moves: releasing tasks, the saga, finishing. Called from `jobs.transitions`
in the transaction of the job transition that causes the move, with the workflow row locked
(`_lock_workflow_of`), so every step here sees the workflow as the previous step left it.

    task job SUCCEEDED ─ workflow RUNNING ──▶ children whose parents all succeeded are released
                      │                     └▶ every task succeeded: SUCCEEDED
                      └ COMPENSATING ──────▶ it joins the compensations (it did succeed)
    task job DEAD_LETTER/CANCELLED ─ RUNNING ─▶ COMPENSATING (the saga starts)
    saga: unreleased tasks are skipped, waiting jobs cancelled, running ones asked to stop;
          once no task job is active, the compensation jobs of the succeeded tasks run one at a
          time, latest success first; then FAILED (or CANCELLED when the workflow was cancelled)

A released task's payload carries its parents' results under `"parents"`:
`{"parents": {"<task id>": <result>, ...}}`. A compensation job's payload carries
`"compensates": {"task": "<task id>", "job": "<job id>", "result": <the task's result>}`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from django.db import connection
from django.db.models import F
from django.utils import timezone

from jobs import services
from jobs.models import TERMINAL_STATUSES, Job, JobStatus, Outbox
from jobs.services import JobSpec
from workflows.models import CompensationState, Workflow, WorkflowStatus, WorkflowTask

PARENTS_KEY = "parents"
COMPENSATES_KEY = "compensates"
ACTIVE = [s.value for s in JobStatus if s not in TERMINAL_STATUSES]


def job_ended(job_id: uuid.UUID, workflow_id: uuid.UUID, status: str) -> None:
    """A job of the workflow reached a terminal status (the caller holds the workflow lock)."""
    workflow = Workflow.objects.select_for_update().get(id=workflow_id)
    task = WorkflowTask.objects.filter(workflow=workflow, job_id=job_id).first()
    if task is not None:
        _task_ended(workflow, task, status)
        return
    compensated = WorkflowTask.objects.filter(workflow=workflow, compensation_job_id=job_id).first()
    if compensated is not None:
        compensated.compensation_state = (
            CompensationState.SUCCEEDED if status == JobStatus.SUCCEEDED else CompensationState.FAILED
        )
        compensated.save(update_fields=["compensation_state"])
        if compensated.compensation_state == CompensationState.FAILED:
            workflow.failed_compensations = [*workflow.failed_compensations, compensated.task_id]
        advance_saga(workflow)


def _task_ended(workflow: Workflow, task: WorkflowTask, status: str) -> None:
    if status == JobStatus.SUCCEEDED:
        workflow.success_seq += 1
        workflow.tasks_succeeded += 1
        task.succeeded_seq = workflow.success_seq
        if task.compensation:
            task.compensation_state = CompensationState.PENDING
        task.save(update_fields=["succeeded_seq", "compensation_state"])
        if workflow.status == WorkflowStatus.RUNNING:
            release(workflow, _children_now_ready(workflow, task))
            if workflow.tasks_succeeded == workflow.tasks_total:
                _finish(workflow, WorkflowStatus.SUCCEEDED)
                return
            workflow.save(update_fields=["success_seq", "tasks_succeeded", "updated_at"])
            return
        advance_saga(workflow)  # a task that succeeded while the saga waited for it
        return
    if workflow.status == WorkflowStatus.RUNNING:
        start_saga(workflow, failed_task=task.task_id)
    else:
        advance_saga(workflow)


def _children_now_ready(workflow: Workflow, task: WorkflowTask) -> list[WorkflowTask]:
    """One fewer pending parent for each dependent; those at zero are ready. The workflow
    lock makes this exact: two parents finishing together are counted one after the other."""
    if not task.dependents:
        return []
    WorkflowTask.objects.filter(workflow=workflow, task_id__in=task.dependents).update(
        pending_parents=F("pending_parents") - 1
    )
    return list(WorkflowTask.objects.filter(workflow=workflow, task_id__in=task.dependents, pending_parents=0))


def release(workflow: Workflow, tasks: Sequence[WorkflowTask]) -> None:
    """Submit a job per task (with its outbox row, in the caller's transaction)."""
    tasks = [t for t in tasks if t.job_id is None and not t.skipped]
    if not tasks:
        return
    parent_ids = {dep for t in tasks for dep in t.depends_on}
    results = dict(
        Job.objects.filter(workflow_task__workflow=workflow, workflow_task__task_id__in=parent_ids).values_list(
            "workflow_task__task_id", "result"
        )
    )
    specs = [
        _spec(workflow, t.type, t.payload, t.options, extra={PARENTS_KEY: {d: results.get(d) for d in t.depends_on}})
        if t.depends_on
        else _spec(workflow, t.type, t.payload, t.options)
        for t in tasks
    ]
    submitted = services.job_submit_bulk(owner_id=workflow.owner_id, specs=specs)
    for task, sub in zip(tasks, submitted, strict=True):
        task.job_id = sub.job.id
    WorkflowTask.objects.bulk_update(tasks, ["job_id"])


def _spec(
    workflow: Workflow,
    type_: str,
    payload: dict[str, Any],
    options: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> JobSpec:
    return JobSpec(type=type_, payload={**payload, **(extra or {})}, workflow_id=workflow.id, **options)


def start_saga(workflow: Workflow, *, failed_task: str = "") -> None:
    """RUNNING → COMPENSATING: skip what was never released, cancel what waits, ask what runs
    to stop; compensations start once nothing runs any more."""
    workflow.status = WorkflowStatus.COMPENSATING
    workflow.failed_task = failed_task
    WorkflowTask.objects.filter(workflow=workflow, job__isnull=True).update(skipped=True)
    task_jobs = WorkflowTask.objects.filter(workflow=workflow, job__isnull=False).values("job_id")
    now = timezone.now()
    # Direct updates, not the transitions: the workflow is locked here and moved on below;
    # the transition's own hook would re-enter it for every job.
    waiting = Job.objects.filter(id__in=task_jobs, status__in=[JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RETRYING])
    waiting_ids = list(waiting.values_list("id", flat=True))
    if waiting_ids:
        Job.objects.filter(id__in=waiting_ids).update(
            status=JobStatus.CANCELLED, finished_at=now, dispatch_token=None, next_retry_at=None,
            breaker_held_at=None, updated_at=now,
        )  # fmt: skip
        Outbox.objects.filter(job_id__in=waiting_ids, topic="jobs").delete()
    Job.objects.filter(id__in=task_jobs, status=JobStatus.RUNNING, cancel_requested_at__isnull=True).update(
        cancel_requested_at=now, updated_at=now
    )
    advance_saga(workflow)


def advance_saga(workflow: Workflow) -> None:
    """Start the next compensation, or finish the workflow, unless something still runs."""
    if workflow.status != WorkflowStatus.COMPENSATING:
        workflow.save()
        return
    busy = Job.objects.filter(workflow=workflow, status__in=ACTIVE).exists()
    if busy:  # a task still stopping, or a compensation still running: its end calls us again
        workflow.save()
        return
    next_task = (
        WorkflowTask.objects.filter(workflow=workflow, compensation_state=CompensationState.PENDING)
        .order_by("-succeeded_seq")
        .first()
    )
    if next_task is None:
        _finish(workflow, WorkflowStatus.CANCELLED if workflow.cancel_requested_at else WorkflowStatus.FAILED)
        return
    spec = next_task.compensation or {}
    assert next_task.job_id is not None  # only a task that ran and succeeded has one to compensate
    task_job = Job.objects.only("id", "result").get(id=next_task.job_id)
    options = {k: v for k, v in spec.items() if k not in ("type", "payload")}
    compensates = {"task": next_task.task_id, "job": str(task_job.id), "result": task_job.result}
    (sub,) = services.job_submit_bulk(
        owner_id=workflow.owner_id,
        specs=[_spec(workflow, spec["type"], spec.get("payload") or {}, options, extra={COMPENSATES_KEY: compensates})],
    )
    next_task.compensation_job_id = sub.job.id
    next_task.compensation_state = CompensationState.RUNNING
    next_task.save(update_fields=["compensation_job_id", "compensation_state"])
    workflow.save()


def _finish(workflow: Workflow, status: str) -> None:
    workflow.status = status
    workflow.finished_at = timezone.now()
    workflow.save()


def lock(workflow_id: uuid.UUID | str) -> None:
    with connection.cursor() as cur:
        cur.execute("SELECT 1 FROM workflows_workflow WHERE id = %s FOR UPDATE", [str(workflow_id)])
