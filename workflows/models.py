"""Workflows and their tasks. Each task runs as an ordinary job (`Job.workflow` links it), so
the jobs API, admin, logs and metrics apply to tasks unchanged.

State changes live in `workflows.progress`, always in the transaction of the job transition
that causes them, with the workflow row locked (`SELECT ... FOR UPDATE`): two parents of one
task finishing at the same instant on two workers are serialized there, and exactly one of
them releases the child.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

from config.ids import new_id


class WorkflowStatus(models.TextChoices):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    COMPENSATING = "COMPENSATING"
    CANCELLED = "CANCELLED"


WORKFLOW_TERMINAL = frozenset({WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED})


class Workflow(models.Model):
    id = models.UUIDField(primary_key=True, default=new_id, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="workflows")
    name = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=16, choices=WorkflowStatus.choices, default=WorkflowStatus.RUNNING)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 NULL = no key
    request_hash = models.CharField(max_length=64, blank=True, default="")
    tasks_total = models.PositiveIntegerField(default=0)
    tasks_succeeded = models.PositiveIntegerField(default=0)
    # Numbers successes in the order they happened: compensations run in the reverse order.
    success_seq = models.PositiveIntegerField(default=0)
    failed_task = models.CharField(max_length=200, blank=True, default="")  # the task whose failure started the saga
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    failed_compensations = models.JSONField(default=list, blank=True)  # task ids whose compensation dead-lettered
    # The workflow's trace (W3C traceparent of its submit span): its jobs join it.
    traceparent = models.CharField(max_length=55, null=True, blank=True)  # noqa: DJ001 NULL = not traced
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "workflows_workflow"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="workflow_owner_idempotency_key_uniq",
            ),
            models.CheckConstraint(condition=Q(status__in=WorkflowStatus.values), name="workflow_status_valid"),
        ]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="workflow_owner_created"),
            models.Index(fields=["status", "-created_at"], name="workflow_status_created"),
            models.Index(fields=["-created_at"], name="workflow_created"),
        ]

    def __str__(self) -> str:
        return f"{self.name or 'workflow'} {self.id} ({self.status})"


class CompensationState(models.TextChoices):
    NONE = "NONE"  # nothing to compensate (yet)
    PENDING = "PENDING"  # its task succeeded and the saga will compensate it
    RUNNING = "RUNNING"  # its compensation job exists and has not finished
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # the compensation job dead-lettered or was cancelled


class WorkflowTask(models.Model):
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="tasks")
    task_id = models.CharField(max_length=200)
    position = models.PositiveIntegerField()  # in topological order
    type = models.CharField(max_length=200)
    payload = models.JSONField(default=dict)
    depends_on = ArrayField(models.CharField(max_length=200), default=list, blank=True)
    dependents = ArrayField(models.CharField(max_length=200), default=list, blank=True)
    # Dependencies not yet succeeded; the transaction that brings it to 0 releases the task.
    pending_parents = models.PositiveIntegerField(default=0)
    # The job's options (queue, priority, max_attempts, backoff, timeout_seconds).
    options = models.JSONField(default=dict, blank=True)
    compensation = models.JSONField(null=True, blank=True)  # {"type", "payload", ...} or None
    job = models.OneToOneField(
        "orchestration_jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="workflow_task"
    )
    skipped = models.BooleanField(default=False)  # never released: the saga cancelled it first
    succeeded_seq = models.PositiveIntegerField(null=True, blank=True)
    compensation_state = models.CharField(
        max_length=16, choices=CompensationState.choices, default=CompensationState.NONE
    )
    compensation_job = models.OneToOneField(
        "orchestration_jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="compensated_task"
    )
    # Once retention moved its jobs to the archive (their links above are then NULL), what the
    # workflow still shows of them: {"job", "status", "started_at", "finished_at",
    # "compensation_job", "compensation_status"}.
    archived = models.JSONField(null=True, blank=True)

    class Meta:
        db_table = "workflows_workflowtask"
        ordering = ["workflow", "position"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "task_id"], name="workflow_task_id_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} of {self.workflow_id}"
