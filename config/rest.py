"""REST plumbing shared by every API: JSON codec, the one error shape, throttling, paging.

Error bodies have one shape everywhere:
    {"detail": "<what is wrong, in a sentence>", "code": "<machine code>", "errors": {...}}
where `errors` (validation only) holds DRF's field errors, by position for lists.
"""

from __future__ import annotations

import base64
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q
from django.http import Http404
from django.utils.dateparse import parse_datetime
from rest_framework import exceptions, parsers, renderers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle

if TYPE_CHECKING:  # rest_framework.views imports this module's renderer via settings
    from rest_framework.views import APIView

from jobs.errors import IdempotencyConflict, IllegalTransition, JobNotFound
from workflows.errors import WorkflowFinished, WorkflowNotFound

# --- JSON codec ---------------------------------------------------------------------------


def _default(obj: Any) -> Any:
    return str(obj)  # lazy translation strings, Decimal and the like


class ORJSONRenderer(renderers.JSONRenderer):
    """orjson: several times faster than json for the 1,000-job bulk responses."""

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        if data is None:
            return b""
        return orjson.dumps(data, default=_default, option=orjson.OPT_NON_STR_KEYS)


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "too_large"


class ORJSONParser(parsers.JSONParser):
    """Parses with orjson and refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE with 413.

    DRF reads the request stream directly, which skips Django's own size check, so the limit
    is enforced here while reading (a missing or lying Content-Length cannot get past it).
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body is larger than {limit} bytes.")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise exceptions.ParseError(f"JSON parse error: {exc}") from exc


# --- Errors -------------------------------------------------------------------------------


def _summarize(errors: Any, prefix: str = "") -> list[str]:
    """Flatten DRF's nested field errors into 'path: message' strings for `detail`."""
    if isinstance(errors, dict):
        out: list[str] = []
        for key, value in errors.items():
            out += _summarize(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(errors, list):
        if all(isinstance(e, str) for e in errors):
            return [f"{prefix}: {e}" if prefix else str(e) for e in errors]
        out = []
        for i, value in enumerate(errors):
            out += _summarize(value, f"{prefix}[{i}]")
        return out
    return [f"{prefix}: {errors}" if prefix else str(errors)]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, JobNotFound):
        exc = exceptions.NotFound(str(exc))
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    elif isinstance(exc, IllegalTransition):
        body = {"detail": str(exc), "code": "illegal_transition", "status": exc.current}
        return Response(body, status=status.HTTP_409_CONFLICT)
    elif isinstance(exc, IdempotencyConflict):
        body = {"detail": str(exc), "code": "idempotency_conflict", exc.kind: str(exc.job_id)}
        return Response(body, status=status.HTTP_409_CONFLICT)
    elif isinstance(exc, WorkflowNotFound):
        exc = exceptions.NotFound(str(exc))
    elif isinstance(exc, WorkflowFinished):
        body = {"detail": str(exc), "code": "illegal_transition", "status": exc.status}
        return Response(body, status=status.HTTP_409_CONFLICT)

    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        lines = _summarize(exc.detail)
        response.data = {
            "detail": "Invalid input: " + "; ".join(lines[:10]) + ("; ..." if len(lines) > 10 else ""),
            "code": "invalid",
            "errors": exc.detail,
        }
    elif isinstance(exc, (Http404, DjangoPermissionDenied)):
        response.data = {"detail": str(response.data.get("detail", "")), "code": "not_found"}
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        response.data = {"detail": str(exc.detail), "code": codes if isinstance(codes, str) else "error"}
    return response


# --- Throttling ---------------------------------------------------------------------------


def parse_rate(rate: str) -> tuple[int, int]:
    """'100/s' → (100, 1); '6000/m' → (6000, 60)."""
    count, period = rate.split("/")
    return int(count), {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[0]]


class PerUserThrottle(BaseThrottle):
    """Fixed-window rate limit per user (per client IP before login), in Redis.

    One INCR per request, atomic across every web process; the window is the rate's period,
    so `Retry-After` is the whole seconds until the window ends.
    """

    def __init__(self) -> None:
        self.limit, self.period = parse_rate(settings.API_RATE_LIMIT)
        self._wait = 0.0

    def allow_request(self, request: Request, view: APIView) -> bool:
        user = request.user
        ident = f"u{user.pk}" if user and user.is_authenticated else f"ip{self.get_ident(request)}"
        now = time.time()
        window = int(now // self.period)
        key = f"{settings.API_THROTTLE_PREFIX}:{ident}:{self.period}:{window}"
        from orchestration.celery_queues import client  # the process's shared Redis client

        pipe = client().pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, self.period + 1)
        count = pipe.execute()[0]
        if count <= self.limit:
            return True
        # Checked only once over the limit: the permission lookup costs queries.
        if user and user.is_authenticated and user.has_perm("jobs.unthrottled"):
            return True
        self._wait = (window + 1) * self.period - now
        return False

    def wait(self) -> float:
        return max(1, math.ceil(self._wait))

    def get_ident(self, request: Request) -> str:
        """The client's address: REMOTE_ADDR, or behind API_TRUSTED_PROXIES proxies the address
        the outermost of them saw (that many entries from the right of X-Forwarded-For).
        Clients write the rest of that header themselves, so trusting more of it than there
        are proxies would let anyone pick a fresh identity per request."""
        remote = request.META.get("REMOTE_ADDR") or ""
        proxies = settings.API_TRUSTED_PROXIES
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
        if proxies <= 0 or not forwarded:
            return remote
        hops = [hop.strip() for hop in forwarded.split(",")]
        return hops[-min(proxies, len(hops))]


# --- Pagination ---------------------------------------------------------------------------


def in_utc(value: datetime) -> datetime:
    """`value` in UTC (naive means UTC). PostgreSQL rejects an offset beyond ±15:59 as a
    parameter, while Python accepts up to ±23:59. Raises ValueError when the time is outside
    years 1-9999 once in UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range in UTC") from None


def keyset_page(queryset: Any, cursor: str | None, size: int) -> tuple[list[Any], str | None]:
    """One page newest first by (created_at, pk) after `cursor`, and the next page's cursor
    (None at the end). The API and the dashboard page the same way. Raises ValueError for a
    cursor that is not one of ours."""
    if cursor:
        try:
            created_text, _, pk = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        except UnicodeDecodeError:
            raise ValueError("invalid cursor") from None
        created = parse_datetime(created_text) if created_text else None
        if created is None or not pk:
            raise ValueError("invalid cursor")
        created = in_utc(created)
        try:
            queryset = queryset.filter(Q(created_at__lt=created) | Q(created_at=created, pk__lt=pk))
        except DjangoValidationError:
            raise ValueError("invalid cursor") from None
    rows = list(queryset.order_by("-created_at", "-pk")[: size + 1])
    if len(rows) <= size:
        return rows, None
    rows = rows[:size]
    last = rows[-1]
    return rows, base64.urlsafe_b64encode(f"{last.created_at.isoformat()}|{last.pk}".encode()).decode()


class KeysetPagination:
    """Newest first by (created_at, id): stable under inserts and cheap at any depth.

    The cursor is opaque (base64 of the last row's position). `page_size` defaults to 50
    and may go up to 1,000.
    """

    default_size = 50
    max_size = 1000

    def page_size(self, request: Request) -> int:
        raw = request.query_params.get("page_size")
        if raw is None:
            return self.default_size
        try:
            size = int(raw)
        except ValueError:
            raise exceptions.ValidationError({"page_size": [f"must be an integer, not {raw!r}"]}) from None
        if not 1 <= size <= self.max_size:
            raise exceptions.ValidationError({"page_size": [f"must be between 1 and {self.max_size}"]})
        return size

    def paginate(self, queryset: Any, request: Request) -> tuple[list[Any], str | None]:
        size = self.page_size(request)
        try:
            rows, token = keyset_page(queryset, request.query_params.get("cursor"), size)
        except ValueError:
            raise exceptions.ValidationError({"cursor": ["invalid cursor"]}) from None
        next_url = None
        if token is not None:
            params = request.query_params.copy()
            params["cursor"] = token
            next_url = request.build_absolute_uri(request.path) + "?" + urlencode(params, doseq=True)
        return rows, next_url
