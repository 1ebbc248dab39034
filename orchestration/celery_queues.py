"""The Celery messages that carry jobs: one per queue and lane, a lone job or a batch.
(The Redis lists behind a queue and their depth are `config.broker`.)

A job's priority is honoured where its queue's backlog waits: the relay dispatches each
owner's jobs highest priority first. In Redis what counts is the lane: kombu serves lower
levels first, across every queue a worker consumes, so an express dispatch (an owner with few
jobs in flight, `jobs.dispatch.EXPRESS`) goes at level 0 and is taken before the bulk lane's,
which waits at level 9.
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from jobs.dispatch import EXPRESS, DispatchEnvelope

TASK_NAME = "orchestration.run_job"
BATCH_TASK_NAME = "orchestration.run_jobs"
EXPRESS_LEVEL, BULK_LEVEL = 0, 9


def celery_priority(lane: str | None) -> int:
    """The kombu level of a lane: express first."""
    return EXPRESS_LEVEL if lane == EXPRESS else BULK_LEVEL


def by_queue(envelopes: Iterable[DispatchEnvelope]) -> dict[tuple[str, int], list[DispatchEnvelope]]:
    """Dispatch envelopes grouped by (queue, kombu level), in order: one Celery message each."""
    groups: dict[tuple[str, int], list[DispatchEnvelope]] = {}
    for envelope in envelopes:
        groups.setdefault((envelope.queue, celery_priority(envelope.lane)), []).append(envelope)
    return groups


def shadow_name(envelopes: list[DispatchEnvelope], queue: str) -> str:
    """A message's name as people see it: the job's type for a lone job; for a batch, its
    queue and size, and its type when it has one ("default: 12 x billing.charge")."""
    if len(envelopes) == 1:
        return envelopes[0].type
    types = {e.type for e in envelopes}
    kind = next(iter(types)) if len(types) == 1 else f"{len(types)} types"
    return f"{queue}: {len(envelopes)} x {kind}"


def publish(app: Celery, queue: str, level: int, envelopes: list[DispatchEnvelope]) -> None:
    """One Celery message for jobs of one queue and lane (kombu `level`): `run_job` for a lone
    job, `run_jobs` for a batch (the bridge, and a batch handing its waiting jobs back).
    Raises kombu's OperationalError when Redis is unreachable; the caller decides about
    retrying."""
    single = len(envelopes) == 1
    app.send_task(
        TASK_NAME if single else BATCH_TASK_NAME,
        args=[envelopes[0].as_dict() if single else [e.as_dict() for e in envelopes]],
        # Celery would otherwise build a safe repr of the whole batch for every message.
        argsrepr=envelopes[0].job_id if single else f"[{len(envelopes)} jobs]",
        # What a worker's log lines and Flower's task list call it (Celery's Request.name).
        shadow=shadow_name(envelopes, queue),
        queue=queue,
        priority=level,
        retry=False,
    )
