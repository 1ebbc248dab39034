"""The outbox relay against real PostgreSQL and Kafka."""

from __future__ import annotations

import threading
import time
import uuid

import orjson
import pytest

from jobs.models import Job, JobStatus, Outbox
from jobs.services import JobSpec, job_submit_bulk
from orchestration.relay import Relay
from tests.orchestration.conftest import consume_all, wait_for


def submit(owner, n: int, **spec) -> list[Job]:
    return [s.job for s in job_submit_bulk(owner_id=owner.pk, specs=[JobSpec(type="demo.noop", **spec)] * n)]


@pytest.mark.django_db
def test_relays_in_batches_and_marks_queued(user, topics):
    jobs = submit(user, 25)
    relay = Relay(batch_size=10)
    assert relay.run_once() == 10
    assert Outbox.objects.count() == 15
    assert Job.objects.filter(status=JobStatus.QUEUED).count() == 10
    assert relay.run_once() == 10
    assert relay.run_once() == 5
    assert relay.run_once() == 0
    assert not Outbox.objects.exists()
    assert set(Job.objects.values_list("status", flat=True)) == {JobStatus.QUEUED}

    messages = consume_all(topics["jobs"], 25)
    by_key = {m.key().decode(): orjson.loads(m.value()) for m in messages}
    assert set(by_key) == {str(j.id) for j in jobs}
    envelope = by_key[str(jobs[0].id)]
    assert envelope == {
        "v": 1,
        "job_id": str(jobs[0].id),
        "type": "demo.noop",
        "queue": "default",
        "priority": 5,
        "attempt": 1,
        "dispatch_token": str(jobs[0].dispatch_token),
    }


@pytest.mark.django_db
def test_a_cancelled_job_is_not_marked_queued(user, topics):
    job = submit(user, 1)[0]
    Job.objects.filter(id=job.id).update(status=JobStatus.CANCELLED, dispatch_token=None)
    Relay().run_once()
    assert Job.objects.get(id=job.id).status == JobStatus.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_wakes_on_notify_within_milliseconds(user, topics, settings):
    settings.RELAY_POLL_SECONDS = 30  # the fallback poll cannot be what wakes it
    relay = Relay()
    stop = threading.Event()
    thread = threading.Thread(target=relay.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(1.0)  # let it reach its wait
        latencies = []
        for _ in range(5):
            job = submit(user, 1)[0]
            started = time.monotonic()
            wait_for(lambda job=job: Job.objects.get(id=job.id).status == JobStatus.QUEUED, timeout=5, interval=0.002)
            latencies.append(time.monotonic() - started)
            time.sleep(0.2)
        assert max(latencies) < 0.5, latencies
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.django_db(transaction=True)
def test_concurrent_relays_send_each_row_once(user, topics):
    jobs = submit(user, 300)
    relays = [Relay(batch_size=40) for _ in range(3)]
    barrier = threading.Barrier(3)

    def drain(relay: Relay) -> None:
        from django.db import connection

        barrier.wait()
        while relay.run_once():
            pass
        connection.close()

    threads = [threading.Thread(target=drain, args=(r,)) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    messages = consume_all(topics["jobs"], 300)
    keys = [m.key().decode() for m in messages]
    assert len(keys) == len(set(keys)) == 300
    assert set(keys) == {str(j.id) for j in jobs}
    time.sleep(1)  # nothing more arrives
    consume_all(topics["jobs"], 300)


@pytest.mark.django_db
def test_kafka_down_keeps_the_rows(user, topics, settings):
    from confluent_kafka import Producer

    submit(user, 3)
    dead = Producer({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 500})
    relay = Relay(dead)
    assert relay.run_once() == 0
    assert Outbox.objects.count() == 3
    assert set(Job.objects.values_list("status", flat=True)) == {JobStatus.PENDING}
    assert relay.backoff() > 0


# --- topics: the relay creates those it writes to, with the size limit ------------------------


def topic_names() -> set[str]:
    from confluent_kafka.admin import AdminClient

    from orchestration import kafka

    return set(AdminClient(kafka.base_config()).list_topics(timeout=10).topics)


@pytest.mark.django_db(transaction=True)
def test_a_fresh_relay_creates_the_topics_it_writes_to_with_the_size_limit(user, settings):
    from confluent_kafka.admin import AdminClient, ConfigResource

    from orchestration import kafka

    suffix = uuid.uuid4().hex[:10]
    settings.KAFKA_JOBS_TOPIC, settings.KAFKA_JOBS_DEAD_TOPIC = f"jobs-{suffix}", f"jobs-{suffix}.dead"
    assert not {settings.KAFKA_JOBS_TOPIC, settings.KAFKA_JOBS_DEAD_TOPIC} & topic_names()
    relay = Relay()
    stop = threading.Event()
    thread = threading.Thread(target=relay.run_forever, args=(stop,), daemon=True)
    thread.start()
    admin = AdminClient(kafka.base_config())
    try:
        wait_for(lambda: {settings.KAFKA_JOBS_TOPIC, settings.KAFKA_JOBS_DEAD_TOPIC} <= topic_names(), timeout=10)
        [configs] = admin.describe_configs([ConfigResource("topic", settings.KAFKA_JOBS_DEAD_TOPIC)]).values()
        assert configs.result()["max.message.bytes"].value == "1048588"
    finally:
        stop.set()
        thread.join(10)
        admin.delete_topics([settings.KAFKA_JOBS_TOPIC, settings.KAFKA_JOBS_DEAD_TOPIC])
