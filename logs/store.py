"""ClickHouse access for logs: the client, the schema, inserts.

Every process reaches ClickHouse the same way, with clickhouse-connect over HTTP at
CLICKHOUSE_URL (in the embedded dev stack that is `chdb_http`, the one process that owns the
chDB files). The database is the URL's path; the table is CLICKHOUSE_LOGS_TABLE.

Schema choices (for the queries in `logs.search`):
- ORDER BY (job_id, timestamp): the main question is "the logs of this job", which becomes a
  range read of the primary index, a few granules, whatever the table size. Records without a
  job have the all-zero UUID and sort first.
- PARTITION BY day: the TTL drops whole parts, and a time window prunes partitions before the
  index is read.
- ngrambf_v1 over lower(message): text search `q` is a case-insensitive substring match
  (`lower(message) LIKE '%…%'`), and 4-grams let ClickHouse skip granules without it.
- bloom_filter on owner_id and workflow_id: a user's search and a workflow's logs skip the
  granules of other owners and workflows; minmax on timestamp narrows a window inside a day.
- LowCardinality for level, service, logger, host, type and queue: few distinct values,
  dictionary-encoded and fast to filter and group.
- Codecs: Delta+ZSTD for timestamps (nearly sorted inside a job), ZSTD for text.
- TTL from LOG_RETENTION_DAYS (default 30); `migrate` applies a changed value to the table.
- non_replicated_deduplication_window: a retried insert of the same batch (the sink sends a
  token made of the batch's Kafka offsets) is stored once.
- trace_id, span_id (hex, empty outside a trace) with a bloom filter on trace_id: "the lines
  of this trace" skips the granules of other traces. Added to an older table by `migrate`
  (ADD COLUMN IF NOT EXISTS: existing rows read as empty).
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from django.conf import settings

from logs.records import COLUMNS

_local = threading.local()


def client() -> Client:
    """A clickhouse-connect client for this thread and CLICKHOUSE_URL (one per process, thread
    and URL: a forked child must not share its parent's connections)."""
    key = (os.getpid(), settings.CLICKHOUSE_URL)
    if getattr(_local, "key", None) != key:
        _local.client, _local.key = connect(), key
    return _local.client


def connect(url: str | None = None, **kwargs: Any) -> Client:
    url = url or settings.CLICKHOUSE_URL
    if not url:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("CLICKHOUSE_URL is not set")
    return clickhouse_connect.get_client(
        dsn=url,
        connect_timeout=settings.CLICKHOUSE_CONNECT_TIMEOUT,
        send_receive_timeout=settings.CLICKHOUSE_QUERY_TIMEOUT,
        autogenerate_session_id=False,  # stateless queries; a session would serialize threads
        **kwargs,
    )


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


def checked_identifier(name: str, setting: str) -> str:
    """`name`, a table name from `setting` that goes into SQL text: a plain identifier."""
    if not _IDENTIFIER.match(name):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{setting} must be a plain identifier, not {name!r}")
    return name


def table() -> str:
    """The logs table's name."""
    return checked_identifier(settings.CLICKHOUSE_LOGS_TABLE, "CLICKHOUSE_LOGS_TABLE")


def create_table_sql(name: str, retention_days: int) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {name} (
    timestamp   DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    id          UUID DEFAULT generateUUIDv4(),
    level       LowCardinality(String),
    level_no    UInt8,
    service     LowCardinality(String),
    logger      LowCardinality(String),
    host        LowCardinality(String),
    pid         UInt32,
    message     String CODEC(ZSTD(3)),
    job_id      UUID,
    workflow_id UUID,
    attempt     UInt32,
    type        LowCardinality(String),
    queue       LowCardinality(String),
    owner_id    UInt64,
    exception   String CODEC(ZSTD(3)),
    extra       String CODEC(ZSTD(3)),
    trace_id    String CODEC(ZSTD(1)),
    span_id     String CODEC(ZSTD(1)),
    INDEX message_ngrams lower(message) TYPE ngrambf_v1(4, 65536, 2, 0) GRANULARITY 1,
    INDEX owner_bloom owner_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX workflow_bloom workflow_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX time_minmax timestamp TYPE minmax GRANULARITY 1,
    INDEX trace_bloom trace_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toDate(timestamp)
ORDER BY (job_id, timestamp)
TTL toDateTime(timestamp) + INTERVAL {int(retention_days)} DAY
SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 1000
"""


# Columns a table created by an older release lacks, as `ADD COLUMN` clauses (in order).
ADDED_COLUMNS = (
    "trace_id String CODEC(ZSTD(1)) AFTER extra",
    "span_id String CODEC(ZSTD(1)) AFTER trace_id",
)


def migrate(name: str | None = None, retention_days: int | None = None, ch: Client | None = None) -> list[str]:
    """Create the logs table if missing and apply the retention setting. Idempotent.
    Returns the statements it ran."""
    name = name or table()
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a table name: {name!r}")
    days = settings.LOG_RETENTION_DAYS if retention_days is None else retention_days
    ch = ch or client()
    statements = [
        create_table_sql(name, days),
        # Columns added since the table was first created (a no-op on a new table).
        *(f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {column}" for column in ADDED_COLUMNS),
        f"ALTER TABLE {name} ADD INDEX IF NOT EXISTS trace_bloom trace_id TYPE bloom_filter(0.01) GRANULARITY 1",
        # A changed LOG_RETENTION_DAYS reaches an existing table; old parts are dropped as
        # they merge rather than by rewriting the table now.
        f"ALTER TABLE {name} MODIFY TTL toDateTime(timestamp) + INTERVAL {int(days)} DAY",
    ]
    for sql in statements:
        ch.command(sql, settings={"materialize_ttl_after_modify": 0} if "MODIFY TTL" in sql else None)
    return statements


def insert_columns(columns: list[list[Any]], *, dedup_token: str | None = None, ch: Client | None = None) -> None:
    (ch or client()).insert(
        table(),
        columns,
        column_names=COLUMNS,
        column_oriented=True,
        settings={"insert_deduplication_token": dedup_token} if dedup_token else None,
    )
