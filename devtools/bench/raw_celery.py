"""The baseline of `bench pipeline`: plain Celery on the same Redis with a no-op task.

Each task only counts itself (`raw_count`: added to a Redis key every 20 ms, not a round
trip a task) so the benchmark can tell when the queue drained; no database, no Kafka. Run as
its own app so it shares nothing with ours but the broker."""

from __future__ import annotations

import os

from celery import Celery

from devtools.bench.raw_count import Done

BROKER = os.environ.get("BENCH_RAW_BROKER", "redis://127.0.0.1:6379/0")
QUEUE = "bench-raw-celery"
COUNTER = "bench:raw-celery:done"

app = Celery("bench_raw", broker=BROKER)
app.conf.update(
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=4,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
# Its own Redis client, not config.broker: this runs in the peer's worker, without Django settings.
_done = Done(BROKER, COUNTER)


@app.task(name="bench.noop")
def noop() -> None:
    _done.add()
