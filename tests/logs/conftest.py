"""Fixtures for the log pipeline: a ClickHouse table and Kafka topics of each test's own, and
a way to store records directly (the same columnar insert the sink uses)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from config import kafka
from logs import store
from logs.records import Batch
from logs.sink import LogSink


@pytest.fixture
def ch_table(settings: Any) -> Iterator[str]:
    name = f"logs_test_{uuid.uuid4().hex[:12]}"
    settings.CLICKHOUSE_LOGS_TABLE = name
    ch = store.connect()  # its own client: a test may point CLICKHOUSE_URL elsewhere meanwhile
    store.migrate(name, ch=ch)
    yield name
    ch.command(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def log_topics(settings: Any) -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:10]
    names = {"logs": f"logs-{suffix}", "dlq": f"logs-{suffix}.dlq", "group": f"sink-{suffix}"}
    settings.KAFKA_LOGS_TOPIC = names["logs"]
    settings.KAFKA_LOGS_DLQ_TOPIC = names["dlq"]
    settings.KAFKA_LOG_SINK_GROUP = names["group"]
    settings.KAFKA_LOGS_PARTITIONS = 2
    kafka.ensure_topics([names["logs"], names["dlq"]], 2)
    yield names
    AdminClient(kafka.base_config()).delete_topics([names["logs"], names["dlq"]])


class RunningSink:
    def __init__(self) -> None:
        self.sink = LogSink(batch_size=500, batch_seconds=0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sink.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def micros(dt: datetime) -> int:
    return int(dt.timestamp() * 1_000_000)


def record(message: str = "hello", **fields: Any) -> dict[str, Any]:
    """A wire record with sensible defaults; `when` (a datetime) sets the timestamp."""
    when = fields.pop("when", None)
    doc: dict[str, Any] = {
        "timestamp": micros(when) if when else int(time.time() * 1_000_000),
        "level": "INFO",
        "logger": "tests",
        "message": message,
        "service": "worker",
        "host": "test-host",
        "pid": 42,
    }
    for key, value in fields.items():
        doc[key] = str(value) if isinstance(value, uuid.UUID) else value
    return doc


def store_records(*docs: dict[str, Any]) -> None:
    batch = Batch()
    for doc in docs:
        batch.add(orjson.dumps(doc))
    store.insert_columns(batch.columns)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# The dispatch pipeline's fixtures, for the end-to-end test of a job's logs.
from tests.orchestration.conftest import queue, topics  # noqa: E402, F401
