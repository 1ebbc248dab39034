"""The log record on the wire (Kafka `logs`, JSON) and as a ClickHouse row.

Wire format, written by `logs.shipping` and by `POST /api/v1/logs/`:

    {"timestamp": 1764445200123456,  # µs since the epoch, UTC
     "level": "INFO", "logger": "orchestration.demo", "message": "...", "service": "worker",
     "host": "...", "pid": 123, "job_id": "uuid"?, "workflow_id": "uuid"?, "attempt": 1?,
     "type": "demo.log"?, "queue": "default"?, "owner_id": 7?, "trace_id": "32 hex"?,
     "span_id": "16 hex"?, "exception": "Traceback..."?, "extra": {...}?}

`Batch` turns records into columns for clickhouse-connect's columnar insert, and rejects a
malformed one with the reason (the sink sends it to `logs.dlq`). A `trace_id` or `span_id`
that is not lowercase hex of its length is stored empty: a line is never lost for its
tracing metadata.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson

from config.tracing import SPAN_ID, TRACE_ID

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
# Longer messages are cut, not rejected (the log shipper already cut its own records, with a
# marker, to LOG_MESSAGE_MAX_CHARS; this guards the sink against any other producer).
MAX_MESSAGE_CHARS = 64 * 1024

COLUMNS = (
    "timestamp", "level", "level_no", "service", "logger", "host", "pid", "message", "job_id", "workflow_id",
    "attempt", "type", "queue", "owner_id", "exception", "extra", "trace_id", "span_id",
)  # fmt: skip

# Anything before 2000 or after 2200 is a unit mistake (seconds or ns instead of µs).
_MIN_US, _MAX_US = 946_684_800_000_000, 7_258_118_400_000_000


class MalformedRecord(ValueError):
    """A record that cannot be stored; the message says what is wrong with it."""


def _uuid_or_empty(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise MalformedRecord(f"{key} must be a UUID string, not {type(value).__name__}")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise MalformedRecord(f"{key} is not a UUID: {value[:64]!r}") from None


def _text(doc: dict[str, Any], key: str, required: bool = False, limit: int = 1024) -> str:
    value = doc.get(key)
    if value is None:
        if required:
            raise MalformedRecord(f"{key} is missing")
        return ""
    if not isinstance(value, str):
        raise MalformedRecord(f"{key} must be a string, not {type(value).__name__}")
    if required and not value:
        raise MalformedRecord(f"{key} is empty")
    return value[:limit]


def _hex_id(doc: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    value = doc.get(key)
    return value if isinstance(value, str) and pattern.match(value) else ""


def _uint(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 2**32:
        raise MalformedRecord(f"{key} must be a non-negative integer, not {value!r}"[:200])
    return value


class Batch:
    """Columns of records waiting for one insert."""

    def __init__(self) -> None:
        self.columns: list[list[Any]] = [[] for _ in COLUMNS]
        self.size = 0

    def add(self, raw: bytes | None) -> None:
        """Parse one wire record and append it; raises MalformedRecord and appends nothing."""
        if not raw:
            raise MalformedRecord("empty message")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedRecord(f"not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise MalformedRecord(f"a record must be a JSON object, not {type(doc).__name__}")
        ts = doc.get("timestamp")
        if not isinstance(ts, int) or isinstance(ts, bool) or not _MIN_US <= ts < _MAX_US:
            raise MalformedRecord(f"timestamp must be µs since the epoch, not {ts!r}"[:200])
        level = doc.get("level")
        level_no = LEVELS.get(level) if isinstance(level, str) else None
        if level_no is None:
            raise MalformedRecord(f"level must be one of {', '.join(LEVELS)}, not {level!r}"[:200])
        if not isinstance(doc.get("message"), str):
            raise MalformedRecord("message is missing or not a string")
        extra = doc.get("extra")
        if extra is not None and not isinstance(extra, dict):
            raise MalformedRecord("extra must be an object")
        owner_id = doc.get("owner_id") or 0
        if not isinstance(owner_id, int) or owner_id < 0:
            raise MalformedRecord(f"owner_id must be a user id, not {owner_id!r}"[:200])
        row = (
            ts,
            level,
            level_no,
            _text(doc, "service", required=True, limit=128),
            _text(doc, "logger", limit=256),
            _text(doc, "host", limit=256),
            _uint(doc, "pid"),
            doc["message"][:MAX_MESSAGE_CHARS],
            _uuid_or_empty(doc, "job_id"),
            _uuid_or_empty(doc, "workflow_id"),
            _uint(doc, "attempt"),
            _text(doc, "type", limit=200),
            _text(doc, "queue", limit=200),
            owner_id,
            _text(doc, "exception", limit=MAX_MESSAGE_CHARS),
            orjson.dumps(extra).decode() if extra else "",
            _hex_id(doc, "trace_id", TRACE_ID),
            _hex_id(doc, "span_id", SPAN_ID),
        )
        for column, value in zip(self.columns, row, strict=True):
            column.append(value)
        self.size += 1
