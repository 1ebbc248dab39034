"""A logging handler that ships every record to Kafka without ever holding up the caller.

    emit() ── JSON (orjson) ──► bounded deque ──► flusher thread ──► confluent-kafka producer
     (never blocks: when the queue is full the record is dropped and counted)    └► topic `logs`

Why this shape: a log call sits on every hot path (the worker logs per job), so emit() only
formats the record and appends to a deque (a few µs, see `manage.py bench logs`). Network,
batching and retries happen on one background thread per process, and librdkafka batches
again underneath. If Kafka is away, librdkafka buffers up to `buffer_max` records for
`message_timeout_ms`; after that, and when our own queue is full, records are dropped and
counted (`dropped`), never waited for.

The handler creates its topic (with the configured partitions and size limit, see
config.kafka) from its flusher thread before it first ships, and tries again every
30 s while that fails: a broker's auto-creation would give it neither.

Fork safety: a Celery prefork child inherits the parent's queue but not its thread; the
handler resets itself in the child (os.register_at_fork) and starts a flusher there on first
use, so records are neither lost nor sent twice.

Each record carries timestamp (µs since the epoch), level, logger, message, service, host,
pid, the job context the worker set (`logs.context.current_job`), the current span's
`trace_id` and `span_id` (hex; absent outside a span, and always when tracing is off), the
formatted traceback under `exception`, and every `extra=` field under `extra`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import weakref
from collections import deque
from typing import Any

import orjson
from opentelemetry.trace import get_current_span

from config.text import bounded_text, is_uuid, storable
from logs.context import current_job, service_name
from logs.formatting import STANDARD_ATTRS
from metrics import prom

_HANDLERS: weakref.WeakSet[KafkaLogHandler] = weakref.WeakSet()
# Records written inside job attempts, by every handler of this process: read twice a job by
# the worker (`job_records_written`), so one number, not a sum over a WeakSet (12 µs a job).
_job_records = 0
_DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _encodes(value: Any) -> bool:
    try:
        orjson.dumps(value, default=str, option=_DUMPS_OPTIONS)
    except orjson.JSONEncodeError:
        return False
    return True


class KafkaLogHandler(logging.Handler):
    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = "logs",
        queue_size: int = 10_000,
        flush_interval: float = 0.2,
        batch_size: int = 1_000,
        buffer_max: int = 100_000,
        message_timeout_ms: int = 60_000,
        service: str | None = None,
        level: int | str = logging.NOTSET,
        partitions: int | None = None,
        message_max_chars: int = 64 * 1024,
        extra_max_bytes: int = 64 * 1024,
    ) -> None:
        super().__init__(level)
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self.partitions = partitions  # None: settings.KAFKA_LOGS_PARTITIONS
        self._topic_ready = False
        self._next_topic_attempt = 0.0
        self.queue_size = queue_size
        # A record is cut, never dropped, for its size (see `_dumps`).
        self.message_max_chars, self.extra_max_bytes = message_max_chars, extra_max_bytes
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.service = service or service_name()
        self.host = socket.gethostname()
        self.producer_config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "acks": 1,  # a log line is not worth waiting for every replica
            "linger.ms": 50,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": buffer_max,
            "message.timeout.ms": message_timeout_ms,
            # Only failures come back to us (counted as dropped): no callback per record.
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
        }
        self.dropped = 0  # records given up on: queue full, buffer full, or Kafka never took them
        self.sent = 0  # records handed to the producer
        self._count_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._reset()
        _HANDLERS.add(self)
        ref = weakref.ref(self)

        def reset_in_child() -> None:
            handler = ref()
            if handler is not None:
                handler._reset()

        os.register_at_fork(after_in_child=reset_in_child)

    def _reset(self) -> None:
        """Fresh state for this process (at start and in a forked child)."""
        self._pid = os.getpid()
        self._queue: deque[bytes] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._thread_ident: int | None = None
        self._producer: Any = None

    # -- caller side ---------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if threading.get_ident() == self._thread_ident:
                return  # a record from our own flusher (say, the producer failing) would loop
            if self._thread is None:
                self._start()
            if len(self._queue) >= self.queue_size:
                self._count_dropped(1)
                return
            self._queue.append(self.serialize(record))
            if len(self._queue) >= self.batch_size:
                self._wake.set()
        except Exception:
            self.handleError(record)  # prints to stderr; never raises into the caller

    def serialize(self, record: logging.LogRecord) -> bytes:
        global _job_records
        doc: dict[str, Any] = {
            "timestamp": int(record.created * 1_000_000),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
            "host": self.host,
            "pid": record.process,
        }
        extra_keys = record.__dict__.keys() - STANDARD_ATTRS
        extra = {k: record.__dict__[k] for k in extra_keys if not k.startswith("_")} if extra_keys else None
        job = current_job.get()
        if job is not None:
            _job_records += 1
            doc["job_id"] = job.job_id
            doc["attempt"] = job.attempt
            doc["type"] = job.type
            doc["queue"] = job.queue
            if job.owner_id:
                doc["owner_id"] = job.owner_id
            if job.workflow_id:
                doc["workflow_id"] = job.workflow_id
            if extra and extra.get("job_id") == job.job_id:
                del extra["job_id"]  # already a column
        elif extra and "job_id" in extra and is_uuid(extra["job_id"]):
            # Outside an attempt (claim lost, relayed, ...) a record about one job still
            # belongs in that job's logs.
            doc["job_id"] = str(extra.pop("job_id"))
            if isinstance(extra.get("attempt"), int):
                doc["attempt"] = extra.pop("attempt")
        # About a microsecond when no span is current (tracing off): a context lookup.
        span = get_current_span().get_span_context()
        if span.is_valid:
            doc["trace_id"] = f"{span.trace_id:032x}"
            doc["span_id"] = f"{span.span_id:016x}"
        if record.exc_info:
            doc["exception"] = record.exc_text or logging.Formatter().formatException(record.exc_info)
        elif record.stack_info:
            doc["exception"] = record.stack_info
        if extra:
            doc["extra"] = extra
        return self._dumps(doc)

    def _dumps(self, doc: dict[str, Any]) -> bytes:
        """The record as JSON, whatever user code put in it: a message or exception past
        `message_max_chars` is cut with a marker, an `extra` past `extra_max_bytes` becomes a
        marker, and text JSON cannot carry (a lone surrogate) is replaced. A record must fit
        in a Kafka message: one that did not was dropped whole."""
        for key in ("message", "exception"):
            text = doc.get(key)
            if text is not None and len(text) > self.message_max_chars:
                doc[key] = bounded_text(text, self.message_max_chars)
        try:
            data = orjson.dumps(doc, default=str, option=_DUMPS_OPTIONS)
        except orjson.JSONEncodeError:  # a lone surrogate, or nesting orjson will not write
            doc = {k: storable(v) if isinstance(v, str) else v for k, v in doc.items()}
            if "extra" in doc and not _encodes(doc["extra"]):
                doc["extra"] = {"unserializable": True}
            data = orjson.dumps(doc, default=str, option=_DUMPS_OPTIONS)
        if "extra" in doc and len(data) > self.extra_max_bytes:  # only then can extra be too large
            size = len(orjson.dumps(doc["extra"], default=str, option=_DUMPS_OPTIONS))
            if size > self.extra_max_bytes:
                doc["extra"] = {"truncated": True, "bytes": size, "limit": self.extra_max_bytes}
                data = orjson.dumps(doc, default=str, option=_DUMPS_OPTIONS)
        return data

    def _count_dropped(self, n: int) -> None:
        with self._count_lock:
            self.dropped += n
        prom.LOGS_DROPPED.labels(self.service).inc(n)

    def queued(self) -> int:
        return len(self._queue)

    # -- background side -----------------------------------------------------------------

    def _start(self) -> None:
        with self._flush_lock:
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name="log-shipper", daemon=True)
            self._thread = thread
            thread.start()

    def _run(self) -> None:
        self._thread_ident = threading.get_ident()
        while not self._closing:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            # Not before the first wait: a thread that talks to Kafka the moment it starts
            # could be inside librdkafka when the process forks (a forked child's first records
            # were lost so, in CI). Not in `_ship` either, which callers run: a flush before a
            # job's outcome must not wait on an admin request.
            self._ensure_topic()
            self._ship()

    def _ship(self) -> None:
        """Hand everything queued to the producer (which batches and sends on its own threads)."""
        with self._flush_lock:
            if not self._queue:
                if self._producer is not None:
                    self._producer.poll(0)  # serve delivery reports
                return
            producer = self._get_producer()
            if producer is None:
                n = len(self._queue)
                self._queue.clear()
                self._count_dropped(n)
                return
            sent = dropped = 0
            while self._queue:
                value = self._queue.popleft()
                try:
                    producer.produce(self.topic, value)
                    sent += 1
                except BufferError:  # librdkafka's buffer is full: Kafka has been away a while
                    producer.poll(0.05)
                    try:
                        producer.produce(self.topic, value)
                        sent += 1
                    except BufferError:
                        dropped += 1
                except Exception:  # e.g. a record over message.max.bytes
                    dropped += 1
            producer.poll(0)
            self.sent += sent
            prom.LOGS_SHIPPED.labels(self.service).inc(sent)
            prom.LOGS_QUEUED.labels(self.service).set(len(self._queue))
            if dropped:
                self._count_dropped(dropped)

    def _ensure_topic(self) -> None:
        """Create the topic if it is missing (on the flusher thread: the caller never waits)."""
        if self._topic_ready or time.monotonic() < self._next_topic_attempt:
            return
        try:
            from django.conf import settings

            from config import kafka

            partitions = self.partitions or settings.KAFKA_LOGS_PARTITIONS
            kafka.ensure_topics(
                [self.topic], partitions, timeout=2.0, client={"bootstrap.servers": self.bootstrap_servers}
            )
            self._topic_ready = True
        except Exception as exc:  # Kafka away: records wait in the producer meanwhile
            self._next_topic_attempt = time.monotonic() + 30.0
            print(f"log shipping: cannot create topic {self.topic!r} yet: {exc}", file=sys.stderr)

    def _get_producer(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            try:
                self._producer = Producer(self.producer_config)
            except Exception as exc:
                print(f"log shipping disabled: cannot create a Kafka producer: {exc}", file=sys.stderr)
                return None
        return self._producer

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._count_dropped(1)

    def flush(self, timeout: float = 5.0) -> None:
        """Send what is queued and wait (up to `timeout`) until Kafka has it."""
        if self._pid != os.getpid():
            return
        self._ship()
        if self._producer is not None:
            self._producer.flush(timeout)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._closing = True
            self._wake.set()
            self._producer = None  # releases librdkafka's threads and connections
            super().close()


def flush_all(timeout: float = 5.0) -> None:
    """Flush every shipping handler of this process (Celery calls this as a child exits)."""
    for handler in list(_HANDLERS):
        handler.flush(timeout)


def job_records_written() -> int:
    """Records written inside job attempts so far, by every shipping handler of this process."""
    return _job_records
