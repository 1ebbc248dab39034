"""Reads on logs in ClickHouse: search, stats, the jobs whose logs contain a text, and the
last lines before each failed attempt.

Every value from a request reaches ClickHouse as a bound parameter (`{name:Type}`, sent as
`param_name`), never inside the SQL text. Only fixed fragments are assembled here.

Visibility: staff see every record; a user sees the records of the jobs it sees. A search by
`job_id` is checked against PostgreSQL by the caller (the job must be visible) and is then
not restricted by owner, so lines tagged with the job outside an attempt (no owner on them)
show too. Any other search of a non-staff user is limited to the owners it sees (its own,
and those it administers), which the worker stamps on every record of an attempt.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from django.conf import settings

from logs import store
from logs.records import LEVELS

NIL_UUID = uuid.UUID(int=0)
# Columns a search returns, in this order.
FIELDS = (
    "timestamp", "id", "level", "service", "logger", "message", "job_id", "workflow_id", "attempt",
    "type", "queue", "host", "pid", "exception", "extra", "trace_id", "span_id",
)  # fmt: skip
_SELECT = (
    "toUnixTimestamp64Micro(timestamp), id, level, service, logger, message, job_id, workflow_id, attempt, "
    "type, queue, host, pid, exception, extra, trace_id, span_id"
)


class LogStoreUnavailable(Exception):
    """ClickHouse did not answer (the API says 503; nothing about the request was wrong)."""


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class LogQuery:
    job_id: uuid.UUID | None = None
    workflow_id: uuid.UUID | None = None
    min_level: str | None = None
    service: str | None = None
    q: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    trace_id: str | None = None  # 32 lowercase hex digits
    owners: frozenset[int] | None = None  # None: no owner restriction (staff, or a job already checked)
    limit: int = 50
    cursor: str | None = None
    ascending: bool = False  # newest first unless asked


def like_pattern(text: str) -> str:
    """`text` as a case-insensitive substring pattern for `lower(message) LIKE`."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _micros(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1_000_000)


# Each filter: the LogQuery field, its condition (the value bound under the field's name),
# and how the value is turned into the bound parameter.
_FILTERS: tuple[tuple[str, str, Any], ...] = (
    ("job_id", "job_id = {job_id:UUID}", str),
    ("workflow_id", "workflow_id = {workflow_id:UUID}", str),
    ("trace_id", "trace_id = {trace_id:String}", str),
    ("owners", "owner_id IN {owners:Array(UInt64)}", sorted),  # empty: matches nothing
    ("min_level", "level_no >= {min_level:UInt8}", LEVELS.__getitem__),
    ("service", "service = {service:String}", str),
    ("q", "lower(message) LIKE {q:String}", like_pattern),
    ("since", "timestamp >= fromUnixTimestamp64Micro({since:Int64}, 'UTC')", _micros),
    ("until", "timestamp < fromUnixTimestamp64Micro({until:Int64}, 'UTC')", _micros),
)


def _where(query: LogQuery, params: dict[str, Any]) -> list[str]:
    clauses: list[str] = []
    for field, condition, convert in _FILTERS:
        value = getattr(query, field)
        if value is None or value == "":
            continue
        clauses.append(condition)
        params[field] = convert(value)
    return clauses


def encode_cursor(ts_us: int, record_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{ts_us}|{record_id}".encode()).decode()


def decode_cursor(raw: str) -> tuple[int, uuid.UUID]:
    try:
        ts, _, rid = base64.urlsafe_b64decode(raw.encode()).decode().partition("|")
        return int(ts), uuid.UUID(rid)
    except (ValueError, UnicodeDecodeError):
        raise InvalidCursor("invalid cursor") from None


def _run(sql: str, params: dict[str, Any]) -> list[Sequence[Any]]:
    try:
        return list(store.client().query(sql, parameters=params).result_rows)
    except Exception as exc:  # connection refused, timeout, server error: the store is not answering
        raise LogStoreUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from exc


def _record(row: Sequence[Any]) -> dict[str, Any]:
    rec = dict(zip(FIELDS, row, strict=True))
    rec["timestamp"] = datetime.fromtimestamp(rec["timestamp"] / 1_000_000, tz=UTC)
    for key in ("job_id", "workflow_id"):
        rec[key] = None if rec[key] == NIL_UUID else rec[key]
    rec["attempt"] = rec["attempt"] or None
    rec["extra"] = orjson.loads(rec["extra"]) if rec["extra"] else {}
    rec["exception"] = rec["exception"] or None
    return rec


# Newest-first searches that are not about one job read the table in windows back from their
# upper bound and stop once the page is full. The table is ordered by job, so a frequent term
# would otherwise scan and sort every matching row of the retention period to return the
# newest 50 (measured in docs/benchmarks.md). Windows follow the daily partitions and double
# (1, 1, 2, 4, ... days), so a rare term still reads each partition once, in a few queries.
DAY_US = 86_400_000_000


def window_bounds(top: int, floor: int | None, max_days: int) -> list[int]:
    """Lower bounds (µs, newest first) of the windows below `top`, down to `floor`."""
    start = (top - 1) // DAY_US * DAY_US  # the start of the UTC day holding the newest record wanted
    bounds, span = [start], 1
    while (bound := start - span * DAY_US) > start - max_days * DAY_US:
        bounds.append(bound)
        span = span * 2 + 1
    return [b for b in bounds if floor is None or b > floor]


def search(query: LogQuery) -> tuple[list[dict[str, Any]], str | None]:
    """One page of records and the cursor of the next page (None at the end)."""
    params: dict[str, Any] = {}
    clauses = _where(query, params)
    upper: int | None = params.get("until")
    if query.cursor:
        ts, rid = decode_cursor(query.cursor)
        op = ">" if query.ascending else "<"
        clauses.append(
            f"(timestamp, id) {op} (fromUnixTimestamp64Micro({{cursor_ts:Int64}}, 'UTC'), {{cursor_id:UUID}})"
        )
        params["cursor_ts"], params["cursor_id"] = ts, str(rid)
        upper = ts + 1 if upper is None else min(upper, ts + 1)
    direction = "ASC" if query.ascending else "DESC"
    # S608: only fixed fragments and the configured table name are in the text; values are bound.
    order = f" ORDER BY timestamp {direction}, id {direction} LIMIT {{limit:UInt32}}"
    select = f"SELECT {_SELECT} FROM {store.table()} WHERE "  # noqa: S608
    want = query.limit + 1
    bounds: list[int] = []  # lower bounds (µs) of the windows, newest first
    if not query.ascending and query.job_id is None:
        top = upper if upper is not None else int(time.time() * 1_000_000) + 1
        bounds = window_bounds(top, params.get("since"), settings.LOG_RETENTION_DAYS)
    rows: list[Sequence[Any]] = []
    newer_than: int | None = None
    for lower in [*bounds, None]:
        step, step_params = list(clauses), {**params, "limit": want - len(rows)}
        if newer_than is not None:  # strictly older than what the previous window covered
            step.append("timestamp < fromUnixTimestamp64Micro({w_upper:Int64}, 'UTC')")
            step_params["w_upper"] = newer_than
        if lower is not None:
            step.append("timestamp >= fromUnixTimestamp64Micro({w_lower:Int64}, 'UTC')")
            step_params["w_lower"] = lower
        rows += _run(select + (" AND ".join(step) or "1") + order, step_params)
        if len(rows) >= want:
            break
        newer_than = lower
    next_cursor = None
    if len(rows) > query.limit:
        rows = rows[: query.limit]
        next_cursor = encode_cursor(rows[-1][0], rows[-1][1])
    return [_record(r) for r in rows], next_cursor


def stats(query: LogQuery) -> dict[str, dict[str, int]]:
    """Counts by level and by service for the records the query selects."""
    params: dict[str, Any] = {}
    clauses = _where(query, params)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = _run(
        f"SELECT level, service, count() FROM {store.table()}{where} GROUP BY level, service",  # noqa: S608
        params,
    )
    by_level = {level: 0 for level in LEVELS}
    by_service: dict[str, int] = {}
    for level, service, n in rows:
        by_level[level] = by_level.get(level, 0) + n
        by_service[service] = by_service.get(service, 0) + n
    return {"by_level": by_level, "by_service": dict(sorted(by_service.items()))}


def job_ids_with_text(text: str, *, owners: frozenset[int] | None, since: datetime | None, limit: int) -> list[str]:
    """Ids of jobs with a record containing `text` (at most `limit`, any order)."""
    params: dict[str, Any] = {"limit": limit}
    clauses = _where(LogQuery(q=text, owners=owners, since=since), params)
    clauses.append("job_id != toUUID('00000000-0000-0000-0000-000000000000')")
    rows = _run(
        f"SELECT DISTINCT job_id FROM {store.table()} WHERE {' AND '.join(clauses)} LIMIT {{limit:UInt32}}",  # noqa: S608
        params,
    )
    return [str(r[0]) for r in rows]


def last_lines_by_attempt(job_id: uuid.UUID, attempts: Sequence[int], lines: int) -> dict[int, list[dict[str, Any]]]:
    """The last `lines` records of each of the given attempts of a job, oldest first."""
    if not attempts:
        return {}
    rows = _run(
        f"SELECT {_SELECT} FROM {store.table()}"  # noqa: S608
        " WHERE job_id = {job_id:UUID} AND attempt IN {attempts:Array(UInt32)}"
        " ORDER BY timestamp DESC, id DESC LIMIT {lines:UInt32} BY attempt",
        {"job_id": str(job_id), "attempts": list(attempts), "lines": lines},
    )
    out: dict[int, list[dict[str, Any]]] = {a: [] for a in attempts}
    for row in reversed(rows):
        rec = _record(row)
        out.setdefault(rec["attempt"], []).append(rec)
    return out
