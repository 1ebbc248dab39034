"""A peer in `bench pipeline`: Dramatiq on the same Redis with a no-op actor.

Each message only bumps a Redis counter so the benchmark can tell when the queue drained."""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

BROKER = os.environ.get("BENCH_RAW_BROKER", "redis://127.0.0.1:6379/0")
QUEUE = "bench-raw-dramatiq"
COUNTER = "bench:raw-dramatiq:done"

broker = RedisBroker(url=BROKER, namespace="bench-dramatiq")
dramatiq.set_broker(broker)
# Its own client, not config.broker: this module runs in the peer's worker, without Django settings.
_redis = redis.Redis.from_url(BROKER)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop() -> None:
    _redis.incr(COUNTER)
