"""Writes on workflows: submit and cancel, each in one transaction."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import orjson
from django.db import IntegrityError, transaction
from django.utils import timezone

from config import tracing
from jobs import audit
from jobs.errors import IdempotencyConflict
from metrics import prom
from workflows import advance, dag
from workflows.errors import WorkflowFinished, WorkflowNotFound
from workflows.models import DEADLINE_TASK, WORKFLOW_TERMINAL, StepKind, Workflow, WorkflowStatus, WorkflowTask


@dataclass(frozen=True)
class TaskSpec:
    id: str
    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    # Job options for the task's job: queue, priority, max_attempts, backoff, timeout_seconds.
    options: dict[str, Any] = field(default_factory=dict)
    compensation: dict[str, Any] | None = None  # {"type", "payload", and job options}
    wait: dict[str, Any] | None = None  # a wait step (no job): {"signal", ...}, {"sleep_seconds"} or {"until"}
    approval: dict[str, Any] | None = None  # an approval step (no job): {"approvers", "group", "allow_self", ...}
    map: dict[str, Any] | None = None  # a map step: {"over", "path", "task", "max_width"} (its children are jobs)
    workflow: dict[str, Any] | None = None  # a sub-workflow step: its child's WorkflowSpec, as `as_dict` gives it

    @property
    def kind(self) -> StepKind:
        if self.workflow is not None:
            return StepKind.WORKFLOW
        if self.map is not None:
            return StepKind.MAP
        if self.approval is not None:
            return StepKind.APPROVAL
        return StepKind.WAIT if self.wait is not None else StepKind.JOB


@dataclass(frozen=True)
class WorkflowSpec:
    tasks: tuple[TaskSpec, ...]
    name: str = ""
    idempotency_key: str | None = None
    deadline_seconds: int | None = None  # still RUNNING this long after its submit: it fails

    def request_hash(self) -> str:
        body = asdict(self)
        body.pop("idempotency_key")
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def nodes(self) -> list[dag.Node]:
        return [dag.Node(t.id, tuple(dict.fromkeys(t.depends_on))) for t in self.tasks]

    def as_dict(self) -> dict[str, Any]:
        """What a sub-workflow step keeps of its child, to start it once reached (`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkflowSpec:
        tasks = tuple(TaskSpec(**{**t, "depends_on": tuple(t["depends_on"])}) for t in data["tasks"])
        return cls(**{**data, "tasks": tasks})


def workflow_submit(
    *, owner_id: int, spec: WorkflowSpec, max_tasks: int, parent_task: WorkflowTask | None = None
) -> tuple[Workflow, bool]:
    """Create the workflow and its tasks and release the root tasks, in one transaction.
    Returns (workflow, created); a replayed idempotency key returns the first workflow.

    The submit is a span (`workflow.submit`); the workflow keeps its context, and every job
    of the workflow (tasks and compensations) is submitted into that trace."""
    with tracing.span("workflow.submit", attributes={f"{tracing.PREFIX}workflow.tasks": len(spec.tasks)}):
        return _submit(owner_id, spec, max_tasks, parent_task)


def _submit(
    owner_id: int, spec: WorkflowSpec, max_tasks: int, parent_task: WorkflowTask | None
) -> tuple[Workflow, bool]:
    nodes = spec.nodes()
    problems = dag.find_problems(nodes, max_tasks=max_tasks)
    if problems:
        raise ValueError("; ".join(problems))  # the API validated already: a programming error here
    digest = spec.request_hash() if spec.idempotency_key else ""
    with transaction.atomic():
        if spec.idempotency_key:
            existing = _replay(owner_id, spec.idempotency_key, digest)
            if existing is not None:
                return existing, False
        try:
            with transaction.atomic():
                workflow = Workflow.objects.create(
                    owner_id=owner_id, name=spec.name, idempotency_key=spec.idempotency_key, request_hash=digest,
                    tasks_total=len(spec.tasks), trace_context=tracing.inject(), parent_task=parent_task,
                    deadline_at=timezone.now() + timedelta(seconds=spec.deadline_seconds)
                    if spec.deadline_seconds else None,
                )  # fmt: skip
        except IntegrityError:  # the same key, committed by a concurrent request meanwhile
            existing = _replay(owner_id, spec.idempotency_key or "", digest)
            assert existing is not None
            return existing, False
        order = {task_id: i for i, task_id in enumerate(dag.topological_order(nodes))}
        dependents = dag.dependents_of(nodes)
        tasks = WorkflowTask.objects.bulk_create(
            [
                WorkflowTask(
                    workflow=workflow, task_id=t.id, position=order[t.id], type=t.type, payload=t.payload,
                    depends_on=list(n.depends_on), dependents=dependents[t.id], pending_parents=len(n.depends_on),
                    options=t.options, compensation=t.compensation, wait=t.wait or t.approval or t.map or t.workflow,
                    kind=t.kind,
                )
                for t, n in zip(spec.tasks, nodes, strict=True)
            ]
        )  # fmt: skip
        advance.release(workflow, [t for t in tasks if t.pending_parents == 0])
    prom.WORKFLOWS_SUBMITTED.inc()
    return workflow, True


def _replay(owner_id: int, key: str, digest: str) -> Workflow | None:
    existing = Workflow.objects.filter(owner_id=owner_id, idempotency_key=key).first()
    if existing is not None and existing.request_hash != digest:
        raise IdempotencyConflict(key, existing.id, kind="workflow")
    return existing


def workflow_expire(*, workflow_id: uuid.UUID | str, now: Any) -> bool:
    """Past its deadline and still RUNNING → its saga runs (waits stopped, waiting jobs
    cancelled, running ones asked to stop, then compensations), ending FAILED with failed_task
    DEADLINE_TASK. False: it had moved on meanwhile. Call in a transaction."""
    workflow = Workflow.objects.select_for_update().filter(id=workflow_id).first()
    if workflow is None or workflow.status != WorkflowStatus.RUNNING:
        return False
    if workflow.deadline_at is None or workflow.deadline_at > now:
        return False
    advance.start_saga(workflow, failed_task=DEADLINE_TASK)
    return True


def workflow_cancel(*, workflow_id: uuid.UUID | str) -> Workflow:
    """RUNNING → COMPENSATING and, once compensated, CANCELLED: tasks not started are skipped,
    running jobs are stopped. A workflow already compensating will end CANCELLED too."""
    with transaction.atomic():
        workflow = Workflow.objects.select_for_update().filter(id=workflow_id).first()
        if workflow is None:
            raise WorkflowNotFound(workflow_id)
        if workflow.status in WORKFLOW_TERMINAL:
            raise WorkflowFinished(workflow_id, workflow.status, "cancel")
        if workflow.cancel_requested_at is None:
            workflow.cancel_requested_at = timezone.now()
        if workflow.status == WorkflowStatus.RUNNING:
            advance.start_saga(workflow)
        else:
            workflow.save(update_fields=["cancel_requested_at", "updated_at"])
        audit.record("workflow.cancel", "workflow", workflow.id, owner_id=workflow.owner_id)
    workflow.refresh_from_db()
    return workflow
