"""The bridge (`manage.py run_bridge`): Kafka `jobs` → Celery queues on Redis.

    DecodeJobEvent → BatchDispatches → PublishToCelery → CommitOffsets

One concern a step, wired back to front by the factory: decode (anything unusable goes to
the DLQ), batch (when a batch goes), publish (Celery messages per queue and lane, traced),
commit. Offsets are committed only for messages already enqueued (at least once: after a
crash the last second's messages are enqueued again, and their duplicate claims lose).

There are no water marks here: what each queue may have in flight is its window, kept by
the relay (config.queues), so Kafka and Redis only ever hold the windows, and a queue whose
workers are stopped or missing never holds the bridge back. The only thing that stops it is
Redis itself being unreachable, which no queue could get past anyway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.kafka.consumer import KafkaProducer
from arroyo.commit import CommitPolicy
from arroyo.dlq import DlqLimit, DlqPolicy
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import CommitOffsets, ProcessingStrategy, ProcessingStrategyFactory
from arroyo.types import Commit, Partition, Topic
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from config import kafka
from config.celery import app as celery_app
from orchestration.consumers.dlq import ReasonDlqProducer
from orchestration.consumers.lingering import LingeringConsumer
from orchestration.consumers.steps.batch_dispatches import BatchDispatches
from orchestration.consumers.steps.decode_job_event import DecodeJobEvent
from orchestration.consumers.steps.publish_to_celery import PublishToCelery

logger = logging.getLogger("orchestration.bridge")


def tolerant_commit(commit: Commit) -> Commit:
    """`commit`, but a group that moved on is logged, not raised (arroyo commits in its
    revoke callback, where raising kills the bridge mid-join)."""

    def commit_or_warn(offsets: Mapping[Partition, int], force: bool = False) -> None:
        with kafka.commit_refusal_logged(logger, "bridge.commit_refused"):
            commit(offsets, force)

    return commit_or_warn


class BridgeStrategyFactory(ProcessingStrategyFactory[KafkaPayload]):
    """Wires the chain back to front, once per partition assignment."""

    def __init__(self, *, batch_size: int | None = None, batch_max: int | None = None) -> None:
        self.batch_size = settings.BRIDGE_BATCH_SIZE if batch_size is None else batch_size
        self.batch_max = settings.BRIDGE_BATCH_MAX if batch_max is None else batch_max
        self.consumer: LingeringConsumer | None = None  # set by build_processor
        self.publish: PublishToCelery | None = None  # the live step, for tests and status

    def details(self) -> dict[str, Any]:
        """For the heartbeat: whether the bridge has partitions, and how much it moved."""
        step = self.publish
        if step is None:
            return {"assigned": False}
        return {"assigned": True, "enqueued": step.enqueued}

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        logger.info("bridge.assigned", extra={"partitions": sorted(p.index for p in partitions)})
        self.publish = PublishToCelery(
            CommitOffsets(tolerant_commit(commit)), app=celery_app,
            topic=settings.KAFKA_JOBS_TOPIC, group=settings.KAFKA_BRIDGE_GROUP,
        )  # fmt: skip
        batch = BatchDispatches(
            self.publish,
            batch_size=self.batch_size,
            batch_max=self.batch_max,
            linger=settings.BRIDGE_BATCH_LINGER_MS / 1000,
            consumer=self.consumer,
        )
        return DecodeJobEvent(batch)


def check_partitions() -> int:
    """The jobs topic's partitions, grown to KAFKA_JOBS_PARTITIONS if it has fewer; refuses to
    start (ImproperlyConfigured) when there are fewer than BRIDGES: a bridge with no partition
    moves nothing, and the others carry its share."""
    have = kafka.ensure_partitions(settings.KAFKA_JOBS_TOPIC, settings.KAFKA_JOBS_PARTITIONS)
    if have < settings.BRIDGES:
        raise ImproperlyConfigured(
            f"Kafka topic {settings.KAFKA_JOBS_TOPIC!r} has {have} partitions, fewer than BRIDGES={settings.BRIDGES}: "
            "each bridge needs one at least (raise KAFKA_JOBS_PARTITIONS, or run fewer bridges)"
        )
    return have


def build_processor(factory: BridgeStrategyFactory | None = None) -> StreamProcessor[KafkaPayload]:
    kafka.ensure_topics([settings.KAFKA_JOBS_TOPIC, settings.KAFKA_JOBS_DLQ_TOPIC], settings.KAFKA_JOBS_PARTITIONS)
    check_partitions()
    consumer = LingeringConsumer(
        {
            **kafka.consumer_config(settings.KAFKA_BRIDGE_GROUP),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
    )
    if factory is None:
        factory = BridgeStrategyFactory()
    factory.consumer = consumer
    dlq = ReasonDlqProducer(KafkaProducer(kafka.producer_config()), Topic(settings.KAFKA_JOBS_DLQ_TOPIC))
    return StreamProcessor(
        consumer=consumer,
        topic=Topic(settings.KAFKA_JOBS_TOPIC),
        processor_factory=factory,
        commit_policy=CommitPolicy(min_commit_frequency_sec=settings.BRIDGE_COMMIT_SECONDS, min_commit_messages=None),
        dlq_policy=DlqPolicy(dlq, DlqLimit(), max_buffered_messages_per_partition=20000),
    )


def run_forever(stop: threading.Event, factory: BridgeStrategyFactory | None = None) -> None:
    processor = build_processor(factory)

    def shutdown_on_stop() -> None:
        stop.wait()
        processor.signal_shutdown()  # finishes the current step, commits, leaves the group

    threading.Thread(target=shutdown_on_stop, daemon=True).start()
    processor.run()
