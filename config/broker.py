"""Celery's broker, Redis: the process's shared client, and the lists behind a Celery queue
with their depth. Every package may use it (the heartbeats, the throttle and the dashboard
read Redis too); publishing jobs is `orchestration.celery_queues`.

With `priority_steps` 0-9 and separator ':', kombu keeps one Redis list per priority level:
`q` for level 0 and `q:1` … `q:9`.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
from django.conf import settings

LEVELS = range(10)


def list_names(queue: str) -> list[str]:
    return [queue if level == 0 else f"{queue}:{level}" for level in LEVELS]


_client: redis.Redis | None = None


def client() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    return _client


def depths(queues: Iterable[str]) -> dict[str, int]:
    """Ready messages per queue (not counting ones a worker has prefetched), one round trip."""
    queues = list(queues)
    pipe = client().pipeline(transaction=False)
    for queue in queues:
        for name in list_names(queue):
            pipe.llen(name)
    counts = pipe.execute()
    return {queue: sum(counts[i * len(LEVELS) : (i + 1) * len(LEVELS)]) for i, queue in enumerate(queues)}
