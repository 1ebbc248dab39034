"""A peer in `bench pipeline`: Huey on the same Redis with a no-op task.

Each task only counts itself (`raw_count`: added to a Redis key every 20 ms, not a round
trip a task) so the benchmark can tell when the queue drained."""

from __future__ import annotations

import os

from huey import RedisHuey

from devtools.bench.raw_count import Done

BROKER = os.environ.get("BENCH_RAW_BROKER", "redis://127.0.0.1:6379/0")
QUEUE = "bench-raw-huey"
COUNTER = "bench:raw-huey:done"

huey = RedisHuey(QUEUE, url=BROKER, results=False)
# Its own Redis client, not config.broker: this runs in the peer's worker, without Django settings.
_done = Done(BROKER, COUNTER)


@huey.task()
def noop() -> None:
    _done.add()
