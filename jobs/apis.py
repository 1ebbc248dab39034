"""The jobs API: views validate, call one service or selector, and serialize."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.authtoken.models import Token
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
    keyset_page,
    request_owner_id,
    with_idempotency_header,
)
from jobs import audit, batches, bulk_actions, fast_input, rate_limits, schedules, selectors, services
from jobs.errors import IllegalTransition, JobNotFound
from jobs.models import AuditRecord, Job
from jobs.serializers import (
    KEY_HELP,
    AuditRecordSerializer,
    BatchAddSerializer,
    BatchInputSerializer,
    BatchSerializer,
    BulkInputSerializer,
    BulkOutputSerializer,
    JobDetailSerializer,
    JobInputSerializer,
    JobSerializer,
    JobStatsSerializer,
    RateLimitSerializer,
    ScheduleSerializer,
    batch_jobs_problem,
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


class BulkActionSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=bulk_actions.ACTIONS)
    filter = serializers.DictField(
        child=serializers.CharField(max_length=1000), allow_empty=True,
        help_text=f"The jobs list's filters, as its query parameters: {', '.join(bulk_actions.FILTERS)}.",
    )  # fmt: skip
    payload = serializers.DictField(
        required=False, help_text="rerun only: keys merged into each re-run job's payload (the edit)."
    )
    dry_run = serializers.BooleanField(default=False, help_text="Only count the jobs that match.")

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("payload") and data["action"] != "rerun":
            raise serializers.ValidationError({"payload": ["only a rerun takes a payload"]})
        return data


BULK_ACTION_ANSWER = inline_serializer(
    "BulkAction",
    {
        "action": serializers.CharField(),
        "count": serializers.IntegerField(),
        "job": serializers.UUIDField(allow_null=True, help_text="The action's own job (null for a dry run)."),
    },
)


class JobBulkActionApi(APIView):
    """Cancel, retry or re-run (with an edited payload) every job of yours that matches a
    filter (staff: everyone's). `dry_run` counts them; otherwise the action runs in the
    background as a job (202, its id in `job`: its progress shows how far it is)."""

    @extend_schema(request=BulkActionSerializer, responses={200: BULK_ACTION_ANSWER, 202: BULK_ACTION_ANSWER})
    def post(self, request: Request) -> Response:
        body = BulkActionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:  # log_contains asks ClickHouse, as the jobs list does: away, it is a 503 here too
            if data["dry_run"]:
                count = bulk_actions.matching(request.user, data["filter"]).count()
                return Response({"action": data["action"], "count": count, "job": None})
            job, count = bulk_actions.start(
                request.user, action=data["action"], filters=data["filter"], payload=data.get("payload")
            )
        except LogStoreUnavailable as exc:
            raise LogStoreUnavailableError() from exc
        return Response({"action": data["action"], "count": count, "job": str(job.id)}, status=status.HTTP_202_ACCEPTED)


class JobStatsApi(APIView):
    @extend_schema(responses=JobStatsSerializer)
    def get(self, request: Request) -> Response:
        return Response(selectors.job_get_stats(user=request.user))


class TokenObtainApi(ObtainAuthToken):
    """POST username and password, get `{"token": ...}`; wrong credentials give 400."""

    throttle_classes = [PerUserThrottle]
    parser_classes = [ORJSONParser, LimitedFormParser, MultiPartParser]
    renderer_classes = [ORJSONRenderer]

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().post(request, *args, **kwargs)
        user = Token.objects.select_related("user").get(key=response.data["token"]).user
        audit.record("token.obtain", "user", user.pk, owner_id=user.pk, actor=user)
        return response


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
        schedules.schedule_delete(selectors.schedule_get(user=request.user, schedule_id=schedule_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


def _limit_owner(request: Request, every_owner: bool) -> int | None:
    """Whose keys a new limit holds for: the caller's, or with `every_owner`, every owner's (staff)."""
    if every_owner and not request.user.is_staff:
        raise serializers.ValidationError({"every_owner": ["only staff declare a limit for every owner's keys"]})
    return None if every_owner else request_owner_id(request)


class RateLimitListCreateApi(APIView):
    @extend_schema(
        responses=inline_serializer(
            "RateLimitPage", {"results": RateLimitSerializer(many=True), "next": serializers.URLField(allow_null=True)}
        )
    )
    def get(self, request: Request) -> Response:
        """Your limits and those for every owner's keys (staff: every limit)."""
        limits = selectors.rate_limit_visible_to(request.user)
        return Response({"results": RateLimitSerializer(limits, many=True).data, "next": None})

    @extend_schema(request=RateLimitSerializer, responses={201: RateLimitSerializer})
    def post(self, request: Request) -> Response:
        """Declare a limit for your keys matching `pattern` (staff: `every_owner` for everyone's)."""
        serializer = RateLimitSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        owner_id = _limit_owner(request, serializer.validated_data["every_owner"])
        limit = rate_limits.rate_limit_save(owner_id=owner_id, data=serializer.validated_data)
        return Response(RateLimitSerializer(limit).data, status=status.HTTP_201_CREATED)


class RateLimitDetailApi(APIView):
    @extend_schema(responses=RateLimitSerializer)
    def get(self, request: Request, limit_id: int) -> Response:
        return Response(RateLimitSerializer(selectors.rate_limit_get(user=request.user, limit_id=limit_id)).data)

    @extend_schema(request=RateLimitSerializer, responses=RateLimitSerializer)
    def patch(self, request: Request, limit_id: int) -> Response:
        """Change the rate, burst or pattern (who it holds for stays as it is)."""
        limit = selectors.rate_limit_get(user=request.user, limit_id=limit_id, to_change=True)
        serializer = RateLimitSerializer(limit, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        limit = rate_limits.rate_limit_save(owner_id=limit.owner_id, data=serializer.validated_data, limit=limit)
        return Response(RateLimitSerializer(limit).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, limit_id: int) -> Response:
        rate_limits.rate_limit_delete(selectors.rate_limit_get(user=request.user, limit_id=limit_id, to_change=True))
        return Response(status=status.HTTP_204_NO_CONTENT)


def _batch_answer(batch: Any, **extra: Any) -> dict[str, Any]:
    counts = {batch.id: batches.batch_counts(batch.id)}
    return {**BatchSerializer(batch, context={"counts": counts}).data, **extra}


def _batch_specs(request: Request, serializer_class: type[serializers.Serializer]) -> tuple[dict[str, Any], list[Any]]:
    """The request's other fields, validated, and its jobs as specs (the bulk submit's fast
    path when it surely applies)."""
    data: Any = request.data
    fast = fast_input.bulk_specs({"jobs": data.get("jobs")}) if isinstance(data, dict) else None
    if fast is not None:
        if problems := batch_jobs_problem(fast):
            raise serializers.ValidationError({"jobs": problems})  # type: ignore[dict-item]
        rest = {name: value for name, value in data.items() if name != "jobs"}
        serializer = serializer_class(data=rest, partial=serializer_class is BatchAddSerializer)  # jobs: checked
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data, fast
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    to_spec = JobInputSerializer().to_spec
    return serializer.validated_data, [to_spec(item) for item in serializer.validated_data["jobs"]]


_BATCH_WITH_JOBS = {"batch": BatchSerializer(), "jobs": JobSerializer(many=True)}


class BatchListCreateApi(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("limit", int, description="At most this many a page, newest first (1-100, 50)."),
            OpenApiParameter("cursor", str, description="The next page: as given in `next`."),
        ],
        responses=inline_serializer(
            "BatchPage", {"results": BatchSerializer(many=True), "next": serializers.URLField(allow_null=True)}
        ),
    )
    def get(self, request: Request) -> Response:
        """Your batches, newest first, with their counts (staff: everyone's)."""
        try:
            limit = min(max(int(request.query_params.get("limit", 50)), 1), 100)
        except ValueError:
            raise serializers.ValidationError({"limit": ["a whole number from 1 to 100"]}) from None
        try:
            visible = selectors.batch_visible_to(request.user)
            rows, cursor = keyset_page(visible, request.query_params.get("cursor"), limit)
        except ValueError:
            raise serializers.ValidationError({"cursor": ["not a cursor of ours: use the one `next` gives"]}) from None
        counts = batches.batches_counts([b.id for b in rows])
        following = request.build_absolute_uri(f"?limit={limit}&cursor={cursor}") if cursor else None
        return Response(
            {"results": BatchSerializer(rows, many=True, context={"counts": counts}).data, "next": following}
        )

    @extend_schema(
        request=BatchInputSerializer,
        responses={
            201: inline_serializer("BatchCreated", {"batch": BatchSerializer(), "jobs": JobSerializer(many=True)})
        },
    )
    def post(self, request: Request) -> Response:
        """A batch and its jobs, with optional callback jobs; closed unless `open` is true."""
        data, specs = _batch_specs(request, BatchInputSerializer)
        callbacks = {name: batches.callback_spec_fields(data[name]) for name in batches.CALLBACKS if data.get(name)}
        batch, jobs = batches.batch_create(
            owner_id=request_owner_id(request), specs=specs, callbacks=callbacks, description=data["description"],
            open_=data["open"],
        )  # fmt: skip
        represent = JobSerializer().to_representation
        return Response(
            {"batch": _batch_answer(batch), "jobs": [represent(j) for j in jobs]}, status=status.HTTP_201_CREATED
        )


class BatchDetailApi(APIView):
    @extend_schema(responses=BatchSerializer)
    def get(self, request: Request, batch_id: str) -> Response:
        """Counts by state and the percentage done; its jobs are GET /api/v1/jobs/?batch=<id>."""
        return Response(_batch_answer(selectors.batch_get(user=request.user, batch_id=batch_id)))


class BatchJobsApi(APIView):
    @extend_schema(
        request=BatchAddSerializer,
        responses={
            201: inline_serializer("BatchAdded", {"batch": BatchSerializer(), "jobs": JobSerializer(many=True)})
        },
    )
    def post(self, request: Request, batch_id: str) -> Response:
        """More jobs for an open batch (409 once it is closed); `close` closes it with them."""
        batch = selectors.batch_get(user=request.user, batch_id=batch_id)
        data, specs = _batch_specs(request, BatchAddSerializer)
        if not specs:
            raise serializers.ValidationError({"jobs": ["at least one job"]})
        jobs = batches.batch_add(batch_id=batch.id, specs=specs, close=data.get("close", False))
        batch.refresh_from_db()
        represent = JobSerializer().to_representation
        return Response(
            {"batch": _batch_answer(batch), "jobs": [represent(j) for j in jobs]}, status=status.HTTP_201_CREATED
        )


class BatchCloseApi(APIView):
    @extend_schema(request=None, responses=BatchSerializer)
    def post(self, request: Request, batch_id: str) -> Response:
        """No more jobs: its callbacks are made once every job is terminal."""
        batch = selectors.batch_get(user=request.user, batch_id=batch_id)
        return Response(_batch_answer(batches.batch_close(batch_id=batch.id)))


class BatchCancelApi(APIView):
    @extend_schema(
        request=None,
        responses=inline_serializer(
            "BatchCancelled",
            {"batch": BatchSerializer(), "bulk_action": serializers.UUIDField(allow_null=True),
             "matched": serializers.IntegerField()},
        ),
    )  # fmt: skip
    def post(self, request: Request, batch_id: str) -> Response:
        """Close it and cancel its unfinished jobs (in the background: `bulk_action` is the job
        doing it). on_success will not be made; on_complete will, once its jobs are terminal."""
        batch = selectors.batch_get(user=request.user, batch_id=batch_id)
        action, matched = batches.batch_cancel(user=request.user, batch_id=batch.id)
        batch.refresh_from_db()
        return Response({"batch": _batch_answer(batch), "bulk_action": str(action.id), "matched": matched})


class AuditListApi(APIView):
    @extend_schema(
        operation_id="audit_list",
        parameters=[
            OpenApiParameter(name, OpenApiTypes.STR) for name in
            ("actor", "action", "target_type", "target_id", "source", "request_id")
        ] + [
            OpenApiParameter("owner", OpenApiTypes.INT, description="Whose object the action was on."),
            OpenApiParameter("created_after", OpenApiTypes.DATETIME),
            OpenApiParameter("created_before", OpenApiTypes.DATETIME),
            OpenApiParameter("cursor", OpenApiTypes.STR),
            OpenApiParameter("page_size", OpenApiTypes.INT, description="1-1000, default 50."),
        ],
        responses=inline_serializer(
            "AuditPage", {"results": AuditRecordSerializer(many=True), "next": serializers.URLField(allow_null=True)}
        ),
        description="Every operator action (cancel, retry, bulk actions, approvals, signals, limits, schedules, "
        "tokens): who, when, what, on what, from where (api, dashboard, admin, cli), with the request and trace "
        "ids. Newest first. Staff and viewers only; nothing edits it.",
    )  # fmt: skip
    def get(self, request: Request) -> Response:
        if not audit.readable_by(request.user):
            raise exceptions.PermissionDenied("the audit log is for staff and viewers")
        return filtered_page(request, selectors.AuditFilter, AuditRecord.objects.all(), AuditRecordSerializer)
