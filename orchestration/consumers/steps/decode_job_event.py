"""DecodeJobEvent: Kafka bytes → DispatchEnvelope; anything unusable goes to the DLQ."""

from __future__ import annotations

import logging

import orjson
from arroyo.backends.kafka import KafkaPayload
from arroyo.dlq import InvalidMessage
from arroyo.processing.strategies.abstract import ProcessingStrategy
from arroyo.types import BrokerValue, Message

from orchestration.consumers.envelope import BadEnvelope, DispatchEnvelope, parse
from orchestration.consumers.steps.forwarding import ForwardingStep
from orchestration.handlers import is_registered

logger = logging.getLogger("orchestration.bridge")


class DecodeJobEvent(ForwardingStep):
    def __init__(self, next_step: ProcessingStrategy[DispatchEnvelope]) -> None:
        self.next_step = next_step
        self.rejected = 0

    def submit(self, message: Message[KafkaPayload]) -> None:
        try:
            envelope = parse(orjson.loads(message.payload.value))
            if not is_registered(envelope.type):
                raise BadEnvelope(f"unknown job type {envelope.type!r}")
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
