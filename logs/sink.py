"""The log sink (`manage.py run_log_sink`): Kafka `logs` → ClickHouse, in batches.

    consume (up to 10k records per call) → parse into columns ── malformed → `logs.dlq`
      │ a batch is full (LOG_SINK_BATCH_SIZE) or old (LOG_SINK_BATCH_SECONDS)
    columnar insert (clickhouse-connect, Native format) → commit the batch's offsets

Nothing is lost: offsets are committed only after ClickHouse took the batch. While
ClickHouse is down the sink pauses its partitions (Kafka holds the records, the group
membership stays alive) and retries the same batch with exponential backoff; when the
partitions are taken away meanwhile, the batch is dropped from memory uncommitted and the
new owner reads it again. A retried insert carries a deduplication token, so ClickHouse
stores it once even if the first attempt did land. The token is made at each attempt from
exactly the records in the batch then (their offsets and a hash of their bytes): a batch
that grew while it was retried (a rebalance gave partitions back meanwhile), or new records
at offsets used before (a broker that lost its topics starts again at 0), is new data, not
a duplicate; a token made once from offsets alone had ClickHouse drop such rows.

Why plain confluent-kafka rather than arroyo (which the bridge uses): the sink's work is one
insert per batch, and arroyo's per-message strategy calls cost more than the parsing; with
`consume(num_messages=...)` the sink does about 50k records/s on one core.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from django.conf import settings

from config import kafka
from logs import store
from logs.records import Batch, MalformedRecord
from metrics import prom

logger = logging.getLogger("logs.sink")

MAX_BACKOFF = 10.0


@dataclass
class SinkStats:
    ingested: int = 0  # rows ClickHouse took
    malformed: int = 0  # records sent to logs.dlq
    batches: int = 0
    insert_failures: int = 0
    last_insert_seconds: float = 0.0
    paused: bool = False
    insert_latencies: list[float] = field(default_factory=list)  # of the last few hundred batches


class LogSink:
    def __init__(self, *, batch_size: int | None = None, batch_seconds: float | None = None) -> None:
        self.topic = settings.KAFKA_LOGS_TOPIC
        self.batch_size = batch_size or settings.LOG_SINK_BATCH_SIZE
        self.batch_seconds = batch_seconds if batch_seconds is not None else settings.LOG_SINK_BATCH_SECONDS
        kafka.ensure_topics([self.topic, settings.KAFKA_LOGS_DLQ_TOPIC], settings.KAFKA_LOGS_PARTITIONS)
        self.consumer = Consumer(
            kafka.consumer_config(
                settings.KAFKA_LOG_SINK_GROUP,
                **{"enable.auto.commit": False, "fetch.wait.max.ms": 100, "fetch.min.bytes": 1},
            )
        )
        self.dlq = Producer(kafka.producer_config())
        self.stats = SinkStats()
        self._batch = Batch()
        self._offsets: dict[int, tuple[int, int]] = {}  # partition → (first, last) offset in the batch
        self._digest = hashlib.blake2b(digest_size=16)  # of every record taken into the batch
        self._batch_started = 0.0
        self._stop: threading.Event | None = None

    def details(self) -> dict[str, Any]:
        s = self.stats
        return {
            "ingested": s.ingested, "malformed": s.malformed, "paused": s.paused,
            "insert_failures": s.insert_failures, "last_insert_seconds": round(s.last_insert_seconds, 3),
        }  # fmt: skip

    # -- loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        self.consumer.subscribe([self.topic], on_revoke=self._on_revoke)
        logger.info("log_sink.started", extra={"topic": self.topic, "table": store.table()})
        try:
            while not stop.is_set():
                self.poll_once()
            self.flush(retry=False)
        finally:
            self.consumer.close()
            self.dlq.flush(5)

    def poll_once(self, timeout: float = 0.1) -> None:
        want = max(1, min(10_000, self.batch_size - self._batch.size))
        for msg in self.consumer.consume(num_messages=want, timeout=timeout):
            self._take(msg)
        if self._batch.size >= self.batch_size or (
            self._batch.size and time.monotonic() - self._batch_started >= self.batch_seconds
        ):
            self.flush()

    def _take(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                logger.warning("log_sink.consume_error", extra={"error": str(err)})
            return
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None
        assert offset is not None
        if not self._batch.size:
            self._batch_started = time.monotonic()
        first, _ = self._offsets.get(partition, (offset, offset))
        self._offsets[partition] = (first, offset)
        value = msg.value() or b""
        self._digest.update(b"%d:%d:%d:" % (partition, offset, len(value)))
        self._digest.update(value)
        try:
            self._batch.add(msg.value())
        except MalformedRecord as exc:
            self._dead_letter(msg, str(exc))

    def _dead_letter(self, msg: Message, reason: str) -> None:
        self.stats.malformed += 1
        prom.LOGS_MALFORMED.inc()
        headers = [
            *(msg.headers() or []),
            ("original_topic", (msg.topic() or "").encode()),
            ("original_partition", str(msg.partition()).encode()),
            ("original_offset", str(msg.offset()).encode()),
            ("reason", reason.encode()),
        ]
        # A record near the size limit would be over it with these headers: cut short.
        value, headers = kafka.fit_dead_letter(msg.value(), msg.key(), headers)
        logger.warning("log_sink.malformed", extra={"reason": reason, "offset": msg.offset()})
        while True:
            try:
                self.dlq.produce(settings.KAFKA_LOGS_DLQ_TOPIC, value=value, key=msg.key(), headers=headers)
                break
            except BufferError:  # the producer's queue is full: let deliveries drain
                self.dlq.poll(0.1)
            except KafkaException as exc:  # never stop the sink on one record
                logger.error("log_sink.dead_letter_failed", extra={"offset": msg.offset(), "error": str(exc)})
                break
        self.dlq.poll(0)

    # -- insert and commit -----------------------------------------------------------------

    def flush(self, retry: bool = True) -> bool:
        """Insert the batch and commit its offsets. With `retry`, keeps trying (partitions
        paused) until it works or the sink is stopped. Returns whether the batch is stored."""
        if not self._offsets:
            return True
        delay = 0.2
        while True:
            if self._insert(self._token()):
                break
            if not retry or (self._stop is not None and self._stop.is_set()) or not self._offsets:
                return False  # uncommitted: read again by whoever owns the partitions next
            self._pause()
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not (self._stop and self._stop.is_set()):
                # Paused partitions return nothing; this keeps the membership alive. A partition
                # assigned meanwhile is not paused yet: keep what it delivers.
                msg = self.consumer.poll(0.1)
                if msg is not None:
                    self._take(msg)
            delay = min(delay * 2, MAX_BACKOFF)
            if not self._offsets:  # the partitions were revoked while we waited
                return False
        self.dlq.flush(10)  # the malformed records are in logs.dlq before their offsets commit
        # Refused after a broker restart: the batch is stored, and its next owner may read it
        # again (at least once, as after a crash).
        with kafka.commit_refusal_logged(logger, "log_sink.commit_refused"):
            self.consumer.commit(asynchronous=False)
        self._reset_batch()
        self._resume()
        return True

    def _token(self) -> str:
        """The deduplication token of the batch as it is now: it covers exactly its rows."""
        offsets = ",".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(self._offsets.items()))
        return f"{offsets}/{self._digest.hexdigest()}"

    def _insert(self, token: str) -> bool:
        if not self._batch.size:
            return True
        started = time.monotonic()
        try:
            store.insert_columns(self._batch.columns, dedup_token=token)
        except Exception as exc:
            self.stats.insert_failures += 1
            logger.warning("log_sink.insert_failed", extra={"error": f"{type(exc).__name__}: {exc}"[:500]})
            return False
        elapsed = time.monotonic() - started
        prom.LOGS_INSERT.observe(elapsed)
        prom.LOGS_INGESTED.inc(self._batch.size)
        self.stats.ingested += self._batch.size
        self.stats.batches += 1
        self.stats.last_insert_seconds = elapsed
        self.stats.insert_latencies = [*self.stats.insert_latencies[-255:], elapsed]
        return True

    def _reset_batch(self) -> None:
        self._batch = Batch()
        self._offsets = {}
        self._digest = hashlib.blake2b(digest_size=16)

    def _pause(self) -> None:
        if not self.stats.paused:
            self.consumer.pause(self.consumer.assignment())
            self.stats.paused = True
            prom.LOG_SINK_PAUSED.set(1)
            logger.warning("log_sink.paused", extra={"records": self._batch.size})

    def _resume(self) -> None:
        if self.stats.paused:
            self.consumer.resume(self.consumer.assignment())
            self.stats.paused = False
            prom.LOG_SINK_PAUSED.set(0)
            logger.info("log_sink.resumed")

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        # Store what we hold if ClickHouse takes it now; otherwise forget it uncommitted so
        # the next owner of these partitions reads it again.
        if self._offsets and not self.flush(retry=False):
            self._reset_batch()
        if self.stats.paused:
            # librdkafka keeps a partition paused across a rebalance that hands it back to
            # us: resumed now, or the sink would never read it again.
            consumer.resume(partitions)
            self.stats.paused = False
            prom.LOG_SINK_PAUSED.set(0)
