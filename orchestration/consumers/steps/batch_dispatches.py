"""BatchDispatches: holds accepted dispatches briefly and passes them on as one batch.

A batch goes on when it holds `batch_size` dispatches, or `batch_max` while any queue it
holds jobs for already has messages waiting in Redis (every worker's prefetch is full then:
a bigger batch takes parallelism from nobody, it only spreads the per-message cost of
publish, fetch, ack, task events and one claim and one outcome statement over more jobs);
when the consumer found nothing more to read (caught up: at light load every job goes
alone, at once); or after `linger` seconds in all. A job that arrives after a quiet spell,
while its queue is empty, waits for nothing that is not already fetched. Offsets move on
only for dispatches already sent, so a crash re-reads what was pending.

When the next step refuses a batch (Redis unreachable) the step keeps it, refuses new
dispatches meanwhile (arroyo holds them in Kafka, unconsumed) and offers it again at the
next poll. There is no per-queue backpressure here: each queue's window is the relay's
(config.queues), so no one queue can make the bridge stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from arroyo.processing.strategies.abstract import MessageRejected, ProcessingStrategy
from arroyo.types import Message, Value
from redis.exceptions import RedisError

from config import broker
from jobs.dispatch import DispatchEnvelope
from metrics import prom
from orchestration.consumers.lingering import LingeringConsumer
from orchestration.consumers.steps.forwarding import ForwardingStep

logger = logging.getLogger("orchestration.bridge")

Batch = list[Message[DispatchEnvelope]]
ERROR_LOG_SECONDS = 10.0  # at most one warning per kind of Redis failure this often


class QueueDepths:
    """Messages waiting in each Celery queue, read from Redis at most every `ttl` seconds. A
    read that fails counts as "none waiting" (a batch stays small; the send will say whether
    Redis is there) and is tried again a second later."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self.ttl, self.clock = ttl, clock
        self._read: dict[str, tuple[float, int]] = {}  # queue → (read at, messages then)
        self._retry_at = float("-inf")
        self._last_log = float("-inf")

    def backlogged(self, queue: str) -> bool:
        now = self.clock()
        read_at, ready = self._read.get(queue, (float("-inf"), 0))
        if now - read_at >= self.ttl and now >= self._retry_at:
            try:
                ready = broker.depths([queue])[queue]
            except RedisError as exc:
                self._retry_at = now + 1.0
                if now - self._last_log >= ERROR_LOG_SECONDS:
                    self._last_log = now
                    logger.warning("bridge.depth_unknown", extra={"queue": queue, "error": str(exc)[:500]})
                return False
            self._read[queue] = (now, ready)
            prom.CELERY_QUEUE_DEPTH.labels(queue).set(ready)
        return ready > 0


class BatchDispatches(ForwardingStep):
    def __init__(
        self,
        next_step: ProcessingStrategy[Batch],
        *,
        batch_size: int = 1,
        batch_max: int | None = None,
        linger: float = 0.005,
        consumer: LingeringConsumer | None = None,
        depth_ttl: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.next_step = next_step
        self.batch_size = max(1, batch_size)
        self.batch_max = max(self.batch_size, batch_max or 0)
        self.linger, self.consumer, self.clock = linger, consumer, clock
        self.depths = QueueDepths(depth_ttl, clock)
        self._pending: Batch = []
        self._pending_since = 0.0
        self._pending_since_wall = datetime.now(UTC)  # the same instant: when the pending jobs' spans start
        self._backlogged = False  # a queue of the pending batch has messages waiting

    def submit(self, message: Message[DispatchEnvelope]) -> None:
        if self._full() and not self._pass_on():
            raise MessageRejected  # the pending batch could not go: this one waits in Kafka
        queue = message.payload.queue
        backlogged = self.depths.backlogged(queue)
        if not self._pending:
            self._pending_since, self._pending_since_wall, self._backlogged = self.clock(), datetime.now(UTC), False
        self._backlogged |= backlogged
        self._pending.append(message)
        if self._full():
            self._pass_on()
        elif self.consumer is not None:
            # The first job after a quiet spell, with a worker possibly idle: it goes as soon
            # as nothing more is ready, without the linger (at light load, every job). Else
            # wait up to the linger for a fuller batch.
            quiet = self.consumer.gap >= self.linger and len(self._pending) == 1 and not backlogged
            self.consumer.cap = 0.0 if quiet else self.linger

    def _full(self) -> bool:
        return len(self._pending) >= (self.batch_max if self._backlogged else self.batch_size)

    def poll(self) -> None:
        if self._pending and (
            (self.consumer is not None and self.consumer.idle) or self.clock() - self._pending_since >= self.linger
        ):
            self._pass_on()
        self.next_step.poll()

    def join(self, timeout: float | None = None) -> None:
        self._pass_on()  # what cannot go now is not committed: the next owner re-reads it
        self.next_step.join(timeout)

    def _pass_on(self) -> bool:
        """Hand the pending batch on; False (and still pending) when the next step refused it."""
        if not self._pending:
            return True
        try:
            self.next_step.submit(Message(Value(self._pending, {}, self._pending_since_wall)))
        except MessageRejected:
            return False
        self._pending = []
        if self.consumer is not None:
            self.consumer.cap = None
        return True
