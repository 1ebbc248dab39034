"""Workflows and their tasks. Each task runs as an ordinary job (`Job.workflow` links it), so
the jobs API, admin, logs and metrics apply to tasks unchanged.

State changes live in `workflows.advance`, always in the transaction of the job transition
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


DEADLINE_TASK = "<deadline>"  # the failed_task of a workflow its deadline failed (no task id has "<")
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
    # `deadline_seconds` after its submit: still RUNNING then, it fails (its saga runs), the
    # scheduler's deadline scan sees to it; failed_task says DEADLINE_TASK.
    deadline_at = models.DateTimeField(null=True, blank=True)
    failed_compensations = models.JSONField(default=list, blank=True)  # task ids whose compensation dead-lettered
    # A child workflow: the `workflow` step of its parent that started it (and waits for it). No
    # database constraint: adding one to a live table validates every row under a lock.
    parent_task = models.ForeignKey(
        "WorkflowTask", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False,
        db_constraint=False,
    )  # fmt: skip
    # The workflow's trace context (the carrier of its submit span): its jobs join it.
    trace_context = models.JSONField(null=True, blank=True)
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
            models.Index(
                fields=["deadline_at"],
                condition=Q(status=WorkflowStatus.RUNNING, deadline_at__isnull=False),
                name="workflow_running_deadline",
            ),
            models.Index(fields=["parent_task"], condition=Q(parent_task__isnull=False), name="workflow_parent_task"),
        ]

    def __str__(self) -> str:
        return f"{self.name or 'workflow'} {self.id} ({self.status})"


class CompensationState(models.TextChoices):
    NONE = "NONE"  # nothing to compensate (yet)
    PENDING = "PENDING"  # its task succeeded and the saga will compensate it
    RUNNING = "RUNNING"  # its compensation job exists and has not finished
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # the compensation job dead-lettered or was cancelled


class StepKind(models.TextChoices):
    JOB = "job"  # a job of its type runs it
    WAIT = "wait"  # a signal, a sleep or a time: a row the scheduler wakes, no worker, no message
    APPROVAL = "approval"  # N distinct users of a group approve (one rejection fails it): no worker either
    MAP = "map"  # a child job per element of a parent's result list (a batch of them): the step holds none
    WORKFLOW = "workflow"  # starts a child workflow and waits for it to end


class StepState(models.TextChoices):
    """Where a step that is not a job is (a job step's state is its job's)."""

    NONE = "NONE"  # not reached yet
    WAITING = "WAITING"  # reached: waits for its signal, its time or its approvals
    SUCCEEDED = "SUCCEEDED"  # done: its result is its signal's payload (or when it woke, or who approved)
    FAILED = "FAILED"  # its wait timed out with on_timeout fail, or it was rejected: the saga runs
    CANCELLED = "CANCELLED"  # the saga stopped it, or it was never reached


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
    # A step that is not a job: what it waits for (kind `wait`: {"signal", "timeout_seconds",
    # "on_timeout"}, {"sleep_seconds"} or {"until"}; kind `approval`: {"approvers", "group",
    # "allow_self", "timeout_seconds"}; kind `map`: {"over", "path", "task", "max_width"}), where
    # it is, when the scheduler looks at it (its time, or its signal's timeout), its result and
    # when it ended.
    kind = models.CharField(max_length=16, choices=StepKind.choices, default=StepKind.JOB, db_default=StepKind.JOB)
    wait = models.JSONField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=StepState.choices, default=StepState.NONE,
                             db_default=StepState.NONE)  # fmt: skip
    wake_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    # A map step's children: the batch of their jobs (jobs.Batch), and how far its saga got
    # undoing them ([finished_at, job id] of the last child compensated, latest success first).
    batch_id = models.UUIDField(null=True, blank=True)
    undo_after = models.JSONField(null=True, blank=True)
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
        indexes = [
            # The scheduler's wake scan: a range of waiting steps due by now, however many wait.
            models.Index(fields=["wake_at"], condition=Q(state=StepState.WAITING), name="workflowtask_waking"),
            # The scheduler's batch look: the map step whose children a batch holds.
            models.Index(fields=["batch_id"], condition=Q(batch_id__isnull=False), name="workflowtask_map_batch"),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} of {self.workflow_id}"


class WorkflowSignal(models.Model):
    """A signal sent to a workflow (`POST .../signals/<name>`): delivered to the step waiting for
    it, or kept until one is reached (`task` stays empty until then)."""

    id = models.BigAutoField(primary_key=True)
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="signals")
    name = models.CharField(max_length=200)
    payload = models.JSONField(default=dict)
    sent_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    task = models.ForeignKey(WorkflowTask, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "workflows_workflowsignal"
        ordering = ["workflow", "id"]
        indexes = [models.Index(fields=["workflow", "name"], name="workflowsignal_name")]

    def __str__(self) -> str:
        return f"signal {self.name} to {self.workflow_id}"


class Decision(models.TextChoices):
    APPROVE = "approve"
    REJECT = "reject"


class WorkflowDecision(models.Model):
    """One user's decision on an approval step: who, when, what, why. One per user and step (the
    unique constraint decides between a user's racing clicks); kept with the workflow."""

    id = models.BigAutoField(primary_key=True)
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="decisions")
    task = models.ForeignKey(WorkflowTask, on_delete=models.CASCADE, related_name="decisions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    username = models.CharField(max_length=150)  # as it was then: the record outlives a renamed or deleted user
    decision = models.CharField(max_length=8, choices=Decision.choices)
    comment = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "workflows_workflowdecision"
        ordering = ["task", "id"]
        constraints = [
            models.UniqueConstraint(fields=["task", "user"], name="workflowdecision_one_per_user"),
            models.CheckConstraint(condition=Q(decision__in=Decision.values), name="workflowdecision_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.username} {self.decision}d {self.task_id}"
