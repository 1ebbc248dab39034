"""The shipping handler against real Kafka: what a record carries, a full queue (dropped and
counted, the caller never waits), Kafka away, and forked children."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
from django.conf import settings

from logs.context import JobLogContext, job_log_context, service_name
from logs.shipping import KafkaLogHandler
from tests.orchestration.conftest import consume_all, wait_for

pytestmark = pytest.mark.kafka


@pytest.fixture
def shipped(log_topics) -> Iterator[tuple[logging.Logger, KafkaLogHandler]]:
    """A logger of its own whose records go only to a fresh handler on this test's topic."""
    handler = KafkaLogHandler(
        settings.KAFKA_BOOTSTRAP_SERVERS, topic=log_topics["logs"], service="test-role",
        message_max_chars=settings.LOG_MESSAGE_MAX_CHARS, extra_max_bytes=settings.LOG_EXTRA_MAX_BYTES,
    )  # fmt: skip
    log = logging.getLogger(f"tests.shipped.{uuid.uuid4().hex[:6]}")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log, handler
    log.removeHandler(handler)
    handler.close()


def decoded(messages) -> list[dict]:
    return [orjson.loads(m.value()) for m in messages]


def test_a_record_carries_its_origin_its_job_its_extras_and_its_traceback(shipped, log_topics):
    log, handler = shipped
    job_id = str(uuid.uuid4())
    log.info("outside", extra={"order": 7})
    with job_log_context(JobLogContext(job_id=job_id, attempt=2, type="demo.log", queue="q1", owner_id=9)):
        try:
            raise ValueError("bad value")
        except ValueError:
            log.exception("it failed for %s", "reasons", extra={"order": 8, "obj": object()})
    handler.flush()
    outside, inside = sorted(decoded(consume_all(log_topics["logs"], 2)), key=lambda d: d["extra"]["order"])
    assert outside["message"] == "outside"
    assert outside["level"] == "INFO"
    assert outside["service"] == "test-role"
    assert outside["pid"] == os.getpid()
    assert outside["host"]
    assert "job_id" not in outside
    assert abs(outside["timestamp"] / 1e6 - time.time()) < 60
    assert inside["message"] == "it failed for reasons"
    assert inside["level"] == "ERROR"
    assert (inside["job_id"], inside["attempt"], inside["type"], inside["queue"], inside["owner_id"]) == (
        job_id, 2, "demo.log", "q1", 9,
    )  # fmt: skip
    assert "ValueError: bad value" in inside["exception"]
    assert inside["extra"]["obj"].startswith("<object object")  # unserializable extras become text


def test_huge_or_unencodable_records_are_cut_and_shipped_not_dropped(shipped, log_topics):
    """A handler's 3 MB log line, its 2 MB extra, or a lone surrogate used to make a record
    Kafka refuses (dropped whole) or JSON cannot write (lost to stderr)."""
    log, handler = shipped
    log.warning("m" * 3_000_000)
    log.warning("small", extra={"blob": "e" * 2_000_000})
    log.warning("bad \ud800 text", extra={"also": "\ud800"})
    log.warning("nul \x00 is fine")
    handler.flush()
    records = decoded(consume_all(log_topics["logs"], expect=4))
    by_start = {r["message"][:5]: r for r in records}
    cut = by_start["mmmmm"]["message"]
    assert len(cut) == settings.LOG_MESSAGE_MAX_CHARS
    assert cut.endswith("[truncated: 3,000,000 characters in all]")
    assert by_start["small"]["extra"] == {"truncated": True, "bytes": 2_000_011, "limit": settings.LOG_EXTRA_MAX_BYTES}
    assert by_start["bad ?"]["message"] == "bad ? text"
    assert by_start["bad ?"]["extra"] == {"unserializable": True}
    assert by_start["nul \x00"]["message"] == "nul \x00 is fine"
    assert handler.dropped == 0


def test_a_job_id_given_as_an_extra_outside_an_attempt_tags_the_record(shipped):
    log, handler = shipped
    job_id = str(uuid.uuid4())
    record = log.makeRecord(log.name, logging.INFO, __file__, 1, "job.claim_lost", (), None, extra={"job_id": job_id})
    doc = orjson.loads(handler.serialize(record))
    assert doc["job_id"] == job_id
    assert "extra" not in doc
    not_an_id = log.makeRecord(log.name, logging.INFO, __file__, 1, "x", (), None, extra={"job_id": "n/a"})
    assert orjson.loads(handler.serialize(not_an_id))["extra"] == {"job_id": "n/a"}


@pytest.mark.timeout(30)
def test_a_full_queue_drops_and_counts_and_never_blocks_the_caller(log_topics):
    # The flusher is not due for an hour: nothing drains the queue while we log.
    handler = KafkaLogHandler(
        settings.KAFKA_BOOTSTRAP_SERVERS, topic=log_topics["logs"], queue_size=100, flush_interval=3600,
        batch_size=10**9,
    )  # fmt: skip
    log = logging.getLogger("tests.full")
    log.addHandler(handler)
    log.propagate = False
    try:
        for i in range(1000):
            log.warning("record %d", i)
        assert handler.queued() == 100
        assert handler.dropped == 900
        handler.flush()  # what was queued still gets there
        kept = decoded(consume_all(log_topics["logs"], 100))
        assert sorted(d["message"] for d in kept) == sorted(f"record {i}" for i in range(100))
    finally:
        log.removeHandler(handler)
        handler.close()


@pytest.mark.timeout(30)
def test_kafka_away_costs_the_caller_nothing_and_undelivered_records_are_counted():
    handler = KafkaLogHandler("127.0.0.1:9", topic="nowhere", message_timeout_ms=500, flush_interval=0.05)
    log = logging.getLogger("tests.away")
    log.addHandler(handler)
    log.propagate = False
    try:
        for i in range(50):
            log.error("lost %d", i)
        wait_for(lambda: handler.sent == 50, timeout=5, message="records handed to the producer")
        handler.flush(timeout=3)
        wait_for(lambda: handler.dropped == 50, timeout=10, message="undelivered records counted")
    finally:
        log.removeHandler(handler)
        handler.close()


@pytest.mark.timeout(60)
def test_a_forked_child_ships_its_own_records_and_not_its_parents(log_topics):
    handler = KafkaLogHandler(settings.KAFKA_BOOTSTRAP_SERVERS, topic=log_topics["logs"], flush_interval=3600,
                              batch_size=10**9)  # fmt: skip
    log = logging.getLogger("tests.fork")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.info("parent, before the fork")  # still queued when the child is forked
        pid = os.fork()
        if pid == 0:  # the child: log, flush as Celery's worker_process_shutdown does, leave
            try:
                log.info("child")
                handler.flush()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        handler.flush()
        docs = decoded(consume_all(log_topics["logs"], 2))
        assert sorted((d["message"], d["pid"]) for d in docs) == [
            ("child", pid),
            ("parent, before the fork", os.getpid()),
        ]
    finally:
        log.removeHandler(handler)
        handler.close()


@pytest.mark.timeout(60)
def test_the_handler_creates_its_topic_with_the_size_limit(settings):
    """The log handler writes to `logs`, so it creates it: with the configured partitions and
    max.message.bytes, not whatever a broker's auto-creation would give it."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    from config import kafka

    settings.KAFKA_LOGS_PARTITIONS = 3
    topic = f"logs-fresh-{uuid.uuid4().hex[:8]}"
    handler = KafkaLogHandler(settings.KAFKA_BOOTSTRAP_SERVERS, topic=topic, flush_interval=0.05)
    log = logging.getLogger(f"tests.fresh.{uuid.uuid4().hex[:6]}")
    log.addHandler(handler)
    log.propagate = False
    admin = AdminClient(kafka.base_config())
    try:
        log.warning("the first record")
        wait_for(lambda: topic in admin.list_topics(timeout=5).topics, timeout=10, message="the topic")
        assert len(admin.list_topics(timeout=5).topics[topic].partitions) == 3
        [configs] = admin.describe_configs([ConfigResource("topic", topic)]).values()
        assert configs.result()["max.message.bytes"].value == str(kafka.topic_max_message_bytes())
        assert [d["message"] for d in decoded(consume_all(topic, 1))] == ["the first record"]
    finally:
        log.removeHandler(handler)
        handler.close()
        admin.delete_topics([topic])


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["manage.py", "run_relay"], "relay"),
        (["manage.py", "run_log_sink"], "log-sink"),
        (["/x/site-packages/celery/__main__.py", "-A", "config", "worker"], "worker"),
        (["/x/site-packages/celery/__main__.py", "-A", "config", "flower"], "flower"),
        (["/x/site-packages/gunicorn/__main__.py", "config.wsgi:application"], "web"),
        (["manage.py", "jobs", "submit"], "manage.jobs"),
    ],
)
def test_the_service_is_the_role_read_off_the_command_line(argv, role, monkeypatch):
    monkeypatch.delenv("SERVICE_NAME", raising=False)
    assert service_name(argv) == role
