"""Map steps: one child job per element of a parent's result list, run as a batch.

    reached (its parents succeeded) → the parent's result at `path` must be a list of at most
      `max_width` elements (not a list, too wide, an element too large → FAILED, and the saga
      runs); the step WAITING, its batch open; once that commits, the children go in a chunk
      a transaction (`fan_out`), each with the template's payload plus {"item": <element>,
      "index": i}, and the last chunk closes the batch; a process that dies halfway leaves
      the rest to the scheduler's wake scan (`fan_out_chunk`), which goes on from the batch's count
    a child ends → nothing in its transaction: the children are jobs of the batch, not of the
      workflow, so they end as plain jobs do (a worker records many successes in one
      statement, and no child locks the workflow); the batch's row trigger counts each end,
      and the scheduler's batch look (`batch_moved`) moves the map on:
      a child dead-lettered (or cancelled) → the step FAILED, the saga runs (as for any task)
      every child succeeded → the step SUCCEEDED, its dependents released
    saga: a map with a compensation undoes its succeeded children one at a time, latest
      success first (`next_child_to_undo`), where it stands in the saga's order

Dependents get a reference under `parents`, never the children's results themselves: a map
of 10,000 results has no memory cliff. `results` (the handler helper) and the paged API read
them in pages of the batch's jobs, in the children's order.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import orjson
from django.conf import settings
from django.db import transaction
from django.db.models import IntegerField, QuerySet
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.utils import timezone

from jobs import batches, services
from jobs.models import Batch, Job, JobStatus
from workflows import advance
from workflows.models import StepKind, StepState, Workflow, WorkflowStatus, WorkflowTask

logger = logging.getLogger(__name__)

PAGE = 1000  # children's results per page (the API's largest page, the helper's)
FAN_OUT_CHUNK = 1000  # children submitted a transaction
FAN_OUT_GRACE = timedelta(seconds=5)  # a fan-out no process moved on for this long: the scheduler goes on with it
CHILD_OPTIONS = ("queue", "priority", "max_attempts", "backoff", "timeout_seconds")


def at_path(value: Any, path: str) -> Any:
    """The part of a result at a dotted path ("" is the whole result); KeyError when absent."""
    for part in [p for p in path.split(".") if p]:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(part)
    return value


def _items(step: WorkflowTask, parent_result: Any) -> tuple[list[Any], str]:
    """The elements the map fans out over, or why it cannot."""
    rule = step.wait or {}
    where = f"the result of {rule['over']!r} at {rule.get('path')!r}"
    try:
        items = _listed(step, parent_result)
    except KeyError as exc:
        return [], f"{where}: it has no {exc.args[0]!r}"
    if not isinstance(items, list):
        return [], f"{where} is a {type(items).__name__}, not a list"
    width = min(int(rule.get("max_width") or settings.WORKFLOW_MAP_MAX_WIDTH), settings.WORKFLOW_MAP_MAX_WIDTH)
    if len(items) > width:
        return [], f"{where} has {len(items):,} elements, over max_width {width:,}"
    base = len(orjson.dumps(rule["task"].get("payload") or {}))
    for i, item in enumerate(items):
        if base + len(orjson.dumps(item)) + 32 > settings.JOB_PAYLOAD_MAX_BYTES:
            return [], f"{where}: element {i} with the template's payload is over JOB_PAYLOAD_MAX_BYTES"
    return items, ""


def parent_result(workflow: Workflow, step: WorkflowTask) -> Any:
    """The result of the task the map fans out over (a job's, or a step's own)."""
    parent = WorkflowTask.objects.filter(workflow=workflow, task_id=(step.wait or {})["over"])
    kind, job_result, step_result = parent.values_list("kind", "job__result", "result").get()
    return job_result if kind == StepKind.JOB else step_result


def expand(workflow: Workflow, step: WorkflowTask, now: datetime) -> str:
    """The step is reached (the workflow is locked): check its list and open the batch of its
    children; they are submitted once this commits (`fan_out`). Returns why it cannot fan out
    ("" when it can): the caller fails the step with that reason."""
    _, why = _items(step, parent_result(workflow, step))
    if why:
        return why
    batch = Batch.objects.create(
        owner_id=workflow.owner_id, description=f"map {step.task_id} of workflow {workflow.id}"[:200],
    )  # fmt: skip
    # WAITING with a time: the scheduler's wake scan goes on with the fan-out if the process
    # that began it dies (a crash between chunks loses nothing and submits nothing twice).
    step.state, step.batch_id, step.wake_at = StepState.WAITING, batch.id, now + FAN_OUT_GRACE
    step.save(update_fields=["state", "batch_id", "wake_at"])
    transaction.on_commit(partial(fan_out, step.pk, workflow.id))
    return ""


def fan_out(step_pk: int, workflow_id: uuid.UUID) -> None:
    """Submit the map's children, a chunk a transaction, so the first ones run while the rest
    go in (one transaction of 10,000 inserts would hold every child back until it commits).
    The list is read once: a parent's result does not change once it succeeded."""
    items = None
    try:
        while True:
            with transaction.atomic():
                workflow = Workflow.objects.select_for_update().get(id=workflow_id)
                step = WorkflowTask.objects.get(pk=step_pk)
                if items is None:
                    items = _listed(step, parent_result(workflow, step))
                if not fan_out_chunk(workflow, step, items=items, grace=FAN_OUT_GRACE):
                    return
    except Exception:  # the scheduler's wake scan goes on with it (its wake_at is due soon)
        logger.exception("workflow.map_fan_out_failed", extra={"step": step_pk})


def _listed(step: WorkflowTask, parent_result: Any) -> list[Any]:
    """What the step's path names in its parent's result: the list `expand` checked, which the
    chunks after it do not check again (it was, and a parent's result does not change)."""
    return at_path(parent_result, (step.wait or {}).get("path", ""))  # type: ignore[no-any-return]


def fan_out_chunk(
    workflow: Workflow, step: WorkflowTask, *, items: list[Any] | None = None, grace: timedelta = timedelta(0)
) -> bool:
    """Submit the next chunk of the map's children (the workflow is locked; how many went in
    already is the batch's TOTAL, in the same snapshot); the last one closes the batch. False
    when there is nothing more to do: all in, or the workflow no longer running."""
    if workflow.status != WorkflowStatus.RUNNING or step.state != StepState.WAITING or step.wake_at is None:
        return False
    if items is None:
        items = _listed(step, parent_result(workflow, step))
    assert step.batch_id is not None
    done = batches.batch_total(step.batch_id)
    template = (step.wait or {})["task"]
    options = {k: template[k] for k in CHILD_OPTIONS if k in template}
    specs = [
        services.JobSpec(
            type=template["type"],
            payload={**(template.get("payload") or {}), "item": item, "index": i},
            batch_id=step.batch_id,
            **options,
        )
        for i, item in enumerate(items[done : done + FAN_OUT_CHUNK], start=done)
    ]
    if specs:
        services.job_submit_bulk(owner_id=workflow.owner_id, specs=specs, trace=workflow.trace_context)
    now = timezone.now()
    if done + len(specs) < len(items):
        WorkflowTask.objects.filter(pk=step.pk).update(wake_at=now + grace)
        return True
    batches.batch_close(batch_id=step.batch_id)  # all in: the scheduler's batch look can end it
    WorkflowTask.objects.filter(pk=step.pk).update(wake_at=None)
    return False


def reference(workflow: Workflow, step: WorkflowTask, counts: batches.Counts) -> dict[str, Any]:
    """What a map's dependents get under `parents`: where its children's results are."""
    return {
        "map": step.task_id, "workflow": str(workflow.id), "batch": str(step.batch_id), "count": counts.total,
        "succeeded": counts.by_status[JobStatus.SUCCEEDED],
        "results": f"/api/v1/workflows/{workflow.id}/maps/{step.task_id}/results/",
    }  # fmt: skip


def batch_moved(batch_id: uuid.UUID, now: datetime) -> str | None:
    """The scheduler's look at a batch whose jobs ended (in its fenced transaction): when the
    batch is a map's children, move the map on. What became of the step, or None."""
    found = WorkflowTask.objects.filter(batch_id=batch_id).values_list("workflow_id", "pk").first()
    if found is None:
        return None
    workflow = Workflow.objects.select_for_update().get(id=found[0])
    step = WorkflowTask.objects.get(pk=found[1])
    if workflow.status == WorkflowStatus.COMPENSATING:
        advance.advance_saga(workflow)  # a child it waited for has ended
        return None
    if workflow.status != WorkflowStatus.RUNNING or step.state != StepState.WAITING:
        return None
    counts = batches.batch_counts(batch_id)
    failed = counts.by_status[JobStatus.DEAD_LETTER] + counts.by_status[JobStatus.CANCELLED]
    if failed:
        first = children(step).filter(status__in=[JobStatus.DEAD_LETTER, JobStatus.CANCELLED]).order_by("finished_at")
        job_id, status, error = first.values_list("id", "status", "last_error")[0]
        why = f"{failed} of its {counts.total} children failed, first {job_id} ({status}: {error[:300]})"
        advance.map_failed(workflow, step, why)
        return StepState.FAILED
    if counts.unfinished or not Batch.objects.filter(id=batch_id, closed_at__isnull=False).exists():
        return None  # children still running, or still going in
    advance.step_succeeded(workflow, step, reference(workflow, step, counts))
    return StepState.SUCCEEDED


def children(step: WorkflowTask) -> QuerySet[Job]:
    """The step's child jobs, through the batch's index."""
    return Job.objects.filter(batch_id=step.batch_id)


_INDEX = Cast(KT("payload__index"), IntegerField())  # a child's place in its list


def page(step: WorkflowTask, *, after: int = -1, size: int = PAGE) -> list[dict[str, Any]]:
    """Children after index `after`, in index order: {"index", "job", "status", "result"}."""
    if step.batch_id is None:
        return []
    rows = children(step).annotate(index=_INDEX).filter(index__gt=after).order_by("index")[:size]
    return [
        {"index": index, "job": str(job_id), "status": status, "result": result}
        for index, job_id, status, result in rows.values_list("index", "id", "status", "result")
    ]


def results(reference: dict[str, Any], *, page_size: int = PAGE) -> Iterator[tuple[int, Any]]:
    """For a handler: (index, result) of each succeeded child of the map a parent reference
    names (`payload["parents"]["<map>"]`), in order, a page at a time (never all at once)."""
    step = WorkflowTask.objects.get(workflow_id=reference["workflow"], task_id=reference["map"])
    after = -1
    while rows := page(step, after=after, size=page_size):
        for row in rows:
            if row["status"] == JobStatus.SUCCEEDED:
                yield row["index"], row["result"]
        after = rows[-1]["index"]


_UNDO_ORDER = ("-finished_at", "-id")


def next_child_to_undo(step: WorkflowTask) -> Job | None:
    """The succeeded child to compensate next: latest success first, after the last one undone."""
    if step.batch_id is None:
        return None
    qs = children(step).filter(status=JobStatus.SUCCEEDED)
    if step.undo_after:
        finished, job_id = datetime.fromisoformat(step.undo_after[0]), uuid.UUID(step.undo_after[1])
        qs = qs.filter(finished_at__lte=finished).exclude(finished_at=finished, id__gte=job_id)
    return qs.order_by(*_UNDO_ORDER).first()


def mark_undone(step: WorkflowTask, child: Job) -> None:
    assert child.finished_at is not None
    step.undo_after = [child.finished_at.isoformat(), str(child.id)]


def child_label(step: WorkflowTask, child: Job) -> str:
    return f"{step.task_id}[{(child.payload or {}).get('index')}]"
