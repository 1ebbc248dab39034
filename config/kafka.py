"""Kafka configuration shared by the relay, the bridge and the tests.

Topics: `jobs` (dispatch envelopes, key = job id), `jobs.dlq` (messages the bridge could
not use, with the reason, partition and offset in headers), `jobs.dead` (a message per job
that dead-lettered), `logs` and `logs.dlq`. Settings choose the names so tests can use a
fresh topic each. Every role creates the topics it writes to (`ensure_topics`): the relay
`jobs` and `jobs.dead`, the bridge `jobs` and `jobs.dlq`, the log handler `logs`, the log
sink `logs` and `logs.dlq`.

Size limits, set on purpose (they used to be whatever the libraries defaulted to):
- Producers: `message.max.bytes` = KAFKA_MESSAGE_MAX_BYTES, 1,000,000 by default. A larger
  message is refused by produce() itself (MSG_SIZE_TOO_LARGE) before it reaches a broker;
  librdkafka also caps each batch it sends at this size (with `batch.size`, same default).
  1,000,000 is librdkafka's default and stays under what Kafka accepts out of the box.
- Topics we create: `max.message.bytes` = KAFKA_MESSAGE_MAX_BYTES + 48,588, i.e. 1,048,588
  by default: Kafka's own broker default (1 MiB + 12 bytes of log overhead). A topic must
  accept a little more than the producer's largest batch (record-batch framing comes on
  top); were it smaller, the broker would refuse whole batches of small, good messages.
  Brokers that ignore the setting (the embedded Tansu stores it but accepts any size) or
  refuse it still get the topic, created without it.
- A dispatch envelope is a few hundred bytes; what can come near the limit is user text: a
  `jobs.dead` message carries the job's last error. The relay sets aside any row Kafka can
  never take (see orchestration.relay) instead of retrying it forever.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic
from django.conf import settings

logger = logging.getLogger(__name__)

# Record-batch framing on top of the producer's largest batch: the topic accepts this much
# more than KAFKA_MESSAGE_MAX_BYTES (with the default, exactly Kafka's 1,048,588).
TOPIC_HEADROOM_BYTES = 48_588


def topic_max_message_bytes() -> int:
    return settings.KAFKA_MESSAGE_MAX_BYTES + TOPIC_HEADROOM_BYTES


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


DEAD_LETTER_VALUE_MAX = 64 * 1024  # bytes of an oversized message that its dead letter keeps
_FRAMING = 1024  # bytes of record framing allowed for when a message is sized by hand
# The headers our dead-letter producers add (kept when an oversized message's own are dropped).
_DEAD_LETTER_HEADERS = frozenset(
    {"original_topic", "original_partition", "original_offset", "reason", "truncated", "original_size"}
)


def fit_dead_letter(
    value: bytes | None, key: bytes | None, headers: Sequence[tuple[str, bytes | None]]
) -> tuple[bytes, list[tuple[str, Any]]]:
    """A dead letter is the original message plus headers saying why, so one near the size
    limit would be over it (and produce() would raise, on the same message after every
    restart). Then the value is cut to DEAD_LETTER_VALUE_MAX bytes, headers `truncated` and
    `original_size` say so, and if the original's own headers are still too large, only ours
    are kept."""

    def size(v: bytes | None, hs: Sequence[tuple[str, bytes | None]]) -> int:
        return len(v or b"") + len(key or b"") + sum(len(k) + len(h or b"") for k, h in hs) + _FRAMING

    limit = settings.KAFKA_MESSAGE_MAX_BYTES
    if size(value, headers) <= limit:
        return value or b"", list(headers)
    marks: list[tuple[str, bytes | None]] = [("truncated", b"true"), ("original_size", str(len(value or b"")).encode())]
    short = (value or b"")[:DEAD_LETTER_VALUE_MAX]
    fitted = [*headers, *marks]
    if size(short, fitted) > limit:
        fitted = [h for h in fitted if h[0] in _DEAD_LETTER_HEADERS]
    return short, fitted


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
        # See the module docstring: the largest message and batch we send.
        "message.max.bytes": settings.KAFKA_MESSAGE_MAX_BYTES,
        "batch.size": settings.KAFKA_MESSAGE_MAX_BYTES,
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
        "fetch.wait.max.ms": settings.KAFKA_FETCH_WAIT_MAX_MS,
        **overrides,
    }


def ensure_topics(
    names: list[str], partitions: int, timeout: float = 10.0, *, client: dict[str, Any] | None = None
) -> None:
    """Create missing topics (with `max.message.bytes`, see the module docstring); existing
    ones are left as they are. `client`: the admin client's config (default: `base_config`)."""
    admin = AdminClient(client or base_config())
    existing = admin.list_topics(timeout=timeout).topics
    missing = [name for name in dict.fromkeys(names) if name not in existing]
    if not missing:
        return
    config = {"max.message.bytes": str(topic_max_message_bytes())}
    refused = _create(admin, missing, partitions, config, timeout)
    if refused:  # a broker that refuses the setting still gets the topic, without it
        logger.warning("kafka.topic_config_refused", extra={"topics": sorted(refused), "config": config,
                                                              "error": next(iter(refused.values()))})  # fmt: skip
        refused = _create(admin, list(refused), partitions, {}, timeout)
        if refused:
            raise next(iter(refused.values()))


def _create(
    admin: AdminClient, names: list[str], partitions: int, config: dict[str, str], timeout: float
) -> dict[str, KafkaException]:
    """Create topics; returns those the broker refused (one that exists already is fine:
    another role created it first)."""
    topics = [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config) for name in names]
    refused: dict[str, KafkaException] = {}
    for name, future in admin.create_topics(topics, operation_timeout=timeout).items():
        try:
            future.result()
            logger.info("kafka.topic_created", extra={"topic": name, "partitions": partitions, "config": config})
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                refused[name] = exc
    return refused


def ensure_partitions(name: str, wanted: int, timeout: float = 10.0) -> int:
    """Grow topic `name` to `wanted` partitions if it has fewer (Kafka cannot shrink one);
    returns how many it has. A broker that refuses leaves it as it was (logged): the caller
    decides whether that many will do."""
    admin = AdminClient(base_config())
    metadata = admin.list_topics(name, timeout=timeout).topics.get(name)
    have = len(metadata.partitions) if metadata is not None and metadata.error is None else 0
    if 0 < have < wanted:
        try:
            admin.create_partitions([NewPartitions(name, wanted)], operation_timeout=timeout)[name].result()
            logger.info("kafka.partitions_added", extra={"topic": name, "from": have, "to": wanted})
            have = wanted
        except KafkaException as exc:
            logger.warning("kafka.partitions_refused", extra={"topic": name, "have": have, "wanted": wanted,
                                                             "error": str(exc)})  # fmt: skip
    return have
