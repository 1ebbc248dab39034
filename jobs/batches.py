"""Batches: jobs submitted together, counted as they end, with callback jobs.

    create (jobs, on_success, on_complete; open or closed) → add jobs while open → close
    each job's end: a row trigger appends the batch's delta in the job's own transaction
    scheduler tick: `fold` the deltas, then `fire_callbacks` for the batches they touched
      closed and every job terminal → on_complete (once), and if every job succeeded, on_success (once)

Counts are deltas, not a counter row: a thousand jobs ending at once on many workers do not
queue on one row. A batch's TOTAL is its jobs ever added; each terminal status counts the jobs
in it now (a retried job leaves its dead-letter count and comes back to another). Waiting and
running jobs are read from the jobs table through the batch's index, so counts by state, and
the percentage with running jobs' own progress, are exact in one snapshot.

Each callback is made exactly once: its job is inserted with the reserved idempotency key
`batch:<id>:<callback>` (PostgreSQL's unique index decides) in the same fenced transaction, with
the batch's row locked, that records its id, so two ticks, two schedulers, or a scheduler
killed halfway make one job between them. A callback job is an
ordinary job of the batch's owner (not in the batch), with the batch's counts added to its
payload under `batch`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from jobs import audit, bulk_actions, services
from jobs.errors import BatchClosed, BatchEnded
from jobs.keys import BATCH_KEY_PREFIX
from jobs.models import TERMINAL_STATUSES, Batch, Job, JobStatus

CALLBACKS = ("on_success", "on_complete")
FOLD_BATCH = 20_000  # deltas moved per statement
_WAITING = [s.value for s in JobStatus if s not in TERMINAL_STATUSES]
WAITING_OR_RUNNING = ",".join(_WAITING)  # the jobs list's status filter for a batch's unfinished jobs


@dataclass(frozen=True)
class Counts:
    total: int
    by_status: dict[str, int]  # every status, 0 where none
    percent: float  # terminal jobs plus running ones' own progress, of all

    @property
    def unfinished(self) -> int:
        return self.total - sum(self.by_status[s] for s in TERMINAL_STATUSES)

    def as_payload(self) -> dict[str, int]:
        return {"total": self.total, **{s.lower(): self.by_status[s] for s in TERMINAL_STATUSES}}


# --- writes ----------------------------------------------------------------------------------


def batch_create(
    *,
    owner_id: int,
    specs: Sequence[services.JobSpec],
    callbacks: dict[str, dict[str, Any]],
    description: str = "",
    open_: bool = False,
) -> tuple[Batch, list[Job]]:
    """A batch and its first jobs in one transaction; closed at once unless `open_`."""
    now = timezone.now()
    with transaction.atomic():
        batch = Batch.objects.create(
            owner_id=owner_id, description=description, on_success=callbacks.get("on_success"),
            on_complete=callbacks.get("on_complete"), closed_at=None if open_ else now, check_needed=not open_,
        )  # fmt: skip
        jobs = _submit(batch, specs)
    return batch, jobs


def batch_add(*, batch_id: uuid.UUID | str, specs: Sequence[services.JobSpec], close: bool = False) -> list[Job]:
    """More jobs for an open batch (BatchClosed once it is closed or cancelled). The batch's row
    is locked while they go in, so a close or a cancel waits for them, or they for it."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(id=batch_id)
        if batch.closed_at is not None:
            raise BatchClosed(batch.id, batch.state)
        jobs = _submit(batch, specs)
        if close:
            batch_close(batch_id=batch.id)
    return jobs


def _submit(batch: Batch, specs: Sequence[services.JobSpec]) -> list[Job]:
    mine = [dataclasses.replace(s, batch_id=batch.id) for s in specs]
    return [s.job for s in services.job_submit_bulk(owner_id=batch.owner_id, specs=mine)] if mine else []


def batch_close(*, batch_id: uuid.UUID | str) -> Batch:
    """No more jobs; its callbacks fire once every job is terminal (already so: next tick)."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(id=batch_id)
        if batch.closed_at is None:
            batch.closed_at = timezone.now()
            batch.check_needed = True
            batch.save(update_fields=["closed_at", "check_needed", "updated_at"])
    return batch


def batch_mark_cancelled(*, batch_id: uuid.UUID | str) -> None:
    """Closed and cancelled (no more jobs; on_success will not fire, on_complete will once its
    jobs are terminal). The caller cancels its unfinished jobs. BatchEnded when it is complete
    or cancelled already."""
    now = timezone.now()
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(id=batch_id)  # after any add in flight
        if batch.cancelled_at is not None or batch.completed_at is not None:
            raise BatchEnded(batch.id, batch.state)
        Batch.objects.filter(id=batch_id).update(
            cancelled_at=now, closed_at=batch.closed_at or now, check_needed=True, updated_at=now
        )


def batch_cancel(*, user: Any, batch_id: uuid.UUID | str) -> tuple[Job, int]:
    """Cancel the batch and, in the background, its unfinished jobs: a bulk action as `user`
    (the action's job, and how many jobs match now). BatchEnded when there is nothing to cancel."""
    batch_mark_cancelled(batch_id=batch_id)
    audit.record(
        "batch.cancel", "batch", batch_id, owner_id=Batch.objects.values_list("owner_id", flat=True).get(id=batch_id)
    )
    return bulk_actions.start(
        user, action="cancel", payload=None, filters={"batch": str(batch_id), "status": WAITING_OR_RUNNING}
    )


# --- reads -----------------------------------------------------------------------------------

# One snapshot: the terminal counts (folded, plus deltas not folded yet) and the waiting and
# running jobs, by the job_batch_status index (never the batch's finished jobs).
_COUNTS_SQL = """
SELECT batch_id, status, sum(n), 0 FROM (
    SELECT batch_id, status, n FROM jobs_batchcount WHERE batch_id = ANY(%(ids)s)
    UNION ALL
    SELECT batch_id, status, n FROM jobs_batchdelta WHERE batch_id = ANY(%(ids)s)
) d GROUP BY batch_id, status
UNION ALL
SELECT batch_id, status, count(*), coalesce(sum(progress) FILTER (WHERE status = 'RUNNING'), 0)
  FROM jobs_job WHERE batch_id = ANY(%(ids)s) AND status = ANY(%(waiting)s) GROUP BY batch_id, status
"""


_TOTAL_SQL = """
SELECT coalesce(sum(n), 0) FROM (
    SELECT n FROM jobs_batchcount WHERE batch_id = %(id)s AND status = 'TOTAL'
    UNION ALL
    SELECT n FROM jobs_batchdelta WHERE batch_id = %(id)s AND status = 'TOTAL'
) t
"""


def batch_total(batch_id: uuid.UUID | str) -> int:
    """Jobs ever added to the batch (its TOTAL, folded or not): no job row is read."""
    with connection.cursor() as cur:
        cur.execute(_TOTAL_SQL, {"id": str(batch_id)})
        return int(cur.fetchone()[0])


def batch_counts(batch_id: uuid.UUID | str) -> Counts:
    return batches_counts([uuid.UUID(str(batch_id))])[uuid.UUID(str(batch_id))]


def batches_counts(batch_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Counts]:
    """Each batch's counts, in one statement (a page of batches is one query, not one each)."""
    by_status = {i: dict.fromkeys(JobStatus.values, 0) for i in batch_ids}
    total = dict.fromkeys(batch_ids, 0)
    running_progress = dict.fromkeys(batch_ids, 0.0)
    if batch_ids:
        with connection.cursor() as cur:
            cur.execute(_COUNTS_SQL, {"ids": list(batch_ids), "waiting": _WAITING})
            for batch_id, status, n, progress in cur.fetchall():
                batch_id = uuid.UUID(str(batch_id))
                if status == "TOTAL":
                    total[batch_id] = int(n)
                else:
                    by_status[batch_id][status] = int(n)
                    running_progress[batch_id] += float(progress or 0)
    return {i: _counts(total[i], by_status[i], running_progress[i]) for i in batch_ids}


def _counts(total: int, by_status: dict[str, int], running_progress: float) -> Counts:
    done = sum(by_status[s] for s in TERMINAL_STATUSES)
    percent = 100.0 * (done + min(running_progress, by_status["RUNNING"])) / total if total else 100.0
    return Counts(total=total, by_status=by_status, percent=round(min(percent, 100.0), 2))


# --- the scheduler's part --------------------------------------------------------------------

_FOLD_SQL = """
WITH moved AS (
    DELETE FROM jobs_batchdelta WHERE id IN (SELECT id FROM jobs_batchdelta ORDER BY id LIMIT %(limit)s)
    RETURNING batch_id, status, n
), folded AS (
    INSERT INTO jobs_batchcount (batch_id, status, n)
    SELECT batch_id, status, sum(n) FROM moved GROUP BY batch_id, status
    ON CONFLICT (batch_id, status) DO UPDATE SET n = jobs_batchcount.n + excluded.n
), flagged AS (
    UPDATE jobs_batch SET check_needed = true
     WHERE id IN (SELECT batch_id FROM moved) AND NOT check_needed
       AND (completed_at IS NULL OR (on_success_job_id IS NULL AND on_success IS NOT NULL AND cancelled_at IS NULL))
)
SELECT count(*) FROM moved
"""


def fold(*, limit: int = FOLD_BATCH) -> int:
    """Move deltas into the counts, flagging the batches they touched for a look (in the same
    statement: a scheduler that dies after it loses no look). Returns the deltas moved."""
    with connection.cursor() as cur:
        cur.execute(_FOLD_SQL, {"limit": limit})
        return int(cur.fetchone()[0])


def to_check(*, limit: int) -> list[uuid.UUID]:
    """The batches to look at: those whose jobs ended since, and those closed or cancelled."""
    return list(Batch.objects.filter(check_needed=True).order_by("id").values_list("id", flat=True)[:limit])


@dataclass(frozen=True)
class Fired:
    batch_id: uuid.UUID
    callback: str
    job_id: uuid.UUID


_RECORD_CALLBACK_SQL = """
UPDATE jobs_batch SET {column} = %(job)s, updated_at = %(now)s WHERE id = %(id)s AND {column} IS NULL
"""


def fire_callbacks(batch_id: uuid.UUID, *, now: datetime) -> list[Fired]:
    """Look at one batch (call inside the scheduler's fenced transaction): once it is closed and
    every job is terminal, it is complete and its callbacks are made, each once."""
    batch = Batch.objects.select_for_update().filter(id=batch_id).first()
    if batch is None:
        return []
    if batch.check_needed:
        Batch.objects.filter(id=batch_id).update(check_needed=False)
    if batch.closed_at is None:
        return []
    counts = batch_counts(batch_id)
    if counts.unfinished > 0:
        return []
    if batch.completed_at is None:
        Batch.objects.filter(id=batch_id, completed_at__isnull=True).update(completed_at=now, updated_at=now)
    failed = counts.by_status[JobStatus.DEAD_LETTER] + counts.by_status[JobStatus.CANCELLED]
    due = ["on_complete"] + (["on_success"] if failed == 0 and batch.cancelled_at is None else [])
    fired: list[Fired] = []
    for callback in due:
        template = getattr(batch, callback)
        if template is None or getattr(batch, f"{callback}_job_id") is not None:
            continue
        job_id = _submit_callback(batch, callback, template, counts, now)
        if job_id is not None:
            fired.append(Fired(batch.id, callback, job_id))
    return fired


def _submit_callback(
    batch: Batch, callback: str, template: dict[str, Any], counts: Counts, now: datetime
) -> uuid.UUID | None:
    payload = {**(template.get("payload") or {}), "batch": {"id": str(batch.id), **counts.as_payload()}}
    spec = services.JobSpec(
        **{**callback_spec_fields(template), "payload": payload},
        idempotency_key=f"{BATCH_KEY_PREFIX}{batch.id}:{callback}",
    )
    submitted = services.job_submit(owner_id=batch.owner_id, spec=spec)
    with connection.cursor() as cur:
        column = f"{callback}_job_id"
        cur.execute(_RECORD_CALLBACK_SQL.format(column=column), {"job": submitted.job.id, "now": now, "id": batch.id})
    return submitted.job.id if submitted.created else None


# What a callback template keeps of a validated job input: how its job runs. Not a key that
# would make it something else (idempotency, unique) nor a time (it runs when the batch ends).
CALLBACK_FIELDS = (
    "type", "payload", "queue", "priority", "max_attempts", "backoff", "timeout_seconds", "concurrency_key",
    "concurrency_limit", "rate_limit_key",
)  # fmt: skip


def callback_spec_fields(template: dict[str, Any]) -> dict[str, Any]:
    return {name: template[name] for name in CALLBACK_FIELDS if template.get(name) is not None}
