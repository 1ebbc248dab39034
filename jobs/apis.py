"""The jobs API: views validate, call one service or selector, and serialize."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.rest import (
    LimitedFormParser,
    ORJSONParser,
    ORJSONRenderer,
    PerUserThrottle,
    filtered_page,
    request_owner_id,
    with_idempotency_header,
)
from jobs import fast_input, schedules, selectors, services
from jobs.errors import IllegalTransition, JobNotFound
from jobs.models import Job
from jobs.serializers import (
    KEY_HELP,
    BulkInputSerializer,
    BulkOutputSerializer,
    JobDetailSerializer,
    JobInputSerializer,
    JobSerializer,
    JobStatsSerializer,
    ScheduleSerializer,
)
from logs.apis import LogStoreUnavailableError
from logs.search import LogStoreUnavailable

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="The body's `idempotency_key`, when that is not set. " + KEY_HELP,
)


class JobListCreateApi(APIView):
    @extend_schema(
        operation_id="jobs_list",
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, description="One status or a comma-separated list."),
            OpenApiParameter("type", OpenApiTypes.STR),
            OpenApiParameter("queue", OpenApiTypes.STR),
            OpenApiParameter("created_after", OpenApiTypes.DATETIME),
            OpenApiParameter("created_before", OpenApiTypes.DATETIME),
            OpenApiParameter(
                "log_contains", OpenApiTypes.STR, description="Only jobs whose logs contain this text (any case)."
            ),
            OpenApiParameter(
                "archived",
                OpenApiTypes.BOOL,
                description="true: search the archive (jobs retention moved out of PostgreSQL) with the same filters.",
            ),
            OpenApiParameter("cursor", OpenApiTypes.STR),
            OpenApiParameter("page_size", OpenApiTypes.INT, description="1-1000, default 50."),
        ],
        responses=inline_serializer(
            "JobPage", {"results": JobSerializer(many=True), "next": serializers.URLField(allow_null=True)}
        ),
    )
    def get(self, request: Request) -> Response:
        try:  # the `log_contains` filter and the archive ask ClickHouse
            return filtered_page(
                request, selectors.JobFilter, selectors.job_visible_to(request.user), JobSerializer,
                pager_of=selectors.JobFilter.pager,
            )  # fmt: skip
        except LogStoreUnavailable as exc:
            raise LogStoreUnavailableError() from exc

    @extend_schema(
        request=JobInputSerializer, responses={201: JobSerializer, 200: JobSerializer}, parameters=[IDEMPOTENCY_HEADER]
    )
    def post(self, request: Request) -> Response:
        data = with_idempotency_header(request)
        spec = fast_input.job_spec(data)
        if spec is None:  # not surely valid: DRF decides, and words any error
            serializer = JobInputSerializer(data=data)
            serializer.is_valid(raise_exception=True)
            spec = serializer.to_spec(serializer.validated_data)
        submitted = services.job_submit(owner_id=request_owner_id(request), spec=spec)
        code = status.HTTP_201_CREATED if submitted.created else status.HTTP_200_OK
        return Response(JobSerializer(submitted.job).data, status=code)


class JobBulkCreateApi(APIView):
    @extend_schema(request=BulkInputSerializer, responses={201: BulkOutputSerializer})
    def post(self, request: Request) -> Response:
        specs = fast_input.bulk_specs(request.data)
        if specs is None:  # not surely valid: DRF decides, and words any error
            serializer = BulkInputSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            to_spec = JobInputSerializer().to_spec
            specs = [to_spec(item) for item in serializer.validated_data["jobs"]]
        submitted = services.job_submit_bulk(owner_id=request_owner_id(request), specs=specs)
        represent = JobSerializer().to_representation
        return Response({"jobs": [represent(s.job) for s in submitted]}, status=status.HTTP_201_CREATED)


class JobDetailApi(APIView):
    @extend_schema(responses=JobDetailSerializer)
    def get(self, request: Request, job_id: str) -> Response:
        try:  # a job retention archived is read from ClickHouse
            job = selectors.job_get_detail(user=request.user, job_id=job_id)
        except LogStoreUnavailable as exc:
            raise LogStoreUnavailableError() from exc
        return Response(JobDetailSerializer(job).data)


def _changeable_job(request: Request, job_id: str, action: str) -> Job:
    """The caller's job, for a state change: 409 for an archived one (read-only), 404 when it is
    in neither PostgreSQL nor the archive (or the archive cannot be asked)."""
    try:
        job = selectors.job_get(user=request.user, job_id=job_id, archived=True)
    except LogStoreUnavailable:
        raise JobNotFound(job_id) from None
    if getattr(job, "archived", False):
        raise IllegalTransition(job.id, f"{job.status} and archived", action)
    return job


class JobCancelApi(APIView):
    @extend_schema(request=None, responses=JobSerializer)
    def post(self, request: Request, job_id: str) -> Response:
        job = _changeable_job(request, job_id, "cancel")
        return Response(JobSerializer(services.job_cancel(job_id=job.id)).data)


class JobRetryApi(APIView):
    @extend_schema(request=None, responses=JobSerializer)
    def post(self, request: Request, job_id: str) -> Response:
        job = _changeable_job(request, job_id, "retry")
        return Response(JobSerializer(services.job_retry(job_id=job.id)).data)


class JobStatsApi(APIView):
    @extend_schema(responses=JobStatsSerializer)
    def get(self, request: Request) -> Response:
        return Response(selectors.job_get_stats(user=request.user))


class TokenObtainApi(ObtainAuthToken):
    """POST username and password, get `{"token": ...}`; wrong credentials give 400."""

    throttle_classes = [PerUserThrottle]
    parser_classes = [ORJSONParser, LimitedFormParser, MultiPartParser]
    renderer_classes = [ORJSONRenderer]


class ScheduleListCreateApi(APIView):
    @extend_schema(
        responses=inline_serializer(
            "SchedulePage", {"results": ScheduleSerializer(many=True), "next": serializers.URLField(allow_null=True)}
        )
    )
    def get(self, request: Request) -> Response:
        qs = selectors.schedule_visible_to(request.user)
        return Response({"results": ScheduleSerializer(qs, many=True).data, "next": None})

    @extend_schema(request=ScheduleSerializer, responses={201: ScheduleSerializer})
    def post(self, request: Request) -> Response:
        serializer = ScheduleSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        schedule = schedules.schedule_save(owner_id=request_owner_id(request), data=serializer.validated_data)
        return Response(ScheduleSerializer(schedule).data, status=status.HTTP_201_CREATED)


class ScheduleDetailApi(APIView):
    @extend_schema(responses=ScheduleSerializer)
    def get(self, request: Request, schedule_id: str) -> Response:
        return Response(ScheduleSerializer(selectors.schedule_get(user=request.user, schedule_id=schedule_id)).data)

    @extend_schema(request=ScheduleSerializer, responses=ScheduleSerializer)
    def patch(self, request: Request, schedule_id: str) -> Response:
        schedule = selectors.schedule_get(user=request.user, schedule_id=schedule_id)
        serializer = ScheduleSerializer(schedule, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        schedule = schedules.schedule_save(
            owner_id=schedule.owner_id, data=serializer.validated_data, schedule=schedule
        )
        return Response(ScheduleSerializer(schedule).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, schedule_id: str) -> Response:
        selectors.schedule_get(user=request.user, schedule_id=schedule_id).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)
