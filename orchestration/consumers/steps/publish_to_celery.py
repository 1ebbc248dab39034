"""PublishToCelery: a batch of dispatches → Celery messages on Redis, one per queue and lane
(a lone job as a plain `run_job`), then each dispatch on to have its offset committed, in
order. Redis unreachable: the batch is refused (MessageRejected), whole; the step before
keeps it and offers it again (a job sent twice loses its second claim).

Tracing: a batch is one CONSUMER span, `process <topic>` (the OTel conventions' batch
process), linked to each of its jobs' contexts; Celery's instrumentation makes the Celery
messages' PRODUCER spans inside it. A lone job's span is a child of the job's context
instead, so its Celery message joins the job's trace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from arroyo.processing.strategies.abstract import MessageRejected, ProcessingStrategy
from arroyo.types import Message
from celery import Celery
from kombu.exceptions import OperationalError
from opentelemetry.trace import SpanKind

from config import tracing
from jobs.dispatch import DispatchEnvelope
from metrics import prom
from orchestration import celery_queues
from orchestration.consumers.steps.forwarding import ForwardingStep

logger = logging.getLogger("orchestration.bridge")

ERROR_LOG_SECONDS = 10.0  # at most one warning while Redis stays away, this often


class PublishToCelery(ForwardingStep):
    def __init__(
        self, next_step: ProcessingStrategy[DispatchEnvelope], *, app: Celery,
        clock: Callable[[], float] = time.monotonic, topic: str | None = None, group: str | None = None,
    ) -> None:  # fmt: skip
        self.next_step = next_step
        self.app, self.clock = app, clock
        self.topic, self.group = topic, group  # what its spans name (the physical topic, the consumer group)
        self.enqueued = 0
        self._last_error_log = float("-inf")

    def submit(self, message: Message[list[Message[DispatchEnvelope]]]) -> None:
        batch = message.payload
        try:
            with self._traced(message) if tracing.enabled() else nullcontext():
                for (queue, level), envelopes in celery_queues.by_queue(m.payload for m in batch).items():
                    self._send(queue, level, envelopes)
        except OperationalError as exc:
            now = self.clock()
            if now - self._last_error_log >= ERROR_LOG_SECONDS:
                self._last_error_log = now
                logger.warning("bridge.enqueue_failed", extra={"error": str(exc)})
            raise MessageRejected from exc
        for one in batch:
            self.next_step.submit(one)

    def _traced(self, message: Message[list[Message[DispatchEnvelope]]]) -> AbstractContextManager[Any]:
        """The batch's CONSUMER span, from when the bridge took its first job."""
        batch = message.payload
        taken = message.timestamp
        started = int(taken.timestamp() * 1e9) if taken is not None else time.time_ns()
        attributes = tracing.messaging(
            "process", self.topic, system="kafka", count=len(batch) if len(batch) > 1 else None,
            message_id=batch[0].payload.job_id if len(batch) == 1 else None,
        )  # fmt: skip
        if self.group:
            attributes["messaging.consumer.group.name"] = self.group
        name = f"process {self.topic or 'jobs'}"
        if len(batch) == 1:
            return tracing.span(name, parent=batch[0].payload.trace, kind=SpanKind.CONSUMER, attributes=attributes,
                                start_time=started)  # fmt: skip
        return tracing.batch_span(name, (m.payload.trace for m in batch), kind=SpanKind.CONSUMER,
                                  attributes=attributes, start_time=started)  # fmt: skip

    def _send(self, queue: str, level: int, envelopes: list[DispatchEnvelope]) -> None:
        celery_queues.publish(self.app, queue, level, envelopes)
        self.enqueued += len(envelopes)
        prom.BRIDGE_ENQUEUED.labels(queue).inc(len(envelopes))
        if len(envelopes) > 1:
            prom.BRIDGE_BATCH_SIZE.observe(len(envelopes))
