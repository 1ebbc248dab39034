"""The logs API: search, a job's logs, ingest and stats (ClickHouse behind logs.search)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs import selectors
from logs import search, services
from logs.records import LEVELS
from logs.serializers import IngestSerializer, LogPageSerializer, LogSearchParams, LogStatsSerializer


class LogStoreUnavailableError(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "log_store_unavailable"
    default_detail = "The log store is not answering; try again shortly."


def _params(request: Request, serializer: type[serializers.Serializer] = LogSearchParams) -> dict[str, Any]:
    params = serializer(data=request.query_params)
    params.is_valid(raise_exception=True)
    return dict(params.validated_data)


def _query(data: dict[str, Any], owners: frozenset[int] | None) -> search.LogQuery:
    return search.LogQuery(
        job_id=data.get("job_id"),
        workflow_id=data.get("workflow_id"),
        trace_id=data.get("trace_id") or None,
        min_level=data.get("level"),
        service=data.get("service"),
        q=data.get("q"),
        since=data.get("since"),
        until=data.get("until"),
        owners=owners,
        limit=data.get("limit", 50),
        cursor=data.get("cursor"),
        ascending=data.get("order") == "asc",
    )


def _visible_query(request: Request, data: dict[str, Any]) -> search.LogQuery | None:
    """The query for a search or stats request; None when it names another user's job (a
    filter that matches nothing, as for any other object the caller cannot see)."""
    visible, owners = services.log_scope(request.user, data.get("job_id"))
    return _query(data, owners) if visible else None


def _page(request: Request, query: search.LogQuery) -> Response:
    try:
        records, cursor = search.search(query)
    except search.InvalidCursor:
        raise ValidationError({"cursor": ["invalid cursor"]}) from None
    except search.LogStoreUnavailable as exc:
        raise LogStoreUnavailableError() from exc
    next_url = None
    if cursor:
        params = request.query_params.copy()
        params["cursor"] = cursor
        next_url = request.build_absolute_uri(request.path) + "?" + urlencode(params, doseq=True)
    return Response({"results": records, "next": next_url})


SEARCH_DOC = (
    "Newest first (`order=asc` for oldest first). Filters combine with AND: `job_id`, `workflow_id`, "
    "`trace_id` (32 hex digits: the lines of one trace), `level` (minimum), `service`, "
    "`q` (case-insensitive text in the message), `since`, `until`; "
    "`limit` 1-1000 (default 50); follow `next` for more."
)


class LogSearchApi(APIView):
    @extend_schema(operation_id="logs_search", parameters=[LogSearchParams], responses=LogPageSerializer,
                   description=SEARCH_DOC)  # fmt: skip
    def get(self, request: Request) -> Response:
        query = _visible_query(request, _params(request))
        if query is None:
            return Response({"results": [], "next": None})
        return _page(request, query)

    @extend_schema(
        operation_id="logs_ingest",
        request=IngestSerializer,
        responses={202: inline_serializer("LogIngestAccepted", {"accepted": serializers.IntegerField()})},
        description="Up to 1,000 records; `message`, `level` and `service` are required. A record naming "
        "`job_id` must name a job you see (yours, or of an owner you administer). 202 means Kafka has them; "
        "the sink stores them in seconds.",
    )
    def post(self, request: Request) -> Response:
        serializer = IngestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        records = serializer.validated_data["records"]
        try:
            accepted = services.logs_ingest(user=request.user, records=records)
        except services.UnknownJobs as exc:
            raise ValidationError({"records": {str(i): {"job_id": [msg]} for i, msg in exc.errors.items()}}) from None
        except services.IngestUnavailable as exc:
            raise LogStoreUnavailableError(f"Records not accepted: {exc}") from exc
        return Response({"accepted": accepted}, status=status.HTTP_202_ACCEPTED)


class JobLogsApi(APIView):
    @extend_schema(
        operation_id="jobs_logs",
        parameters=[LogSearchParams],
        responses=LogPageSerializer,
        description="The job's log records; the same filters as `/api/v1/logs/` (`job_id` is this job).",
    )
    def get(self, request: Request, job_id: str) -> Response:
        try:  # 404 for another user's job; an archived job's lines are still here
            job = selectors.job_get(user=request.user, job_id=job_id, archived=True)
        except search.LogStoreUnavailable as exc:
            raise LogStoreUnavailableError() from exc
        data = _params(request)
        data["job_id"] = job.id
        return _page(request, _query(data, owners=None))  # a job the caller sees: all its lines


class LogStatsApi(APIView):
    @extend_schema(
        operation_id="logs_stats",
        parameters=[LogSearchParams],
        responses=LogStatsSerializer,
        description="Counts by level and by service. The window defaults to the last 24 hours; the "
        "search filters apply.",
    )
    def get(self, request: Request) -> Response:
        data = _params(request)
        data.setdefault("since", timezone.now() - timedelta(hours=24))
        query = _visible_query(request, data)
        if query is None:
            return Response({"by_level": dict.fromkeys(LEVELS, 0), "by_service": {}})
        try:
            return Response(search.stats(query))
        except search.LogStoreUnavailable as exc:
            raise LogStoreUnavailableError() from exc
