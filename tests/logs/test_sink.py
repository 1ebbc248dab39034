"""The log sink against real Kafka and ClickHouse: batches stored, poison records to
`logs.dlq` with their reason, and ClickHouse down then back with nothing lost."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from logs import store
from tests.logs.conftest import RunningSink, record
from tests.orchestration.conftest import REPO, consume_all, produce, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.slow]


@pytest.fixture
def sink(log_topics, ch_table) -> Iterator[RunningSink]:
    running = RunningSink()
    yield running
    running.close()


def stored(job_id: str | None = None) -> int:
    sql = f"SELECT count() FROM {store.table()}"  # noqa: S608 (a configured identifier)
    if job_id is None:
        return store.client().query(sql).result_rows[0][0]
    return store.client().query(sql + " WHERE job_id = {j:UUID}", parameters={"j": job_id}).result_rows[0][0]


def test_records_are_stored_in_batches_and_poison_goes_to_the_dlq_with_its_reason(sink, log_topics):
    job = uuid.uuid4()
    good = [orjson.dumps(record(f"good {i}", job_id=job, attempt=1, extra={"i": i})) for i in range(1200)]
    poison = [
        b"not json at all",
        orjson.dumps([1, 2, 3]),
        orjson.dumps(record("no level", level="LOUD")),
        orjson.dumps(record("bad job", job_id="not-a-uuid")),
        orjson.dumps({k: v for k, v in record("no timestamp").items() if k != "timestamp"}),
    ]
    produce(log_topics["logs"], good[:600] + poison + good[600:])
    wait_for(lambda: stored() == 1200, timeout=60, message="1200 records in ClickHouse")
    assert stored(job_id=str(job)) == 1200
    dead = consume_all(log_topics["dlq"], len(poison))
    reasons = sorted(dict(m.headers())["reason"].decode() for m in dead)
    assert any(r.startswith("not JSON") for r in reasons)
    assert "a record must be a JSON object, not list" in reasons
    assert any(r.startswith("level must be one of") for r in reasons)
    assert "job_id is not a UUID: 'not-a-uuid'" in reasons
    assert any(r.startswith("timestamp must be") for r in reasons)
    assert all(dict(m.headers())["original_topic"].decode() == log_topics["logs"] for m in dead)
    assert sink.sink.stats.malformed == len(poison)
    assert sink.sink.stats.ingested == 1200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClickHouseProcess:
    """A chDB HTTP server of this test's own, which the test can stop and start again."""

    def __init__(self, path: Path) -> None:
        self.path, self.port = path, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://default:@127.0.0.1:{self.port}/default"

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "devtools.engines.chdb_http",
            "--path",
            str(self.path),
            "--port",
            str(self.port),
        ]
        self.proc = subprocess.Popen(cmd, cwd=REPO)

        def ready() -> bool:
            try:
                return bool(store.connect(self.url).ping())
            except Exception:
                return False

        wait_for(ready, timeout=30, message="chDB HTTP server up")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


def test_clickhouse_down_then_back_loses_nothing(log_topics, tmp_path, settings):
    clickhouse = ClickHouseProcess(tmp_path / "chdb")
    clickhouse.start()
    settings.CLICKHOUSE_URL = clickhouse.url
    settings.CLICKHOUSE_LOGS_TABLE = "logs"
    store.migrate()
    running = RunningSink()
    try:
        produce(log_topics["logs"], [orjson.dumps(record(f"before {i}")) for i in range(300)])
        wait_for(lambda: running.sink.stats.ingested == 300, timeout=60, message="first records stored")

        clickhouse.stop()
        produce(log_topics["logs"], [orjson.dumps(record(f"during {i}")) for i in range(700)])
        wait_for(lambda: running.sink.stats.paused, timeout=30, message="the sink paused on failed inserts")
        assert running.sink.stats.insert_failures >= 1

        clickhouse.start()
        wait_for(lambda: running.sink.stats.ingested == 1000, timeout=60, message="the held batch stored")
        assert not running.sink.stats.paused
        assert stored() == 1000
        assert store.client().query("SELECT uniqExact(message) FROM logs").result_rows[0][0] == 1000
    finally:
        running.close()
        if clickhouse.proc and clickhouse.proc.poll() is None:
            clickhouse.stop()


def test_the_sink_commits_only_what_clickhouse_took(log_topics, ch_table, settings):
    """Stopped with ClickHouse failing, the sink leaves its batch uncommitted: the next sink
    of the group stores it."""
    good_url = settings.CLICKHOUSE_URL
    settings.CLICKHOUSE_URL = "http://default:@127.0.0.1:9/default"
    first = RunningSink()
    produce(log_topics["logs"], [orjson.dumps(record(f"r{i}")) for i in range(50)])
    wait_for(lambda: first.sink.stats.insert_failures >= 1, timeout=60, message="an insert failed")
    first.close()
    settings.CLICKHOUSE_URL = good_url
    second = RunningSink()
    try:
        wait_for(lambda: stored() == 50, timeout=60, message="the next sink stored the batch")
    finally:
        second.close()


# --- ClickHouse answers lost or refused, rebalances while the sink waits ---------------------


def unique_messages(ch) -> int:
    return ch.query(f"SELECT uniqExact(message) FROM {store.table()}").result_rows[0][0]  # noqa: S608


class FaultyLink:
    """A TCP proxy in front of ClickHouse. `lose`: an INSERT goes through but its answer is
    dropped and the connection cut (the rows land, the sink sees the insert fail; other
    requests are answered); `down`: connections are cut before anything goes through; `up`:
    a plain proxy."""

    def __init__(self, url: str) -> None:
        import threading
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 8123)
        self.mode = "up"
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = url.replace(f":{parts.port}", f":{self.server.getsockname()[1]}", 1)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.mode == "down":
                client.close()
                continue
            upstream = socket.create_connection(self.upstream)
            state = {"insert": False}  # is the request in flight on this connection an insert?
            for src, dst, back in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, back, state, client, upstream), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, back: bool, state: dict, *both: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.mode == "down" or (back and self.mode == "lose" and state["insert"]):
                    break
                if not back and data.startswith(b"POST "):
                    # the sink's insert: its token in the URL, its rows streamed (chunked)
                    head = data.split(b"\r\n\r\n", 1)[0]
                    state["insert"] = b"insert_deduplication_token=" in head and b"chunked" in head.lower()
                dst.sendall(data)
        except OSError:
            pass
        for s in both:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.server.close()


def produce_to_both(topic: str, prefix: str, n: int) -> None:
    """n records to each of the topic's two partitions."""
    from confluent_kafka import Producer

    from config import kafka

    producer = Producer(kafka.producer_config())
    for p in (0, 1):
        for i in range(n):
            producer.produce(topic, orjson.dumps(record(f"{prefix} p{p} {i}")), partition=p)
    assert producer.flush(10) == 0


@contextlib.contextmanager
def another_member(group: str, topic: str) -> Iterator[list[int]]:
    """A second consumer in the sink's group for as long as the block runs (it takes
    partitions from the sink, reads nothing, commits nothing): a rebalance when it joins and
    another when it leaves. Yields the partitions it holds."""
    import threading

    from confluent_kafka import Consumer

    from config import kafka

    stop = threading.Event()
    held: list[int] = []

    def member() -> None:
        consumer = Consumer(kafka.consumer_config(group, **{"enable.auto.commit": False}))
        consumer.subscribe([topic], on_assign=lambda _, partitions: held.extend(p.partition for p in partitions))
        while not stop.is_set():
            consumer.poll(0.1)
        consumer.close()

    thread = threading.Thread(target=member, daemon=True)
    thread.start()
    try:
        yield held
    finally:
        stop.set()
        thread.join(30)


@contextlib.contextmanager
def sink_behind_a_faulty_link(settings, topic: str) -> Iterator[tuple[object, FaultyLink, RunningSink]]:
    """A running sink that reaches ClickHouse through a FaultyLink, connected (one record
    stored), and a direct client to count what ClickHouse holds."""
    ch = store.connect()
    link = FaultyLink(settings.CLICKHOUSE_URL)
    settings.CLICKHOUSE_URL = link.url
    sink = RunningSink()
    try:
        produce(topic, [orjson.dumps(record("warm-up"))])
        wait_for(lambda: sink.sink.stats.ingested == 1, timeout=60, message="the sink connected")
        yield ch, link, sink
    finally:
        sink.close()
        link.close()


def test_a_rebalance_while_clickhouse_is_down_leaves_no_partition_paused(log_topics, ch_table, settings):
    """librdkafka keeps a partition paused across a rebalance that hands it back: a sink
    that paused for ClickHouse and then lost and regained its partitions never read them
    again."""
    topic = log_topics["logs"]
    with sink_behind_a_faulty_link(settings, topic) as (ch, link, sink):
        link.mode = "down"
        produce_to_both(topic, "held", 50)
        wait_for(lambda: sink.sink.stats.paused, timeout=30, message="the sink paused")
        with another_member(settings.KAFKA_LOG_SINK_GROUP, topic) as held:
            wait_for(lambda: held, timeout=30, message="a rebalance")
            link.mode = "up"
            time.sleep(2)
        wait_for(lambda: unique_messages(ch) == 101, timeout=60, message="every record stored")


# --- the deduplication token covers exactly the rows of the insert ----------------------------


def test_offsets_used_again_after_the_broker_lost_its_topic_are_not_duplicates(log_topics, ch_table, settings):
    """The embedded broker keeps topics in memory: after a restart `logs` starts at offset 0
    again. New records at old offsets are new rows, not a retry of an old insert (a token
    made of offsets only had ClickHouse drop them as duplicates)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from config import kafka

    ch = store.connect()
    topic = log_topics["logs"]
    admin = AdminClient(kafka.base_config())
    produce(topic, [orjson.dumps(record(f"before {i}")) for i in range(10)], key=b"one-partition")
    first = RunningSink()
    try:
        wait_for(lambda: unique_messages(ch) == 10, timeout=60, message="the first records stored")
    finally:
        first.close()
    # The broker "restarts": the topic and the group's offsets are gone.
    for future in admin.delete_topics([topic]).values():
        future.result()
    wait_for(lambda: topic not in admin.list_topics(timeout=5).topics, timeout=10, message="topic gone")
    for future in admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)]).values():
        future.result()
    settings.KAFKA_LOG_SINK_GROUP = f"{settings.KAFKA_LOG_SINK_GROUP}-after"
    produce(topic, [orjson.dumps(record(f"after {i}")) for i in range(10)], key=b"one-partition")
    second = RunningSink()
    try:
        wait_for(lambda: second.sink.stats.ingested == 10, timeout=60, message="the new records inserted")
        assert unique_messages(ch) == 20
    finally:
        second.close()


def test_a_batch_that_grew_while_its_insert_was_retried_is_stored_whole(log_topics, ch_table, settings):
    """An insert that landed but whose answer was lost is retried under the same token. If
    the batch grew meanwhile (a rebalance took the sink's partitions and gave one back while
    it waited, and it read that one again with the records added since), a token computed
    once made ClickHouse drop the whole grown batch as a duplicate of the first insert, and
    its offsets were committed: records lost."""
    topic = log_topics["logs"]
    with sink_behind_a_faulty_link(settings, topic) as (ch, link, sink):
        link.mode = "lose"
        produce_to_both(topic, "first", 100)
        wait_for(lambda: sink.sink.stats.insert_failures >= 1, timeout=60, message="an insert lost its answer")
        link.mode = "down"
        assert unique_messages(ch) == 201  # it did land
        produce_to_both(topic, "second", 50)  # waits in Kafka: the sink's partitions are paused
        # The retries back off to 10 s; then another member joins: a rebalance in the wait.
        wait_for(lambda: sink.sink.stats.insert_failures >= 7, timeout=60, message="a long backoff")
        with another_member(settings.KAFKA_LOG_SINK_GROUP, topic):
            # The sink reads the partition it got back again, with the records added since.
            wait_for(lambda: any(b >= 149 for _, b in sink.sink._offsets.values()), timeout=30, message="regrown")
            link.mode = "up"
            wait_for(lambda: not sink.sink._offsets, timeout=30, message="the grown batch inserted")
        wait_for(lambda: unique_messages(ch) == 301, timeout=60, message="every record stored")


# --- a malformed record as large as Kafka allows ------------------------------------------------


def test_a_malformed_record_at_the_size_limit_goes_to_the_dlq_shortened(sink, log_topics):
    """Its dead letter (the record plus the reason in headers) would be over the limit: it
    goes out with the value cut short, and the sink goes on (it used to die on it, and on it
    again after every restart)."""
    huge = b"not json " + b"x" * 999_800
    good = [orjson.dumps(record(f"good {i}")) for i in range(20)]
    produce(log_topics["logs"], [huge, *good], key=b"one-partition")
    wait_for(lambda: stored() == 20, timeout=60, message="the good records stored")
    [dead] = consume_all(log_topics["dlq"], 1)
    headers = dict(dead.headers())
    assert headers["reason"].decode().startswith("not JSON")
    assert int(headers["original_size"]) == len(huge)
    assert dead.value() == huge[: len(dead.value())]
    assert len(dead.value()) < 100_000
    assert sink.thread.is_alive()
