"""EnqueueToCelery: one Celery task message per dispatch, on the job's queue and priority.

Backpressure: above `high_water` ready messages in a queue, submit raises MessageRejected
(arroyo holds the message, stops fetching, and pauses the partitions if it lasts), until the
queue drained below `low_water`. So a burst waits in Kafka, and Redis holds only a window.
Depth is read from Redis at most every `depth_ttl` seconds and estimated in between from
what this step sent.

Rate limits (QUEUE_RATE_LIMITS): a queue limited to r jobs/s gets a token bucket; without a
token the message is rejected the same way, so held-back jobs wait in Kafka, in order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from arroyo.processing.strategies.abstract import MessageRejected, ProcessingStrategy
from arroyo.types import Message
from celery import Celery
from kombu.exceptions import OperationalError

from metrics import prom
from orchestration import celery_queues
from orchestration.consumers.envelope import DispatchEnvelope
from orchestration.consumers.steps.forwarding import ForwardingStep

logger = logging.getLogger("orchestration.bridge")

TASK_NAME = "orchestration.run_job"


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
    ) -> None:
        self.next_step = next_step
        self.app = app
        self.high_water, self.low_water = high_water, low_water
        self.depth_ttl = depth_ttl
        self.clock = clock
        self.paused: set[str] = set()
        self._depth: dict[str, tuple[float, int]] = {}  # queue → (read at, depth then + sent since)
        self.enqueued = 0
        self._last_error_log = 0.0
        # Token buckets for queues with a rate limit (jobs/s, burst of one second's worth).
        self.rates = rate_limits or {}
        self._buckets: dict[str, tuple[float, float]] = {}  # queue → (tokens, refilled at)

    def _depth_of(self, queue: str) -> int:
        now = self.clock()
        read_at, depth = self._depth.get(queue, (-1e9, 0))
        if now - read_at >= self.depth_ttl:
            depth = celery_queues.depths([queue])[queue]
            self._depth[queue] = (now, depth)
            prom.CELERY_QUEUE_DEPTH.labels(queue).set(depth)
        return depth

    def _blocked(self, queue: str) -> bool:
        depth = self._depth_of(queue)
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

    def submit(self, message: Message[DispatchEnvelope]) -> None:
        envelope = message.payload
        try:
            if self._blocked(envelope.queue) or not self._take_token(envelope.queue):
                raise MessageRejected
            self.app.send_task(
                TASK_NAME,
                args=[envelope.as_dict()],
                queue=envelope.queue,
                priority=celery_queues.celery_priority(envelope.priority),
                retry=False,  # a failure is retried by arroyo re-submitting this message
            )
        except OperationalError as exc:  # Redis unreachable: hold the message, try again soon
            now = self.clock()
            if now - self._last_error_log > 10:
                self._last_error_log = now
                logger.warning("bridge.enqueue_failed", extra={"error": str(exc)})
            raise MessageRejected from exc
        read_at, depth = self._depth.get(envelope.queue, (self.clock(), 0))
        self._depth[envelope.queue] = (read_at, depth + 1)
        self.enqueued += 1
        prom.BRIDGE_ENQUEUED.labels(envelope.queue).inc()
        self.next_step.submit(message)
