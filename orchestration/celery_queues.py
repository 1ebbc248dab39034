"""The Celery messages that carry jobs: one per queue and priority, a lone job or a batch.
(The Redis lists behind a queue and their depth are `config.broker`.)

Kombu serves lower priority levels first, while our jobs say "higher priority runs first",
hence `celery_priority`.
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from jobs.dispatch import DispatchEnvelope

TASK_NAME = "orchestration.run_job"
BATCH_TASK_NAME = "orchestration.run_jobs"


def celery_priority(job_priority: int) -> int:
    """Job priority 9 (most urgent) → kombu level 0 (served first)."""
    return 9 - job_priority


def by_queue(envelopes: Iterable[DispatchEnvelope]) -> dict[tuple[str, int], list[DispatchEnvelope]]:
    """Dispatch envelopes grouped by (queue, priority), in order: one Celery message each."""
    groups: dict[tuple[str, int], list[DispatchEnvelope]] = {}
    for envelope in envelopes:
        groups.setdefault((envelope.queue, envelope.priority), []).append(envelope)
    return groups


def publish(app: Celery, queue: str, priority: int, envelopes: list[DispatchEnvelope]) -> None:
    """One Celery message for jobs of one queue and priority: `run_job` for a lone job,
    `run_jobs` for a batch (the bridge, and a batch handing its waiting jobs back). Raises
    kombu's OperationalError when Redis is unreachable; the caller decides about retrying."""
    single = len(envelopes) == 1
    app.send_task(
        TASK_NAME if single else BATCH_TASK_NAME,
        args=[envelopes[0].as_dict() if single else [e.as_dict() for e in envelopes]],
        # Celery would otherwise build a safe repr of the whole batch for every message.
        argsrepr=envelopes[0].job_id if single else f"[{len(envelopes)} jobs]",
        queue=queue,
        priority=celery_priority(priority),
        retry=False,
    )
