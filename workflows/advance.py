"""How a workflow moves: releasing tasks, the saga, finishing. Called from `jobs.transitions`
in the transaction of the job transition that causes the move. Every step first locks the
workflow row (its counters UPDATE, or SELECT ... FOR UPDATE), so steps of one workflow run one
after the other and each sees what the previous one left.

Locks are taken in one order: a job row (by its transition), then its workflow row. The
saga, which holds the workflow and changes other jobs, skips job rows another transaction
holds (SKIP LOCKED) instead of waiting for them: such a job is finishing right now, and its
own transition moves the workflow on once the saga commits. So no cycle, no deadlock.

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

import orjson
from django.conf import settings
from django.db import connection
from django.db.models import Q, Subquery
from django.utils import timezone

from jobs import services, transitions
from jobs.models import TERMINAL_STATUSES, Job, JobStatus
from jobs.services import JobSpec
from metrics import prom
from workflows import maps, steps
from workflows import services as workflow_services
from workflows.models import (
    WORKFLOW_TERMINAL,
    CompensationState,
    StepKind,
    StepState,
    Workflow,
    WorkflowStatus,
    WorkflowTask,
)

PARENTS_KEY = "parents"
COMPENSATES_KEY = "compensates"
ACTIVE = [s.value for s in JobStatus if s not in TERMINAL_STATUSES]


# A task's success in one statement (the common case, and the hot one): count it on the
# workflow (which locks the row) and number it on the task. No row when the job is not a
# task of the workflow (a compensation job).
_TASK_SUCCEEDED_SQL = """
WITH t AS (
    SELECT id, task_id, dependents, compensation IS NOT NULL AS has_compensation
      FROM workflows_workflowtask WHERE job_id = %(job)s AND workflow_id = %(workflow)s
), wf AS (
    UPDATE workflows_workflow AS w
       SET success_seq = w.success_seq + 1, tasks_succeeded = w.tasks_succeeded + 1, updated_at = %(now)s
      FROM t WHERE w.id = %(workflow)s
    RETURNING w.status, w.success_seq, w.tasks_succeeded, w.tasks_total
), numbered AS (
    UPDATE workflows_workflowtask AS x
       SET succeeded_seq = wf.success_seq,
           compensation_state = CASE WHEN t.has_compensation THEN 'PENDING' ELSE x.compensation_state END
      FROM t, wf WHERE x.id = t.id
)
SELECT wf.status, wf.tasks_succeeded, wf.tasks_total, t.dependents FROM wf, t
"""

_RELEASE_CHILDREN_SQL = """
UPDATE workflows_workflowtask SET pending_parents = pending_parents - 1
 WHERE workflow_id = %(workflow)s AND task_id = ANY(%(children)s)
RETURNING id, pending_parents
"""


def job_ended(job_id: uuid.UUID, workflow_id: uuid.UUID, status: str) -> None:
    """A job of the workflow reached a terminal status, in that transition's transaction."""
    if status == JobStatus.SUCCEEDED and _task_succeeded(job_id, workflow_id):
        return
    workflow = Workflow.objects.select_for_update().get(id=workflow_id)
    task = WorkflowTask.objects.filter(workflow=workflow, job_id=job_id).first()
    if task is not None:
        _task_ended(workflow, task, status)
        return
    compensated = WorkflowTask.objects.filter(workflow=workflow, compensation_job_id=job_id).first()
    if compensated is not None:
        ok = status == JobStatus.SUCCEEDED
        if compensated.kind == StepKind.MAP:  # one child undone: the next one, if any, is the saga's next
            compensated.compensation_state = CompensationState.PENDING
            undone = Job.objects.filter(id=job_id).values_list("payload__compensates__task", flat=True).first()
        else:
            compensated.compensation_state = CompensationState.SUCCEEDED if ok else CompensationState.FAILED
            undone = compensated.task_id
        compensated.save(update_fields=["compensation_state"])
        if not ok:
            workflow.failed_compensations = [*workflow.failed_compensations, undone]
        advance_saga(workflow)


def _task_succeeded(job_id: uuid.UUID, workflow_id: uuid.UUID) -> bool:
    """Count a task's success; release the dependents it completes, or finish the workflow.
    False when the job is not a task of the workflow."""
    with connection.cursor() as cur:
        cur.execute(_TASK_SUCCEEDED_SQL, {"job": job_id, "workflow": workflow_id, "now": timezone.now()})
        row = cur.fetchone()
        if row is None:
            return False
        status, succeeded, total, dependents = row
        if status != WorkflowStatus.RUNNING:
            # It succeeded while the saga waited for it: it joins the compensations.
            advance_saga(Workflow.objects.select_for_update().get(id=workflow_id))
            return True
    _release_dependents(workflow_id, dependents)
    if succeeded == total:
        _succeed(workflow_id)
    return True


def _release_dependents(workflow_id: uuid.UUID, dependents: list[str], workflow: Workflow | None = None) -> None:
    """One fewer pending parent for each dependent; the transaction that brings one to zero
    releases it. Two parents finishing at once are serialized on the workflow row (locked by
    the caller), so exactly one of them sees zero."""
    if not dependents:
        return
    with connection.cursor() as cur:
        cur.execute(_RELEASE_CHILDREN_SQL, {"workflow": workflow_id, "children": dependents})
        ready = [task_pk for task_pk, pending in cur.fetchall() if pending == 0]
    if ready:
        release(workflow or Workflow.objects.get(id=workflow_id), list(WorkflowTask.objects.filter(id__in=ready)))


def _succeed(workflow_id: uuid.UUID) -> None:
    """Every task succeeded: the workflow is SUCCEEDED."""
    now = timezone.now()
    Workflow.objects.filter(id=workflow_id).update(status=WorkflowStatus.SUCCEEDED, finished_at=now, updated_at=now)
    prom.WORKFLOWS_FINISHED.labels(WorkflowStatus.SUCCEEDED).inc()
    child_ended(workflow_id)


def _task_ended(workflow: Workflow, task: WorkflowTask, status: str) -> None:
    """A task's job dead-lettered or was cancelled (successes go through _task_succeeded)."""
    if workflow.status == WorkflowStatus.RUNNING:
        start_saga(workflow, failed_task=task.task_id)
    else:
        advance_saga(workflow)


def release(workflow: Workflow, tasks: Sequence[WorkflowTask]) -> None:
    """Submit a job per task (with its outbox row, in the caller's transaction).

    A task whose parents' results would make its payload larger than JOB_PAYLOAD_MAX_BYTES
    gets its job all the same, dead-lettered at once with the reason (so the saga
    compensates): the sizes are added up in PostgreSQL before any result is loaded, so a
    fan-in of a thousand large results never lands in the releasing worker's memory."""
    tasks = [t for t in tasks if t.job_id is None and not t.skipped]
    waits = [t for t in tasks if t.kind in (StepKind.WAIT, StepKind.APPROVAL)]
    fan_outs = [t for t in tasks if t.kind == StepKind.MAP and t.state == StepState.NONE]
    subs = [t for t in tasks if t.kind == StepKind.WORKFLOW and t.state == StepState.NONE]
    if waits:
        now = timezone.now()
        for step in waits:
            if step.state == StepState.NONE:
                steps.arm(workflow, step, now)
    tasks = [t for t in tasks if t.kind == StepKind.JOB]
    if tasks:
        _release_jobs(workflow, tasks)
    for step in subs:
        _start_child(workflow, step)
    for step in fan_outs:  # last: one that cannot fan out starts the saga, which stops what went before
        _fan_out(workflow, step)


def _start_child(workflow: Workflow, step: WorkflowTask) -> None:
    """A sub-workflow step is reached: its child workflow starts (same owner, same trace), and
    the step waits for it to end (`child_ended` wakes it)."""
    spec = workflow_services.WorkflowSpec.from_dict(step.wait or {})
    workflow_services.workflow_submit(owner_id=workflow.owner_id, spec=spec, max_tasks=max(len(spec.tasks), 1),
                             parent_task=step)  # fmt: skip
    step.state, step.wake_at = StepState.WAITING, None
    step.save(update_fields=["state", "wake_at"])


# A child workflow ended: its parent's step is looked at by the scheduler's wake scan. The
# parent is not locked here (the child is): the parent's saga locks a child to cancel it, so
# this lock order (child, then the parent's step row) makes no cycle with that one.
_CHILD_ENDED_SQL = """
UPDATE workflows_workflowtask SET wake_at = %(now)s
 WHERE id = (SELECT parent_task_id FROM workflows_workflow WHERE id = %(workflow)s) AND state = 'WAITING'
"""


def child_ended(workflow_id: uuid.UUID) -> None:
    with connection.cursor() as cur:
        cur.execute(_CHILD_ENDED_SQL, {"now": timezone.now(), "workflow": workflow_id})


def _fan_out(workflow: Workflow, step: WorkflowTask) -> None:
    if workflow.status != WorkflowStatus.RUNNING:
        return
    if why := maps.expand(workflow, step, timezone.now()):
        map_failed(workflow, step, why)


def map_failed(workflow: Workflow, step: WorkflowTask, why: str) -> None:
    """A map step failed (a child failed, or it could not fan out): the saga runs, and undoes
    the children that succeeded where the map stands in its order."""
    step.state, step.result, step.ended_at, step.wake_at = StepState.FAILED, {"error": why}, timezone.now(), None
    fields = ["state", "result", "ended_at", "wake_at"]
    if step.compensation and step.batch_id:
        workflow.success_seq += 1
        step.succeeded_seq, step.compensation_state = workflow.success_seq, CompensationState.PENDING
        fields += ["succeeded_seq", "compensation_state"]
    step.save(update_fields=fields)
    start_saga(workflow, failed_task=step.task_id)


def _release_jobs(workflow: Workflow, tasks: list[WorkflowTask]) -> None:
    sizes = _result_sizes(workflow, {dep for t in tasks for dep in t.depends_on})
    too_large = {t.pk: why for t in tasks if (why := _too_large(t, sizes))}
    fitting_parents = {dep for t in tasks if t.pk not in too_large for dep in t.depends_on}
    results = dict(
        Job.objects.filter(workflow_task__workflow=workflow, workflow_task__task_id__in=fitting_parents).values_list(
            "workflow_task__task_id", "result"
        )
    )
    results |= dict(  # steps that are not jobs keep their result themselves
        WorkflowTask.objects.filter(workflow=workflow, task_id__in=fitting_parents)
        .exclude(kind=StepKind.JOB)
        .values_list("task_id", "result")
    )
    specs = [
        _spec(workflow, t.type, t.payload, t.options, extra={PARENTS_KEY: {d: results.get(d) for d in t.depends_on}})
        if t.depends_on and t.pk not in too_large
        else _spec(workflow, t.type, t.payload, t.options)
        for t in tasks
    ]
    # The jobs join the workflow's trace, whichever process releases them.
    submitted = services.job_submit_bulk(owner_id=workflow.owner_id, specs=specs, trace=workflow.trace_context)
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE workflows_workflowtask AS t SET job_id = u.job FROM unnest(%s::bigint[], %s::uuid[]) AS u(id, job)"
            " WHERE t.id = u.id",
            [[t.pk for t in tasks], [s.job.id for s in submitted]],
        )
    for task, sub in zip(tasks, submitted, strict=True):
        task.job_id = sub.job.id
    for task, sub in zip(tasks, submitted, strict=True):
        if task.pk in too_large and sub.job.dispatch_token is not None:
            services.discard_dispatches([sub.job.id])
            # Its end moves the workflow on (the saga), in this same transaction.
            transitions.dead_letter_undispatchable(sub.job.id, dispatch_token=sub.job.dispatch_token,
                                                   error=too_large[task.pk])  # fmt: skip


# A result's size as JSON, from its jsonb text: close to what orjson writes (no spaces).
_RESULT_SIZES_SQL = """
SELECT t.task_id, coalesce(octet_length(coalesce(j.result, t.result)::text), 4)
  FROM workflows_workflowtask t LEFT JOIN jobs_job j ON j.id = t.job_id
 WHERE t.workflow_id = %(workflow)s AND t.task_id = ANY(%(tasks)s)
"""


def _result_sizes(workflow: Workflow, task_ids: set[str]) -> dict[str, int]:
    if not task_ids:
        return {}
    with connection.cursor() as cur:
        cur.execute(_RESULT_SIZES_SQL, {"workflow": workflow.id, "tasks": sorted(task_ids)})
        return dict(cur.fetchall())


def _too_large(task: WorkflowTask, sizes: dict[str, int]) -> str:
    """Why the task's payload with its parents' results would be over JOB_PAYLOAD_MAX_BYTES
    ("" when it fits)."""
    if not task.depends_on:
        return ""
    limit = settings.JOB_PAYLOAD_MAX_BYTES
    # The payload, each parent's id and result, and the JSON around them.
    total = len(orjson.dumps(task.payload)) + sum(sizes.get(d, 4) + len(d) + 4 for d in task.depends_on) + 16
    if total <= limit:
        return ""
    largest = sorted(task.depends_on, key=lambda d: -sizes.get(d, 4))[:5]
    named = ", ".join(f"{d}: {sizes.get(d, 4):,} bytes" for d in largest)
    more = f" and {len(task.depends_on) - len(largest)} more" if len(task.depends_on) > len(largest) else ""
    return (
        f"the results of its parents ({named}{more}) make its payload {total:,} bytes, over JOB_PAYLOAD_MAX_BYTES "
        f"({limit:,}): pass large results by reference (store them, return their key)"
    )


def _spec(
    workflow: Workflow,
    type_: str,
    payload: dict[str, Any],
    options: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> JobSpec:
    return JobSpec(type=type_, payload={**payload, **(extra or {})}, workflow_id=workflow.id, **options)


def step_succeeded(workflow: Workflow, step: WorkflowTask, result: Any) -> None:
    """A step that is not a job succeeded (the workflow is locked): count it as a task's
    success, release the dependents it completes, or finish the workflow."""
    now = timezone.now()
    workflow.success_seq += 1
    workflow.tasks_succeeded += 1
    step.state, step.result, step.ended_at, step.wake_at = StepState.SUCCEEDED, result, now, None
    step.succeeded_seq = workflow.success_seq
    fields = ["state", "result", "ended_at", "wake_at", "succeeded_seq"]
    if step.compensation:  # a map's: its children are undone if the workflow fails later
        step.compensation_state = CompensationState.PENDING
        fields.append("compensation_state")
    step.save(update_fields=fields)
    Workflow.objects.filter(id=workflow.id).update(
        success_seq=workflow.success_seq, tasks_succeeded=workflow.tasks_succeeded, updated_at=now
    )
    if workflow.status != WorkflowStatus.RUNNING:
        return
    _release_dependents(workflow.id, step.dependents, workflow)
    workflow.refresh_from_db(fields=["status"])  # a released task too large for its payload starts the saga
    if workflow.status == WorkflowStatus.RUNNING and workflow.tasks_succeeded == workflow.tasks_total:
        _succeed(workflow.id)
        workflow.status = WorkflowStatus.SUCCEEDED


def start_saga(workflow: Workflow, *, failed_task: str = "") -> None:
    """RUNNING → COMPENSATING: skip what was never released, cancel what waits, ask what runs
    to stop; compensations start once nothing runs any more."""
    workflow.status = WorkflowStatus.COMPENSATING
    workflow.failed_task = failed_task
    # Child workflows first (before any row of ours is locked: see child_ended); one that does
    # not end at once keeps its step WAITING, and the saga waits for it.
    still_running = _cancel_children(workflow)
    WorkflowTask.objects.filter(workflow=workflow, job__isnull=True, kind=StepKind.JOB).update(skipped=True)
    # A map still running: the children that succeeded are undone where it stands in the order (now).
    for fan in WorkflowTask.objects.filter(workflow=workflow, kind=StepKind.MAP, state=StepState.WAITING,
                                           compensation__isnull=False):  # fmt: skip
        workflow.success_seq += 1
        fan.succeeded_seq, fan.compensation_state = workflow.success_seq, CompensationState.PENDING
        fan.save(update_fields=["succeeded_seq", "compensation_state"])
    # Steps not reached, or waiting, stop where they are (a waiting one is not woken any more).
    WorkflowTask.objects.filter(workflow=workflow, state__in=[StepState.NONE, StepState.WAITING]).exclude(
        kind=StepKind.JOB
    ).exclude(pk__in=still_running).update(state=StepState.CANCELLED, skipped=True, wake_at=None,
                                           ended_at=timezone.now())  # fmt: skip
    # The workflow is locked here and moved on below, so the transition does not call back
    # into it for every job; rows another transaction holds are skipped (see the module's note
    # on lock order).
    cancelled = transitions.stop_for_saga(workflow.id)
    if cancelled:
        services.discard_dispatches(cancelled)
    advance_saga(workflow)


def _cancel_children(workflow: Workflow) -> list[int]:
    """Cancel the running child workflows of the workflow's sub-workflow steps; the steps whose
    child is still compensating."""
    waiting = list(
        WorkflowTask.objects.filter(workflow=workflow, kind=StepKind.WORKFLOW, state=StepState.WAITING).values_list(
            "pk", flat=True
        )
    )
    still_running = []
    for child in Workflow.objects.filter(parent_task_id__in=waiting).exclude(status__in=WORKFLOW_TERMINAL):
        if workflow_services.workflow_cancel(workflow_id=child.id).status not in WORKFLOW_TERMINAL:
            still_running.append(child.parent_task_id)
    return [pk for pk in still_running if pk is not None]


def advance_saga(workflow: Workflow) -> None:
    """Start the next compensation, or finish the workflow, unless something still runs."""
    if workflow.status != WorkflowStatus.COMPENSATING:
        workflow.save()
        return
    # Its jobs, and its maps' children (jobs of their batches, not of the workflow: see workflows.maps).
    fanned = WorkflowTask.objects.filter(workflow=workflow, batch_id__isnull=False).values("batch_id")
    mine = Q(workflow=workflow) | Q(batch_id__in=Subquery(fanned))
    busy = Job.objects.filter(mine, status__in=ACTIVE).exists() or (
        WorkflowTask.objects.filter(workflow=workflow, kind=StepKind.WORKFLOW, state=StepState.WAITING).exists()
    )
    if busy:  # a task still stopping, a compensation or a child workflow still running: its end calls us again
        workflow.save()
        return
    pending = WorkflowTask.objects.filter(workflow=workflow, compensation_state=CompensationState.PENDING)
    while True:
        next_task = pending.order_by("-succeeded_seq").first()
        if next_task is None:
            _finish(workflow, WorkflowStatus.CANCELLED if workflow.cancel_requested_at else WorkflowStatus.FAILED)
            return
        if next_task.kind == StepKind.WORKFLOW:  # its child succeeded: the step's result names it
            compensates = {"task": next_task.task_id, "job": None, "result": next_task.result}
            break
        if next_task.kind != StepKind.MAP:
            assert next_task.job_id is not None  # only a task that ran and succeeded has one to compensate
            task_job = Job.objects.only("id", "result").get(id=next_task.job_id)
            compensates = {"task": next_task.task_id, "job": str(task_job.id), "result": task_job.result}
            break
        child = maps.next_child_to_undo(next_task)
        if child is not None:
            compensates = {"task": maps.child_label(next_task, child), "job": str(child.id), "result": child.result}
            maps.mark_undone(next_task, child)
            break
        failed = any(t.startswith(f"{next_task.task_id}[") for t in workflow.failed_compensations)
        next_task.compensation_state = CompensationState.FAILED if failed else CompensationState.SUCCEEDED
        next_task.save(update_fields=["compensation_state"])
    spec = next_task.compensation or {}
    options = {k: v for k, v in spec.items() if k not in ("type", "payload")}
    (sub,) = services.job_submit_bulk(
        owner_id=workflow.owner_id,
        specs=[_spec(workflow, spec["type"], spec.get("payload") or {}, options, extra={COMPENSATES_KEY: compensates})],
        trace=workflow.trace_context,
    )
    next_task.compensation_job_id = sub.job.id
    next_task.compensation_state = CompensationState.RUNNING
    next_task.save(update_fields=["compensation_job_id", "compensation_state", "undo_after"])
    workflow.save()


def _finish(workflow: Workflow, status: str) -> None:
    workflow.status = status
    workflow.finished_at = timezone.now()
    workflow.save()
    prom.WORKFLOWS_FINISHED.labels(status).inc()
    if workflow.parent_task_id is not None:
        child_ended(workflow.id)


def lock(workflow_id: uuid.UUID | str) -> None:
    with connection.cursor() as cur:
        cur.execute("SELECT 1 FROM workflows_workflow WHERE id = %s FOR UPDATE", [str(workflow_id)])
