"""Request and response shapes of the workflows API.

A submitted workflow is checked in one pass: the fields of every task, then the graph
(duplicate ids, unknown dependencies, cycles, size) and the job types, and every problem is
reported together in `errors.tasks`, each message naming the task."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from rest_framework import serializers

from jobs import batches
from jobs.handlers import is_registered, submit_problem
from jobs.models import JobStatus, default_backoff
from jobs.serializers import (
    KEY_HELP,
    BackoffSerializer,
    PayloadField,
    QueueField,
    validate_idempotency_key,
)
from workflows import dag, steps
from workflows.models import Decision, StepKind, StepState, Workflow, WorkflowStatus, WorkflowTask
from workflows.services import TaskSpec, WorkflowSpec

JOB_OPTIONS = ("queue", "priority", "max_attempts", "backoff", "timeout_seconds")


class JobOptionsSerializer(serializers.Serializer):
    queue = QueueField(required=False)
    priority = serializers.IntegerField(min_value=0, max_value=9, required=False)
    max_attempts = serializers.IntegerField(min_value=1, max_value=25, required=False)
    backoff = BackoffSerializer(required=False)
    timeout_seconds = serializers.IntegerField(min_value=1, max_value=7 * 86400, required=False)


class CompensationSerializer(JobOptionsSerializer):
    type = serializers.CharField(max_length=200)
    payload = PayloadField()


MAX_WAIT_SECONDS = 366 * 86400
TASK_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$"


class WaitSerializer(serializers.Serializer):
    """What a wait step waits for: exactly one of a signal, a sleep, a time."""

    signal = serializers.RegexField(
        steps.SIGNAL_NAME, required=False, help_text="POST .../signals/<name> completes it."
    )
    timeout_seconds = serializers.IntegerField(min_value=1, max_value=MAX_WAIT_SECONDS, required=False)
    on_timeout = serializers.ChoiceField(choices=["fail", "continue"], required=False)
    sleep_seconds = serializers.FloatField(min_value=0, max_value=MAX_WAIT_SECONDS, required=False)
    until = serializers.DateTimeField(required=False)

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        given = [name for name in ("signal", "sleep_seconds", "until") if name in data]
        if len(given) != 1:
            raise serializers.ValidationError("a wait is exactly one of signal, sleep_seconds or until")
        if "signal" not in data:
            for name in ("timeout_seconds", "on_timeout"):
                if name in data:
                    raise serializers.ValidationError({name: ["only a signal's wait has one"]})
        elif "on_timeout" in data and "timeout_seconds" not in data:
            raise serializers.ValidationError({"on_timeout": ["needs timeout_seconds"]})
        if "until" in data:
            data["until"] = data["until"].isoformat()
        if "signal" in data and "timeout_seconds" in data:
            data.setdefault("on_timeout", "fail")
        return data


class ApprovalSerializer(serializers.Serializer):
    """Who must approve an approval step: `approvers` distinct users (of `group` when given,
    else the workflow's owner or staff); one rejection fails it, and so does its timeout."""

    approvers = serializers.IntegerField(min_value=1, max_value=100, default=1)
    group = serializers.CharField(max_length=150, required=False, help_text="A Django group's name.")
    allow_self = serializers.BooleanField(default=False, help_text="May the workflow's owner decide?")
    timeout_seconds = serializers.IntegerField(min_value=1, max_value=MAX_WAIT_SECONDS, required=False)

    def validate_group(self, name: str) -> str:
        if not Group.objects.filter(name=name).exists():
            raise serializers.ValidationError(f"no group named {name!r}")
        return name


class MapTaskSerializer(JobOptionsSerializer):
    type = serializers.CharField(max_length=200, help_text="The children's job type.")
    payload = PayloadField(help_text='Each child gets it with "item" (its element) and "index" added.')


class MapSerializer(serializers.Serializer):
    """A child job per element of a parent's result list, at most `max_width` of them."""

    over = serializers.RegexField(TASK_ID, help_text="The parent task whose result holds the list.")
    path = serializers.CharField(
        max_length=200, required=False, default="", allow_blank=True,
        help_text='Where the list is in its result, dotted ("" for the whole result).',
    )  # fmt: skip
    task = MapTaskSerializer()
    max_width = serializers.IntegerField(
        min_value=1, max_value=settings.WORKFLOW_MAP_MAX_WIDTH, required=False,
        help_text=f"More elements fail the step (default and at most WORKFLOW_MAP_MAX_WIDTH, "
        f"{settings.WORKFLOW_MAP_MAX_WIDTH:,}).",
    )  # fmt: skip


STEP_KINDS = ("type", "wait", "approval", "map", "workflow")
MAX_DEPTH = 3  # workflows within workflows, at most this deep


class TaskInputSerializer(JobOptionsSerializer):
    id = serializers.RegexField(TASK_ID, help_text="Unique within the workflow.")
    type = serializers.CharField(max_length=200, required=False, help_text="The job type (not with `wait`).")
    wait = WaitSerializer(required=False, help_text="A step that waits, holding no worker (not with `type`).")
    approval = ApprovalSerializer(required=False, help_text="A step that waits for people's decisions.")
    map = MapSerializer(required=False, help_text="A step that fans out over a parent's result list.")
    workflow = serializers.JSONField(
        required=False,
        help_text=f"A step that starts a child workflow (this endpoint's body: name, tasks, deadline_seconds) and "
        f"waits for it to end; at most {MAX_DEPTH} deep.",
    )
    payload = PayloadField()
    depends_on = serializers.ListField(child=serializers.CharField(max_length=200), default=list, max_length=1000)
    compensation = CompensationSerializer(required=False, allow_null=True, default=None)

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        given = [k for k in STEP_KINDS if k in data]
        if len(given) != 1:
            raise serializers.ValidationError(
                "a task has exactly one of a job `type`, a `wait`, an `approval`, a `map` or a `workflow`"
            )
        if "workflow" in data:
            data["workflow"] = self._child(data["workflow"])
        if "map" in data and data["map"]["over"] not in data["depends_on"]:
            data["depends_on"] = [*data["depends_on"], data["map"]["over"]]  # it fans out over it: it waits for it
        if given[0] not in ("type", "map", "workflow") and data.get("compensation"):
            raise serializers.ValidationError({"compensation": [f"a `{given[0]}` step has nothing to compensate"]})
        return data

    def _child(self, body: Any) -> dict[str, Any]:
        """A sub-workflow's body, checked as a workflow's (its errors nested under `workflow`)."""
        depth = self.context.get("depth", 0) + 1
        if depth > MAX_DEPTH:
            raise serializers.ValidationError({"workflow": [f"workflows nest at most {MAX_DEPTH} deep"]})
        if not isinstance(body, dict):
            raise serializers.ValidationError({"workflow": ["a workflow's body: an object with its tasks"]})
        if body.get("idempotency_key") is not None:
            raise serializers.ValidationError({"workflow": ["a child workflow takes no idempotency_key"]})
        child = WorkflowInputSerializer(data=body, context={**self.context, "depth": depth})
        if not child.is_valid():
            raise serializers.ValidationError({"workflow": child.errors})
        return child.to_spec(child.validated_data).as_dict()


class WorkflowInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
    tasks = TaskInputSerializer(
        many=True,
        allow_empty=True,
        help_text=f"At most {settings.WORKFLOW_MAX_TASKS:,} tasks (WORKFLOW_MAX_TASKS); each task's payload and its "
        "compensation's payload as a job's (JOB_PAYLOAD_MAX_BYTES).",
    )
    idempotency_key = serializers.CharField(
        max_length=200, required=False, allow_null=True, default=None, help_text=KEY_HELP
    )
    deadline_seconds = serializers.IntegerField(
        min_value=1, max_value=MAX_WAIT_SECONDS, required=False, allow_null=True, default=None,
        help_text="Still running this long after its submit, it fails: its saga runs (failed_task `<deadline>`).",
    )  # fmt: skip

    def validate_idempotency_key(self, value: str | None) -> str | None:
        return validate_idempotency_key(value)

    def validate_tasks(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nodes = [dag.Node(t["id"], tuple(t["depends_on"])) for t in tasks]
        limit = settings.WORKFLOW_MAX_TASKS
        problems = []
        if len(nodes) > limit:  # said here to name the setting; the graph check gets a bound it meets
            problems.append(
                f"a workflow may have at most {limit:,} tasks (WORKFLOW_MAX_TASKS), this one has {len(nodes):,}"
            )
        problems += dag.find_problems(nodes, max_tasks=max(limit, len(nodes)))
        signals: dict[str, str] = {}
        for t in tasks:
            if "approval" in t or "workflow" in t:
                continue
            if "map" in t:
                problems += _type_problems(t["id"], t["map"]["task"]["type"], t.get("compensation"))
                continue
            if "wait" in t:
                name = t["wait"].get("signal")
                if name in signals:
                    problems.append(f"task {t['id']!r}: signal {name!r} is waited for by {signals[name]!r} already")
                elif name:
                    signals[name] = t["id"]
                continue
            problems += _type_problems(t["id"], t["type"], t.get("compensation"))
        if problems:
            raise serializers.ValidationError(problems)
        return tasks

    def to_spec(self, data: dict[str, Any]) -> WorkflowSpec:
        return WorkflowSpec(
            name=data["name"],
            idempotency_key=data["idempotency_key"],
            deadline_seconds=data.get("deadline_seconds"),
            tasks=tuple(
                TaskSpec(
                    id=t["id"], type=t.get("type") or next(k for k in STEP_KINDS if k in t), payload=t["payload"],
                    depends_on=tuple(t["depends_on"]), options=_options(t),
                    compensation=_compensation(t.get("compensation")), wait=t.get("wait"), approval=t.get("approval"),
                    map=_map(t.get("map")), workflow=t.get("workflow"),
                )
                for t in data["tasks"]
            ),
        )  # fmt: skip


def _type_problems(task_id: str, type_: str, comp: dict[str, Any] | None) -> list[str]:
    problems = []
    if not is_registered(type_):
        problems.append(f"task {task_id!r}: unknown job type {type_!r} (no handler is registered)")
    elif problem := submit_problem(type_):
        problems.append(f"task {task_id!r}: {problem}")
    if comp and not is_registered(comp["type"]):
        problems.append(f"task {task_id!r}: unknown compensation type {comp['type']!r}")
    elif comp and (problem := submit_problem(comp["type"])):
        problems.append(f"task {task_id!r}: compensation: {problem}")
    return problems


def _map(data: dict[str, Any] | None) -> dict[str, Any] | None:
    if data is None:
        return None
    task = {"type": data["task"]["type"], "payload": data["task"]["payload"], **_options(data["task"])}
    return {"over": data["over"], "path": data["path"], "task": task, "max_width": data.get("max_width")}


def _options(data: dict[str, Any]) -> dict[str, Any]:
    options = {k: data[k] for k in JOB_OPTIONS if k in data}
    if "backoff" in options:
        options["backoff"] = {**default_backoff(), **options["backoff"]}
    return options


def _compensation(data: dict[str, Any] | None) -> dict[str, Any] | None:
    if not data:
        return None
    return {"type": data["type"], "payload": data["payload"], **_options(data)}


class DecisionInputSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=Decision.choices)
    comment = serializers.CharField(max_length=2000, required=False, default="", allow_blank=True)

    def validate_comment(self, value: str) -> str:
        if "\x00" in value:
            raise serializers.ValidationError("a comment may not contain NUL characters")
        return value


class DecisionSerializer(serializers.Serializer):
    user = serializers.CharField()
    decision = serializers.ChoiceField(choices=Decision.choices)
    comment = serializers.CharField()
    at = serializers.DateTimeField()


class TaskSerializer(serializers.Serializer):
    """A task as the API shows it (the schema; `task_rows` builds the values)."""

    id = serializers.CharField()
    type = serializers.CharField()
    depends_on = serializers.ListField(child=serializers.CharField())
    status = serializers.CharField(help_text="The job's status; PENDING before release, CANCELLED if never released.")
    job = serializers.UUIDField(allow_null=True)
    compensation_job = serializers.UUIDField(allow_null=True)
    compensation_status = serializers.CharField(
        allow_null=True, help_text="The compensation job's status, or the saga's plan for it (PENDING, NONE)."
    )
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    kind = serializers.ChoiceField(choices=StepKind.choices, help_text="job, or wait (a step that holds no worker).")
    wait = serializers.JSONField(allow_null=True, help_text="A wait step's signal, sleep or time.")
    wake_at = serializers.DateTimeField(
        allow_null=True, help_text="A waiting step's next look: its time, or its signal's timeout."
    )
    result = serializers.JSONField(
        allow_null=True, help_text="A wait step's result (its signal's payload), an approval's (who approved)."
    )
    approval = serializers.JSONField(allow_null=True, help_text="An approval step's approvers, group, allow_self.")
    decisions = DecisionSerializer(many=True, allow_null=True, help_text="An approval step's decisions, oldest first.")
    workflow = serializers.JSONField(
        allow_null=True,
        help_text="A sub-workflow step's child: {id, status, tasks_total, tasks_succeeded} once started.",
    )
    map = serializers.JSONField(
        allow_null=True,
        help_text="A map step's rule and its children's counts: {over, path, task, max_width, batch, children: "
        "{total, waiting, running, succeeded, failed}}; their results: GET .../maps/<task>/results/.",
    )


_TASK_COLUMNS = (
    "task_id", "type", "depends_on", "job_id", "compensation_job_id", "compensation", "compensation_state", "skipped",
    "job__status", "job__started_at", "job__finished_at", "compensation_job__status", "archived", "kind", "wait",
    "state", "wake_at", "result", "ended_at", "batch_id",
)  # fmt: skip
# A wait step's status in a task row: its own state, named as a job's would be where it can.
_STEP_STATUS = {StepState.NONE: "PENDING", StepState.WAITING: "WAITING", StepState.SUCCEEDED: "SUCCEEDED",
                StepState.FAILED: "FAILED", StepState.CANCELLED: "CANCELLED"}  # fmt: skip


def task_rows(workflow: Workflow) -> list[dict[str, Any]]:
    """Every task of the workflow as the API shows it, in topological order, in one query of
    plain values (model instances would cost most of a 1,000-task workflow's response). A
    task whose job went to the archive shows what retention kept of it."""
    out = []
    rows = list(workflow.tasks.order_by("position").values_list("pk", *_TASK_COLUMNS))
    kind_at, batch_at = 1 + _TASK_COLUMNS.index("kind"), 1 + _TASK_COLUMNS.index("batch_id")
    decisions = steps.decisions_of([r[0] for r in rows if r[kind_at] == StepKind.APPROVAL])
    children = batches.batches_counts([r[batch_at] for r in rows if r[batch_at]])
    subs = {
        parent: {"id": str(child), "status": status, "tasks_total": total, "tasks_succeeded": done}
        for parent, child, status, total, done in Workflow.objects.filter(
            parent_task_id__in=[r[0] for r in rows if r[kind_at] == StepKind.WORKFLOW]
        ).values_list("parent_task_id", "id", "status", "tasks_total", "tasks_succeeded")
    }
    for (pk, task_id, type_, depends_on, job_id, comp_job_id, compensation, comp_state, skipped, status, started,
         finished, comp_status, archived, kind, wait, state, wake_at, result, ended, batch_id) in rows:  # fmt: skip
        if kind != StepKind.JOB:
            approval, fan = kind == StepKind.APPROVAL, kind == StepKind.MAP
            out.append({
                "id": task_id, "type": type_, "depends_on": depends_on, "status": _STEP_STATUS[state], "job": None,
                "compensation_job": str(comp_job_id) if comp_job_id else None,
                "compensation_status": comp_state if compensation else None, "started_at": None, "finished_at": ended,
                "kind": kind, "wait": wait if kind == StepKind.WAIT else None, "wake_at": wake_at, "result": result,
                "approval": wait if approval else None, "decisions": decisions[pk] if approval else None,
                "map": {**wait, "batch": str(batch_id) if batch_id else None,
                        "children": _children(children.get(batch_id))} if fan else None,
                "workflow": subs.get(pk) if kind == StepKind.WORKFLOW else None,
            })  # fmt: skip
            continue
        if archived:
            job_id, status = job_id or archived.get("job"), status or archived.get("status")
            started = started or _when(archived.get("started_at"))
            finished = finished or _when(archived.get("finished_at"))
            comp_job_id = comp_job_id or archived.get("compensation_job")
            comp_status = comp_status or archived.get("compensation_status")
        out.append({
            "id": task_id,
            "type": type_,
            "depends_on": depends_on,
            "status": status if job_id else ("CANCELLED" if skipped else "PENDING"),
            "job": str(job_id) if job_id else None,
            "compensation_job": str(comp_job_id) if comp_job_id else None,
            "compensation_status": comp_status if comp_job_id else (comp_state if compensation else None),
            "started_at": started,
            "finished_at": finished,
            "kind": kind,
            "wait": None,
            "wake_at": None,
            "result": None,
            "approval": None,
            "decisions": None,
            "map": None,
            "workflow": None,
        })  # fmt: skip
    return out


def _children(counts: batches.Counts | None) -> dict[str, int]:
    """A map's children by where they are (all 0 before it fans out)."""
    if counts is None:
        return {"total": 0, "waiting": 0, "running": 0, "succeeded": 0, "failed": 0}
    by = counts.by_status
    return {
        "total": counts.total, "running": by[JobStatus.RUNNING], "succeeded": by[JobStatus.SUCCEEDED],
        "failed": by[JobStatus.DEAD_LETTER] + by[JobStatus.CANCELLED],
        "waiting": counts.unfinished - by[JobStatus.RUNNING],
    }  # fmt: skip


def _parent(workflow: Workflow) -> dict[str, str] | None:
    if workflow.parent_task_id is None:
        return None
    found = WorkflowTask.objects.filter(pk=workflow.parent_task_id).values_list("workflow_id", "task_id").first()
    return {"workflow": str(found[0]), "task": found[1]} if found else None


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def task_status(task: WorkflowTask) -> str:
    if task.kind != StepKind.JOB:
        return _STEP_STATUS[StepState(task.state)]
    if task.job is None:
        if task.archived and task.archived.get("status"):
            return str(task.archived["status"])
        return "CANCELLED" if task.skipped else "PENDING"
    return task.job.status


class WorkflowSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    status = serializers.ChoiceField(choices=WorkflowStatus.choices)
    tasks_total = serializers.IntegerField()
    tasks_succeeded = serializers.IntegerField()
    failed_task = serializers.CharField(allow_null=True, help_text="The task whose failure started the saga.")
    failed_compensations = serializers.ListField(
        child=serializers.CharField(), help_text="Tasks whose compensation job dead-lettered."
    )
    idempotency_key = serializers.CharField(allow_null=True)
    cancel_requested_at = serializers.DateTimeField(allow_null=True)
    deadline_at = serializers.DateTimeField(allow_null=True, help_text="When it fails if still running.")
    parent_task = serializers.JSONField(
        allow_null=True, help_text="A child workflow's parent step, which started it: {workflow, task}."
    )
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)

    def to_representation(self, workflow: Workflow) -> dict[str, Any]:
        return {
            "id": str(workflow.id),
            "name": workflow.name,
            "status": workflow.status,
            "tasks_total": workflow.tasks_total,
            "tasks_succeeded": workflow.tasks_succeeded,
            "failed_task": workflow.failed_task or None,
            "failed_compensations": workflow.failed_compensations,
            "idempotency_key": workflow.idempotency_key,
            "cancel_requested_at": workflow.cancel_requested_at,
            "deadline_at": workflow.deadline_at,
            "parent_task": _parent(workflow),
            "created_at": workflow.created_at,
            "finished_at": workflow.finished_at,
        }


class WorkflowDetailSerializer(WorkflowSerializer):
    tasks = TaskSerializer(many=True)

    def to_representation(self, workflow: Workflow) -> dict[str, Any]:
        data = super().to_representation(workflow)
        data["tasks"] = task_rows(workflow)
        return data
