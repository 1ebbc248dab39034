"""The Kafka → Celery bridge against real Kafka and Redis: enqueue by queue and lane, poison
messages to the DLQ, batches, surviving a crash between enqueue and commit, and going on
whatever one queue does (its window is the relay's: the bridge never stops for a queue)."""

from __future__ import annotations

import re
import signal
import threading
import time
import uuid
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from config import broker
from orchestration.consumers.bridge import BridgeStrategyFactory, build_processor
from tests.conftest import DEAD_REDIS
from tests.orchestration.conftest import Stack, celery_messages, consume_all, produce, wait_for


def envelope(queue: str, **overrides: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "job_id": str(uuid.uuid4()),
        "type": "demo.noop",
        "queue": queue,
        "priority": 5,
        "attempt": 1,
        "dispatch_token": str(uuid.uuid4()),
        **overrides,
    }


class RunningBridge:
    def __init__(self, batch_size: int | None = None, batch_max: int | None = None) -> None:
        self.factory = BridgeStrategyFactory(batch_size=batch_size, batch_max=batch_max)
        self.processor = build_processor(self.factory)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from django.db import connection

        try:
            self.processor.run()
        finally:
            connection.close()  # the bridge thread's own (it writes dead letters)

    def __enter__(self) -> RunningBridge:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.processor.signal_shutdown()
        self.thread.join(30)


@pytest.fixture
def bridge(topics: dict[str, str]) -> type[RunningBridge]:
    return RunningBridge


def test_enqueues_each_job_on_its_queue_and_lane(topics, queue, bridge):
    envelopes = [envelope(queue, lane="express"), envelope(queue), envelope(queue, lane="no such lane")]
    produce(topics["jobs"], [orjson.dumps(e) for e in envelopes], key=b"one-partition")
    with bridge(batch_size=1):
        wait_for(lambda: broker.depths([queue])[queue] == 3, message="3 tasks in Redis")
    client = broker.client()
    # The express lane sits on the list kombu serves first (level 0), across every queue.
    assert [e["job_id"] for e in celery_messages(queue) if e.get("lane") == "express"] == [envelopes[0]["job_id"]]
    assert client.llen(queue) == 1
    assert client.llen(f"{queue}:9") == 2  # the bulk lane: an unknown lane reads as bulk
    by_id = {e["job_id"]: e for e in celery_messages(queue)}
    assert "lane" not in by_id[envelopes[2]["job_id"]]  # the bridge sends the envelope as it parsed it


def test_a_queue_nobody_consumes_never_holds_the_bridge_back(topics, queue, bridge):
    """Its window (the relay's) is all of it that ever reaches Kafka; whatever sits in Redis
    for it, the bridge goes on with the other queues."""
    parked = f"parked-{uuid.uuid4().hex[:6]}"
    try:
        produce(topics["jobs"], [orjson.dumps(envelope(parked)) for _ in range(3000)], key=b"one-partition")
        after = envelope(queue)
        produce(topics["jobs"], [orjson.dumps(after)], key=b"one-partition")
        with bridge():
            wait_for(lambda: celery_messages(queue) == [after], timeout=30, message="the other queue's job")
        assert len(celery_messages(parked)) == 3000
    finally:
        broker.client().delete(*broker.list_names(parked))


POISON = [
    (b"not json at all", "JSONDecodeError"),
    (b"[1, 2, 3]", "must be a JSON object"),
    (orjson.dumps({"v": 1}), "missing field"),
    (orjson.dumps({**envelope("x"), "v": 99}), "unsupported envelope version 99"),
    (orjson.dumps({**envelope("x"), "type": "no.such.handler"}), "no handler registered for job type"),
    (orjson.dumps({**envelope("x"), "job_id": "nope"}), "not a UUID"),
    (orjson.dumps({**envelope("x"), "priority": 42}), "outside 0-9"),
]


def test_poison_messages_go_to_the_dlq_with_reason_and_the_bridge_goes_on(topics, queue, bridge):
    good = envelope(queue)
    produce(topics["jobs"], [value for value, _ in POISON] + [orjson.dumps(good)], key=b"same-partition")
    with bridge():
        wait_for(lambda: broker.depths([queue])[queue] == 1, message="the good message in Redis")
        dead = consume_all(topics["dlq"], len(POISON))
    assert celery_messages(queue) == [good]
    for message, (value, reason) in zip(dead, POISON, strict=True):
        headers = dict(message.headers())
        assert message.value() == value
        assert reason in headers["reason"].decode()
        assert headers["original_topic"].decode() == topics["jobs"]
        assert int(headers["original_offset"]) >= 0
        assert "original_partition" in headers


def test_a_backlog_goes_out_in_batches_and_a_lone_job_at_once(topics, queue, bridge):
    backlog = [envelope(queue) for _ in range(200)]
    produce(topics["jobs"], [orjson.dumps(e) for e in backlog], key=b"one-partition")
    with bridge(batch_size=32, batch_max=32):
        wait_for(lambda: len(celery_messages(queue)) == 200, timeout=30, message="the backlog enqueued")
        batches = celery_messages(queue, batches=True)
        assert max(len(b) for b in batches) == 32
        assert len(batches) <= 20, [len(b) for b in batches]  # mostly full batches, not 200 messages
        assert [e["job_id"] for b in reversed(batches) for e in b] == [e["job_id"] for e in backlog]  # in order

        lone = envelope(queue)
        produce(topics["jobs"], [orjson.dumps(lone)])
        sent = time.monotonic()
        wait_for(lambda: len(celery_messages(queue)) == 201, timeout=5, interval=0.001, message="the lone job")
        assert time.monotonic() - sent < 0.5  # caught up: no waiting for a batch to fill
        assert celery_messages(queue, batches=True)[0] == [lone]


def test_batches_grow_while_messages_wait_and_shrink_when_the_queue_empties(topics, queue, bridge):
    """No worker takes anything here, so after the first sends the queue has messages waiting:
    every worker's prefetch would be full, and bigger batches cost nobody parallelism. The
    bridge reads the depth every 50 ms: the backlog is long enough to outlast a few reads."""
    backlog = [envelope(queue) for _ in range(3000)]
    produce(topics["jobs"], [orjson.dumps(e) for e in backlog], key=b"one-partition")
    with bridge(batch_size=8, batch_max=64):
        wait_for(lambda: len(celery_messages(queue)) == 3000, timeout=30, message="the backlog enqueued")
        sizes = [len(b) for b in reversed(celery_messages(queue, batches=True))]  # oldest first
        assert sizes[0] == 8, sizes  # the queue was empty: a small batch, for an idle worker
        assert max(sizes) == 64, sizes
        assert [e["job_id"] for b in reversed(celery_messages(queue, batches=True)) for e in b] == [
            e["job_id"] for e in backlog
        ]

        broker.client().delete(*broker.list_names(queue))  # the workers took everything
        time.sleep(0.2)  # the bridge reads the depth again (every 50 ms)
        more = [envelope(queue) for _ in range(100)]
        produce(topics["jobs"], [orjson.dumps(e) for e in more], key=b"one-partition")
        wait_for(lambda: len(celery_messages(queue)) == 100, timeout=30, message="the second backlog")
        sizes = [len(b) for b in reversed(celery_messages(queue, batches=True))]
        assert sizes[0] <= 8, sizes  # small again while the queue was empty


def test_a_crash_between_enqueue_and_commit_enqueues_again(topics, queue, bridge, tmp_path):
    envelopes = [envelope(queue) for _ in range(10)]
    produce(topics["jobs"], [orjson.dumps(e) for e in envelopes])
    # A real bridge process that will not commit for an hour, killed once it enqueued all.
    doomed = Stack(topics, queue, tmp_path, BRIDGE_COMMIT_SECONDS="3600")
    doomed.start("bridge")
    try:
        wait_for(lambda: len(celery_messages(queue)) == 10, timeout=60, message="10 jobs enqueued")
    finally:
        doomed.stop("bridge", signal.SIGKILL)
    with bridge():
        wait_for(lambda: len(celery_messages(queue)) == 20, timeout=60, message="10 jobs enqueued again")
    ids = [e["job_id"] for e in celery_messages(queue)]
    assert sorted(ids) == sorted([e["job_id"] for e in envelopes] * 2)


def test_a_commit_after_the_group_moved_on_is_logged_not_raised(topics, caplog):
    """A member evicted from its group (here: it stopped polling past max.poll.interval.ms;
    in `make chaos`: the broker restarted) gets UNKNOWN_MEMBER_ID on commit. arroyo commits in
    its revoke callback, and raising there killed the bridge in the middle of its next join."""
    from confluent_kafka import Consumer

    from config import kafka
    from orchestration.consumers.bridge import tolerant_commit

    produce(topics["jobs"], [b"x"])
    consumer = Consumer(
        kafka.consumer_config(f"evicted-{uuid.uuid4().hex[:8]}", **{
            "enable.auto.commit": False, "session.timeout.ms": 1000, "heartbeat.interval.ms": 100,
            "max.poll.interval.ms": 1000,
        })
    )  # fmt: skip
    consumer.subscribe([topics["jobs"]])
    try:
        wait_for(lambda: (m := consumer.poll(0.5)) is not None and not m.error(), message="a message")
        time.sleep(3)  # past max.poll.interval.ms: the member leaves, the group goes on without it

        def commit(offsets: Any, force: bool = False) -> None:
            consumer.commit(offsets=[TopicPartition(topics["jobs"], 0, 1)], asynchronous=False)

        with pytest.raises(KafkaException) as raised:
            commit({})
        assert kafka.group_moved_on(raised.value)
        tolerant_commit(commit)({})  # the same refusal, through the bridge's commit: a warning
        assert "bridge.commit_refused" in caplog.text
    finally:
        consumer.close()

    def broken(offsets: Any, force: bool = False) -> None:
        raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT))

    with pytest.raises(KafkaException):  # anything else still stops the bridge
        tolerant_commit(broken)({})


@pytest.mark.django_db(transaction=True)
def test_a_job_type_the_bridge_does_not_know_dead_letters_the_job(topics, queue, bridge, user):
    """A rolling deploy: the web knows a new type, the bridge's code does not. The job ends
    DEAD_LETTER with the reason (as a worker without the handler would do it), the message is
    in the DLQ, and a stale message of another job changes nothing."""
    from jobs.models import Job, JobStatus, Outbox
    from orchestration.relay import Relay
    from tests.factories import submit_job

    job = submit_job(user, type="deploy.new", queue=queue)
    other = submit_job(user, type="deploy.new", queue=queue)
    Outbox.objects.filter(job_id=other.id).delete()
    Job.objects.filter(id=other.id).update(status=JobStatus.QUEUED)
    assert Relay().run_once() == 1
    stale = envelope(queue, job_id=str(other.id), type="deploy.new")  # a dispatch token not current
    good = envelope(queue)
    produce(topics["jobs"], [orjson.dumps(stale), orjson.dumps(good)], key=b"same-partition")
    with bridge():
        wait_for(lambda: broker.depths([queue])[queue] == 1, message="the good message in Redis")
        dead = consume_all(topics["dlq"], 2)
        wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.DEAD_LETTER, message="dead letter")
    reason = "no handler registered for job type 'deploy.new' on the bridge"
    dead_job = Job.objects.get(id=job.id)
    assert dead_job.last_error == reason
    assert dead_job.finished_at is not None
    assert Outbox.objects.filter(job_id=job.id, topic="jobs.dead").exists()
    assert {m.key() for m in dead} >= {str(job.id).encode()}
    assert all(reason in dict(m.headers())["reason"].decode() for m in dead)
    assert Job.objects.get(id=other.id).status == JobStatus.QUEUED  # stale: left alone
    assert celery_messages(queue) == [good]


def kafka_message(value: bytes) -> Any:
    from datetime import UTC, datetime

    from arroyo.backends.kafka import KafkaPayload
    from arroyo.types import BrokerValue, Message, Partition, Topic

    return Message(BrokerValue(KafkaPayload(None, value, []), Partition(Topic("jobs"), 0), 7, datetime.now(UTC)))


@pytest.mark.django_db(transaction=True)
def test_postgresql_away_for_a_dead_letter_does_not_stop_the_bridge(user):
    """The message still goes to the DLQ (InvalidMessage); the job stays QUEUED for the stale
    scan to dispatch again later."""
    from arroyo.dlq import InvalidMessage
    from arroyo.processing.strategies.noop import Noop
    from django.db import connection

    from jobs.models import Job, JobStatus
    from orchestration.consumers.steps.decode_job_event import DecodeJobEvent
    from tests.factories import submit_job

    job = submit_job(user, type="deploy.new")
    Job.objects.filter(id=job.id).update(status=JobStatus.QUEUED)
    step = DecodeJobEvent(Noop())
    message = kafka_message(orjson.dumps(envelope("q", job_id=str(job.id), type="deploy.new",
                                                  dispatch_token=str(job.dispatch_token))))  # fmt: skip
    port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = 1  # nothing listens there: connection refused
    try:
        with pytest.raises(InvalidMessage):
            step.submit(message)
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port
    assert Job.objects.get(id=job.id).status == JobStatus.QUEUED
    with pytest.raises(InvalidMessage):  # PostgreSQL back: the next delivery dead-letters it
        step.submit(message)
    assert Job.objects.get(id=job.id).status == JobStatus.DEAD_LETTER


def test_redis_away_holds_the_batch_and_the_messages_in_kafka(redis_down, caplog, settings):
    """Redis unreachable: the publish refuses the batch, the batch step keeps it and refuses
    new messages (arroyo keeps them in Kafka and offers them again) instead of raising, which
    crash-looped the bridge while Redis was down; depth reads that fail are logged at most
    every 10 s. Once Redis is back the held batch goes, and nothing was committed before."""
    from datetime import UTC, datetime

    from arroyo.processing.strategies.abstract import MessageRejected
    from arroyo.types import BrokerValue, Message, Partition, Topic
    from celery import Celery

    from jobs.dispatch import DispatchEnvelope
    from orchestration.consumers.steps.batch_dispatches import BatchDispatches
    from orchestration.consumers.steps.publish_to_celery import PublishToCelery

    committed: list[Any] = []

    class Commit:
        def submit(self, message: Any) -> None:
            committed.append(message)

        def poll(self) -> None: ...

    dead = Celery("dead-redis", broker=DEAD_REDIS, set_as_current=False)
    dead.conf.broker_connection_retry = False
    dead.conf.broker_transport_options = {"max_retries": 0}
    publish = PublishToCelery(Commit(), app=dead)  # type: ignore[arg-type]
    step = BatchDispatches(publish, batch_size=2, depth_ttl=0)

    def message(offset: int) -> Message[DispatchEnvelope]:
        payload = DispatchEnvelope.parse(envelope("q"))
        return Message(BrokerValue(payload, Partition(Topic("jobs"), 0), offset, datetime.now(UTC)))

    step.submit(message(0))
    step.submit(message(1))  # full: the send fails, the batch stays
    for offset in range(2, 6):
        with pytest.raises(MessageRejected):
            step.submit(message(offset))
    assert (publish.enqueued, committed) == (0, [])
    assert len([r for r in caplog.records if r.getMessage() == "bridge.depth_unknown"]) == 1
    assert len([r for r in caplog.records if r.getMessage() == "bridge.enqueue_failed"]) == 1


def test_a_message_at_the_size_limit_goes_to_the_dlq_shortened(topics, queue, bridge):
    """Its dead letter (the message plus the reason in headers) would be over the limit: it
    goes out with the value cut short, and the bridge goes on."""
    huge = b"not json " + b"x" * 999_800
    good = envelope(queue)
    produce(topics["jobs"], [huge, orjson.dumps(good)], key=b"same-partition")
    with bridge() as running:
        wait_for(lambda: broker.depths([queue])[queue] == 1, message="the good message in Redis")
        [dead] = consume_all(topics["dlq"], 1)
        assert running.thread.is_alive()
    headers = dict(dead.headers())
    assert "JSONDecodeError" in headers["reason"].decode()
    assert int(headers["original_size"]) == len(huge)
    assert dead.value() == huge[: len(dead.value())]


def test_a_job_after_a_quiet_spell_goes_without_the_linger(topics, queue, settings, bridge):
    """At light load each job arrives after a quiet spell longer than the linger, with its
    queue empty: it must not wait out the linger (a fuller batch is worth waiting for only
    while every worker is busy). A long linger makes the difference plain: before, each lone
    job waited all of it."""
    settings.BRIDGE_BATCH_LINGER_MS = 500

    def taken() -> None:  # a worker took them
        broker.client().delete(*broker.list_names(queue))

    with bridge(batch_size=32):
        produce(topics["jobs"], [orjson.dumps(envelope(queue))])
        wait_for(lambda: len(celery_messages(queue)) == 1, timeout=30, message="the first job")
        waits = []
        for _ in range(5):
            taken()
            time.sleep(0.6)  # quiet: nothing arrives for longer than the linger
            produce(topics["jobs"], [orjson.dumps(envelope(queue))])
            sent = time.monotonic()
            wait_for(lambda: len(celery_messages(queue)) == 1, timeout=5, interval=0.001, message="a lone job")
            waits.append(time.monotonic() - sent)
        assert sorted(waits)[len(waits) // 2] < 0.2, waits


def test_celery_messages_carry_the_job_type_as_their_name(topics, queue, bridge):
    """Celery's `shadow` header is what a worker's log lines and Flower's task list call a
    task: the job's type for a lone job, the queue, size and type for a batch (not
    `orchestration.run_job(s)` for everything)."""
    backlog = [envelope(queue, type="demo.echo") for _ in range(40)]
    produce(topics["jobs"], [orjson.dumps(e) for e in backlog], key=b"one-partition")
    with bridge(batch_size=32, batch_max=32):
        wait_for(lambda: len(celery_messages(queue)) == 40, timeout=30, message="the backlog enqueued")
        lone = envelope(queue, type="demo.noop")
        produce(topics["jobs"], [orjson.dumps(lone)])
        wait_for(lambda: len(celery_messages(queue)) == 41, timeout=10, message="the lone job")
    from celery.worker.request import Request

    import orchestration.celery_tasks  # noqa: F401 the tasks a worker registers
    from config.celery import app

    names = []
    with app.connection() as conn:
        channel = conn.default_channel
        for name in broker.list_names(queue):
            for raw in broker.client().lrange(name, 0, -1):
                # The name a worker gives the message it takes (its log lines, its events: Flower).
                message = orjson.loads(raw)
                request = Request(channel.Message(message, channel=channel), app=app)
                names.append((message["headers"]["task"], request.name))
    assert ("orchestration.run_job", "demo.noop") in names
    batch_names = {shadow for task, shadow in names if task == "orchestration.run_jobs"}
    assert batch_names, names
    assert all(re.fullmatch(rf"{re.escape(queue)}: \d+ x demo\.echo", n) for n in batch_names), batch_names
