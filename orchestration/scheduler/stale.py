"""QUEUED jobs whose message was lost (nobody claimed them DISPATCH_STALE_SECONDS after the
bridge caught up and their Celery queue is empty) → dispatched again with a new token.

Safe: lost messages are told apart from a long backlog by position, not by age alone (the
relay records where each dispatch message landed; see `StaleScan`), and when Kafka cannot be
asked nothing is declared lost. A message that reappears after all carries the old token and
claims nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from confluent_kafka import Consumer, TopicPartition
from django.conf import settings
from django.db import transaction

from config import broker, kafka
from jobs import selectors, services, transitions
from orchestration.scheduler.fencing import fence

logger = logging.getLogger("orchestration.scheduler")  # the role's one logger, as before the split

Positions = dict[int, tuple[int, int]]


class BridgePositions:
    """Where the bridge is in Kafka `jobs`, through one consumer made on first use (closed when
    the scheduler's loop ends). The leader's stats report the bridge lag from it too."""

    def __init__(self) -> None:
        self._consumer: Consumer | None = None

    def read(self) -> Positions | None:
        """Per partition of `jobs`: (the bridge's committed offset, the high watermark).
        None when Kafka cannot be asked (then nothing is declared lost)."""
        try:
            if self._consumer is None:
                self._consumer = Consumer(
                    kafka.consumer_config(settings.KAFKA_BRIDGE_GROUP, **{"enable.auto.commit": False})
                )
            topic = settings.KAFKA_JOBS_TOPIC
            metadata = self._consumer.list_topics(topic, timeout=5).topics.get(topic)
            if metadata is None or metadata.error is not None:
                return {}  # no topic: the broker lost it, and every message with it
            committed = self._consumer.committed([TopicPartition(topic, p) for p in metadata.partitions], timeout=5)
            positions = {}
            for tp in committed:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=5)
                positions[tp.partition] = (tp.offset if tp.offset >= 0 else low, high)
            return positions
        except Exception as exc:  # Kafka unreachable: do not guess
            logger.warning("scheduler.kafka_positions_unknown", extra={"error": str(exc)})
            return None

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


class StaleScan:
    """The stale scan, and where it is in its window from one tick to the next."""

    def __init__(self, positions: BridgePositions) -> None:
        self.positions = positions
        self.after: tuple[datetime, uuid.UUID] | None = None  # where the next page starts

    def __call__(self, epoch: int, clock: Callable[[], datetime], *, batch: int, pages: int, skipped: list[str]) -> int:
        """QUEUED jobs whose message is gone: consumed by the bridge (its committed offset is
        past the message) yet unclaimed long after, with their Celery queue empty (lost in
        Redis), or beyond the end of the partition (the broker lost its data). Messages still
        in the Kafka backlog are left alone, however old.

        The window (QUEUED before the stale time) is read in pages on (queued_at, id), up to
        `pages` a tick; the next tick goes on after the last job looked at, and starts over once
        the window is exhausted. So a page full of jobs legitimately waiting in the backlog
        cannot hide lost ones behind it. Why a tick could not decide goes to `skipped`."""
        stale_before = clock() - timedelta(seconds=settings.DISPATCH_STALE_SECONDS)
        positions: Positions | None = None
        total = 0
        for _ in range(pages):
            page = selectors.job_queued_before(stale_before, after=self.after, limit=batch)
            if page and positions is None:
                positions = self.positions.read()
                if positions is None:
                    skipped.append("stale scan: Kafka positions unknown")
                    break
            if page:
                total += _redispatch_lost(epoch, clock, stale_before, page, positions or {})
            if len(page) < batch:
                self.after = None  # the window is exhausted: the next tick starts over
                break
            self.after = (page[-1].queued_at, page[-1].id)
        if total:
            logger.warning("scheduler.redispatched_lost", extra={"jobs": total})
        return total


def _redispatch_lost(
    epoch: int,
    clock: Callable[[], datetime],
    stale_before: datetime,
    page: list[selectors.QueuedDispatch],
    positions: Positions,
) -> int:
    """Of one page, the jobs whose message is gone: consumed by the bridge (its committed
    offset is past the message) with their Celery queue empty, or beyond the end of the
    partition. One fenced transaction gives them new tokens and outbox rows."""
    depths = broker.depths({queue for _, queue, _, _, _ in page})
    lost = []
    for job_id, queue, partition, offset, _ in page:
        committed, high = positions.get(partition, (0, 0)) if partition is not None else (0, 0)
        consumed = offset is None or offset < committed
        vanished = offset is not None and offset >= high
        if vanished or (consumed and depths[queue] == 0):
            lost.append(job_id)
    if not lost:
        return 0
    with transaction.atomic():
        fence(epoch)
        released = transitions.release_batch("stale", now=clock(), limit=len(lost), stale_before=stale_before, ids=lost)
        services.job_dispatch_released(released)
    return len(released)
