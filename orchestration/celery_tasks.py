"""The Celery tasks that run jobs: one job per message, or a batch of them. They decode the
message (the one place a worker does) and hand over; the work, the claims and every decision
live in orchestration.worker."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from jobs.dispatch import BadEnvelope, DispatchEnvelope
from orchestration.worker.batch import execute_batch
from orchestration.worker.single import execute

logger = logging.getLogger("orchestration.worker")


def _decoded(raw: Any) -> DispatchEnvelope | None:
    """The envelope, or None for one that can never run (logged). The bridge only sends
    envelopes it checked, so this is a message put on the queue by something else."""
    try:
        return DispatchEnvelope.parse(raw)
    except BadEnvelope as exc:
        logger.error("job.message_rejected", extra={"reason": str(exc), "message": repr(raw)[:500]})
        return None


@shared_task(name="orchestration.run_job", ignore_result=True)
def run_job(envelope: Any) -> str:
    decoded = _decoded(envelope)
    return execute(decoded).status if decoded is not None else "REJECTED"


@shared_task(name="orchestration.run_jobs", ignore_result=True)
def run_jobs(envelopes: Any) -> int:
    """A batch the bridge packed from a backlog: one message, many jobs, each its own outcome."""
    decoded = [e for e in map(_decoded, envelopes if isinstance(envelopes, list) else [envelopes]) if e is not None]
    return len(execute_batch(decoded))
