"""Reads on workflows, scoped to what a user may see."""

from __future__ import annotations

import uuid
from typing import Any

import django_filters
from django.db.models import QuerySet

from jobs.selectors import CSVChoiceFilter, UTCDateTimeFilter, visible_to
from workflows.errors import WorkflowNotFound
from workflows.models import StepKind, Workflow, WorkflowStatus, WorkflowTask


def workflow_visible_to(user: Any) -> QuerySet[Workflow]:
    return visible_to(Workflow.objects.all(), user)  # type: ignore[type-var]


def workflow_get(*, user: Any, workflow_id: uuid.UUID | str) -> Workflow:
    try:
        return workflow_visible_to(user).get(id=workflow_id)
    except (Workflow.DoesNotExist, ValueError):
        raise WorkflowNotFound(workflow_id) from None


def workflow_for_decision(*, user: Any, workflow_id: uuid.UUID | str) -> Workflow:
    """A workflow the user may see, or one with an approval step for a group they are in
    (an approver need not own it), or WorkflowNotFound."""
    try:
        return workflow_get(user=user, workflow_id=workflow_id)
    except WorkflowNotFound:
        groups = list(user.groups.values_list("name", flat=True)) if user.is_authenticated else []
        steps = WorkflowTask.objects.filter(workflow_id=workflow_id, kind=StepKind.APPROVAL, wait__group__in=groups)
        if not groups or not steps.exists():
            raise
        return Workflow.objects.get(id=workflow_id)


class WorkflowFilter(django_filters.FilterSet):
    status = CSVChoiceFilter(field_name="status", choices=WorkflowStatus.choices)
    name = django_filters.CharFilter(field_name="name")
    created_after = UTCDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Workflow
        fields = ["status", "name", "created_after", "created_before"]
