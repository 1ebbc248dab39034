"""The workflows API: submit, list, show, cancel, signal, decide on an approval."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.rest import KeysetPagination, check_json, filtered_page, request_owner_id, with_idempotency_header
from jobs.apis import IDEMPOTENCY_HEADER
from workflows import maps, selectors, services, steps
from workflows.errors import NotAnApprover
from workflows.models import StepKind
from workflows.serializers import (
    DecisionInputSerializer,
    DecisionSerializer,
    WorkflowDetailSerializer,
    WorkflowInputSerializer,
    WorkflowSerializer,
)

SUBMIT_DOC = (
    "Tasks run as jobs once all their dependencies succeeded; a task's payload gets its parents' results "
    'under `"parents"`. When a task dead-letters, the workflow compensates: the compensation jobs of the '
    "tasks that succeeded run one at a time, latest success first, then it is FAILED. Every problem with the "
    "graph (duplicate id, unknown dependency, cycle, empty, too many tasks, unknown type) is reported at once "
    "in `errors.tasks`."
)


class WorkflowListCreateApi(APIView):
    @extend_schema(
        operation_id="workflows_list",
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, description="One status or a comma-separated list."),
            OpenApiParameter("name", OpenApiTypes.STR),
            OpenApiParameter("created_after", OpenApiTypes.DATETIME),
            OpenApiParameter("created_before", OpenApiTypes.DATETIME),
            OpenApiParameter("cursor", OpenApiTypes.STR),
            OpenApiParameter("page_size", OpenApiTypes.INT, description="1-1000, default 50."),
        ],
        responses=inline_serializer(
            "WorkflowPage", {"results": WorkflowSerializer(many=True), "next": serializers.URLField(allow_null=True)}
        ),
    )
    def get(self, request: Request) -> Response:
        qs = selectors.workflow_visible_to(request.user)
        return filtered_page(request, selectors.WorkflowFilter, qs, WorkflowSerializer)

    @extend_schema(
        operation_id="workflows_submit",
        request=WorkflowInputSerializer,
        responses={201: WorkflowDetailSerializer, 200: WorkflowDetailSerializer},
        parameters=[IDEMPOTENCY_HEADER],
        description=SUBMIT_DOC,
    )
    def post(self, request: Request) -> Response:
        serializer = WorkflowInputSerializer(data=with_idempotency_header(request))
        serializer.is_valid(raise_exception=True)
        workflow, created = services.workflow_submit(
            owner_id=request_owner_id(request),
            spec=serializer.to_spec(serializer.validated_data),
            max_tasks=settings.WORKFLOW_MAX_TASKS,
        )
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(WorkflowDetailSerializer(workflow).data, status=code)


class WorkflowDetailApi(APIView):
    @extend_schema(operation_id="workflows_retrieve", responses=WorkflowDetailSerializer)
    def get(self, request: Request, workflow_id: str) -> Response:
        workflow = selectors.workflow_get(user=request.user, workflow_id=workflow_id)
        return Response(WorkflowDetailSerializer(workflow).data)


class WorkflowCancelApi(APIView):
    @extend_schema(operation_id="workflows_cancel", request=None, responses=WorkflowDetailSerializer)
    def post(self, request: Request, workflow_id: str) -> Response:
        workflow = selectors.workflow_get(user=request.user, workflow_id=workflow_id)
        return Response(WorkflowDetailSerializer(services.workflow_cancel(workflow_id=workflow.id)).data)


class WorkflowSignalApi(APIView):
    @extend_schema(
        operation_id="workflows_signal",
        request=OpenApiTypes.OBJECT,
        responses={
            200: inline_serializer(
                "SignalDelivered",
                {
                    "signal": serializers.CharField(),
                    "delivered_to": serializers.CharField(allow_null=True),
                    "kept": serializers.BooleanField(),
                },
            )
        },
        description="Deliver a signal: the step waiting for it succeeds with this JSON body as its result (its "
        "dependents see it under `parents`). Sent before the step is reached, it is kept for it. 409 when its step "
        "is done already (or timed out), or one is kept already; 404 when no step waits for it. The workflow's "
        "owner, an admin of its owner, or staff only.",
    )
    def post(self, request: Request, workflow_id: str, name: str) -> Response:
        workflow = selectors.workflow_get(user=request.user, workflow_id=workflow_id)
        payload = request.data if isinstance(request.data, dict) else None
        if payload is None:
            raise serializers.ValidationError({"payload": ["a signal's body is a JSON object"]})
        check_json(payload, "payload", max_bytes=settings.JOB_PAYLOAD_MAX_BYTES, setting="JOB_PAYLOAD_MAX_BYTES")
        with transaction.atomic():
            step = steps.signal(workflow_id=workflow.id, name=name, payload=dict(payload), sent_by=request.user.pk)
        return Response({"signal": name, "delivered_to": step.task_id if step else None, "kept": step is None})


class WorkflowApprovalApi(APIView):
    @extend_schema(
        operation_id="workflows_decide",
        request=DecisionInputSerializer,
        responses={
            200: inline_serializer(
                "ApprovalState",
                {
                    "task": serializers.CharField(),
                    "state": serializers.CharField(help_text="WAITING, SUCCEEDED (approved) or FAILED (rejected)."),
                    "approvals": serializers.IntegerField(),
                    "approvers": serializers.IntegerField(help_text="Approvals it needs."),
                    "decisions": DecisionSerializer(many=True),
                },
            )
        },
        description="Approve or reject an approval step. It succeeds once `approvers` distinct users approve "
        "(its result, seen by its dependents under `parents`, names them); one rejection fails it and the saga "
        "compensates. Every decision is recorded with its comment. 403 for a user outside the step's group, or "
        "for the workflow's owner unless `allow_self`; 409 when the step is not reached yet or has ended, or the "
        "user decided already.",
    )
    def post(self, request: Request, workflow_id: str, task_id: str) -> Response:
        workflow = selectors.workflow_for_decision(user=request.user, workflow_id=workflow_id)
        serializer = DecisionInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            with transaction.atomic():
                step = steps.decide(workflow_id=workflow.id, task_id=task_id, user=request.user,
                                    **serializer.validated_data)  # fmt: skip
        except NotAnApprover as exc:
            raise exceptions.PermissionDenied(str(exc)) from None
        decisions = steps.decisions_of([step.pk])[step.pk]
        return Response({
            "task": step.task_id, "state": step.state, "decisions": decisions,
            "approvals": sum(d["decision"] == "approve" for d in decisions),
            "approvers": int((step.wait or {}).get("approvers", 1)),
        })  # fmt: skip


MAX_INDEX = 2**31 - 1  # a child's index is an int in PostgreSQL: a larger `after` is a 400, not its error


class _ChildrenPages(KeysetPagination):
    default_size = max_size = maps.PAGE  # a page of a map's children: up to 1,000, all by default


class WorkflowMapResultsApi(APIView):
    @extend_schema(
        operation_id="workflows_map_results",
        parameters=[
            OpenApiParameter("after", OpenApiTypes.INT, description="The last index of the previous page (-1)."),
            OpenApiParameter("page_size", OpenApiTypes.INT, description=f"1-{maps.PAGE}, default {maps.PAGE}."),
        ],
        responses=inline_serializer(
            "MapResultsPage",
            {
                "results": inline_serializer(
                    "MapChild",
                    {
                        "index": serializers.IntegerField(),
                        "job": serializers.UUIDField(),
                        "status": serializers.CharField(),
                        "result": serializers.JSONField(allow_null=True),
                    },
                    many=True,
                ),
                "next": serializers.URLField(allow_null=True),
            },
        ),
        description="A map step's children in the order of its list, with their results, a page at a time: what "
        "a task after the map reads (its payload holds only a reference under `parents`).",
    )
    def get(self, request: Request, workflow_id: str, task_id: str) -> Response:
        workflow = selectors.workflow_get(user=request.user, workflow_id=workflow_id)
        step = workflow.tasks.filter(task_id=task_id, kind=StepKind.MAP).first()
        if step is None:
            raise exceptions.NotFound(f"workflow {workflow.id} has no map step {task_id[:200]!r}")
        size = _ChildrenPages().page_size(request)
        raw = request.query_params.get("after", "-1")
        try:
            after = int(raw)
        except ValueError:
            raise serializers.ValidationError({"after": [f"not a whole number: {raw[:50]!r}"]}) from None
        if not -1 <= after <= MAX_INDEX:
            raise serializers.ValidationError({"after": [f"must be -1 to {MAX_INDEX}"]})
        rows = maps.page(step, after=after, size=size)
        more = len(rows) == size
        next_url = request.build_absolute_uri(f"?after={rows[-1]['index']}&page_size={size}") if more else None
        return Response({"results": rows, "next": next_url})
