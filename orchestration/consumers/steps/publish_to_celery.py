"""PublishToCelery: a batch of dispatches → Celery messages on Redis, one per queue and lane
(a lone job as a plain `run_job`), then each dispatch on to have its offset committed, in
order. Redis unreachable: the batch is refused (MessageRejected), whole; the step before
keeps it and offers it again (a job sent twice loses its second claim).

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

from arroyo.processing.strategies.abstract import MessageRejected, ProcessingStrategy
from arroyo.types import Message
from celery import Celery
from kombu.exceptions import OperationalError

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.next_step = next_step
        self.app, self.clock = app, clock
        self.enqueued = 0
        self._last_error_log = float("-inf")

    def submit(self, message: Message[list[Message[DispatchEnvelope]]]) -> None:
        batch = message.payload
        taken = message.timestamp  # when the bridge took the batch's first job
        started = int(taken.timestamp() * 1e9) if taken is not None else time.time_ns()
        try:
            with tracing.span("bridge.batch", attributes={"bridge.jobs": len(batch)}):
                for (queue, level), envelopes in celery_queues.by_queue(m.payload for m in batch).items():
                    self._send_traced(queue, level, envelopes, started)
        except OperationalError as exc:
            now = self.clock()
            if now - self._last_error_log >= ERROR_LOG_SECONDS:
                self._last_error_log = now
                logger.warning("bridge.enqueue_failed", extra={"error": str(exc)})
            raise MessageRejected from exc
        for one in batch:
            self.next_step.submit(one)

    def _send_traced(self, queue: str, level: int, envelopes: list[DispatchEnvelope], started: int) -> None:
        """`_send`, and each job's `bridge.enqueue` span in its trace."""
        if not tracing.enabled():
            self._send(queue, level, envelopes)
            return
        links = tracing.link_to_current()
        if len(envelopes) == 1:
            attributes = _enqueue_attributes(envelopes[0], queue, 1)
            with tracing.span("bridge.enqueue", parent=envelopes[0].traceparent, attributes=attributes,
                              start_time=started, links=links):  # fmt: skip
                self._send(queue, level, envelopes)
            return
        self._send(queue, level, envelopes)
        sent = time.time_ns()
        for envelope in envelopes:
            tracing.record(
                "bridge.enqueue", parent=envelope.traceparent, start_time=started, end_time=sent,
                attributes=_enqueue_attributes(envelope, queue, len(envelopes)), links=links,
            )  # fmt: skip

    def _send(self, queue: str, level: int, envelopes: list[DispatchEnvelope]) -> None:
        celery_queues.publish(self.app, queue, level, envelopes)
        self.enqueued += len(envelopes)
        prom.BRIDGE_ENQUEUED.labels(queue).inc(len(envelopes))
        if len(envelopes) > 1:
            prom.BRIDGE_BATCH_SIZE.observe(len(envelopes))


def _enqueue_attributes(envelope: DispatchEnvelope, queue: str, batch: int) -> dict[str, str | int]:
    return {"job.id": envelope.job_id, "job.attempt": envelope.attempt, "job.queue": queue, "bridge.batch_size": batch}
