"""Celery queues on Redis: the messages that carry jobs, the lists behind a queue, and
their depth.

With `priority_steps` 0-9 and separator ':', kombu keeps one Redis list per priority level:
`q` for level 0 and `q:1` … `q:9`. Kombu serves lower numbers first, while our jobs say
"higher priority runs first", hence `celery_priority`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis
from celery import Celery
from django.conf import settings

LEVELS = range(10)
TASK_NAME = "orchestration.run_job"
BATCH_TASK_NAME = "orchestration.run_jobs"


def celery_priority(job_priority: int) -> int:
    """Job priority 9 (most urgent) → kombu level 0 (served first)."""
    return 9 - job_priority


def by_queue(envelopes: Iterable[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Dispatch envelopes grouped by (queue, priority), in order: one Celery message each."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for envelope in envelopes:
        groups.setdefault((envelope["queue"], envelope["priority"]), []).append(envelope)
    return groups


def publish(app: Celery, queue: str, priority: int, envelopes: list[dict[str, Any]]) -> None:
    """One Celery message for jobs of one queue and priority: `run_job` for a lone job,
    `run_jobs` for a batch (the bridge, and a batch handing its waiting jobs back). Raises
    kombu's OperationalError when Redis is unreachable; the caller decides about retrying."""
    single = len(envelopes) == 1
    app.send_task(
        TASK_NAME if single else BATCH_TASK_NAME,
        args=[envelopes[0] if single else envelopes],
        # Celery would otherwise build a safe repr of the whole batch for every message.
        argsrepr=envelopes[0]["job_id"] if single else f"[{len(envelopes)} jobs]",
        queue=queue,
        priority=celery_priority(priority),
        retry=False,
    )


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
