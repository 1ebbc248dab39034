"""A peer in `bench pipeline`: Dramatiq on the same Redis with a no-op actor.

Each message only counts itself (`raw_count`: added to a Redis key every 20 ms, not a round
trip a task) so the benchmark can tell when the queue drained."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from devtools.bench.raw_count import Done

BROKER = os.environ.get("BENCH_RAW_BROKER", "redis://127.0.0.1:6379/0")
QUEUE = "bench-raw-dramatiq"
COUNTER = "bench:raw-dramatiq:done"

broker = RedisBroker(url=BROKER, namespace="bench-dramatiq")
dramatiq.set_broker(broker)
# Its own Redis client, not config.broker: this runs in the peer's worker, without Django settings.
_done = Done(BROKER, COUNTER)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop() -> None:
    _done.add()
