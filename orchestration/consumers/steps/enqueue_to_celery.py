"""EnqueueToCelery: one Celery task message per dispatch, on the job's queue and priority.

Backpressure: above `high_water` ready messages in a queue, submit raises MessageRejected
(arroyo holds the message, stops fetching, and pauses the partitions if it lasts), until the
queue drained below `low_water`. So a burst waits in Kafka, and Redis holds only a window.
Depth is read from Redis at most every `depth_ttl` seconds and estimated in between from
what this step sent. A depth that cannot be read (Redis away) counts as "blocked": messages
wait in Kafka, the read is tried again after a second, and a warning is logged at most every
10 s (raising would stop the bridge, and it would crash-loop for as long as Redis is away).

Rate limits (QUEUE_RATE_LIMITS): a queue limited to r jobs/s gets a token bucket; without a
token the message is rejected the same way, so held-back jobs wait in Kafka, in order.

Batches (BRIDGE_BATCH_SIZE > 1): accepted dispatches are held briefly and sent as one Celery
message of up to `batch_size` jobs per queue and priority (`orchestration.run_jobs`), or up
to `batch_max` while the job's queue already has messages waiting in Redis. Waiting messages
mean every worker's prefetch is full, so a bigger batch takes parallelism from nobody; it
only spreads the per-message cost (publish, fetch, ack, task events, one claim and one
outcome statement) over more jobs. An empty queue gets `batch_size` batches again, spread
over idle workers. A batch goes out when it is full, when the consumer found nothing more to
read within `linger`, or after `linger` seconds in all. A job that arrives after a quiet
spell, while its queue is empty, waits for nothing that is not already fetched: at light
load every job goes alone, at once (waiting out the linger for each was a third of the
submit→start latency). Offsets move on only for messages already sent, so a crash re-reads
what was held, as before.

Tracing: each send is a span, `bridge.batch`, and each job gets a `bridge.enqueue` span in
its own trace (from its envelope's traceparent), linked to the batch, from when the bridge
took it to when Redis had it. A lone job's Celery message is published inside its span, so
Celery's own spans (publish, and the worker's run) join the job's trace; a batch's message
carries the batch's context (a Celery message has one parent; its jobs, many traces).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from arroyo.backends.kafka import KafkaConsumer, KafkaPayload
from arroyo.processing.strategies.abstract import MessageRejected, ProcessingStrategy
from arroyo.types import BrokerValue, Message
from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from config import broker, tracing
from jobs.dispatch import DispatchEnvelope
from metrics import prom
from orchestration import celery_queues
from orchestration.consumers.steps.forwarding import ForwardingStep

logger = logging.getLogger("orchestration.bridge")

DEPTH_RETRY_SECONDS = 1.0  # after a failed depth read, before the next one
ERROR_LOG_SECONDS = 10.0  # at most one warning per kind of Redis failure this often


class LingeringConsumer(KafkaConsumer):
    """arroyo's Kafka consumer, but while the bridge holds a partial batch a poll waits at
    most `cap` seconds (arroyo waits up to one second), `idle` says whether the last poll
    found nothing, i.e. the bridge has caught up and should not wait for more, and `gap` how
    long the stream was quiet before the last message (seconds since the one before)."""

    cap: float | None = None
    idle = False
    gap = 0.0
    _last_at = float("-inf")

    def poll(self, timeout: float | None = None) -> BrokerValue[KafkaPayload] | None:
        if self.cap is not None and (timeout is None or timeout > self.cap):
            timeout = self.cap
        message = super().poll(timeout)
        self.idle = message is None
        if message is not None:
            now = time.monotonic()
            self.gap, self._last_at = now - self._last_at, now
        return message


class EnqueueToCelery(ForwardingStep):
    def __init__(
        self,
        next_step: ProcessingStrategy[DispatchEnvelope],
        *,
        app: Celery,
        high_water: int,
        low_water: int,
        depth_ttl: float = 0.05,
        rate_limits: dict[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        batch_size: int = 1,
        batch_max: int | None = None,
        linger: float = 0.005,
        consumer: LingeringConsumer | None = None,
    ) -> None:
        self.next_step = next_step
        self.batch_size, self.linger, self.consumer = max(1, batch_size), linger, consumer
        self.batch_max = max(self.batch_size, batch_max or 0)
        self._held: list[Message[DispatchEnvelope]] = []  # accepted, not yet sent
        self._held_since = 0.0
        self._held_since_ns = 0  # the same instant, wall clock: when the held jobs' spans start
        self.app = app
        self.high_water, self.low_water = high_water, low_water
        self.depth_ttl = depth_ttl
        self.clock = clock
        self.paused: set[str] = set()
        self._depth: dict[str, tuple[float, int, int]] = {}  # queue → (read at, ready then, sent since)
        self.enqueued = 0
        self._last_error_log = -1e9
        self._last_depth_log = -1e9
        self._depth_retry_at = -1e9
        # Token buckets for queues with a rate limit (jobs/s, burst of one second's worth).
        self.rates = rate_limits or {}
        self._buckets: dict[str, tuple[float, float]] = {}  # queue → (tokens, refilled at)

    def _depth_of(self, queue: str) -> int | None:
        """Ready messages in the queue; None while Redis cannot say."""
        now = self.clock()
        read_at, ready, sent = self._depth.get(queue, (-1e9, 0, 0))
        if now - read_at >= self.depth_ttl:
            if now < self._depth_retry_at:
                return None
            try:
                ready, sent = broker.depths([queue])[queue], 0
            except RedisError as exc:
                self._depth_retry_at = now + DEPTH_RETRY_SECONDS
                if now - self._last_depth_log >= ERROR_LOG_SECONDS:
                    self._last_depth_log = now
                    logger.warning("bridge.depth_unknown", extra={"queue": queue, "error": str(exc)[:500]})
                return None
            self._depth[queue] = (now, ready, 0)
            prom.CELERY_QUEUE_DEPTH.labels(queue).set(ready)
        return ready + sent

    def _blocked(self, queue: str) -> bool:
        depth = self._depth_of(queue)
        if depth is None:
            return True  # unknown: hold the message in Kafka rather than guess
        if queue in self.paused:
            if depth > self.low_water:
                return True
            self.paused.discard(queue)
            prom.BRIDGE_PAUSED.labels(queue).set(0)
            logger.info("bridge.resumed", extra={"queue": queue, "depth": depth})
            return False
        if depth >= self.high_water:
            self.paused.add(queue)
            prom.BRIDGE_PAUSED.labels(queue).set(1)
            logger.info("bridge.paused", extra={"queue": queue, "depth": depth, "high_water": self.high_water})
            return True
        return False

    def _take_token(self, queue: str) -> bool:
        """Rate limit: a job of this queue may go now (arroyo holds it in Kafka otherwise, in
        order, and offers it again a few ms later)."""
        rate = self.rates.get(queue)
        if rate is None:
            return True
        now = self.clock()
        tokens, refilled = self._buckets.get(queue, (max(rate, 1.0), now))
        tokens = min(max(rate, 1.0), tokens + (now - refilled) * rate)
        if tokens < 1.0:
            self._buckets[queue] = (tokens, now)
            return False
        self._buckets[queue] = (tokens - 1.0, now)
        return True

    def _backlogged(self, queue: str) -> bool:
        """Whether the queue had messages waiting at the last read (not counting what was
        sent since, which idle workers may have taken already): every worker is busy."""
        return self._depth.get(queue, (0.0, 0, 0))[1] > 0

    def submit(self, message: Message[DispatchEnvelope]) -> None:
        envelope = message.payload
        backlogged = self._backlogged(envelope.queue)
        limit = self.batch_max if backlogged else self.batch_size
        if len(self._held) >= limit and not self._send_held():
            raise MessageRejected  # Redis unreachable: the held batch first, then this one
        if self._blocked(envelope.queue) or not self._take_token(envelope.queue):
            raise MessageRejected
        if not self._held:
            self._held_since = self.clock()
            self._held_since_ns = time.time_ns()
        self._held.append(message)
        if len(self._held) >= limit:
            self._send_held()
        elif self.consumer is not None:
            # The first job after a quiet spell, with a worker possibly idle: it goes as soon
            # as nothing more is ready, without the linger (at light load, every job). Else
            # wait up to the linger for a fuller batch.
            quiet = self.consumer.gap >= self.linger and len(self._held) == 1 and not backlogged
            self.consumer.cap = 0.0 if quiet else self.linger

    def poll(self) -> None:
        if self._held and (
            (self.consumer is not None and self.consumer.idle) or self.clock() - self._held_since >= self.linger
        ):
            self._send_held()
        self.next_step.poll()

    def join(self, timeout: float | None = None) -> None:
        self._send_held()  # what cannot be sent now is not committed: the next owner re-reads it
        self.next_step.join(timeout)

    def _send_held(self) -> bool:
        """Send the held dispatches, one Celery message per queue and priority (a lone job as
        a plain `run_job`), then pass them on for their offsets to be committed, in order.
        Redis unreachable: keep them all and say so (a retry may send some twice; their
        duplicate claims lose)."""
        if not self._held:
            return True
        try:
            with tracing.span("bridge.batch", attributes={"bridge.jobs": len(self._held)}):
                groups = celery_queues.by_queue(m.payload for m in self._held)
                for (queue, priority), envelopes in groups.items():
                    self._send_traced(queue, priority, envelopes)
        except OperationalError as exc:
            now = self.clock()
            if now - self._last_error_log >= ERROR_LOG_SECONDS:
                self._last_error_log = now
                logger.warning("bridge.enqueue_failed", extra={"error": str(exc)})
            return False
        held, self._held = self._held, []
        if self.consumer is not None:
            self.consumer.cap = None
        for message in held:
            self.next_step.submit(message)
        return True

    def _send_traced(self, queue: str, priority: int, envelopes: list[DispatchEnvelope]) -> None:
        """`_send`, and each job's `bridge.enqueue` span in its trace."""
        if not tracing.enabled():
            self._send(queue, priority, envelopes)
            return
        links, started = tracing.link_to_current(), self._held_since_ns
        if len(envelopes) == 1:
            attributes = _enqueue_attributes(envelopes[0], queue, 1)
            with tracing.span("bridge.enqueue", parent=envelopes[0].traceparent, attributes=attributes,
                              start_time=started, links=links):  # fmt: skip
                self._send(queue, priority, envelopes)
            return
        self._send(queue, priority, envelopes)
        sent = time.time_ns()
        for envelope in envelopes:
            tracing.record(
                "bridge.enqueue", parent=envelope.traceparent, start_time=started, end_time=sent,
                attributes=_enqueue_attributes(envelope, queue, len(envelopes)), links=links,
            )  # fmt: skip

    def _send(self, queue: str, priority: int, envelopes: list[DispatchEnvelope]) -> None:
        celery_queues.publish(self.app, queue, priority, envelopes)
        read_at, ready, sent = self._depth.get(queue, (self.clock(), 0, 0))
        self._depth[queue] = (read_at, ready, sent + 1)  # the depth is counted in Celery messages
        self.enqueued += len(envelopes)
        prom.BRIDGE_ENQUEUED.labels(queue).inc(len(envelopes))
        if len(envelopes) > 1:
            prom.BRIDGE_BATCH_SIZE.observe(len(envelopes))


def _enqueue_attributes(envelope: DispatchEnvelope, queue: str, batch: int) -> dict[str, str | int]:
    return {"job.id": envelope.job_id, "job.attempt": envelope.attempt, "job.queue": queue, "bridge.batch_size": batch}
