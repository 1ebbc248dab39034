"""The one Celery task that runs every job. It only unpacks the message; the work, the
claim and every decision live in orchestration.worker."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from orchestration import worker


@shared_task(name="orchestration.run_job", ignore_result=True)
def run_job(envelope: dict[str, Any]) -> str:
    return worker.execute(envelope).status
