"""The bridge (`manage.py run_bridge`): Kafka `jobs` → Celery queues on Redis.

    DecodeJobEvent → EnqueueToCelery (packs a backlog into batches) → CommitOffsets

Offsets are committed only for messages already enqueued (at least once: after a crash
the last second's messages are enqueued again, and their duplicate claims lose). Unusable
messages go to `jobs.dlq` with the reason, original partition and offset.
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
from orchestration.consumers.steps.decode_job_event import DecodeJobEvent
from orchestration.consumers.steps.enqueue_to_celery import EnqueueToCelery, LingeringConsumer

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

    def __init__(
        self, *, high_water: int, low_water: int, batch_size: int | None = None, batch_max: int | None = None
    ) -> None:
        self.high_water, self.low_water = high_water, low_water
        self.batch_size = settings.BRIDGE_BATCH_SIZE if batch_size is None else batch_size
        self.batch_max = settings.BRIDGE_BATCH_MAX if batch_max is None else batch_max
        self.consumer: LingeringConsumer | None = None  # set by build_processor
        self.enqueue: EnqueueToCelery | None = None  # the live step, for tests and status

    def details(self) -> dict[str, Any]:
        """For the heartbeat: what the bridge holds back and how much it moved."""
        step = self.enqueue
        if step is None:
            return {"assigned": False}
        return {"assigned": True, "paused_queues": sorted(step.paused), "enqueued": step.enqueued}

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        logger.info("bridge.assigned", extra={"partitions": sorted(p.index for p in partitions)})
        self.enqueue = EnqueueToCelery(
            CommitOffsets(tolerant_commit(commit)),
            app=celery_app,
            high_water=self.high_water,
            low_water=self.low_water,
            rate_limits=settings.QUEUE_RATE_LIMITS,
            batch_size=self.batch_size,
            batch_max=self.batch_max,
            linger=settings.BRIDGE_BATCH_LINGER_MS / 1000,
            consumer=self.consumer,
        )
        return DecodeJobEvent(self.enqueue)


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
        factory = BridgeStrategyFactory(high_water=settings.BRIDGE_HIGH_WATER, low_water=settings.BRIDGE_LOW_WATER)
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
