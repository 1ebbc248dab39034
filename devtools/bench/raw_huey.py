"""A peer in `bench pipeline`: Huey on the same Redis with a no-op task.

Each task only bumps a Redis counter so the benchmark can tell when the queue drained."""

from __future__ import annotations

import os

import redis
from huey import RedisHuey

BROKER = os.environ.get("BENCH_RAW_BROKER", "redis://127.0.0.1:6379/0")
QUEUE = "bench-raw-huey"
COUNTER = "bench:raw-huey:done"

huey = RedisHuey(QUEUE, url=BROKER, results=False)
# Its own client, not config.broker: this module runs in the peer's worker, without Django settings.
_redis = redis.Redis.from_url(BROKER)


@huey.task()
def noop() -> None:
    _redis.incr(COUNTER)
