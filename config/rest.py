"""REST plumbing shared by every API: JSON codec, the one error shape, throttling, paging.

Error bodies have one shape everywhere:
    {"detail": "<what is wrong, in a sentence>", "code": "<machine code>", "errors": {...}}
where `errors` (validation only) holds DRF's field errors, by position for lists.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q
from django.http import Http404, QueryDict
from django.utils.dateparse import parse_datetime
from rest_framework import exceptions, parsers, renderers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle

if TYPE_CHECKING:  # rest_framework.views imports this module's renderer via settings
    from rest_framework.views import APIView

from config.errors import ObjectNotFound, StateConflict

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

    def __init__(self) -> None:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        super().__init__(f"Request body is larger than {limit:,} bytes (API_MAX_BODY_BYTES).")


def read_body(stream: Any) -> bytes:
    """The request body, refused with 413 over DATA_UPLOAD_MAX_MEMORY_SIZE (API_MAX_BODY_BYTES).

    DRF's parsers read the request stream directly, which skips Django's own size check, so the
    limit is enforced here while reading (a missing or lying Content-Length cannot get past it).
    """
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = stream.read(limit + 1) if stream is not None else b""
    if len(body) > limit:
        raise PayloadTooLarge()
    return body


class ORJSONParser(parsers.JSONParser):
    """Parses with orjson, within the body size and nesting limits (413 and 400 beyond)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        body = read_body(stream)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _parse_error(body, exc) from exc
        _check_depth(data)
        return data


class LimitedFormParser(parsers.FormParser):
    """A form body (the token endpoint takes them), within the body size limit."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        return QueryDict(read_body(stream), encoding=encoding)


def _parse_error(body: bytes, exc: orjson.JSONDecodeError) -> exceptions.APIException:
    """orjson refuses a lone surrogate escape (`"\\ud800"`: JSON's grammar allows it, but it is
    no Unicode text, and neither PostgreSQL nor Kafka's UTF-8 can carry it). Python's json
    reads it, which finds the field to name."""
    if "surrogate" in str(exc):
        try:
            data = json.loads(body, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict):
            for key, value in data.items():
                problem = find_bad_text(value, str(key))
                if problem:
                    return exceptions.ValidationError({key: [problem]})
    return exceptions.ParseError(f"JSON parse error: {exc}")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _check_depth(data: Any) -> None:
    """400 for objects and arrays nested deeper than API_JSON_MAX_DEPTH (orjson reads 1,024
    levels, but writes only 254, and Python's own json overflows its stack sooner)."""
    limit = settings.API_JSON_MAX_DEPTH
    level, depth = [data], 0
    while level:
        depth += 1
        if depth > limit:
            raise exceptions.ParseError(
                f"JSON nests objects and arrays more than {limit} levels deep (API_JSON_MAX_DEPTH)."
            )
        level = [child for item in level for child in _containers_in(item)]


def _containers_in(item: Any) -> list[Any]:
    values = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
    return [v for v in values if isinstance(v, dict | list)]


# --- Text and size of input ------------------------------------------------------------------


def text_problem(text: str) -> str | None:
    """Why no store of ours can hold `text` (PostgreSQL refuses NUL; UTF-8 has no lone
    surrogates), or None."""
    if "\x00" in text:
        return "contains NUL (U+0000)"
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate (U+{ord(text[exc.start]):04X})"
    return None


def find_bad_text(value: Any, path: str) -> str | None:
    """'<path> contains ...' for the first string anywhere in `value` (keys too) that
    text_problem refuses, or None. Iterative: nesting is bounded by the parser, not the stack."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return f"{where} {problem}"
        elif isinstance(item, dict):
            for key, child in item.items():
                problem = text_problem(key) if isinstance(key, str) else None
                if problem:
                    return f"a key in {where} {problem}"
                stack.append((child, f"{where}.{str(key)[:40]}"))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None


def check_json(value: Any, field: str, *, max_bytes: int, setting: str) -> None:
    """Raise ValidationError when `value` holds text no store can hold or is over `max_bytes`
    as JSON, naming `field`, the size and the `setting` that sets the limit."""
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise exceptions.ValidationError(find_bad_text(value, field) or f"{field} is not JSON: {exc}") from None
    if b"\\u0000" in encoded:  # orjson escapes NUL so; a text "\\u0000" only looks like it
        problem = find_bad_text(value, field)
        if problem:
            raise exceptions.ValidationError(f"{problem}, which PostgreSQL cannot store.")
    if len(encoded) > max_bytes:
        raise exceptions.ValidationError(
            f"{field} is {len(encoded):,} bytes as JSON; the limit is {max_bytes:,} ({setting})."
        )


def check_length(value: str, field: str, *, max_chars: int, setting: str) -> str:
    if len(value) > max_chars:
        raise exceptions.ValidationError(
            f"{field} is {len(value):,} characters; the limit is {max_chars:,} ({setting})."
        )
    return value


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
    if isinstance(exc, ObjectNotFound):
        exc = exceptions.NotFound(str(exc))
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    elif isinstance(exc, StateConflict):
        body = {"detail": str(exc), "code": exc.code, **exc.fields()}
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
        from config.broker import client  # the process's shared Redis client

        pipe = client().pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, self.period + 1)
        count = pipe.execute()[0]
        if count <= self.limit:
            return True
        # Checked only once over the limit: the permission lookup costs queries.
        if user and user.is_authenticated and user.has_perm("orchestration_jobs.unthrottled"):
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


def encode_cursor(created_at: datetime, pk: Any) -> str:
    """The opaque cursor of a row's position: base64 of its (created_at, pk)."""
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{pk}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at in UTC, pk text) of a cursor; ValueError for one that is not ours."""
    try:
        created_text, _, pk = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
    except UnicodeDecodeError:  # bad base64 is a ValueError already
        raise ValueError("invalid cursor") from None
    created = parse_datetime(created_text) if created_text else None
    if created is None or not pk:
        raise ValueError("invalid cursor")
    return in_utc(created), pk


Pager = Callable[[Any, str | None, int], tuple[list[Any], str | None]]


def keyset_page(queryset: Any, cursor: str | None, size: int) -> tuple[list[Any], str | None]:
    """One page newest first by (created_at, pk) after `cursor`, and the next page's cursor
    (None at the end). The API and the dashboard page the same way. Raises ValueError for a
    cursor that is not one of ours."""
    if cursor:
        created, pk = decode_cursor(cursor)
        try:
            queryset = queryset.filter(Q(created_at__lt=created) | Q(created_at=created, pk__lt=pk))
        except DjangoValidationError:
            raise ValueError("invalid cursor") from None
    return cut_page(list(queryset.order_by("-created_at", "-pk")[: size + 1]), size)


def cut_page(rows: list[Any], size: int) -> tuple[list[Any], str | None]:
    """Rows read newest first, one more than `size`, cut to a page; and the next page's cursor
    (None when that extra row was not there: the last page)."""
    if len(rows) <= size:
        return rows, None
    rows = rows[:size]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].pk)


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

    def paginate(self, queryset: Any, request: Request, pager: Pager = keyset_page) -> tuple[list[Any], str | None]:
        size = self.page_size(request)
        try:
            rows, token = pager(queryset, request.query_params.get("cursor"), size)
        except ValueError:
            raise exceptions.ValidationError({"cursor": ["invalid cursor"]}) from None
        next_url = None
        if token is not None:
            params = request.query_params.copy()
            params["cursor"] = token
            next_url = request.build_absolute_uri(request.path) + "?" + urlencode(params, doseq=True)
        return rows, next_url


def request_owner_id(request: Request) -> int:
    """The id of the authenticated user a request acts for (the owner of what it creates)."""
    pk = request.user.pk  # IsAuthenticated ran first: always a saved user here
    assert pk is not None
    return int(pk)


def with_idempotency_header(request: Request) -> Any:
    """The request's body, with the `Idempotency-Key` header as its `idempotency_key` when the
    body has none (jobs and workflows take the key either way)."""
    data, header_key = request.data, request.headers.get("Idempotency-Key")
    if header_key and isinstance(data, dict) and not data.get("idempotency_key"):
        return {**data, "idempotency_key": header_key}
    return data


def filtered_page(
    request: Request,
    filterset_class: type,
    queryset: Any,
    serializer: type,
    pager_of: Callable[[Any], Pager | None] | None = None,
) -> Response:
    """A list GET: the filters (400 with their errors), then one keyset page of `serializer`.
    `pager_of(filterset)` may name another source of the rows (a Pager), or None: the queryset."""
    filterset = filterset_class(request.query_params, queryset=queryset, request=request)
    if not filterset.is_valid():
        raise exceptions.ValidationError(filterset.errors)
    pager = pager_of(filterset) if pager_of is not None else None
    if pager is None:
        rows, next_url = KeysetPagination().paginate(filterset.qs, request)
    else:
        rows, next_url = KeysetPagination().paginate(None, request, pager)
    return Response({"results": serializer(rows, many=True).data, "next": next_url})
