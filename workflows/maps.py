"""Map steps: one child job per element of a parent's result list, run as a batch.

    reached (its parents succeeded) → the parent's result at `path` must be a list of at most
      `max_width` elements: a batch of child jobs is submitted, in the releasing transaction,
      each with the template's payload plus {"item": <element>, "index": i}; the step WAITING
      (not a list, too wide, an element too large → FAILED, and the saga runs)
    a child dead-letters (or is cancelled) → the step FAILED, the saga runs (as for any task)
    a child succeeds → nothing in its transaction (no lock on the workflow: children end on
      many workers at once); the batch's row trigger counts it, and the scheduler's batch look
      (`batch_moved`) sees the batch complete → the step SUCCEEDED, its dependents released
    saga: a map with a compensation undoes its succeeded children one at a time, latest
      success first (`next_child_to_undo`), where it stands in the saga's order

Dependents get a reference under `parents`, never the children's results themselves: a map
of 10,000 results has no memory cliff. `results` (the handler helper) and the paged API read
them in pages of the batch's jobs, in the children's order.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
from django.conf import settings
from django.db.models import IntegerField, QuerySet
from django.db.models.fields.json import KT
from django.db.models.functions import Cast

from jobs import batches, services
from jobs.models import Batch, Job, JobStatus
from workflows import advance
from workflows.models import StepState, Workflow, WorkflowStatus, WorkflowTask

PAGE = 1000  # children's results per page (the API's largest page, the helper's)
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


def expand(workflow: Workflow, step: WorkflowTask, parent_result: Any, now: datetime) -> str:
    """The step is reached (the workflow is locked): submit its children as a batch. Returns
    why it cannot ("" when it did): the caller fails the step with that reason."""
    rule = step.wait or {}
    try:
        items = at_path(parent_result, rule.get("path", ""))
    except KeyError as exc:
        return f"the result of {rule['over']!r} has no {rule.get('path')!r} (missing {exc.args[0]!r})"
    if not isinstance(items, list):
        return f"the result of {rule['over']!r} at {rule.get('path')!r} is a {type(items).__name__}, not a list"
    width = min(int(rule.get("max_width") or settings.WORKFLOW_MAP_MAX_WIDTH), settings.WORKFLOW_MAP_MAX_WIDTH)
    if len(items) > width:
        where = f"the result of {rule['over']!r} at {rule.get('path')!r}"
        return f"{where} has {len(items):,} elements, over max_width {width:,}"
    template = rule["task"]
    base = len(orjson.dumps(template.get("payload") or {}))
    for i, item in enumerate(items):
        if base + len(orjson.dumps(item)) + 32 > settings.JOB_PAYLOAD_MAX_BYTES:
            return f"element {i} with the template's payload is over JOB_PAYLOAD_MAX_BYTES"
    batch = Batch.objects.create(
        owner_id=workflow.owner_id, description=f"map {step.task_id} of workflow {workflow.id}"[:200], closed_at=now,
        check_needed=True,  # looked at next tick even with no child (an empty map)
    )  # fmt: skip
    options = {k: template[k] for k in CHILD_OPTIONS if k in template}
    specs = [
        services.JobSpec(
            type=template["type"],
            payload={**(template.get("payload") or {}), "item": item, "index": i},
            workflow_id=workflow.id,
            batch_id=batch.id,
            **options,
        )
        for i, item in enumerate(items)
    ]
    for start in range(0, len(specs), 5000):  # bounded statements, the whole fan-out in this transaction
        services.job_submit_bulk(owner_id=workflow.owner_id, specs=specs[start : start + 5000],
                                 traceparent=workflow.traceparent)  # fmt: skip
    step.state, step.batch_id, step.wake_at = StepState.WAITING, batch.id, None
    step.save(update_fields=["state", "batch_id", "wake_at"])
    return ""


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
    if failed:  # normally failed at the child's end already
        advance.map_failed(workflow, step, f"{failed} of its children failed")
        return StepState.FAILED
    if counts.unfinished:
        return None
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


def is_child(job_id: uuid.UUID, workflow_id: uuid.UUID) -> bool:
    """A job of the workflow that is none of its tasks' nor compensations' jobs: a map's child."""
    return not WorkflowTask.objects.filter(workflow_id=workflow_id, compensation_job_id=job_id).exists()


def child_label(step: WorkflowTask, child: Job) -> str:
    return f"{step.task_id}[{(child.payload or {}).get('index')}]"
