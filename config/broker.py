"""Celery's broker, Redis: the process's shared client, and the lists behind a Celery queue
with their depth. Every package may use it (the heartbeats, the throttle, the breakers, the
scheduler's lock and the dashboard read Redis too); publishing jobs is
`orchestration.celery_queues`.

The client is django-redis' (`CACHES["default"]`): one connection pool per process, with the
timeouts and size of REDIS_SOCKET_TIMEOUT, REDIS_CONNECT_TIMEOUT and REDIS_MAX_CONNECTIONS.
It is the raw client: keys are used as written, without the cache's KEY_PREFIX. The pool
starts afresh in a forked child (redis-py checks the pid), so a prefork worker never shares
its parent's sockets. Kombu (Celery's transport) keeps its own connections to REDIS_URL.

With `priority_steps` 0-9 and separator ':', kombu keeps one Redis list per priority level:
`q` for level 0 and `q:1` … `q:9`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis
from django_redis import get_redis_connection

LEVELS = range(10)


def list_names(queue: str) -> list[str]:
    return [queue if level == 0 else f"{queue}:{level}" for level in LEVELS]


def client() -> redis.Redis:
    """The shared raw client. Looked up on each call (cheap: the pool is kept), so a test
    that points `CACHES` at another Redis reaches every caller."""
    return get_redis_connection("default")


def text(value: Any) -> str:
    """A reply of the raw client (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def depths(queues: Iterable[str]) -> dict[str, int]:
    """Ready messages per queue (not counting ones a worker has prefetched), one round trip."""
    queues = list(queues)
    pipe = client().pipeline(transaction=False)
    for queue in queues:
        for name in list_names(queue):
            pipe.llen(name)
    counts = pipe.execute()
    return {queue: sum(counts[i * len(LEVELS) : (i + 1) * len(LEVELS)]) for i, queue in enumerate(queues)}
