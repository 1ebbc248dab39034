"""The Celery tasks that run jobs: one job per message, or a batch of them. They only unpack
the message; the work, the claims and every decision live in orchestration.worker."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from orchestration.worker.batch import execute_batch
from orchestration.worker.single import execute


@shared_task(name="orchestration.run_job", ignore_result=True)
def run_job(envelope: dict[str, Any]) -> str:
    return execute(envelope).status


@shared_task(name="orchestration.run_jobs", ignore_result=True)
def run_jobs(envelopes: list[dict[str, Any]]) -> int:
    """A batch the bridge packed from a backlog: one message, many jobs, each its own outcome."""
    return len(execute_batch(envelopes))
