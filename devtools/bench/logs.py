"""`manage.py bench logs`: the log pipeline's three numbers, each beside a baseline measured
in the same run.

1. Handler cost per record in the emitting process: a logger with our Kafka handler against
   the same logger with `logging.NullHandler` (and, for scale, a console StreamHandler
   writing to /dev/null). Both the caller's time and the process's CPU (the flusher thread
   included) per record.
2. Sink ingest rate, Kafka → ClickHouse, end to end: records already on a fresh topic, a
   LogSink drains them into a fresh table. Baseline: a bare consumer reading the same topic
   (what Kafka alone allows here).
3. Query latency over a generated table of `--rows` records (default 10 million): by job and
   by text through `logs.search`, against our schema and against a naive one (ordered by
   time only, no skip indexes) holding the same rows.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from django.conf import settings
from django.test.utils import override_settings

from config import kafka
from devtools.bench.stats import Out, Progress, percentile
from logs import search, store
from logs.shipping import KafkaLogHandler
from logs.sink import LogSink

MESSAGE = "processing item %d for customer %s: charged %d cents"


def _emit_loop(log: logging.Logger, n: int) -> tuple[float, float]:
    """(wall, process CPU) seconds for n log calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        log.info(MESSAGE, i, "c-42", i * 7, extra={"order_id": i})
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_handler(n: int, out: Out) -> dict[str, float]:
    topic = f"bench-logs-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics([topic], 4)
    results: dict[str, float] = {}
    handlers: list[tuple[str, logging.Handler]] = [
        ("NullHandler (baseline)", logging.NullHandler()),
        ("console StreamHandler → /dev/null", _devnull_handler()),
        ("KafkaLogHandler", KafkaLogHandler(settings.KAFKA_BOOTSTRAP_SERVERS, topic=topic, queue_size=n + 1)),
    ]
    try:
        for name, handler in handlers:
            log = logging.getLogger(f"bench.{uuid.uuid4().hex[:6]}")
            log.propagate = False
            log.setLevel(logging.INFO)
            log.addHandler(handler)
            _emit_loop(log, min(n, 2000))  # warm up (thread and producer started)
            cpu0 = time.process_time()
            wall, _ = _emit_loop(log, n)
            handler.flush()  # the background thread's share is part of the process's cost
            cpu = time.process_time() - cpu0
            results[name] = wall / n * 1e6
            results[name + " cpu"] = cpu / n * 1e6
            extra = ""
            if isinstance(handler, KafkaLogHandler):
                extra = f", sent {handler.sent:,}, dropped {handler.dropped:,}"
            per_call, per_cpu = wall / n * 1e6, cpu / n * 1e6
            out.write(f"  {name:<36} caller {per_call:6.2f} µs/record, process CPU {per_cpu:6.2f} µs/record{extra}\n")
            log.removeHandler(handler)
            handler.close()
    finally:
        AdminClient(kafka.base_config()).delete_topics([topic])
    caller = results["KafkaLogHandler"] - results["NullHandler (baseline)"]
    cpu = results["KafkaLogHandler cpu"] - results["NullHandler (baseline) cpu"]
    out.write(f"  -> above NullHandler: caller {caller:.2f} µs/record (target ≤ 20), process CPU {cpu:.2f} µs/record\n")
    return results


def _devnull_handler() -> logging.Handler:
    from logs.formatting import KeyValueFormatter

    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 closed with the handler
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    return handler


def _wire_records(n: int) -> list[bytes]:
    now = int(time.time() * 1_000_000)
    jobs = [str(uuid.uuid4()) for _ in range(max(1, n // 20))]
    return [
        orjson.dumps({
            "timestamp": now + i, "level": "INFO", "logger": "orchestration.demo", "service": "worker",
            "message": MESSAGE % (i, "c-42", i * 7), "host": "bench", "pid": 4242, "job_id": jobs[i % len(jobs)],
            "attempt": 1, "type": "demo.log", "queue": "default", "owner_id": 1, "extra": {"order_id": i},
        })
        for i in range(n)
    ]  # fmt: skip


def bench_sink(n: int, out: Out) -> dict[str, float]:
    suffix = uuid.uuid4().hex[:8]
    topic, table = f"bench-logs-{suffix}", f"bench_sink_{suffix}"
    kafka.ensure_topics([topic, f"{topic}.dlq"], settings.KAFKA_LOGS_PARTITIONS)
    store.migrate(table)
    try:
        producer = Producer(kafka.producer_config(**{"linger.ms": 20, "queue.buffering.max.messages": 1_000_000}))
        records = _wire_records(n)
        progress = Progress("producing", n)
        for i, value in enumerate(records):
            while True:
                try:
                    producer.produce(topic, value)
                    break
                except BufferError:
                    producer.poll(0.05)
            if i % 10_000 == 0:
                producer.poll(0)
                progress.update(i)
        assert producer.flush(60) == 0
        del records

        # Baseline: the same records read by a bare consumer, no parsing, no insert.
        consumer = Consumer(kafka.consumer_config(f"bench-read-{suffix}", **{"enable.auto.commit": False}))
        consumer.subscribe([topic])
        got, started = 0, None
        while got < n:
            batch = consumer.consume(num_messages=10_000, timeout=1.0)
            if batch and started is None:
                started = time.perf_counter()
            got += sum(1 for m in batch if m.error() is None)
        read_rate = n / (time.perf_counter() - (started or time.perf_counter()))
        consumer.close()

        with override_settings(
            KAFKA_LOGS_TOPIC=topic, KAFKA_LOGS_DLQ_TOPIC=f"{topic}.dlq", KAFKA_LOG_SINK_GROUP=f"bench-sink-{suffix}",
            CLICKHOUSE_LOGS_TABLE=table,
        ):  # fmt: skip
            sink = LogSink()
            stop = threading.Event()
            thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
            thread.start()
            while sink.stats.ingested == 0:
                time.sleep(0.01)
            first_batch = time.perf_counter()  # timed from the first stored batch: group join excluded
            first_count = sink.stats.ingested
            progress = Progress("sink", n - first_count)
            while sink.stats.ingested < n:
                time.sleep(0.05)
                progress.update(sink.stats.ingested - first_count)
            elapsed = time.perf_counter() - first_batch
            stop.set()
            thread.join(30)
        sink_rate = (n - first_count) / elapsed
        latencies = sink.stats.insert_latencies
        insert_p50 = percentile(latencies, 50) * 1000
        out.write(f"  bare consumer (baseline)  {read_rate:>10,.0f} records/s\n")
        out.write(
            f"  log sink -> ClickHouse    {sink_rate:>10,.0f} records/s  ({sink_rate / read_rate:.2f}x the bare read; "
            f"target ≥ 50,000), {sink.stats.batches} batches, insert p50 {insert_p50:.0f} ms\n"
        )
        return {"read": read_rate, "sink": sink_rate}
    finally:
        AdminClient(kafka.base_config()).delete_topics([topic, f"{topic}.dlq"])
        store.client().command(f"DROP TABLE IF EXISTS {table}")


def _fill_sql(table: str, rows: int) -> str:
    # 10 records per job, 50 owners; 1 in 1,000 records mentions an upstream timeout and its
    # order number; the rest say which of 997 items they process; spread over the last 7 days.
    job = "intDiv(number, 10)"
    h1, h2 = f"leftPad(hex(cityHash64({job})), 16, '0')", f"leftPad(hex(cityHash64({job}, 1)), 16, '0')"
    job_uuid = (
        f"toUUID(lower(concat(substring({h1}, 1, 8), '-', substring({h1}, 9, 4), '-', substring({h1}, 13, 4), '-', "
        f"substring({h2}, 1, 4), '-', substring({h2}, 5, 12))))"
    )
    return f"""
INSERT INTO {table} (timestamp, level, level_no, service, logger, host, pid, message, job_id, attempt, type, queue,
                     owner_id, extra)
SELECT now64(6) - toIntervalMicrosecond(intDiv(number * 604800000000, {rows})) AS timestamp,
       multiIf(number % 100 < 80, 'INFO', number % 100 < 95, 'DEBUG', number % 100 < 99, 'WARNING', 'ERROR'),
       multiIf(number % 100 < 80, 20, number % 100 < 95, 10, number % 100 < 99, 30, 40),
       'worker', 'orchestration.demo', 'bench-host', 4242,
       if(number % 1000 = 7, concat('upstream timeout after 30s calling billing for order ', toString(number)),
          concat('processing item ', toString(number % 997), ' for customer c-', toString(cityHash64(number) % 100000),
                 ': charged ', toString(number % 5000), ' cents')),
       {job_uuid}, 1, 'demo.log', 'default', cityHash64({job}, 2) % 50, ''
FROM numbers({rows})
"""  # noqa: S608 (identifiers and integers only)


def _time_queries(queries: list[search.LogQuery], table: str) -> list[float]:
    timings = []
    with override_settings(CLICKHOUSE_LOGS_TABLE=table):
        for q in queries:
            started = time.perf_counter()
            search.search(q)
            timings.append(time.perf_counter() - started)
    return timings


def bench_queries(rows: int, lookups: int, out: Out) -> dict[str, float]:
    suffix = uuid.uuid4().hex[:8]
    ours, naive = f"bench_query_{suffix}", f"bench_naive_{suffix}"
    ch = store.client()
    try:
        store.migrate(ours, retention_days=30)
        started = time.perf_counter()
        out.write(f"  generating {rows:,} records ...\n")
        ch.command(_fill_sql(ours, rows), settings={"max_insert_threads": 2})
        out.write(f"  generated in {time.perf_counter() - started:.0f} s; copying into the naive table ...\n")
        ch.command(f"CREATE TABLE {naive} AS {ours} ENGINE = MergeTree ORDER BY timestamp")
        for index in ("message_ngrams", "owner_bloom", "workflow_bloom", "time_minmax", "trace_bloom"):
            ch.command(f"ALTER TABLE {naive} DROP INDEX IF EXISTS {index}")
        ch.command(f"INSERT INTO {naive} SELECT * FROM {ours}")  # noqa: S608
        size = ch.query(
            "SELECT formatReadableSize(sum(data_compressed_bytes)) FROM system.parts"
            " WHERE table = {t:String} AND active",
            parameters={"t": ours},
        ).result_rows[0][0]
        out.write(f"  {rows:,} rows, {size} compressed\n")
        picked = ch.query(
            f"SELECT job_id FROM {ours} WHERE rand() % {{every:UInt32}} = 0 LIMIT {{n:UInt32}}",  # noqa: S608
            parameters={"every": max(1, rows // (lookups * 4)), "n": lookups},
        ).result_rows
        by_job = [search.LogQuery(job_id=row[0], limit=100) for row in picked[:-3]]
        # Every text query differs: ClickHouse's query condition cache would otherwise answer a
        # repeated filter from memory and flatter the numbers.
        rng = random.Random(7)
        items = rng.sample(range(997), 60)
        frequent = [search.LogQuery(q=f"processing item {k} for", limit=50) for k in items[:20]]
        rare = [search.LogQuery(q=f"order {rng.randrange(rows // 1000) * 1000 + 7}", limit=50) for _ in range(20)]
        by_owner = [
            search.LogQuery(q=f"processing item {k} for", owners=frozenset({rng.randrange(50)}), limit=50)
            for k in items[20:40]
        ]
        results = {}
        for label, queries in (
            ("by job_id", by_job),
            ("text, 1 in 1,000", frequent),
            ("text, 1 record", rare),
            ("text, one owner", by_owner),
        ):
            for name, table in (("ours", ours), ("naive", naive)):
                _time_queries([search.LogQuery(q="warm up", limit=1), *by_job[-3:]], table)
                t = _time_queries(queries, table)
                results[f"{label} {name} p50"] = percentile(t, 50)
                results[f"{label} {name} p95"] = percentile(t, 95)
            ms = {
                key.removeprefix(label + " "): value * 1000 for key, value in results.items() if key.startswith(label)
            }
            out.write(
                f"  {label:<20} ours p50 {ms['ours p50']:7.1f} ms  p95 {ms['ours p95']:7.1f} ms"
                f"   naive p50 {ms['naive p50']:7.1f} ms  p95 {ms['naive p95']:7.1f} ms"
                f"   ({ms['naive p95'] / ms['ours p95']:.1f}x faster at p95)\n"
            )
        out.write("  (target: by job_id p95 ≤ 100 ms)\n")
        return results
    finally:
        ch.command(f"DROP TABLE IF EXISTS {ours}")
        ch.command(f"DROP TABLE IF EXISTS {naive}")


def run(
    *, records: int, sink_records: int, rows: int, lookups: int, only: list[str] | None, out: Out
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if not only or "handler" in only:
        out.write(f"\n1. handler cost per record ({records:,} records)\n")
        results["handler"] = bench_handler(records, out)
    if not only or "sink" in only:
        out.write(f"\n2. sink ingest, Kafka → ClickHouse ({sink_records:,} records)\n")
        results["sink"] = bench_sink(sink_records, out)
    if not only or "query" in only:
        out.write(f"\n3. query latency over {rows:,} records\n")
        results["query"] = bench_queries(rows, lookups, out)
    return results
