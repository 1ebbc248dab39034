"""Admin for staff: a workflow's page shows its status, its dependency graph (SVG) and every
task with its job and compensation. Read-only: cancel goes through the same service as the API."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from jobs.admin import ReadOnlyAdmin
from workflows import services
from workflows.errors import WorkflowFinished
from workflows.graph import graph_tasks, render_svg
from workflows.models import Workflow, WorkflowDecision, WorkflowTask
from workflows.serializers import task_rows, task_status


class TaskInline(admin.TabularInline):
    model = WorkflowTask
    extra = 0
    can_delete = False
    fields = readonly_fields = (
        "task_id", "kind", "type", "depends_on", "status", "job_link", "compensation_link", "wait", "wake_at",
        "result",
    )  # fmt: skip
    ordering = ["position"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkflowTask]:
        return super().get_queryset(request).select_related("job", "compensation_job")

    @admin.display(description="status")
    def status(self, obj: WorkflowTask) -> str:
        return task_status(obj)

    @admin.display(description="job")
    def job_link(self, obj: WorkflowTask) -> str:
        return _job_link(obj.job_id)

    @admin.display(description="compensation")
    def compensation_link(self, obj: WorkflowTask) -> str:
        if obj.compensation_job_id:
            status = obj.compensation_job.status if obj.compensation_job else ""
            return format_html("{} ({})", _job_link(obj.compensation_job_id), status)
        return obj.compensation_state if obj.compensation else "-"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DecisionInline(admin.TabularInline):
    """Who decided on its approval steps, when, and why."""

    model = WorkflowDecision
    extra = 0
    can_delete = False
    fields = readonly_fields = ("task_name", "username", "decision", "comment", "created_at")
    ordering = ["id"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkflowDecision]:
        return super().get_queryset(request).select_related("task")

    @admin.display(description="step")
    def task_name(self, obj: WorkflowDecision) -> str:
        return obj.task.task_id

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _admin_page(workflow_id: str) -> str:
    return reverse("admin:orchestration_workflows_workflow_change", args=[workflow_id])


def _job_link(job_id: Any) -> str:
    if job_id is None:
        return "-"
    return format_html('<a href="{}">{}</a>', reverse("admin:orchestration_jobs_job_change", args=[job_id]), job_id)


@admin.action(description="Cancel selected workflows (compensates what succeeded)")
def cancel_workflows(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
    done = 0
    for workflow_id in queryset.values_list("id", flat=True):
        try:
            services.workflow_cancel(workflow_id=workflow_id)
            done += 1
        except WorkflowFinished as exc:
            modeladmin.message_user(request, str(exc), messages.WARNING)
    if done:
        modeladmin.message_user(request, f"Cancelled {done} workflow(s).", messages.SUCCESS)


@admin.register(Workflow)
class WorkflowAdmin(ReadOnlyAdmin):
    list_display = ["id", "name", "status", "tasks_succeeded", "tasks_total", "owner", "created_at", "finished_at"]
    list_filter = ["status", "created_at"]
    list_select_related = ["owner"]
    search_fields = ["name", "idempotency_key"]
    show_full_result_count = False
    actions = [cancel_workflows]
    inlines = [TaskInline, DecisionInline]
    fields = readonly_fields = (
        "id", "owner", "name", "status", "graph", "tasks_total", "tasks_succeeded", "failed_task",
        "failed_compensations", "cancel_requested_at", "idempotency_key", "created_at", "finished_at",
    )  # fmt: skip

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and request.user.is_staff  # the list, for its actions; pages stay read-only

    @admin.display(description="dependency graph")
    def graph(self, obj: Workflow) -> str:
        return mark_safe(render_svg(graph_tasks(task_rows(obj), _admin_page)))  # noqa: S308 every text in it is escaped
