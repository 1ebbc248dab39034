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
        "owner_id": jobs[0].owner_id,
        "type": "demo.noop",
        "queue": "default",
        "priority": 5,
        "attempt": 1,
        "dispatch_token": str(jobs[0].dispatch_token),
        "lane": "express",  # its owner had no job in flight: the relay put it on the express lane
    }


@pytest.mark.django_db
def test_a_cancelled_job_is_not_marked_queued(user, topics):
    job = submit(user, 1)[0]
    Job.objects.filter(id=job.id).update(status=JobStatus.CANCELLED, dispatch_token=None)
    Relay().run_once()
    assert Job.objects.get(id=job.id).status == JobStatus.CANCELLED


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("claim_ends", ["commit", "rollback"])
def test_a_job_being_claimed_does_not_hold_up_the_relays_batch(user, topics, claim_ends):
    """Under load workers claim jobs while the relay is still marking them QUEUED. The relay
    skips a row a claim holds, commits the rest at once, and then waits for that claim: if it
    committed the job is RUNNING, if it rolled back the job is marked QUEUED all the same (or
    no scan would ever find it), and either way its outbox row goes only then."""
    from django.db import connection, transaction

    jobs = submit(user, 3)
    held, release = threading.Event(), threading.Event()

    def claim_in_flight() -> None:
        try:
            with transaction.atomic():
                Job.objects.filter(id=jobs[1].id).update(status=JobStatus.RUNNING, attempts=1, attempt_seq=1)
                held.set()
                release.wait(20)
                if claim_ends == "rollback":
                    transaction.set_rollback(True)
        finally:
            connection.close()

    claimer = threading.Thread(target=claim_in_flight)
    claimer.start()
    assert held.wait(10)
    relay = threading.Thread(target=lambda: (Relay().run_once(), connection.close()))
    relay.start()
    wait_for(
        lambda: (
            set(Job.objects.filter(id__in=[jobs[0].id, jobs[2].id]).values_list("status", flat=True))
            == {JobStatus.QUEUED}
        ),
        message="the rest of the batch committed QUEUED while the claim is still open",
    )
    assert relay.is_alive()  # its second pass waits for the claim
    assert list(Outbox.objects.values_list("job_id", flat=True)) == [jobs[1].id]
    release.set()
    claimer.join(10)
    relay.join(10)
    assert not relay.is_alive()
    job = Job.objects.get(id=jobs[1].id)
    if claim_ends == "commit":
        assert job.status == JobStatus.RUNNING
    else:
        assert job.status == JobStatus.QUEUED
        assert job.dispatch_offset is not None
    assert not Outbox.objects.exists()
    assert len(consume_all(topics["jobs"], 3)) == 3


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

    from config import kafka

    return set(AdminClient(kafka.base_config()).list_topics(timeout=10).topics)


@pytest.mark.django_db(transaction=True)
def test_a_fresh_relay_creates_the_topics_it_writes_to_with_the_size_limit(user, settings):
    from confluent_kafka.admin import AdminClient, ConfigResource

    from config import kafka

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


# --- poison rows: a row Kafka can never take is set aside, the rest goes on ----------------


def pad_dispatch(job: Job, size: int = 1_100_000) -> None:
    """Make a job's dispatch message larger than Kafka accepts (over message.max.bytes)."""
    row = Outbox.objects.get(job_id=job.id, topic="jobs")
    row.envelope = {**row.envelope, "padding": "x" * size}
    row.save(update_fields=["envelope"])


def poison_counted(topic: str, reason: str) -> float:
    from metrics import prom

    return prom.RELAY_POISON.labels(topic, reason)._value.get()


@pytest.mark.django_db
def test_a_poison_dispatch_row_dead_letters_its_job_and_the_rest_go_on(user, topics, caplog):
    jobs = submit(user, 5)
    poison = jobs[2]
    pad_dispatch(poison)
    relay = Relay()
    counted = poison_counted("jobs", "MSG_SIZE_TOO_LARGE")
    assert relay.run_once() == 4
    assert poison_counted("jobs", "MSG_SIZE_TOO_LARGE") == counted + 1
    [logged] = [r for r in caplog.records if r.getMessage() == "relay.poison_row"]
    assert (logged.job_id, logged.topic, logged.size > 1_100_000) == (str(poison.id), "jobs", True)
    assert "MSG_SIZE_TOO_LARGE" in logged.reason
    assert relay.backoff() == 0  # not a transient failure: no reason to slow down
    others = [j.id for j in jobs if j.id != poison.id]
    assert set(Job.objects.filter(id__in=others).values_list("status", flat=True)) == {JobStatus.QUEUED}
    dead = Job.objects.get(id=poison.id)
    assert dead.status == JobStatus.DEAD_LETTER
    assert "MSG_SIZE_TOO_LARGE" in dead.last_error
    assert dead.finished_at is not None
    assert dead.dispatch_token is None
    # the dispatch row is gone; the job's jobs.dead message waits in the outbox
    assert list(Outbox.objects.values_list("job_id", "topic")) == [(poison.id, "jobs.dead")]
    assert relay.run_once() == 1
    assert not Outbox.objects.exists()
    assert {m.key().decode() for m in consume_all(topics["jobs"], 4)} == {str(i) for i in others}
    [message] = consume_all(topics["dead"], 1)
    dead_letter = orjson.loads(message.value())
    assert dead_letter["job_id"] == str(poison.id)
    assert "MSG_SIZE_TOO_LARGE" in dead_letter["error"]

    later = submit(user, 1)[0]
    assert relay.run_once() == 1
    assert Job.objects.get(id=later.id).status == JobStatus.QUEUED


def dead_letter_with(job: Job, error: str) -> None:
    """Run the job's attempt and dead-letter it with `error` (as the worker does)."""
    from jobs import transitions

    claim = transitions.mark_running(job.id, dispatch_token=job.dispatch_token, worker="w", lease_seconds=60)
    assert claim is not None
    assert transitions.move_to_dead_letter(job.id, attempt=claim.attempt, error=error)


@pytest.mark.django_db
def test_an_oversized_dead_letter_message_goes_out_shortened(user, topics):
    """`demo.fail` with a 1.1 MB message, not retryable: its `jobs.dead` message (with the
    error text) is over the limit. It goes out with the error cut short, and dispatch goes on."""
    job = submit(user, 1)[0]
    Outbox.objects.all().delete()  # as if relayed
    dead_letter_with(job, "ValueError: " + "é" * 1_100_000)
    waiting = submit(user, 2)
    relay = Relay()
    relay.run_once()
    relay.run_once()
    assert not Outbox.objects.exists()
    assert set(Job.objects.filter(id__in=[j.id for j in waiting]).values_list("status", flat=True)) == {
        JobStatus.QUEUED
    }
    [message] = consume_all(topics["dead"], 1)
    assert len(message.value()) < 20_000
    dead_letter = orjson.loads(message.value())
    assert dead_letter["job_id"] == str(job.id)
    assert dead_letter["type"] == "demo.noop"
    assert dead_letter["queue"] == "default"
    assert dead_letter["attempts"] == 1
    assert dead_letter["error"].startswith("ValueError: éé")
    assert dead_letter["error"].endswith(" characters in all]")  # config.text.bounded_text's marker
    assert Job.objects.get(id=job.id).status == JobStatus.DEAD_LETTER  # untouched


class BrokerRejects:
    """A real producer in front of a broker that refuses some messages as too large.

    The embedded broker (Tansu) accepts any size (checked: a 3 MB message into a topic with
    max.message.bytes=2000), so its verdict is played here, the way librdkafka reports it: a
    delivery report with MSG_SIZE_TOO_LARGE, served by poll()/flush(). Like Kafka, which
    rejects a whole record batch, every message produced since the last flush fails with it
    when one of them is too large."""

    def __init__(self, too_large: set[bytes]) -> None:
        from confluent_kafka import Producer

        from config import kafka

        self.real = Producer(kafka.producer_config())
        self.too_large = too_large
        self.batch: list[tuple[str, dict]] = []

    def produce(self, topic: str, **kwargs) -> None:
        self.batch.append((topic, kwargs))

    def _send(self) -> None:
        from confluent_kafka import KafkaError

        batch, self.batch = self.batch, []
        rejected = any(kw["key"] in self.too_large for _, kw in batch)
        for topic, kwargs in batch:
            if rejected:
                error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")
                kwargs["on_delivery"](error, None)
            else:
                self.real.produce(topic, **kwargs)

    def poll(self, timeout: float = 0) -> int:
        self._send()
        return self.real.poll(timeout)

    def flush(self, timeout: float = 0) -> int:
        self._send()
        return self.real.flush(timeout)


@pytest.mark.django_db
def test_a_message_the_broker_refuses_for_good_is_a_poison_row_and_its_batch_mates_still_go(user, topics):
    jobs = submit(user, 4)
    poison = jobs[1]
    relay = Relay(BrokerRejects({str(poison.id).encode()}))
    assert relay.run_once() == 3  # the three good ones, each sent again alone after the batch failed
    assert Job.objects.get(id=poison.id).status == JobStatus.DEAD_LETTER
    assert "MSG_SIZE_TOO_LARGE" in Job.objects.get(id=poison.id).last_error
    others = [j.id for j in jobs if j.id != poison.id]
    assert set(Job.objects.filter(id__in=others).values_list("status", flat=True)) == {JobStatus.QUEUED}
    assert {m.key().decode() for m in consume_all(topics["jobs"], 3)} == {str(i) for i in others}


@pytest.mark.django_db
def test_a_poison_task_moves_its_workflow_on(user, topics):
    from workflows.models import WorkflowStatus
    from workflows.services import TaskSpec, WorkflowSpec, workflow_submit

    workflow, _ = workflow_submit(
        owner_id=user.pk,
        spec=WorkflowSpec(tasks=(TaskSpec("a", "demo.noop"), TaskSpec("b", "demo.noop", depends_on=("a",)))),
        max_tasks=10,
    )
    [root] = Job.objects.filter(workflow=workflow)
    pad_dispatch(root)
    Relay().run_once()
    assert Job.objects.get(id=root.id).status == JobStatus.DEAD_LETTER
    workflow.refresh_from_db()
    assert workflow.status == WorkflowStatus.FAILED
    assert workflow.failed_task == "a"


@pytest.mark.django_db
def test_a_job_no_longer_waiting_on_its_poison_row_is_left_alone(user, topics):
    """A stale dispatch row (the job was cancelled meanwhile) is dropped; the job keeps its
    state."""
    job = submit(user, 1)[0]
    pad_dispatch(job)
    Job.objects.filter(id=job.id).update(status=JobStatus.CANCELLED, dispatch_token=None)
    Relay().run_once()
    assert Job.objects.get(id=job.id).status == JobStatus.CANCELLED
    assert not Outbox.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_unusable_outbox_row_does_not_stop_the_relay(user, topics, settings):
    """Rows our own code would never write (no dispatch token, a number PostgreSQL's jsonb
    holds but JSON parsers refuse) are set aside; the relay goes on relaying."""
    from django.db import connection

    settings.RELAY_POLL_SECONDS = 0.2
    broken = submit(user, 2)
    Outbox.objects.filter(job_id=broken[0].id).update(envelope={"v": 1, "job_id": str(broken[0].id)})
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE jobs_outbox SET envelope = jsonb_set(envelope, '{priority}', '1e400'::jsonb) WHERE job_id = %s",
            [broken[1].id],
        )
    relay = Relay()
    stop = threading.Event()
    thread = threading.Thread(target=relay.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        later = submit(user, 1)[0]
        wait_for(lambda: Job.objects.get(id=later.id).status == JobStatus.QUEUED, timeout=10, message="later job")
        assert thread.is_alive()
        wait_for(lambda: not Outbox.objects.filter(topic="jobs").exists(), timeout=10, message="rows set aside")
    finally:
        stop.set()
        thread.join(10)
    assert Job.objects.get(id=broken[1].id).status == JobStatus.DEAD_LETTER  # it has a dispatch token


@pytest.mark.django_db
def test_a_dead_letter_message_refused_even_shortened_is_dropped_with_an_error(user, topics, settings, caplog):
    settings.KAFKA_MESSAGE_MAX_BYTES = 1000  # librdkafka's minimum: a dispatch fits, 4 KiB of error does not
    job = submit(user, 1)[0]
    Outbox.objects.all().delete()
    dead_letter_with(job, "x" * 100_000)
    later = submit(user, 1)[0]
    relay = Relay()
    relay.run_once()  # shortened
    relay.run_once()  # refused again: dropped
    assert not Outbox.objects.exists()
    assert Job.objects.get(id=later.id).status == JobStatus.QUEUED
    dropped = [r for r in caplog.records if r.getMessage() == "relay.dead_letter_dropped"]
    assert [(r.levelname, r.job_id) for r in dropped] == [("ERROR", str(job.id))]
