"""The outbox relay (`manage.py run_relay`): PostgreSQL outbox → Kafka.

Each round claims up to RELAY_BATCH_SIZE outbox rows with FOR UPDATE SKIP LOCKED (so
several relays never take the same row), produces them, waits for Kafka's delivery reports,
then, in the same transaction, marks the dispatched jobs QUEUED and deletes the delivered
rows. A row whose delivery failed stays and is retried. A crash after producing but before
commit re-sends the row: the duplicate carries the same dispatch token, and only one claim
can win.

The relay sleeps on LISTEN jobs_outbox (a trigger NOTIFYs at every outbox insert), so a
single job is relayed within milliseconds; a slow poll covers a missed notification.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from confluent_kafka import KafkaError, Producer
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction

from jobs import transitions
from metrics import prom
from orchestration import kafka

logger = logging.getLogger("orchestration.relay")

CHANNEL = "jobs_outbox"
FLUSH_TIMEOUT = 15.0  # seconds to wait for delivery reports before giving a batch up for now
MAX_BACKOFF = 10.0  # seconds between rounds while Kafka keeps failing

_CLAIM_SQL = """
SELECT id, job_id, topic, envelope FROM jobs_outbox
 ORDER BY id LIMIT %s
   FOR UPDATE SKIP LOCKED
"""


@dataclass(frozen=True)
class OutboxRow:
    id: int
    job_id: str
    topic: str
    envelope: dict[str, Any]


def physical_topic(logical: str) -> str:
    """Outbox rows name a logical topic; settings map it (tests use fresh topics)."""
    return {"jobs": settings.KAFKA_JOBS_TOPIC, "jobs.dead": settings.KAFKA_JOBS_DEAD_TOPIC}.get(logical, logical)


class Relay:
    def __init__(self, producer: Producer | None = None, *, batch_size: int | None = None) -> None:
        self.producer = producer or Producer(kafka.producer_config())
        self.batch_size = batch_size or settings.RELAY_BATCH_SIZE
        self.failures = 0

    def ensure_topics(self) -> None:
        """The topics the relay writes to: dispatches and dead letters."""
        kafka.ensure_topics([settings.KAFKA_JOBS_TOPIC, settings.KAFKA_JOBS_DEAD_TOPIC], settings.KAFKA_JOBS_PARTITIONS)

    def run_once(self) -> int:
        """Relay one batch; returns the number of rows delivered (0: nothing to do)."""
        with transaction.atomic():
            with connection.cursor() as cur:
                cur.execute(_CLAIM_SQL, [self.batch_size])
                rows = [
                    OutboxRow(r[0], str(r[1]), r[2], orjson.loads(r[3]) if isinstance(r[3], str) else r[3])
                    for r in cur.fetchall()
                ]
            if not rows:
                return 0
            prom.RELAY_BATCH.observe(len(rows))
            delivered, errors = self._produce(rows)
            transitions.mark_queued_many(
                [
                    transitions.Relayed(r.job_id, r.envelope["dispatch_token"], *delivered[r.id])
                    for r in rows
                    if r.id in delivered and r.topic == "jobs"
                ]
            )
            if delivered:
                with connection.cursor() as cur:
                    ids = transitions.pg_array(delivered)
                    cur.execute("DELETE FROM jobs_outbox WHERE id = ANY(%s::bigint[])", [ids])
        if errors:
            self.failures += 1
            logger.warning(
                "relay.delivery_failed",
                extra={"failed": len(rows) - len(delivered), "batch": len(rows), "error": errors[0]},
            )
            if any("UNKNOWN_TOPIC" in e for e in errors):
                self.ensure_topics()  # e.g. an embedded broker restarted and lost its topics
        else:
            self.failures = 0
        for row in rows:
            if row.id in delivered:
                prom.RELAYED.labels(row.topic).inc()
        return len(delivered)

    def report_backlog(self) -> dict[str, Any]:
        """Outbox rows waiting and the age of the oldest (the outbox is small: a cheap read);
        the heartbeat calls this every few seconds."""
        with connection.cursor() as cur:
            cur.execute("SELECT count(*), extract(epoch FROM now() - min(created_at)) FROM jobs_outbox")
            pending, age = cur.fetchone()
        age = round(float(age or 0.0), 3)
        prom.OUTBOX_PENDING.set(pending)
        prom.OUTBOX_AGE.set(age)
        return {"outbox_pending": pending, "outbox_oldest_age_seconds": age, "delivery_failures": self.failures}

    def _produce(self, rows: list[OutboxRow]) -> tuple[dict[int, tuple[int, int]], list[str]]:
        """Produce every row; returns {outbox id: (partition, offset)} of those acknowledged."""
        delivered: dict[int, tuple[int, int]] = {}
        errors: list[str] = []

        def report(row_id: int) -> Callable[[KafkaError | None, Any], None]:
            def on_delivery(err: KafkaError | None, msg: Any) -> None:
                if err is None:
                    delivered[row_id] = (msg.partition(), msg.offset())
                else:
                    errors.append(f"{err.name()}: {err.str()}")

            return on_delivery

        for row in rows:
            while True:
                try:
                    self.producer.produce(
                        physical_topic(row.topic),
                        key=row.job_id.encode(),
                        value=orjson.dumps(row.envelope),
                        on_delivery=report(row.id),
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain, then go on
                    self.producer.poll(0.05)
        remaining = self.producer.flush(FLUSH_TIMEOUT)
        if remaining:
            errors.append(f"{remaining} message(s) not acknowledged within {FLUSH_TIMEOUT:.0f}s")
        return delivered, errors

    def backoff(self) -> float:
        return min(MAX_BACKOFF, 0.5 * 2 ** max(self.failures - 1, 0)) if self.failures else 0.0

    def run_forever(self, stop: threading.Event) -> None:
        self.ensure_topics()
        listener = _Listener()
        logger.info("relay.started", extra={"batch_size": self.batch_size, "topic": settings.KAFKA_JOBS_TOPIC})
        while not stop.is_set():
            try:
                relayed = self.run_once()
            except (psycopg.OperationalError, OperationalError, InterfaceError) as exc:
                logger.warning("relay.database_unavailable", extra={"error": str(exc)})
                connection.close()
                stop.wait(1.0)
                continue
            if self.failures:
                stop.wait(self.backoff())
            elif relayed < self.batch_size:
                listener.wait(settings.RELAY_POLL_SECONDS, stop)
        self.producer.flush(FLUSH_TIMEOUT)
        listener.close()
        connection.close()


class _Listener:
    """LISTEN jobs_outbox on its own autocommit connection; reconnects when it drops."""

    def __init__(self) -> None:
        self.conn: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        db = settings.DATABASES["default"]
        conn = psycopg.connect(
            host=db["HOST"], port=db["PORT"] or 5432, dbname=db["NAME"], user=db["USER"],
            password=db["PASSWORD"] or None, autocommit=True,
        )  # fmt: skip
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def wait(self, timeout: float, stop: threading.Event) -> None:
        """Return at the first notification, after `timeout`, or soon after `stop` is set."""
        deadline = time.monotonic() + timeout
        try:
            if self.conn is None or self.conn.closed:
                self.conn = self._connect()
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                for _ in self.conn.notifies(timeout=min(left, 0.25), stop_after=1):
                    return  # further queued notifications just make the next wait short
        except psycopg.OperationalError:
            self.close()
            stop.wait(min(1.0, max(deadline - time.monotonic(), 0)))

    def close(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.close()
        self.conn = None
