"""DecodeJobEvent: Kafka bytes → DispatchEnvelope; anything unusable goes to the DLQ.

A job whose type has no handler here (a rolling deploy: the web already knows a new type,
this bridge's code does not) is dead-lettered as well, with the reason, exactly as a worker
without the handler would do it: otherwise it would stay QUEUED, and the scheduler's stale
scan would send it to the DLQ again and again.

With tracing on, the job's trace context is read off the message's Kafka headers (what the
relay wrote, or a tool between them changed), the way a Kafka consumer continues a trace;
the envelope's own `trace` is the fallback."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence

import orjson
from arroyo.backends.kafka import KafkaPayload
from arroyo.dlq import InvalidMessage
from arroyo.processing.strategies.abstract import ProcessingStrategy
from arroyo.types import BrokerValue, Message
from django.db import connection

from config import tracing
from jobs import transitions
from jobs.dispatch import BadEnvelope, DispatchEnvelope
from jobs.handlers import is_registered
from logs.context import job_log_context
from orchestration.consumers.steps.forwarding import ForwardingStep

logger = logging.getLogger("orchestration.bridge")


class DecodeJobEvent(ForwardingStep):
    def __init__(self, next_step: ProcessingStrategy[DispatchEnvelope]) -> None:
        self.next_step = next_step
        self.rejected = 0

    def submit(self, message: Message[KafkaPayload]) -> None:
        try:
            envelope = DispatchEnvelope.parse(orjson.loads(message.payload.value))
            if tracing.enabled():
                envelope = _with_header_trace(envelope, message.payload.headers)
            if not is_registered(envelope.type):
                reason = f"no handler registered for job type {envelope.type!r} on the bridge"
                with (
                    job_log_context(envelope.log_context()),  # its owner finds why in the job's logs
                    tracing.span(
                        "bridge.dead_letter",
                        parent=envelope.trace,
                        attributes=tracing.messaging("settle", None, message_id=envelope.job_id),
                    ),
                ):
                    self._dead_letter(envelope, reason)
                raise BadEnvelope(reason)
        except (orjson.JSONDecodeError, BadEnvelope) as exc:
            value = message.value
            assert isinstance(value, BrokerValue)
            self.rejected += 1
            reason = f"{type(exc).__name__}: {exc}"
            logger.warning(
                "bridge.message_rejected",
                extra={"partition": value.partition.index, "offset": value.offset, "reason": reason},
            )
            raise InvalidMessage(value.partition, value.offset, reason=reason, log_exception=False) from exc
        self.next_step.submit(message.replace(envelope))

    def _dead_letter(self, envelope: DispatchEnvelope, reason: str) -> None:
        """The job ends DEAD_LETTER if this message is its current dispatch (a stale one
        changes nothing). PostgreSQL away, or anything else going wrong here, must not stop
        the bridge: the message still goes to the DLQ, the job stays QUEUED, and the
        scheduler's stale scan dispatches it again later, when this is tried once more."""
        try:
            won = transitions.dead_letter_undispatchable(
                envelope.job_id, dispatch_token=envelope.dispatch_token, error=reason
            )
        except Exception as exc:
            logger.warning(
                "bridge.dead_letter_failed",
                extra={"job_id": envelope.job_id, "error": f"{type(exc).__name__}: {exc}"[:500]},
            )
            with contextlib.suppress(Exception):
                connection.close()  # a fresh connection next time (the old one may be dead)
            return
        if won:
            logger.warning("bridge.job_dead_lettered", extra={"job_id": envelope.job_id, "reason": reason})


def _with_header_trace(envelope: DispatchEnvelope, headers: Sequence[tuple[str, bytes]]) -> DispatchEnvelope:
    carrier = tracing.carrier_of_headers(headers)
    return envelope if carrier is None or carrier == envelope.trace else dataclasses.replace(envelope, trace=carrier)
