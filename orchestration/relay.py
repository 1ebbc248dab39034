"""The outbox relay (`manage.py run_relay`): PostgreSQL outbox → Kafka.

The outbox holds the backlog. Each round picks up to RELAY_BATCH_SIZE outbox rows fairly
(`fair_pick`: per queue as much as its window has room for and its rate allows, shared
among the owners with work waiting by weight; each dispatch of an owner with few jobs in
flight marked for the express lane), with FOR UPDATE SKIP LOCKED (so several relays never
take the same row), produces them, waits for Kafka's delivery reports, then, in the same
transaction, marks the dispatched jobs QUEUED and deletes the delivered rows. A row whose
delivery failed stays and is retried. A crash after producing but before commit re-sends
the row: the duplicate carries the same dispatch token, and only one claim can win.

A row Kafka can never take (larger than the limit, an invalid record, an envelope that is
not a JSON object) is a poison row: it is set aside in the same round and the rest of the
batch goes on. A dispatch row's job ends DEAD_LETTER with the reason; a `jobs.dead` row is
sent again in a shortened form, or dropped with an ERROR line if even that fails. Retrying a
poison row could only fail again, and it used to stop all dispatch: the relay died on it,
restarted, claimed the same lowest rows and died again.

The relay sleeps on LISTEN jobs_outbox (a trigger NOTIFYs at every outbox insert), so a
single job is relayed within milliseconds; a slow poll covers a missed notification. While
dispatches wait for room in a window (or for their queue's rate), it looks again every
RELAY_WINDOW_POLL_SECONDS instead: room appears as workers claim jobs, which notify nothing.

Tracing: a round that sends traced dispatches is one PRODUCER span, `send <topic>` (its
statements inside it), linked to each job's context (the OTel conventions' batch send; a span
per message cost more than the no-op job). Each message's Kafka headers carry its job's
context (the envelope's `trace` carrier: traceparent, tracestate, baggage), which the bridge
reads.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from confluent_kafka import KafkaError, KafkaException, Producer
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from opentelemetry.trace import SpanKind

from config import kafka, tracing
from config.text import bounded_text
from jobs import selectors, transitions
from jobs.dispatch import EXPRESS
from metrics import prom
from orchestration.fair_pick import FairPick

logger = logging.getLogger("orchestration.relay")

CHANNEL = "jobs_outbox"
FLUSH_TIMEOUT = 15.0  # seconds to wait for delivery reports before giving a batch up for now
MAX_BACKOFF = 10.0  # seconds between rounds while Kafka keeps failing
DEAD_ERROR_MAX = 4000  # characters of the error a shortened `jobs.dead` message keeps

# Errors that say this one message can never be accepted, however often it is sent: too large
# for the producer (raised by produce() itself) or for the broker (in the delivery report), or
# a record the broker refuses as invalid. Anything else (broker down, leader moving, timeouts,
# an unknown topic) is transient: the row stays and is retried.
_PERMANENT = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD,
     KafkaError._INVALID_ARG}
)  # fmt: skip


def permanent(err: KafkaError) -> bool:
    return err.code() in _PERMANENT and not err.retriable() and not err.fatal()


@dataclass(frozen=True)
class OutboxRow:
    id: int
    job_id: str
    topic: str
    envelope: Any  # the decoded JSON (a dict for every row our code writes)
    value: bytes  # the message: the envelope as compact JSON
    token: str | None = None  # the envelope's dispatch_token, read by PostgreSQL

    @functools.cached_property
    def trace(self) -> dict[str, str] | None:
        """The job's trace context in a dispatch row's envelope (bad or absent: None): read
        once, for the round's span and the message's headers."""
        if self.topic != "jobs" or not isinstance(self.envelope, dict):
            return None
        return tracing.valid_carrier(self.envelope.get("trace"))


@dataclass(frozen=True)
class Poison:
    """Why a row can never be sent: `reason` is short and stable (a metric label), `detail`
    the full text."""

    reason: str
    detail: str


class _BadRow(ValueError):
    pass


def physical_topic(logical: str) -> str:
    """Outbox rows name a logical topic; settings map it (tests use fresh topics)."""
    return {"jobs": settings.KAFKA_JOBS_TOPIC, "jobs.dead": settings.KAFKA_JOBS_DEAD_TOPIC}.get(logical, logical)


def _decode(row_id: int, job_id: Any, topic: str, raw: Any, token: str | None, *, express: bool = False) -> OutboxRow:
    # Django's psycopg set-up loads jsonb as text on raw cursors.
    try:
        envelope = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
        if express and isinstance(envelope, dict):
            envelope = {**envelope, "lane": EXPRESS}
        value = orjson.dumps(envelope)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError) as exc:  # e.g. 1e400, which jsonb holds
        raise _BadRow(f"the envelope is not valid JSON for Kafka: {exc}") from exc
    return OutboxRow(row_id, str(job_id), topic, envelope, value, token)


def _dispatch_token(row: OutboxRow) -> str | None:
    try:
        return str(uuid.UUID(row.token)) if row.token else None
    except ValueError:
        return None


def shortened_dead_letter(row: OutboxRow) -> dict[str, Any]:
    """The smallest useful `jobs.dead` message: who died, where, after how many attempts,
    and the start of the error."""
    envelope = row.envelope if isinstance(row.envelope, dict) else {}
    error = bounded_text(str(envelope.get("error", "")), DEAD_ERROR_MAX)
    attempts = envelope.get("attempts")
    return {
        "v": 1, "job_id": row.job_id, "type": str(envelope.get("type", ""))[:200],
        "queue": str(envelope.get("queue", ""))[:100], "attempts": attempts if isinstance(attempts, int) else None,
        "error": error, "dead_at": envelope.get("dead_at") if isinstance(envelope.get("dead_at"), str) else None,
    }  # fmt: skip


def _delete_outbox(row_ids: list[int]) -> None:
    if row_ids:
        with connection.cursor() as cur:
            cur.execute("DELETE FROM jobs_outbox WHERE id = ANY(%s::bigint[])", [transitions.pg_array(row_ids)])


class Relay:
    def __init__(self, producer: Producer | None = None, *, batch_size: int | None = None) -> None:
        self.producer = producer or Producer(kafka.producer_config())
        self.batch_size = batch_size or settings.RELAY_BATCH_SIZE
        self.failures = 0
        self.poison = 0  # rows set aside since start
        self.pick = FairPick()
        self.waiting = False  # the last round left dispatches waiting for room or rate
        self.again = False  # ... and a queue of it had more than its share of the round

    def ensure_topics(self) -> None:
        """The topics the relay writes to: dispatches and dead letters."""
        kafka.ensure_topics([settings.KAFKA_JOBS_TOPIC, settings.KAFKA_JOBS_DEAD_TOPIC], settings.KAFKA_JOBS_PARTITIONS)

    def _ensure_topics_or_warn(self) -> None:
        try:
            self.ensure_topics()
        except Exception as exc:  # Kafka away: producing will fail and bring us back here
            logger.warning("relay.topics_not_ensured", extra={"error": f"{type(exc).__name__}: {exc}"})

    def run_once(self) -> int:
        """Relay one batch; returns the number of rows delivered (0: nothing to do)."""
        with ExitStack() as traced:
            return self._run_once(traced)

    def _run_once(self, traced: ExitStack) -> int:
        started = time.time_ns()  # an idle round makes no span; a batch's starts with its claim
        with transaction.atomic():
            picked = self.pick(self.batch_size)
            claimed, self.waiting, self.again = picked.rows, picked.waiting, picked.again
            if not claimed:
                return 0
            prom.RELAY_BATCH.observe(len(claimed))
            rows: list[OutboxRow] = []
            poison: dict[int, tuple[OutboxRow, Poison]] = {}
            for row_id, job_id, topic, raw, token in claimed:
                try:
                    row = _decode(row_id, job_id, topic, raw, token, express=row_id in picked.express)
                except _BadRow as exc:
                    poison[row_id] = (
                        OutboxRow(
                            row_id, str(job_id), topic, None, raw.encode() if isinstance(raw, str) else b"", token
                        ),
                        Poison("INVALID_ENVELOPE", str(exc)),
                    )
                    continue
                if topic == "jobs" and _dispatch_token(row) is None:
                    poison[row_id] = (row, Poison("INVALID_ENVELOPE", "the envelope has no valid dispatch_token"))
                    continue
                rows.append(row)
            if tracing.enabled():
                traced.enter_context(self._batch_span(rows, started))
            delivered, refused, errors = self._produce(rows)
            poison.update(refused)
            dispatched = {
                r.id: transitions.Relayed(r.job_id, r.token or "", *delivered[r.id])
                for r in rows
                if r.id in delivered and r.topic == "jobs"
            }
            # Rows a claim holds are skipped here, not waited for (see _MARK_QUEUED_MANY_SQL);
            # their outbox rows stay until the second pass, so a crash in between sends them
            # again rather than leaving a job no scan would find.
            queued = transitions.mark_queued_many(list(dispatched.values()), skip_locked=True)
            later = {row_id: d for row_id, d in dispatched.items() if d.job_id not in queued}
            _delete_outbox([row_id for row_id in delivered if row_id not in later])
            for row, why in poison.values():
                self._set_aside(row, why)
        if later:
            with transaction.atomic():  # waits for the claims still in flight (they lock in id order too)
                transitions.mark_queued_many(list(later.values()))
                _delete_outbox(list(later))
        if errors:
            self.failures += 1
            logger.warning(
                "relay.delivery_failed",
                extra={"failed": len(errors), "batch": len(claimed), "error": errors[0]},
            )
            if any("UNKNOWN_TOPIC" in e for e in errors):
                self._ensure_topics_or_warn()  # e.g. an embedded broker restarted and lost its topics
        else:
            self.failures = 0
        for topic, count in collections.Counter(row.topic for row in rows if row.id in delivered).items():
            prom.RELAYED.labels(topic).inc(count)
        return len(delivered)

    @staticmethod
    def _batch_span(rows: list[OutboxRow], started: int) -> Any:
        """The round's PRODUCER span, from its claim on, linked to the traced jobs it sends."""
        topics = {row.topic for row in rows}
        topic = physical_topic(topics.pop()) if len(topics) == 1 else None
        attributes = tracing.messaging("send", topic, system="kafka", count=len(rows))
        return tracing.batch_span(f"send {topic or 'jobs'}", [r.trace for r in rows], kind=SpanKind.PRODUCER,
                                  attributes=attributes, start_time=started)  # fmt: skip

    def report_backlog(self) -> dict[str, Any]:
        """Outbox rows waiting (the backlog) and the age of the oldest; the heartbeat calls this
        every few seconds."""
        pending, age = selectors.outbox_backlog()
        prom.OUTBOX_PENDING.set(pending)
        prom.OUTBOX_AGE.set(age)
        return {
            "outbox_pending": pending, "outbox_oldest_age_seconds": age, "delivery_failures": self.failures,
            "poison_rows": self.poison,
        }  # fmt: skip

    def _produce(
        self, rows: list[OutboxRow]
    ) -> tuple[dict[int, tuple[int, int]], dict[int, tuple[OutboxRow, Poison]], list[str]]:
        """Produce every row. Returns {outbox id: (partition, offset)} of those acknowledged,
        the poison rows (with why), and the transient errors (their rows stay)."""
        delivered: dict[int, tuple[int, int]] = {}
        poison: dict[int, tuple[OutboxRow, Poison]] = {}
        errors: list[str] = []
        refused: dict[int, KafkaError] = {}  # delivery reports with a permanent error
        topics = {topic: physical_topic(topic) for topic in {row.topic for row in rows}}  # settings read once

        def report(row: OutboxRow) -> Callable[[KafkaError | None, Any], None]:
            def on_delivery(err: KafkaError | None, msg: Any) -> None:
                if err is None:
                    delivered[row.id] = (msg.partition(), msg.offset())
                elif permanent(err):
                    refused[row.id] = err
                else:
                    errors.append(f"{err.name()}: {err.str()}")

            return on_delivery

        def send(row: OutboxRow) -> bool:
            while True:
                try:
                    self.producer.produce(
                        topics[row.topic],
                        key=row.job_id.encode(),
                        value=row.value,
                        on_delivery=report(row),
                        headers=tracing.headers_of(row.trace),
                    )
                    return True
                except BufferError:  # local queue full: let deliveries drain, then go on
                    self.producer.poll(0.05)
                except KafkaException as exc:  # refused before sending, this row only
                    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                    if err is not None and permanent(err):
                        poison[row.id] = (row, Poison(err.name(), f"{err.name()}: {err.str()}"))
                    else:
                        errors.append(f"{err.name()}: {err.str()}" if err is not None else str(exc))
                    return False
                except (TypeError, ValueError) as exc:  # arguments librdkafka cannot take, for good
                    poison[row.id] = (row, Poison("INVALID_MESSAGE", f"{type(exc).__name__}: {exc}"))
                    return False

        sent = sum(send(row) for row in rows)
        remaining = self.producer.flush(FLUSH_TIMEOUT)
        if remaining:
            errors.append(f"{remaining} message(s) not acknowledged within {FLUSH_TIMEOUT:.0f}s")
        # The broker refuses a whole record batch for one bad message (librdkafka does not split
        # it): a refused row is poison only if it is refused when sent alone.
        alone = sent <= 1
        by_id = {row.id: row for row in rows}
        while refused:
            row_id, err = refused.popitem()
            row = by_id[row_id]
            if not alone:
                send(row)
                self.producer.flush(FLUSH_TIMEOUT)
                again = refused.pop(row_id, None)
                if again is None:
                    continue  # delivered now, or a transient error: noted by the report
                err = again
            poison[row_id] = (row, Poison(err.name(), f"{err.name()}: {err.str()}"))
        return delivered, poison, errors

    def _set_aside(self, row: OutboxRow, why: Poison) -> None:
        """Take a poison row out of the way, in a savepoint: should that fail, the row stays
        for the next round and the rest of this one is kept."""
        size = len(row.value)
        logger.warning(
            "relay.poison_row",
            extra={"job_id": row.job_id, "topic": row.topic, "size": size, "reason": why.detail[:500]},
        )
        try:
            with transaction.atomic():
                if row.topic == "jobs":
                    self._dead_letter_job(row, why, size)
                elif row.topic == "jobs.dead":
                    self._shorten_dead_letter(row)
                else:
                    self._delete(row)
                    logger.error(
                        "relay.row_dropped",
                        extra={"job_id": row.job_id, "topic": row.topic, "reason": why.detail[:500]},
                    )
        except Exception:
            logger.exception("relay.set_aside_failed", extra={"job_id": row.job_id, "topic": row.topic})
            return
        self.poison += 1
        prom.RELAY_POISON.labels(row.topic, why.reason).inc()

    def _dead_letter_job(self, row: OutboxRow, why: Poison, size: int) -> None:
        token = _dispatch_token(row)
        won = token is not None and transitions.dead_letter_undispatchable(
            row.job_id,
            dispatch_token=token,
            error=f"the relay cannot send this job's dispatch message to Kafka ({size} bytes, limit "
            f"{settings.KAFKA_MESSAGE_MAX_BYTES}): {why.detail}",
        )
        self._delete(row)
        if token is None:
            # Our code never writes such a row; without its token the job cannot be told apart
            # from a newer dispatch of it, so it is left as it is.
            logger.error("relay.row_dropped", extra={"job_id": row.job_id, "topic": row.topic, "reason": why.detail})
        elif not won:
            logger.info("relay.poison_row_stale", extra={"job_id": row.job_id})  # cancelled or re-dispatched

    def _shorten_dead_letter(self, row: OutboxRow) -> None:
        short = shortened_dead_letter(row)
        if short != row.envelope:
            with connection.cursor() as cur:
                cur.execute(
                    "UPDATE jobs_outbox SET envelope = %s::jsonb WHERE id = %s", [orjson.dumps(short).decode(), row.id]
                )
            return
        self._delete(row)  # even the shortened message is refused: the job itself keeps its state
        logger.error("relay.dead_letter_dropped", extra={"job_id": row.job_id, "size": len(row.value)})

    def _delete(self, row: OutboxRow) -> None:
        with connection.cursor() as cur:
            cur.execute("DELETE FROM jobs_outbox WHERE id = %s", [row.id])

    def backoff(self) -> float:
        return min(MAX_BACKOFF, 0.5 * 2 ** max(self.failures - 1, 0)) if self.failures else 0.0

    def run_forever(self, stop: threading.Event) -> None:
        self._ensure_topics_or_warn()
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
            except Exception:
                # Whatever it was, it was rolled back: log it, back off, try again. One bad
                # round must not become a crash loop that stops all dispatch.
                logger.exception("relay.round_failed")
                self.failures += 1
                connection.close()
                stop.wait(self.backoff())
                continue
            if self.failures:
                stop.wait(self.backoff())
            elif relayed >= self.batch_size or self.again:
                continue
            elif self.waiting:  # room appears as workers claim: look again soon
                stop.wait(settings.RELAY_WINDOW_POLL_SECONDS)
            else:
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
