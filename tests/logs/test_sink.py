"""The log sink against real Kafka and ClickHouse: batches stored, poison records to
`logs.dlq` with their reason, and ClickHouse down then back with nothing lost."""

from __future__ import annotations

import socket
import subprocess
import sys
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
            "orchestration.engines.chdb_http",
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
