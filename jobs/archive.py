"""The archive: finished jobs past retention, with their attempts, in ClickHouse.

The retention scan (orchestration.scheduler.retention) writes each job here, then deletes it
from PostgreSQL; the API, the dashboard and the admin read it back, marked archived. One row a
job: its fields as they were, and its attempt history as JSON.

Schema choices:
- ORDER BY (owner_id, created_at, id): a user's list, newest first, is a range read of the
  primary index; staff lists read every owner's range.
- bloom_filter on id: "this job" skips the granules that cannot hold it, whatever the owner.
- ReplacingMergeTree(archived_at): archiving is idempotent. A scan interrupted between the
  insert and PostgreSQL's commit archives the job again later; reads take one row per id
  (`LIMIT 1 BY id`, the newest), merges keep one.
- PARTITION BY month of created_at: a time filter prunes partitions.

The audit log's copy (`audit_table()`: the archive table's name with `_audit`) sits beside it,
written by the same retention pass (orchestration.scheduler.retention.AuditArchiveScan) and
created by the same `migrate`. PostgreSQL keeps every audit record for good (append-only);
this copy keeps them next to the archived jobs and logs, and outside PostgreSQL. One row a
record, every field of it:
- ORDER BY id, ReplacingMergeTree: a record copied twice (a crash after the insert) is one
  row; reads take one row per id.
- No partitions: a batch is one part, so an insert lands whole or not at all, and the newest
  id stored (`audit_watermark`) says that everything before it is there (ids are copied in
  order). Operator actions are few, so one partition stays small.
- non_replicated_deduplication_window: a batch sent again with its token is stored once.
- bloom filters on target_id and actor, minmax on created_at (ids grow with time).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload

from django.conf import settings

from jobs.models import AuditRecord, Job, JobAttempt

COLUMNS = (
    "id", "owner_id", "type", "queue", "priority", "status", "attempts", "attempt_seq", "max_attempts", "backoff",
    "timeout_seconds", "run_at", "next_retry_at", "idempotency_key", "last_error", "payload", "result",
    "concurrency_key", "concurrency_limit", "workflow_id", "cancel_requested_at", "trace_context", "created_at",
    "queued_at", "started_at", "finished_at", "history", "archived_at",
)  # fmt: skip

_JSON_FIELDS = ("backoff", "payload", "result", "trace_context")


def table() -> str:
    from logs.store import checked_identifier

    return checked_identifier(settings.CLICKHOUSE_JOBS_ARCHIVE_TABLE, "CLICKHOUSE_JOBS_ARCHIVE_TABLE")


def create_table_sql(name: str) -> str:
    ts, maybe_ts = "DateTime64(6, 'UTC')", "Nullable(DateTime64(6, 'UTC'))"
    return f"""
CREATE TABLE IF NOT EXISTS {name} (
    id                  UUID,
    owner_id            UInt64,
    type                LowCardinality(String),
    queue               LowCardinality(String),
    priority            UInt8,
    status              LowCardinality(String),
    attempts            UInt16,
    attempt_seq         UInt32,
    max_attempts        UInt16,
    backoff             String,
    timeout_seconds     UInt32,
    run_at              {maybe_ts},
    next_retry_at       {maybe_ts},
    idempotency_key     Nullable(String),
    last_error          String CODEC(ZSTD(3)),
    payload             String CODEC(ZSTD(3)),
    result              Nullable(String) CODEC(ZSTD(3)),
    concurrency_key     Nullable(String),
    concurrency_limit   Nullable(UInt16),
    workflow_id         Nullable(UUID),
    cancel_requested_at {maybe_ts},
    trace_context       Nullable(String),
    created_at          {ts} CODEC(Delta, ZSTD(1)),
    queued_at           {maybe_ts},
    started_at          {maybe_ts},
    finished_at         {maybe_ts},
    history             String CODEC(ZSTD(3)),
    archived_at         {ts},
    INDEX id_bloom id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX workflow_bloom workflow_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(archived_at)
PARTITION BY toYYYYMM(created_at)
ORDER BY (owner_id, created_at, id)
"""


def audit_table() -> str:
    """The audit log's copy: CLICKHOUSE_JOBS_ARCHIVE_TABLE's name with `_audit`."""
    from logs.store import checked_identifier

    return checked_identifier(f"{settings.CLICKHOUSE_JOBS_ARCHIVE_TABLE}_audit", "CLICKHOUSE_JOBS_ARCHIVE_TABLE")


def create_audit_table_sql(name: str) -> str:
    ts = "DateTime64(6, 'UTC')"
    return f"""
CREATE TABLE IF NOT EXISTS {name} (
    id              UInt64,
    created_at      {ts} CODEC(Delta, ZSTD(1)),
    actor_id        Nullable(Int64),
    actor           String,
    action          LowCardinality(String),
    target_type     LowCardinality(String),
    target_id       String,
    target_owner_id Nullable(Int64),
    source          LowCardinality(String),
    request_id      String,
    trace_id        String,
    details         String CODEC(ZSTD(3)),
    archived_at     {ts},
    INDEX target_bloom target_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX actor_bloom actor TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX created_minmax created_at TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree(archived_at)
ORDER BY id
SETTINGS non_replicated_deduplication_window = 1000
"""


_migrated: set[str] = set()


def migrate() -> None:
    """Create the archive table and the audit log's copy if missing (once per process and
    table)."""
    from logs import store

    for name, create in ((table(), create_table_sql), (audit_table(), create_audit_table_sql)):
        if name not in _migrated:
            store.client().command(create(name))
            if create is create_table_sql:
                _carrier_column(name)
            _migrated.add(name)


def _carrier_column(name: str) -> None:
    """A table made before issue 32 kept a job's `traceparent`; it gets `trace_context` (the
    carrier, JSON) computed from it for the rows it has (a DEFAULT is read on the fly for old
    parts: nothing is rewritten)."""
    from logs import store

    columns = (
        store.client()
        .query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
            parameters={"t": name},
        )
        .result_rows
    )
    if ("traceparent",) in columns and ("trace_context",) not in columns:
        store.client().command(
            f"ALTER TABLE {name} ADD COLUMN trace_context Nullable(String) "
            "DEFAULT if(traceparent IS NULL, NULL, concat('{\"traceparent\":\"', traceparent, '\"}')) "
            "AFTER traceparent"
        )


# -- writing -----------------------------------------------------------------------------------


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def row_of(job: dict[str, Any], attempts: list[dict[str, Any]], archived_at: datetime) -> list[Any]:
    """The archive row of a job (a dict of its columns, JSON ones as the JSON text PostgreSQL
    gives a raw cursor) and its attempts, in COLUMNS order."""
    history = [
        {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in a.items() if k != "job_id"}
        for a in sorted(attempts, key=lambda a: a["attempt"])
    ]
    values = {
        **job,
        "backoff": job["backoff"] or "{}",
        "history": _json(history),
        "archived_at": archived_at,
    }
    return [values[c] for c in COLUMNS]


def insert(rows: list[list[Any]], *, dedup_token: str) -> None:
    from logs import store

    migrate()
    store.client().insert(
        table(), rows, column_names=list(COLUMNS), settings={"insert_deduplication_token": dedup_token}
    )


# -- the audit log's copy ----------------------------------------------------------------------

AUDIT_COLUMNS = (
    "id", "created_at", "actor_id", "actor", "action", "target_type", "target_id", "target_owner_id", "source",
    "request_id", "trace_id", "details", "archived_at",
)  # fmt: skip


def audit_row_of(record: AuditRecord, archived_at: datetime) -> list[Any]:
    """The copy of an audit record, every field of it, in AUDIT_COLUMNS order."""
    values = {c: getattr(record, c) for c in AUDIT_COLUMNS if c not in ("details", "archived_at")}
    values |= {"details": _json(record.details) or "{}", "archived_at": archived_at}
    return [values[c] for c in AUDIT_COLUMNS]


def insert_audit(rows: list[list[Any]], *, dedup_token: str) -> None:
    from logs import store

    migrate()
    store.client().insert(
        audit_table(), rows, column_names=list(AUDIT_COLUMNS), settings={"insert_deduplication_token": dedup_token}
    )


def audit_watermark() -> int:
    """The newest record id in the copy (0: none). Records are copied in id order and a batch
    lands whole, so every record up to it is there: where copying goes on after a restart."""
    from logs import store

    migrate()
    return int(store.client().query(f"SELECT max(id) FROM {audit_table()}").result_rows[0][0] or 0)  # noqa: S608


def audit_records(
    *,
    target_type: str | None = None,
    target_id: str | None = None,
    actor: str | None = None,
    after_id: int = 0,
    limit: int = 1000,
) -> list[AuditRecord]:
    """The archived copy of the audit log, oldest first after `after_id` (a cursor): unsaved
    AuditRecords marked `archived`. PostgreSQL keeps every record too; this reads the copy
    that sits beside the archived jobs (e.g. to check it against PostgreSQL's).
    Raises logs.search.LogStoreUnavailable when ClickHouse does not answer."""
    where = ["id > {after:UInt64}"]
    params: dict[str, Any] = {"after": after_id}
    for name, value in (("target_type", target_type), ("target_id", target_id), ("actor", actor)):
        if value is not None:
            where.append(f"{name} = {{{name}:String}}")
            params[name] = value
    records = []
    for row in _select(audit_table(), AUDIT_COLUMNS, where, params, order="id", limit=limit):
        archived_at = _utc(row.pop("archived_at"))
        record = AuditRecord(**{**row, "created_at": _utc(row["created_at"]), "details": json.loads(row["details"])})
        record.archived = True  # type: ignore[attr-defined]
        record.archived_at = archived_at  # type: ignore[attr-defined]
        records.append(record)
    return records


def _utc(value: datetime) -> datetime:
    """A DateTime64(6, 'UTC') as read (naive, in UTC) made aware, as PostgreSQL's are."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# -- reading -----------------------------------------------------------------------------------


def _job_of(row: dict[str, Any]) -> Job:
    """An unsaved Job built from an archive row, its history in the prefetch cache (so
    `job.history.all()` reads it, not PostgreSQL), marked `archived`."""
    fields = {c: row[c] for c in COLUMNS if c not in ("history", "archived_at", *_JSON_FIELDS)}
    job = Job(**fields, **{f: json.loads(row[f]) if row[f] is not None else None for f in _JSON_FIELDS})
    history = [
        JobAttempt(
            job_id=job.id,
            attempt=a["attempt"],
            status=a["status"],
            worker=a.get("worker", ""),
            started_at=_parse(a["started_at"]),
            finished_at=_parse(a.get("finished_at")),
            error=a.get("error", ""),
            error_class=a.get("error_class", ""),
            traceback=a.get("traceback", ""),
        )
        for a in json.loads(row["history"] or "[]")
    ]
    job._prefetched_objects_cache = {"history": history}  # type: ignore[attr-defined]
    job.archived = True  # type: ignore[attr-defined]
    job.archived_at = row["archived_at"]  # type: ignore[attr-defined]
    return job


@overload
def _parse(value: str) -> datetime: ...
@overload
def _parse(value: str | None) -> datetime | None: ...
def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _query(where: list[str], params: dict[str, Any], *, order: str, limit: int) -> list[Job]:
    """Raises logs.search.LogStoreUnavailable when ClickHouse does not answer (the API: 503)."""
    return [_job_of(row) for row in _select(table(), COLUMNS, where, params, order=order, limit=limit)]


def _select(
    name: str, columns: Sequence[str], where: list[str], params: dict[str, Any], *, order: str, limit: int
) -> list[dict[str, Any]]:
    """The newest copy of each row of an archive table (ReplacingMergeTree may still hold
    older ones), as dicts. Raises logs.search.LogStoreUnavailable when ClickHouse does not
    answer."""
    from logs import store
    from logs.search import LogStoreUnavailable

    # Only fixed fragments and the checked table name are in the text; values are bound.
    sql = (
        f"SELECT {', '.join(columns)} FROM {name} WHERE {' AND '.join(where) or '1'} "  # noqa: S608
        f"ORDER BY {order}, archived_at DESC LIMIT 1 BY id LIMIT {int(limit)}"
    )
    try:
        migrate()
        result = store.client().query(sql, parameters=params)
    except Exception as exc:  # refused, timed out, server error: the archive is not answering
        raise LogStoreUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from exc
    return [dict(zip(result.column_names, r, strict=True)) for r in result.result_rows]


def get(job_id: uuid.UUID | str, *, owners: Collection[int] | None) -> Job | None:
    """The archived job, if one of `owners` (None: anyone's, for staff) owns it."""
    where: list[str] = ["id = {id:UUID}"]
    params: dict[str, Any] = {"id": str(uuid.UUID(str(job_id)))}  # ValueError: not a job id
    if owners is not None:
        where.append("owner_id IN {owners:Array(UInt64)}")
        params["owners"] = sorted(owners)
    found = _query(where, params, order="id", limit=1)
    return found[0] if found else None


@dataclass(frozen=True)
class Filters:
    """The jobs list's filters, as JobFilter cleaned them."""

    statuses: list[str] | None = None
    type: str | None = None
    queue: str | None = None
    workflow: uuid.UUID | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    ids: list[str] | None = None  # from log_contains


def page(
    filters: Filters, *, owners: Collection[int] | None, after: tuple[datetime, str] | None, size: int
) -> list[Job]:
    """Up to `size` archived jobs of `owners` (None: anyone's) newest first by (created_at,
    id), after `after`."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if owners is not None:
        where.append("owner_id IN {owners:Array(UInt64)}")
        params["owners"] = sorted(owners)
    if filters.statuses:
        where.append("status IN {statuses:Array(String)}")
        params["statuses"] = list(filters.statuses)
    for name in ("type", "queue"):
        value = getattr(filters, name)
        if value is not None:
            where.append(f"{name} = {{{name}:String}}")
            params[name] = value
    if filters.workflow is not None:
        where.append("workflow_id = {workflow:UUID}")
        params["workflow"] = str(filters.workflow)
    if filters.created_after is not None:
        where.append("created_at >= {after_at:DateTime64(6, 'UTC')}")
        params["after_at"] = filters.created_after
    if filters.created_before is not None:
        where.append("created_at < {before_at:DateTime64(6, 'UTC')}")
        params["before_at"] = filters.created_before
    if filters.ids is not None:
        where.append("id IN {ids:Array(UUID)}")
        params["ids"] = filters.ids
    if after is not None:
        where.append("(created_at, id) < ({cursor_at:DateTime64(6, 'UTC')}, {cursor_id:UUID})")
        params["cursor_at"], params["cursor_id"] = after
    return _query(where, params, order="created_at DESC, id DESC", limit=size)
