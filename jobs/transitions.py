"""Every change of a job's status: one function per edge, one conditional UPDATE each.

Each function names the state(s) it expects in its WHERE clause and returns whether it won
(or, for a claim, what it won). Nothing here reads the status first: concurrent callers,
duplicate deliveries and stale messages are settled by PostgreSQL's row lock, and the loser
simply sees zero rows. Callers that must explain a lost race use `current_status`.

Callers own the transaction; the history row of an attempt is written by the caller in the
same transaction as the edge that starts or ends it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.db import connection
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from jobs.models import AttemptStatus, Job, JobAttempt, JobStatus

WAITING = (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RETRYING)
REQUEUEABLE = (JobStatus.DEAD_LETTER, JobStatus.CANCELLED)


@dataclass(frozen=True)
class Claim:
    """What a worker won by claiming a job: the attempt it now owns."""

    job_id: uuid.UUID
    attempt: int  # attempt number in the job's history (Job.attempt_seq)
    attempts: int  # attempts used in the current budget, this one included
    max_attempts: int
    type: str
    payload: dict[str, Any]
    timeout_seconds: int
    lease_expires_at: datetime


def current_status(job_id: uuid.UUID | str) -> str | None:
    return Job.objects.filter(id=job_id).values_list("status", flat=True).first()


def mark_queued(job_id: uuid.UUID | str, *, dispatch_token: uuid.UUID) -> bool:
    """PENDING → QUEUED once the dispatch message is durably in Kafka (relay)."""
    return bool(
        Job.objects.filter(id=job_id, status=JobStatus.PENDING, dispatch_token=dispatch_token).update(
            status=JobStatus.QUEUED, queued_at=timezone.now(), updated_at=timezone.now()
        )
    )


_CLAIM_SQL = """
UPDATE jobs_job
   SET status = 'RUNNING', attempts = attempts + 1, attempt_seq = attempt_seq + 1,
       worker = %(worker)s, started_at = %(now)s, lease_expires_at = %(lease)s,
       finished_at = NULL, updated_at = %(now)s
 WHERE id = %(id)s
   AND status IN ('PENDING', 'QUEUED')
   AND dispatch_token = %(token)s
   AND attempts < max_attempts
RETURNING attempt_seq, attempts, max_attempts, type, payload, timeout_seconds
"""


def mark_running(
    job_id: uuid.UUID | str, *, dispatch_token: uuid.UUID | str, worker: str, lease_seconds: float
) -> Claim | None:
    """QUEUED (or PENDING, if the worker beat the relay's bookkeeping) → RUNNING.

    Only a delivery carrying the job's current dispatch token can win, so duplicates and
    stale messages of an earlier dispatch get None. Also writes the RUNNING history row.
    """
    now = timezone.now()
    lease = now + timedelta(seconds=lease_seconds)
    with connection.cursor() as cur:
        cur.execute(
            _CLAIM_SQL,
            {"id": str(job_id), "token": str(dispatch_token), "worker": worker, "now": now, "lease": lease},
        )
        row = cur.fetchone()
    if row is None:
        return None
    attempt_seq, attempts, max_attempts, type_, payload, timeout = row
    if isinstance(payload, str):  # Django's psycopg setup loads jsonb as text on raw cursors
        payload = orjson.loads(payload)
    JobAttempt.objects.create(job_id=job_id, attempt=attempt_seq, worker=worker, started_at=now)
    return Claim(
        job_id=uuid.UUID(str(job_id)),
        attempt=attempt_seq,
        attempts=attempts,
        max_attempts=max_attempts,
        type=type_,
        payload=payload,
        timeout_seconds=timeout,
        lease_expires_at=lease,
    )


def _end_running(
    job_id: uuid.UUID | str,
    attempt: int,
    *,
    status: str,
    attempt_status: str,
    error: str = "",
    tb: str = "",
    **fields: Any,
) -> bool:
    """RUNNING → `status` for the attempt that holds the job, and close its history row.

    Guarded by the attempt number, so a late result of an attempt that lost the job (lease
    expired, re-dispatched, cancelled) changes nothing.
    """
    now = timezone.now()
    won = Job.objects.filter(id=job_id, status=JobStatus.RUNNING, attempt_seq=attempt).update(
        status=status, lease_expires_at=None, updated_at=now, **fields
    )
    if won:
        JobAttempt.objects.filter(job_id=job_id, attempt=attempt, status=AttemptStatus.RUNNING).update(
            status=attempt_status, finished_at=now, error=error, traceback=tb
        )
    return bool(won)


def mark_succeeded(job_id: uuid.UUID | str, *, attempt: int, result: Any) -> bool:
    """RUNNING → SUCCEEDED with the handler's result."""
    return _end_running(
        job_id, attempt, status=JobStatus.SUCCEEDED, attempt_status=AttemptStatus.SUCCEEDED,
        result=result, finished_at=timezone.now(), last_error="",
    )  # fmt: skip


def schedule_retry(
    job_id: uuid.UUID | str,
    *,
    attempt: int,
    next_retry_at: datetime,
    error: str,
    tb: str = "",
    attempt_status: str = AttemptStatus.FAILED,
) -> bool:
    """RUNNING → RETRYING: this attempt failed and the next waits for its backoff."""
    return _end_running(
        job_id, attempt, status=JobStatus.RETRYING, attempt_status=attempt_status, error=error, tb=tb,
        next_retry_at=next_retry_at, last_error=error, dispatch_token=None,
    )  # fmt: skip


def move_to_dead_letter(
    job_id: uuid.UUID | str, *, attempt: int, error: str, tb: str = "", attempt_status: str = AttemptStatus.FAILED
) -> bool:
    """RUNNING → DEAD_LETTER: out of attempts, or the failure is permanent."""
    return _end_running(
        job_id, attempt, status=JobStatus.DEAD_LETTER, attempt_status=attempt_status, error=error, tb=tb,
        last_error=error, finished_at=timezone.now(), dispatch_token=None, next_retry_at=None,
    )  # fmt: skip


def cancel_waiting(job_id: uuid.UUID | str) -> bool:
    """PENDING/QUEUED/RETRYING → CANCELLED at once; a message still in flight loses its claim."""
    now = timezone.now()
    return bool(
        Job.objects.filter(id=job_id, status__in=WAITING).update(
            status=JobStatus.CANCELLED,
            finished_at=now,
            dispatch_token=None,
            next_retry_at=None,
            updated_at=now,
        )
    )


def request_cancel(job_id: uuid.UUID | str) -> bool:
    """RUNNING stays RUNNING with a persisted cancel request that the worker acts on."""
    now = timezone.now()
    return bool(
        Job.objects.filter(id=job_id, status=JobStatus.RUNNING).update(
            cancel_requested_at=Coalesce(F("cancel_requested_at"), Value(now)), updated_at=now
        )
    )


def mark_cancelled(job_id: uuid.UUID | str, *, attempt: int, reason: str = "cancelled") -> bool:
    """RUNNING → CANCELLED once the worker stopped the handler of `attempt`."""
    return _end_running(
        job_id, attempt, status=JobStatus.CANCELLED, attempt_status=AttemptStatus.CANCELLED, error=reason,
        finished_at=timezone.now(), dispatch_token=None,
    )  # fmt: skip


def requeue(job_id: uuid.UUID | str, *, dispatch_token: uuid.UUID | None) -> bool:
    """DEAD_LETTER/CANCELLED → PENDING with a fresh budget; history is kept.

    `dispatch_token` is the token of the outbox row the caller writes in the same
    transaction (None when the job still waits for its `run_at`).
    """
    now = timezone.now()
    return bool(
        Job.objects.filter(id=job_id, status__in=REQUEUEABLE).update(
            status=JobStatus.PENDING,
            attempts=0,
            dispatch_token=dispatch_token,
            cancel_requested_at=None,
            next_retry_at=None,
            result=None,
            last_error="",
            worker="",
            queued_at=None,
            started_at=None,
            finished_at=None,
            updated_at=now,
        )
    )


def release(job_id: uuid.UUID | str, *, expected: str, dispatch_token: uuid.UUID) -> bool:
    """A waiting job becomes dispatchable: RETRYING whose backoff is over, or a PENDING job
    whose `run_at` came, or a QUEUED job whose message was lost (a new token makes the old
    message, should it reappear, lose its claim). The caller writes the outbox row."""
    assert expected in WAITING, expected
    now = timezone.now()
    return bool(
        Job.objects.filter(id=job_id, status=expected)
        .exclude(dispatch_token=dispatch_token)
        .update(status=JobStatus.PENDING, dispatch_token=dispatch_token, next_retry_at=None, updated_at=now)
    )


def renew_lease(job_id: uuid.UUID | str, *, attempt: int, lease_seconds: float) -> bool:
    """Heartbeat of a long job: pushes the lease out while the attempt still holds the job."""
    return bool(
        Job.objects.filter(id=job_id, status=JobStatus.RUNNING, attempt_seq=attempt).update(
            lease_expires_at=timezone.now() + timedelta(seconds=lease_seconds)
        )
    )
