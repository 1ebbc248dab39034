"""Dead-letter producer for consumers: the original message plus why it failed.

arroyo's KafkaDlqProducer adds the original partition and offset as headers; this adds the
reason too, so an operator reading `jobs.dlq` sees what was wrong with each message. A
message so large that it would be over the size limit with those headers goes out cut
short (`kafka.fit_dead_letter`): raising here would stop the bridge on it after every
restart."""

from __future__ import annotations

from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.kafka.consumer import KafkaProducer
from arroyo.dlq import DlqLimit, DlqLimitState, DlqProducer
from arroyo.types import BrokerValue, Partition, Topic

from config import kafka


class ReasonDlqProducer(DlqProducer[KafkaPayload]):
    def __init__(self, producer: KafkaProducer, topic: Topic) -> None:
        self.producer = producer
        self.topic = topic
        self.produced = 0

    def produce(self, value: BrokerValue[KafkaPayload], reason: str | None = None):  # type: ignore[no-untyped-def]
        headers: list[tuple[str, bytes | None]] = [
            *value.payload.headers,
            ("original_topic", value.partition.topic.name.encode()),
            ("original_partition", str(value.partition.index).encode()),
            ("original_offset", str(value.offset).encode()),
            ("reason", (reason or "invalid message").encode()),
        ]
        payload, fitted = kafka.fit_dead_letter(value.payload.value, value.payload.key, headers)
        self.produced += 1
        return self.producer.produce(self.topic, KafkaPayload(value.payload.key, payload, fitted))

    @classmethod
    def build_initial_state(cls, limit: DlqLimit | None, assignment: dict[Partition, int]) -> DlqLimitState:  # type: ignore[override]
        return DlqLimitState(limit, last_invalid_offsets={p: o - 1 for p, o in assignment.items()})
