"""Kafka configuration shared by the relay, the bridge and the tests.

Topics: `jobs` (dispatch envelopes, key = job id), `jobs.dlq` (messages the bridge could
not use, with the reason, partition and offset in headers). Settings choose the names so
tests can use a fresh topic each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from django.conf import settings

logger = logging.getLogger(__name__)


# A commit refused because the group moved on without this member: the broker restarted and
# lost the group, the member was evicted, or the assignment was lost in a rebalance.
_GROUP_MOVED_ON = frozenset(
    {KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS,
     KafkaError._ASSIGNMENT_LOST}
)  # fmt: skip


def group_moved_on(exc: BaseException) -> bool:
    """Is `exc` a commit the group no longer accepts from us? Its offsets are lost, not its
    messages: the next owner of the partitions reads them again (at least once)."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    return isinstance(error, KafkaError) and error.code() in _GROUP_MOVED_ON


@contextmanager
def commit_refusal_logged(log: logging.Logger, event: str) -> Iterator[None]:
    """Around a commit: one the group no longer accepts (`group_moved_on`) is logged as
    `event`, not raised. Raising killed consumers halfway through their next join after a
    broker restart, and the embedded broker kept the dead member as the group's leader
    (found by `make chaos`, kafka-restart). Anything else is raised."""
    try:
        yield
    except Exception as exc:
        if not group_moved_on(exc):
            raise
        log.warning(event, extra={"error": str(exc)})


def base_config() -> dict[str, Any]:
    if not settings.KAFKA_BOOTSTRAP_SERVERS:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("KAFKA_BOOTSTRAP_SERVERS is not set")
    config: dict[str, Any] = {"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS}
    if settings.KAFKA_DEBUG:
        config["debug"] = settings.KAFKA_DEBUG
    return config


def producer_config(**overrides: Any) -> dict[str, Any]:
    return {
        **base_config(),
        # Every write is acknowledged by all in-sync replicas before the relay forgets it.
        "acks": "all",
        # A few ms of batching turns a burst of outbox rows into a handful of requests.
        "linger.ms": 2,
        "message.timeout.ms": 30000,
        **overrides,
    }


def consumer_config(group_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        **base_config(),
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.KAFKA_SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": settings.KAFKA_HEARTBEAT_INTERVAL_MS,
        # A rebalance waits this long for a member that stopped polling (librdkafka: 5 min).
        # A consumer killed mid-rebalance (found by `make chaos` after a broker restart) would
        # otherwise hold its group's partitions, and the jobs on them, for five minutes.
        "max.poll.interval.ms": settings.KAFKA_MAX_POLL_INTERVAL_MS,
        # An idle fetch returns after this long at most: librdkafka's 500 ms default would add
        # up to half a second to every job's submit→start latency at light load.
        "fetch.wait.max.ms": 10,
        **overrides,
    }


def ensure_topics(names: list[str], partitions: int, timeout: float = 10.0) -> None:
    """Create missing topics; existing ones are left as they are."""
    admin = AdminClient(base_config())
    existing = admin.list_topics(timeout=timeout).topics
    missing = [
        NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names if name not in existing
    ]
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result()
            logger.info("kafka.topic_created", extra={"topic": name, "partitions": partitions})
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):  # another role created it first
                raise
