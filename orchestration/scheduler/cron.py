"""Cron schedules whose next slot came → a job per slot, at most once per slot.

Safe to repeat and across a leader change: a slot fires at most once per (schedule, slot), a
unique row plus the job's idempotency key, both checked by PostgreSQL inside the fenced
transaction. Each schedule has its own savepoint (see `jobs.schedules`), so one that fails
does not stop the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from django.db import transaction

from jobs import schedules
from orchestration.scheduler.fencing import fence

logger = logging.getLogger("orchestration.scheduler")  # the role's one logger, as before the split


def fire_schedules(epoch: int, clock: Callable[[], datetime]) -> int:
    with transaction.atomic():
        fence(epoch)
        fired = schedules.fire_due(now=clock())
    for f in fired:
        logger.info(
            "schedule.fired", extra={"schedule_id": f.schedule_id, "slot": f.slot.isoformat(), "job_id": f.job_id}
        )
    return len(fired)
