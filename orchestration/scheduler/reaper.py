"""Lost workers: RUNNING jobs whose lease expired → failed attempt (LOST) → retry policy
(`orchestration.policy`): RETRYING, or DEAD_LETTER when out of attempts; CANCELLED when a
cancel was requested (a cancel outlives its worker).

Safe against a worker still alive: each job ends in a fenced transaction of its own, with a
transition guarded by the attempt and by `lease_expired_before` (the reaper must not fail an
attempt whose worker just renewed it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from django.db import transaction

from jobs import selectors, transitions
from jobs.models import AttemptStatus
from orchestration import policy
from orchestration.scheduler.fencing import fence

logger = logging.getLogger("orchestration.scheduler")  # the role's one logger, as before the split


def reap_expired_leases(epoch: int, clock: Callable[[], datetime], *, batch: int) -> int:
    """Up to `batch` jobs whose lease expired, the longest expired first; the rest next tick."""
    now = clock()
    reaped = 0
    for job in selectors.job_expired_leases(now=now, limit=batch):
        error = f"worker lost: lease expired (worker {job.worker or 'unknown'})"
        decision = policy.decide(attempts=job.attempts, max_attempts=job.max_attempts, backoff=job.backoff, now=now)
        with transaction.atomic():
            fence(epoch)
            if job.cancel_requested_at is not None:  # a cancel outlives its worker
                won = transitions.mark_cancelled(
                    job.id, attempt=job.attempt_seq, reason="cancelled (worker lost)",
                    lease_expired_before=now,
                )  # fmt: skip
            elif isinstance(decision, policy.Retry):
                won = transitions.schedule_retry(
                    job.id, attempt=job.attempt_seq, next_retry_at=decision.at, error=error,
                    attempt_status=AttemptStatus.LOST, lease_expired_before=now,
                )  # fmt: skip
            else:
                won = transitions.move_to_dead_letter(
                    job.id, attempt=job.attempt_seq, error=error, attempt_status=AttemptStatus.LOST,
                    lease_expired_before=now,
                )  # fmt: skip
        if won:
            reaped += 1
            logger.warning("job.worker_lost", extra={"job_id": str(job.id), "attempt": job.attempt_seq})
    return reaped
