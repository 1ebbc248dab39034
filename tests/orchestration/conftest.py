"""Fixtures for the dispatch pipeline: a fresh Kafka topic, consumer group and Celery queue
per test, and a live stack (relay, bridge, Celery worker as real processes) on the test
database. Nothing here is mocked: these are the roles `make run` starts."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from django.conf import settings

from config import broker, kafka
from config.queues import Queue

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def topics(settings: Any) -> Iterator[dict[str, str]]:
    """A fresh jobs topic, DLQ topic and bridge group for this test (deleted afterwards)."""
    suffix = uuid.uuid4().hex[:10]
    names = {
        "jobs": f"jobs-{suffix}",
        "dlq": f"jobs-{suffix}.dlq",
        "dead": f"jobs-{suffix}.dead",
        "group": f"bridge-{suffix}",
    }
    settings.KAFKA_JOBS_TOPIC = names["jobs"]
    settings.KAFKA_JOBS_DLQ_TOPIC = names["dlq"]
    settings.KAFKA_JOBS_DEAD_TOPIC = names["dead"]
    settings.KAFKA_BRIDGE_GROUP = names["group"]
    settings.KAFKA_JOBS_PARTITIONS = 2
    kafka.ensure_topics([names["jobs"], names["dlq"], names["dead"]], 2)
    yield names
    AdminClient(kafka.base_config()).delete_topics([names["jobs"], names["dlq"], names["dead"]])


def declare(settings: Any, name: str, **options: Any) -> Queue:
    """Declare a queue in this test's settings (config.queues), with the defaults otherwise."""
    queue = Queue(name, **{"window": settings.QUEUE_WINDOW, "slot_share": settings.FAIR_SLOT_SHARE, **options})
    settings.QUEUES = {**settings.QUEUES, name: queue}
    return queue


@pytest.fixture
def queue(settings: Any) -> Iterator[str]:
    """A Celery queue name of this test's own, declared; its Redis lists are removed afterwards."""
    name = f"q-{uuid.uuid4().hex[:10]}"
    declare(settings, name)
    yield name
    broker.client().delete(*broker.list_names(name))


def consume_all(topic: str, expect: int, timeout: float = 20.0) -> list[Any]:
    """Read `expect` messages from the start of every partition of `topic` (fails the test if
    they do not come). Partitions are assigned, not subscribed: no group join to wait for,
    and no rebalance that could hand a partition over halfway."""
    consumer = Consumer(kafka.consumer_config(f"reader-{uuid.uuid4().hex}", **{"enable.auto.commit": False}))
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expect and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                messages.append(msg)
    finally:
        consumer.close()
    assert len(messages) == expect, f"got {len(messages)} of {expect} messages from {topic}"
    return messages


def produce(
    topic: str, values: list[bytes], key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None
) -> None:
    producer = Producer(kafka.producer_config())
    for value in values:
        producer.produce(topic, value=value, key=key, headers=headers)
    assert producer.flush(10) == 0


def celery_messages(queue: str, *, batches: bool = False) -> list[Any]:
    """The dispatch envelopes waiting in a Celery queue (all priority levels), newest first;
    a batch's jobs are counted one by one. With `batches`, each message's list of jobs."""
    out: list[Any] = []
    for name in broker.list_names(queue):
        for raw in broker.client().lrange(name, 0, -1):
            message = orjson.loads(raw)  # kombu's Redis framing; the body is base64 JSON
            args, _kwargs, _embed = orjson.loads(base64.b64decode(message["body"]))  # task protocol 2
            jobs = args[0] if message["headers"]["task"] == "orchestration.run_jobs" else [args[0]]
            if batches:
                out.append(jobs)
            else:
                out.extend(reversed(jobs))  # newest first, like the list itself
    return out


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def database_url() -> str:
    db = settings.DATABASES["default"]
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


class Stack:
    """Relay, bridge and a solo Celery worker as subprocesses, on the test database."""

    def __init__(self, topics: dict[str, str], queue: str, tmp: Path, **extra_env: str) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "KAFKA_BOOTSTRAP_SERVERS": settings.KAFKA_BOOTSTRAP_SERVERS,
            "KAFKA_JOBS_TOPIC": topics["jobs"],
            "KAFKA_JOBS_DLQ_TOPIC": topics["dlq"],
            "KAFKA_JOBS_DEAD_TOPIC": topics["dead"],
            "KAFKA_BRIDGE_GROUP": topics["group"],
            "KAFKA_JOBS_PARTITIONS": "2",
            "SCHEDULER_LOCK_KEY": f"test-scheduler-{uuid.uuid4().hex}",
            "BREAKER_PREFIX": settings.BREAKER_PREFIX,
            "FAIR_SLOTS_PREFIX": settings.FAIR_SLOTS_PREFIX,
            "QUEUES": f"default; {queue}",
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        self.queue = queue
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, role: str, name: str | None = None) -> subprocess.Popen[bytes]:
        """Start a role's process (`name`: to run more than one of it, e.g. "worker2")."""
        commands = {
            "relay": [sys.executable, "manage.py", "run_relay"],
            "bridge": [sys.executable, "manage.py", "run_bridge"],
            "scheduler": [sys.executable, "manage.py", "run_scheduler"],
            "log-sink": [sys.executable, "manage.py", "run_log_sink"],
            "worker": [
                sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--queues", self.queue,
                "--hostname", f"test-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip",
                "--loglevel", "INFO",
            ],
        }  # fmt: skip
        name = name or role
        with (self.tmp / f"{name}.log").open("ab") as log:  # the child keeps its own copy of the fd
            proc = subprocess.Popen(commands[role], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def stop(self, role: str, sig: int = 15) -> None:
        proc = self.procs.pop(role)
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        for role in list(self.procs):
            self.stop(role)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("*.log")))


def log_shipping_env(log_topics: dict[str, str], ch_table: str) -> dict[str, str]:
    """A Stack's environment for shipping logs to this test's topics and ClickHouse table."""
    return {
        "LOG_SHIPPING": "true",
        "KAFKA_LOGS_TOPIC": log_topics["logs"],
        "KAFKA_LOGS_DLQ_TOPIC": log_topics["dlq"],
        "KAFKA_LOG_SINK_GROUP": log_topics["group"],
        "CLICKHOUSE_URL": settings.CLICKHOUSE_URL,
        "CLICKHOUSE_LOGS_TABLE": ch_table,
    }


@pytest.fixture
def stack(topics: dict[str, str], queue: str, tmp_path: Path, transactional_db: None) -> Iterator[Stack]:
    s = Stack(topics, queue, tmp_path)
    yield s
    s.close()
