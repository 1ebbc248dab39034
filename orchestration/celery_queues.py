"""Celery queues on Redis: names of the lists behind a queue, and their depth.

With `priority_steps` 0-9 and separator ':', kombu keeps one Redis list per priority level:
`q` for level 0 and `q:1` … `q:9`. Kombu serves lower numbers first, while our jobs say
"higher priority runs first", hence `celery_priority`.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
from django.conf import settings

LEVELS = range(10)


def celery_priority(job_priority: int) -> int:
    """Job priority 9 (most urgent) → kombu level 0 (served first)."""
    return 9 - job_priority


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
