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
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import orjson
from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from psycopg.types.json import Jsonb

from jobs import outputs
from jobs.models import BLOCKED_DUE_SQL, BLOCKED_SQL, TERMINAL_STATUSES, AttemptStatus, ConcurrencySlot, Job, JobStatus
from metrics import prom

WAITING = (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RETRYING)


def pg_array(values: Any) -> str:
    """A PostgreSQL array literal of uuids or numbers, passed as one text parameter and cast
    in SQL: adapting a Python list element by element was a tenth of a batch's client CPU."""
    return "{" + ",".join(map(str, values)) + "}"


REQUEUEABLE = (JobStatus.DEAD_LETTER, JobStatus.CANCELLED)


@dataclass(frozen=True)
class Claim:
    """What a worker won by claiming a job: the attempt it now owns."""

    job_id: uuid.UUID
    attempt: int  # attempt number in the job's history (Job.attempt_seq)
    attempts: int  # attempts used in the current budget, this one included
    max_attempts: int
    type: str
    queue: str
    payload: dict[str, Any]
    backoff: dict[str, Any]
    timeout_seconds: int
    lease_expires_at: datetime
    owner_id: int = 0
    workflow_id: uuid.UUID | None = None
    waiting_since: datetime | None = None  # when it was dispatched (or created): queue wait ends now
    dispatch_token: uuid.UUID | None = None  # of the delivery that won the claim
    worker: str = ""  # who claimed it


def current_status(job_id: uuid.UUID | str) -> str | None:
    return Job.objects.filter(id=job_id).values_list("status", flat=True).first()


# The batch statements below find their rows by id and test the expected status as
# `(status = ...) IS TRUE`: the same test, but not one an index can answer, so PostgreSQL
# always goes by the primary key. Written plainly, stale statistics (a burst of PENDING
# rows after a quiet spell that left them looking rare, or a freshly emptied table) led it
# to scan every row of that status once per batch, or once per job of the batch: 598 ms
# for 128 jobs against 20,000 pending, 6 ms by id (tests/jobs/test_plans.py).

# Workers claim jobs while the relay is still here (the bridge is that quick): under load
# about one row in six of a relayed batch is already claimed or being claimed. Waiting for
# those claims made the relay hold the rest of its batch locked, and the claims queued
# behind it (220 ms a statement, workers idle). So the relay's first pass skips rows
# someone holds, and a second pass, after its commit, waits for them (`skip_locked` off).
# Rows are locked in id order, as the claim does: two passes that waited in join order
# deadlocked with claims.
_MARK_QUEUED_MANY_SQL = """
WITH relayed AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(tokens)s::uuid[], %(partitions)s::int[], %(offsets)s::bigint[])
           AS u(id, token, partition, position)
), locked AS (
    SELECT j.id FROM jobs_job j JOIN relayed r ON j.id = r.id
     WHERE (j.status = 'PENDING') IS TRUE AND j.dispatch_token = r.token
     ORDER BY j.id FOR UPDATE OF j{skip}
)
UPDATE jobs_job AS j
   SET status = 'QUEUED', queued_at = %(now)s, updated_at = %(now)s,
       dispatch_partition = r.partition, dispatch_offset = r.position
  FROM relayed r
 WHERE j.id IN (SELECT id FROM locked) AND j.id = r.id AND (j.status = 'PENDING') IS TRUE
   AND j.dispatch_token = r.token
RETURNING j.id
"""


@dataclass(frozen=True)
class Relayed:
    """A dispatch message Kafka acknowledged, and where it landed."""

    job_id: str
    dispatch_token: str
    partition: int
    offset: int


def mark_queued_many(dispatches: list[Relayed], *, skip_locked: bool = False) -> set[str]:
    """PENDING → QUEUED for a relayed batch, in one statement, remembering where each message
    landed (the scheduler compares that with the bridge's progress to spot lost messages).

    A job whose token changed meanwhile (cancelled, re-dispatched) or that a worker already
    claimed is left alone, and with `skip_locked` so is one another transaction holds (a
    claim in flight): the caller passes those again once it committed. Returns the ids of
    the jobs that moved."""
    if not dispatches:
        return set()
    with connection.cursor() as cur:
        cur.execute(
            _MARK_QUEUED_MANY_SQL.format(skip=" SKIP LOCKED" if skip_locked else ""),
            {
                "now": timezone.now(),
                "ids": pg_array(d.job_id for d in dispatches),
                "tokens": pg_array(d.dispatch_token for d in dispatches),
                "partitions": pg_array(d.partition for d in dispatches),
                "offsets": pg_array(d.offset for d in dispatches),
            },
        )
        return {str(row[0]) for row in cur.fetchall()}


def mark_running(
    job_id: uuid.UUID | str, *, dispatch_token: uuid.UUID | str, worker: str, lease_seconds: float
) -> Claim | None:
    """QUEUED (or PENDING, if the worker beat the relay's bookkeeping) → RUNNING.

    Only a delivery carrying the job's current dispatch token can win, so duplicates and
    stale messages of an earlier dispatch get None. Writes the RUNNING history row too.
    """
    won = mark_running_many([(str(job_id), str(dispatch_token))], worker=worker, lease_seconds=lease_seconds)
    return won[0] if won else None


def _claim(row: Any, job_id: uuid.UUID | str, lease: datetime, worker: str) -> Claim:
    (
        attempt_seq,
        attempts,
        max_attempts,
        type_,
        queue,
        payload,
        backoff,
        timeout,
        owner_id,
        workflow_id,
        since,
        token,
    ) = row
    return Claim(
        job_id=uuid.UUID(str(job_id)),
        attempt=attempt_seq,
        attempts=attempts,
        max_attempts=max_attempts,
        type=type_,
        queue=queue,
        # Django's psycopg set-up loads jsonb as text on raw cursors.
        payload=orjson.loads(payload) if isinstance(payload, str) else payload,
        backoff=orjson.loads(backoff) if isinstance(backoff, str) else backoff,
        timeout_seconds=timeout,
        lease_expires_at=lease,
        owner_id=owner_id,
        workflow_id=workflow_id,
        waiting_since=since,
        dispatch_token=token,
        worker=worker,
    )


# Claims and their history rows in one statement, for one job or a batch: one round trip,
# atomic without a transaction block (a worker on a no-op job spends most of its time in
# round trips). Rows are locked in id order first, so two overlapping claims (a duplicate
# batch delivery racing the original) queue behind each other instead of deadlocking; the
# loser finds them RUNNING.
_CLAIM_MANY_SQL = """
WITH wanted AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(tokens)s::uuid[]) AS u(id, token)
), locked AS (
    SELECT j.id FROM jobs_job j JOIN wanted w ON j.id = w.id
     WHERE (j.status IN ('PENDING', 'QUEUED')) IS TRUE AND j.dispatch_token = w.token
     ORDER BY j.id FOR UPDATE OF j
), claimed AS (
    UPDATE jobs_job AS j
       SET status = 'RUNNING', attempts = attempts + 1, attempt_seq = attempt_seq + 1,
           worker = %(worker)s, started_at = %(now)s, lease_expires_at = %(lease)s,
           finished_at = NULL, rate_slot_at = NULL, updated_at = %(now)s
      FROM wanted w
     WHERE j.id IN (SELECT id FROM locked) AND j.id = w.id
       AND (j.status IN ('PENDING', 'QUEUED')) IS TRUE AND j.dispatch_token = w.token
       AND j.attempts < j.max_attempts
    RETURNING j.id, j.attempt_seq, j.attempts, j.max_attempts, j.type, j.queue, j.payload, j.backoff,
              j.timeout_seconds, j.owner_id, j.workflow_id, coalesce(j.queued_at, j.created_at) AS waiting_since,
              j.dispatch_token
), history AS (
    INSERT INTO jobs_jobattempt (job_id, attempt, status, worker, started_at, error, traceback)
    SELECT id, attempt_seq, 'RUNNING', %(worker)s, %(now)s, '', '' FROM claimed
)
SELECT id, attempt_seq, attempts, max_attempts, type, queue, payload, backoff, timeout_seconds, owner_id,
       workflow_id, waiting_since, dispatch_token
  FROM claimed
"""


def mark_running_many(dispatches: list[tuple[str, str]], *, worker: str, lease_seconds: float) -> list[Claim]:
    """`mark_running` for (job id, dispatch token) pairs: one statement claims every job whose
    token is current and writes their RUNNING history rows. Returns the claims won, in the
    order given, one per job however often it was given (the relay re-sends by design, and
    both copies can land in one batch); a job missing from them was a duplicate or stale
    delivery."""
    dispatches = list(dict.fromkeys(dispatches))
    if not dispatches:
        return []
    now = timezone.now()
    lease = now + timedelta(seconds=lease_seconds)
    with connection.cursor() as cur:
        cur.execute(
            _CLAIM_MANY_SQL,
            {"ids": pg_array(d[0] for d in dispatches), "tokens": pg_array(d[1] for d in dispatches), "worker": worker,
             "now": now, "lease": lease},
        )  # fmt: skip
        rows = {str(row[0]): row for row in cur.fetchall()}
    return [_claim(rows[job_id][1:], job_id, lease, worker) for job_id in _unique_ids(dispatches) if job_id in rows]


def _unique_ids(dispatches: list[tuple[str, str]]) -> list[str]:
    return list(dict.fromkeys(job_id for job_id, _ in dispatches))


_OWNED_SQL = """
SELECT j.id, j.attempt_seq, j.attempts, j.max_attempts, j.type, j.queue, j.payload, j.backoff, j.timeout_seconds,
       j.owner_id, j.workflow_id, coalesce(j.queued_at, j.created_at), j.dispatch_token, j.lease_expires_at
  FROM jobs_job j JOIN unnest(%(ids)s::uuid[], %(tokens)s::uuid[]) AS u(id, token) ON j.id = u.id
 WHERE (j.status = 'RUNNING') IS TRUE AND j.dispatch_token = u.token AND j.worker = %(worker)s
"""


def claims_owned(dispatches: list[tuple[str, str]], *, worker: str) -> list[Claim]:
    """The claims `worker` already holds on these dispatches: after a claim whose commit
    landed but whose reply was lost, running the claim again wins nothing, and without this
    the job would sit RUNNING until reaped (LOST: a used attempt for a job that never ran)."""
    if not dispatches:
        return []
    with connection.cursor() as cur:
        cur.execute(
            _OWNED_SQL,
            {"ids": pg_array(d[0] for d in dispatches), "tokens": pg_array(d[1] for d in dispatches),
             "worker": worker},
        )  # fmt: skip
        rows = {str(row[0]): row for row in cur.fetchall()}
    return [
        _claim(rows[job_id][1:-1], job_id, rows[job_id][-1], worker)
        for job_id in _unique_ids(dispatches)
        if job_id in rows
    ]


# Hand-back: RUNNING → QUEUED for claimed jobs whose handler never started (a batch that
# turned out slow gives its waiting jobs to other workers). The claim is undone: attempt
# counters back, the RUNNING history row deleted (nothing ran), queued again as of now so
# the lost-message scan gives the new message its full time.
_HAND_BACK_SQL = """
WITH back AS (
    UPDATE jobs_job AS j
       SET status = 'QUEUED', attempts = j.attempts - 1, attempt_seq = j.attempt_seq - 1, worker = '',
           started_at = NULL, lease_expires_at = NULL, queued_at = %(now)s, updated_at = %(now)s
      FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS u(id, attempt)
     WHERE j.id = u.id AND (j.status = 'RUNNING') IS TRUE AND j.attempt_seq = u.attempt
       AND j.cancel_requested_at IS NULL
    RETURNING j.id, u.attempt
), unstarted AS (
    DELETE FROM jobs_jobattempt AS a USING back
     WHERE a.job_id = back.id AND a.attempt = back.attempt AND (a.status = 'RUNNING') IS TRUE
)
SELECT id FROM back
"""


def hand_back_many(claims: list[tuple[uuid.UUID, int]]) -> set[uuid.UUID]:
    """RUNNING → QUEUED for claimed (job id, attempt) whose handler never ran, undoing the
    claim. A job that meanwhile got a cancel request, or is no longer owned by that attempt,
    stays as it is. Returns the ids handed back; the caller dispatches them again."""
    if not claims:
        return set()
    with connection.cursor() as cur:
        cur.execute(
            _HAND_BACK_SQL,
            {"ids": pg_array(c[0] for c in claims), "attempts": pg_array(c[1] for c in claims), "now": timezone.now()},
        )
        return {uuid.UUID(str(row[0])) for row in cur.fetchall()}


def _slot_given_back(source: str) -> str:
    """The CTEs by which an attempt that ended (or stepped back) gives its concurrency slot
    back and wakes the blocked jobs of its key: `source` is the CTE of the job rows that
    changed, with `slot`, `owner_id` and `concurrency_key`."""
    return f"""freed AS (
    UPDATE jobs_concurrencyslot AS s SET running = s.running - 1
      FROM {source} WHERE s.key = {source}.slot AND s.running > 0
), wake AS (
    UPDATE jobs_heldkey AS k SET visit_at = now()
      FROM {source} WHERE k.owner_id = {source}.owner_id AND k.key = {source}.concurrency_key AND k.visit_at > now()
)"""  # noqa: S608 (source is a CTE name of ours, never input)


# Columns an end-of-attempt edge may set besides the status (names are never user input).
_END_COLUMNS = frozenset({"result", "finished_at", "last_error", "next_retry_at", "dispatch_token"})

_END_SQL = """
WITH ended AS (
    UPDATE jobs_job SET status = %(status)s, lease_expires_at = NULL, updated_at = %(now)s{sets}
     WHERE id = %(id)s AND status = 'RUNNING' AND attempt_seq = %(attempt)s{guard}
    RETURNING id, type, queue, attempt_seq, owner_id::text || ':' || concurrency_key AS slot, workflow_id,
              owner_id, concurrency_key
), {given_back}, closed AS (
    UPDATE jobs_jobattempt
       SET status = %(attempt_status)s, finished_at = %(now)s, error = %(error)s, traceback = %(tb)s,
           error_class = %(error_class)s
     WHERE job_id IN (SELECT id FROM ended) AND attempt = %(attempt)s AND status = 'RUNNING'
){extra}
SELECT count(*), max(workflow_id::text), max(type), max(queue) FROM ended
"""

_GIVEN_BACK = _slot_given_back("ended")

# A dead letter is also published to `jobs.dead` (through the outbox, in the same statement)
# for downstream consumers: the job, its type and queue, how many attempts, the last error.
_DEAD_OUTBOX_CTE = """, dead AS (
    INSERT INTO jobs_outbox (job_id, topic, envelope, created_at)
    SELECT id, 'jobs.dead', jsonb_build_object(
               'v', 1, 'job_id', id::text, 'type', type, 'queue', queue, 'attempts', attempt_seq,
               'error', %(error)s::text, 'dead_at', %(now)s::timestamptz),
           %(now)s
      FROM ended
)"""


def _end_running(
    job_id: uuid.UUID | str,
    attempt: int,
    *,
    status: str,
    attempt_status: str,
    error: str = "",
    tb: str = "",
    error_class: str = "",
    lease_expired_before: datetime | None = None,
    in_workflow: bool | None = None,
    unless_cancel_requested: bool = False,
    **fields: Any,
) -> bool:
    """RUNNING → `status` for the attempt that holds the job, and close its history row,
    in one statement. With `lease_expired_before`, only if the lease ran out by then (the
    reaper must not fail an attempt whose worker just renewed it).

    Guarded by the attempt number, so a late result of an attempt that lost the job (lease
    expired, re-dispatched, cancelled) changes nothing.

    A job of a workflow that ends here moves its workflow on (`workflows.advance`) in the same
    transaction. `in_workflow=False` says the caller knows the job has no workflow (the
    worker, from its claim) and saves the transaction block; None means "find out".
    """
    unknown = set(fields) - _END_COLUMNS
    assert not unknown, unknown
    params: dict[str, Any] = {
        "id": str(job_id), "attempt": attempt, "status": status, "attempt_status": attempt_status,
        "error": error, "tb": tb, "error_class": error_class[:255], "now": timezone.now(),
    }  # fmt: skip
    sets = ""
    for column, value in fields.items():
        sets += f", {column} = %({column})s"
        params[column] = Jsonb(value, dumps=outputs.to_json) if column == "result" else value
    guard = " AND cancel_requested_at IS NULL" if unless_cancel_requested else ""
    if lease_expired_before is not None:
        guard += " AND lease_expires_at < %(expired_before)s"
        params["expired_before"] = lease_expired_before
    extra = _DEAD_OUTBOX_CTE if status == JobStatus.DEAD_LETTER else ""
    terminal = status in TERMINAL_STATUSES
    with _workflow_transaction(terminal and in_workflow is not False), connection.cursor() as cur:
        cur.execute(_END_SQL.format(sets=sets, guard=guard, extra=extra, given_back=_GIVEN_BACK), params)
        won, workflow_id, type_, queue = cur.fetchone()
        if won and workflow_id and terminal:
            _workflow_job_ended(job_id, workflow_id, status)
    if won:
        _count_end(status, type_, queue)
        _tell_ended(job_id, type_, status, attempt=True)
    return bool(won)


# A workflow's saga stops its jobs (its tasks', and its maps' children, jobs of their batches;
# the saga starts before any compensation job exists): waiting ones end CANCELLED at once, running ones get
# a cancel request. Rows another transaction holds are skipped: such a job is finishing right
# now, and its own transition moves the workflow on once the saga commits.
_SAGA_STOP_SQL = """
WITH mine AS (
    SELECT j.id FROM jobs_job j
     WHERE (j.workflow_id = %(workflow)s OR j.batch_id = ANY(ARRAY(
                SELECT t.batch_id FROM workflows_workflowtask t
                 WHERE t.workflow_id = %(workflow)s AND t.batch_id IS NOT NULL)))
       AND j.status IN ('PENDING', 'QUEUED', 'RETRYING', 'RUNNING')
       FOR UPDATE OF j SKIP LOCKED
)
UPDATE jobs_job AS j
   SET status = CASE WHEN j.status = 'RUNNING' THEN j.status ELSE 'CANCELLED' END,
       cancel_requested_at = CASE WHEN j.status = 'RUNNING' THEN coalesce(j.cancel_requested_at, %(now)s)
                                  ELSE j.cancel_requested_at END,
       finished_at = CASE WHEN j.status = 'RUNNING' THEN j.finished_at ELSE %(now)s END,
       dispatch_token = CASE WHEN j.status = 'RUNNING' THEN j.dispatch_token END,
       next_retry_at = NULL, breaker_held_at = NULL, updated_at = %(now)s
  FROM mine WHERE j.id = mine.id
RETURNING j.id, j.status, j.type, j.queue"""


def stop_for_saga(workflow_id: uuid.UUID | str) -> list[uuid.UUID]:
    """The saga of `workflow_id` (which the caller holds locked) stops its task jobs: waiting
    ones → CANCELLED, counted and told like any end, running ones asked to stop. The workflow
    is not called back: the caller moves it on. Returns the ids cancelled."""
    with connection.cursor() as cur:
        cur.execute(_SAGA_STOP_SQL, {"workflow": str(workflow_id), "now": timezone.now()})
        rows = cur.fetchall()
    cancelled = []
    for job_id, status, type_, queue in rows:
        if status == JobStatus.CANCELLED:
            cancelled.append(job_id)
            _count_end(status, type_, queue)
            _tell_ended(job_id, type_, status, attempt=False)
    return cancelled


def _count_end(status: str, type_: str, queue: str) -> None:
    if status in TERMINAL_STATUSES:
        prom.JOBS_FINISHED.labels(status, type_, queue).inc()
    elif status == JobStatus.RETRYING:
        prom.JOB_RETRIES.labels(type_, queue).inc()


# Who is told, once it commits, that an attempt ended or a job reached an end: (which job
# types it wants, the hook). The Django Tasks backend registers here at start (its signals
# are sent after the state they announce is saved); the state machine imports no client.
EndedHook = Callable[..., None]  # (job_id, type, status, *, attempt: bool): attempt False = no attempt ran
_ended_hooks: list[tuple[Callable[[str], bool], EndedHook]] = []


def on_job_ended(wants: Callable[[str], bool], hook: EndedHook) -> None:
    if (wants, hook) not in _ended_hooks:
        _ended_hooks.append((wants, hook))


def _tell_ended(job_id: uuid.UUID | str, type_: str, status: str, *, attempt: bool) -> None:
    for wants, hook in _ended_hooks:
        if wants(type_):
            transaction.on_commit(partial(hook, uuid.UUID(str(job_id)), type_, status, attempt=attempt))


def _workflow_transaction(needed: bool) -> Any:
    return transaction.atomic(savepoint=False) if needed else nullcontext()


# What moves a workflow on when one of its jobs ends, inside the transaction of that edge.
# The workflows app registers it at start (`on_workflow_job_ended`): the state machine does
# not import its own client.
WorkflowHook = Callable[[uuid.UUID, uuid.UUID, str], None]
_workflow_hook: WorkflowHook | None = None


def on_workflow_job_ended(hook: WorkflowHook) -> None:
    global _workflow_hook
    _workflow_hook = hook


def _workflow_job_ended(job_id: uuid.UUID | str, workflow_id: uuid.UUID | str, status: str) -> None:
    if _workflow_hook is None:
        raise RuntimeError("a job of a workflow ended, but no workflow hook is registered (is `workflows` installed?)")
    _workflow_hook(uuid.UUID(str(job_id)), uuid.UUID(str(workflow_id)), status)


def mark_succeeded(job_id: uuid.UUID | str, *, attempt: int, result: Any, in_workflow: bool | None = None) -> bool:
    """RUNNING → SUCCEEDED with the handler's result."""
    return _end_running(
        job_id, attempt, status=JobStatus.SUCCEEDED, attempt_status=AttemptStatus.SUCCEEDED,
        result=result, finished_at=timezone.now(), last_error="", in_workflow=in_workflow,
    )  # fmt: skip


_SUCCEEDED_MANY_SQL = """
WITH results AS (
    SELECT u.id, u.attempt, (%(results)s::jsonb) -> (u.n::int - 1) AS result
      FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) WITH ORDINALITY AS u(id, attempt, n)
), ended AS (
    UPDATE jobs_job AS j
       SET status = 'SUCCEEDED', result = r.result, finished_at = %(now)s, last_error = '',
           lease_expires_at = NULL, updated_at = %(now)s
      FROM results r
     WHERE j.id = r.id AND (j.status = 'RUNNING') IS TRUE AND j.attempt_seq = r.attempt
       AND j.workflow_id IS NULL AND j.concurrency_key IS NULL
    RETURNING j.id, j.type, j.queue, j.attempt_seq
), closed AS (
    UPDATE jobs_jobattempt AS a
       SET status = 'SUCCEEDED', finished_at = %(now)s, error = '', traceback = ''
      FROM ended e
     WHERE a.job_id = e.id AND a.attempt = e.attempt_seq AND (a.status = 'RUNNING') IS TRUE
)
SELECT id, type, queue FROM ended
"""


def mark_succeeded_many(successes: list[tuple[uuid.UUID, int, Any]]) -> set[uuid.UUID]:
    """`mark_succeeded` for many (job id, attempt, result) in one statement, for jobs outside
    workflows and concurrency limits (those need more than this edge in their transaction and
    take `mark_succeeded`). Returns the ids that won; each is guarded by its attempt number."""
    if not successes:
        return set()
    with connection.cursor() as cur:
        cur.execute(
            _SUCCEEDED_MANY_SQL,
            {"ids": pg_array(s[0] for s in successes), "attempts": pg_array(s[1] for s in successes),
             "results": outputs.to_json([s[2] for s in successes]), "now": timezone.now()},
        )  # fmt: skip
        won = cur.fetchall()
    for (type_, queue), count in Counter((type_, queue) for _, type_, queue in won).items():
        prom.JOBS_FINISHED.labels(JobStatus.SUCCEEDED, type_, queue).inc(count)
    for job_id, type_, _ in won:
        _tell_ended(job_id, type_, JobStatus.SUCCEEDED, attempt=True)
    return {uuid.UUID(str(row[0])) for row in won}


def schedule_retry(
    job_id: uuid.UUID | str,
    *,
    attempt: int,
    next_retry_at: datetime,
    error: str,
    tb: str = "",
    error_class: str = "",
    attempt_status: str = AttemptStatus.FAILED,
    lease_expired_before: datetime | None = None,
) -> bool:
    """RUNNING → RETRYING: this attempt failed and the next waits for its backoff. Never for
    a job with a cancel request: it loses, and the caller cancels it (`mark_cancelled`)."""
    return _end_running(
        job_id, attempt, status=JobStatus.RETRYING, attempt_status=attempt_status, error=error, tb=tb,
        error_class=error_class, lease_expired_before=lease_expired_before, next_retry_at=next_retry_at,
        last_error=error, dispatch_token=None, unless_cancel_requested=True,
    )  # fmt: skip


def move_to_dead_letter(
    job_id: uuid.UUID | str,
    *,
    attempt: int,
    error: str,
    tb: str = "",
    error_class: str = "",
    attempt_status: str = AttemptStatus.FAILED,
    lease_expired_before: datetime | None = None,
    in_workflow: bool | None = None,
) -> bool:
    """RUNNING → DEAD_LETTER: out of attempts, or the failure is permanent. Also queues the
    `jobs.dead` message."""
    return _end_running(
        job_id, attempt, status=JobStatus.DEAD_LETTER, attempt_status=attempt_status, error=error, tb=tb,
        error_class=error_class, lease_expired_before=lease_expired_before, last_error=error,
        finished_at=timezone.now(), dispatch_token=None, next_retry_at=None, in_workflow=in_workflow,
    )  # fmt: skip


_CANCEL_WAITING_SQL = """
UPDATE jobs_job SET status = 'CANCELLED', finished_at = %(now)s, dispatch_token = NULL, next_retry_at = NULL,
       breaker_held_at = NULL, slot_held_at = NULL, updated_at = %(now)s
 WHERE id = %(id)s AND status = ANY(%(waiting)s)
RETURNING workflow_id, type, queue
"""


def cancel_waiting(job_id: uuid.UUID | str) -> bool:
    """PENDING/QUEUED/RETRYING → CANCELLED at once; a message still in flight loses its claim."""
    params = {"id": str(job_id), "now": timezone.now(), "waiting": [w.value for w in WAITING]}
    return _end_unstarted(job_id, JobStatus.CANCELLED, _CANCEL_WAITING_SQL, params)


def _end_unstarted(job_id: uuid.UUID | str, status: str, sql: str, params: dict[str, Any]) -> bool:
    """Run an edge that ends a job no attempt holds (its statement returns the job's
    workflow_id, type and queue); a job of a workflow moves its workflow on in the same
    transaction."""
    with _workflow_transaction(True), connection.cursor() as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
        if row is not None and row[0] is not None:
            _workflow_job_ended(job_id, row[0], status)
    if row is not None:
        _count_end(status, row[1], row[2])
        _tell_ended(job_id, row[1], status, attempt=False)
    return row is not None


def request_cancel(job_id: uuid.UUID | str) -> bool:
    """RUNNING stays RUNNING with a persisted cancel request that the worker acts on."""
    now = timezone.now()
    return bool(
        Job.objects.filter(id=job_id, status=JobStatus.RUNNING).update(
            cancel_requested_at=Coalesce(F("cancel_requested_at"), Value(now)), updated_at=now
        )
    )


def mark_cancelled(
    job_id: uuid.UUID | str,
    *,
    attempt: int,
    reason: str = "cancelled",
    attempt_status: str = AttemptStatus.CANCELLED,
    tb: str = "",
    error_class: str = "",
    lease_expired_before: datetime | None = None,
    in_workflow: bool | None = None,
) -> bool:
    """RUNNING → CANCELLED once the worker stopped the handler of `attempt` (or, with
    `lease_expired_before`, once its worker was lost after the cancel was requested). An
    attempt that failed or timed out after the request keeps that status in its history."""
    return _end_running(
        job_id, attempt, status=JobStatus.CANCELLED, attempt_status=attempt_status, error=reason, tb=tb,
        error_class=error_class, lease_expired_before=lease_expired_before, finished_at=timezone.now(),
        dispatch_token=None, in_workflow=in_workflow,
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
            rate_slot_at=None,
            updated_at=now,
        )
    )


@dataclass(frozen=True)
class Released:
    """A job made dispatchable again; the caller writes its outbox row."""

    job_id: uuid.UUID
    type: str
    queue: str
    priority: int
    attempt: int  # the history number the next attempt will get
    dispatch_token: uuid.UUID
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    workflow_id: uuid.UUID | None = None
    owner_id: int = 0
    trace_context: dict[str, str] | None = None  # the job's trace (a carrier), continued by the new dispatch
    rate_limit_key: str | None = None
    rate_slot_at: datetime | None = None  # the start slot it waited for: it need not ask again


_RELEASE_SQL = """
WITH due AS (
    SELECT id FROM jobs_job WHERE {condition} ORDER BY {order} LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
UPDATE jobs_job AS j
   SET status = 'PENDING', dispatch_token = gen_random_uuid(), next_retry_at = NULL,
       queued_at = NULL, breaker_held_at = NULL, slot_held_at = NULL, updated_at = %(now)s
  FROM due
 WHERE j.id = due.id
RETURNING j.id, j.type, j.queue, j.priority, j.attempt_seq + 1, j.dispatch_token, j.concurrency_key,
          j.concurrency_limit, j.workflow_id, j.owner_id, j.trace_context, j.rate_limit_key, j.rate_slot_at
"""

# Each scan reads a partial index of live rows only, so it stays cheap with millions of
# finished jobs in the table.
_RELEASE_SCANS = {
    # RETRYING whose backoff is over
    "retries": ("status = 'RETRYING' AND next_retry_at <= %(now)s", "next_retry_at"),
    # PENDING jobs waiting for run_at (no dispatch yet). Not a job with a concurrency key (the
    # blocked scan releases those, as far as the key has room) nor one its breaker paused (the
    # paused scan's): either would be dispatched, and stopped again, on every tick.
    "delayed": (
        "status = 'PENDING' AND run_at IS NOT NULL AND dispatch_token IS NULL AND run_at <= %(now)s"
        " AND concurrency_key IS NULL AND breaker_held_at IS NULL AND slot_held_at IS NULL",
        "run_at",
    ),
    # jobs blocked by their concurrency key, in the order they became due, as slots free up (the
    # job_keyed_held index: due is a range of it, so far-future jobs are never read)
    "blocked": (
        f"{BLOCKED_SQL.format(t='')} AND concurrency_key = %(key)s AND owner_id = %(owner)s"
        f" AND {BLOCKED_DUE_SQL.format(t='')}",
        "coalesce(run_at, created_at)",
    ),
    # jobs paused by their owner's open circuit breaker for their type, oldest first
    "paused": (
        "status = 'PENDING' AND breaker_held_at IS NOT NULL AND owner_id = %(owner)s AND type = %(key)s",
        "breaker_held_at",
    ),
    # jobs of a type deferred for their owner's share of a queue's workers, oldest first
    "deferred": (
        "status = 'PENDING' AND slot_held_at IS NOT NULL AND owner_id = %(owner)s AND queue = %(key)s"
        " AND type = %(type)s",
        "slot_held_at",
    ),
    # QUEUED jobs the scheduler found to have lost their message
    "stale": ("status = 'QUEUED' AND queued_at < %(stale_before)s AND id = ANY(%(ids)s)", "queued_at"),
}


def release_batch(
    scan: str,
    *,
    now: datetime,
    limit: int,
    stale_before: datetime | None = None,
    ids: list[uuid.UUID] | None = None,
    key: str | None = None,
    owner: int | None = None,
    type_: str | None = None,
) -> list[Released]:
    """Make up to `limit` due jobs of one kind dispatchable again with a fresh token (one
    statement; rows another scheduler holds are skipped). `key` (and `owner`, for a
    concurrency key, which is each owner's own; and `type_`, for the deferred scan) narrow the
    blocked, paused and deferred scans."""
    condition, order = _RELEASE_SCANS[scan]
    with connection.cursor() as cur:
        cur.execute(
            _RELEASE_SQL.format(condition=condition, order=order),
            {"now": now, "limit": limit, "stale_before": stale_before, "ids": ids or [], "key": key, "owner": owner,
             "type": type_},
        )  # fmt: skip
        return [_released(row) for row in cur.fetchall()]


def _released(row: Sequence[Any]) -> Released:
    # jsonb arrives as text (Django's loader, for its JSONField): the carrier is decoded here.
    values = list(row)
    values[10] = values[10] and orjson.loads(values[10])
    return Released(*values)


# A slot's key comes from the job's row (its owner and key), never from a message.
_TAKE_SLOT_SQL = f"""
INSERT INTO jobs_concurrencyslot (key, running)
SELECT {ConcurrencySlot.KEY_SQL}, 1 FROM jobs_job WHERE id = %s AND concurrency_key IS NOT NULL
    ON CONFLICT (key) DO UPDATE SET running = jobs_concurrencyslot.running + 1
 WHERE jobs_concurrencyslot.running < %s
"""  # noqa: S608 (KEY_SQL is a constant)
_GIVE_BACK_SLOT_SQL = f"""
UPDATE jobs_concurrencyslot SET running = running - 1
 WHERE key = (SELECT {ConcurrencySlot.KEY_SQL} FROM jobs_job WHERE id = %s) AND running > 0
"""  # noqa: S608 (KEY_SQL is a constant)


def take_slot(job_id: uuid.UUID | str, limit: int) -> bool:
    """One more running job for the job's owner and concurrency key if fewer than `limit`
    run: a conditional upsert."""
    with connection.cursor() as cur:
        cur.execute(_TAKE_SLOT_SQL, [str(job_id), limit])
        return cur.rowcount == 1


def give_back_slot(job_id: uuid.UUID | str) -> None:
    with connection.cursor() as cur:
        cur.execute(_GIVE_BACK_SLOT_SQL, [str(job_id)])


# Register keys for the blocked scan (jobs.models.BlockedKey): a row per (owner, key), looked at
# no later than `visit_at` (the earliest wins). `{rows}` yields (owner_id, key, visit_at). A
# key to look at now says so in the database's clock (`now()`), which the scan also reads:
# a worker's clock ahead of the scheduler's cannot postpone it.
BLOCKED_KEY_UPSERT_SQL = """
INSERT INTO jobs_heldkey (owner_id, key, visit_at)
{rows}
ON CONFLICT (owner_id, key) DO UPDATE SET visit_at = least(jobs_heldkey.visit_at, EXCLUDED.visit_at)
"""

_BLOCK_SQL = f"""
WITH blocked AS (
    UPDATE jobs_job SET status = 'PENDING', dispatch_token = NULL, queued_at = NULL, updated_at = %(now)s
     WHERE id = %(id)s AND status IN ('PENDING', 'QUEUED') AND dispatch_token = %(token)s
    RETURNING owner_id, concurrency_key
), registered AS (
    {BLOCKED_KEY_UPSERT_SQL.format(rows="SELECT owner_id, concurrency_key, now() FROM blocked")}
)
SELECT count(*) FROM blocked
"""  # noqa: S608 (constants only)


def block_for_key(job_id: uuid.UUID | str, *, dispatch_token: uuid.UUID | str) -> bool:
    """PENDING/QUEUED → PENDING without a dispatch, blocked by its concurrency key, which is at
    its limit. The scheduler releases blocked jobs in the order they became due as slots free
    up (its key is registered for the blocked scan in the same statement)."""
    with connection.cursor() as cur:
        cur.execute(_BLOCK_SQL, {"id": str(job_id), "token": str(dispatch_token), "now": timezone.now()})
        return bool(cur.fetchone()[0])


def register_blocked_keys(keys: list[tuple[int, str, datetime]]) -> None:
    """(owner, concurrency key, when to look) for keyed jobs blocked from the start: they wait
    for a `run_at` (a submit or a retry of a job due later)."""
    if keys:
        with connection.cursor() as cur:
            cur.execute(
                BLOCKED_KEY_UPSERT_SQL.format(rows="SELECT * FROM unnest(%s::int[], %s::text[], %s::timestamptz[])"),
                [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]],
            )


# Over its key's rate: the job waits for the start slot it reserved (orchestration.ratelimit),
# as PENDING without a dispatch until then; the delayed scan releases it at its time (the
# blocked scan, for a job with a concurrency key: its key is registered for then).
_KEYED_WAITING = "SELECT owner_id, concurrency_key, %(slot)s FROM waiting WHERE concurrency_key IS NOT NULL"
_WAIT_FOR_RATE_SQL = f"""
WITH waiting AS (
    UPDATE jobs_job SET status = 'PENDING', dispatch_token = NULL, queued_at = NULL, run_at = %(slot)s,
           rate_slot_at = CASE WHEN %(reserved)s THEN %(slot)s END, updated_at = %(now)s
     WHERE id = %(id)s AND status IN ('PENDING', 'QUEUED') AND dispatch_token = %(token)s
    RETURNING owner_id, concurrency_key
), registered AS (
    {BLOCKED_KEY_UPSERT_SQL.format(rows=_KEYED_WAITING)}
)
SELECT count(*) FROM waiting
"""  # noqa: S608 (constants only)


def wait_for_rate(
    job_id: uuid.UUID | str, *, dispatch_token: uuid.UUID | str, slot_at: datetime, reserved: bool = True
) -> bool:
    """PENDING/QUEUED → PENDING without a dispatch until `slot_at`, the start slot its rate-limited
    key gave it (not `reserved`: it asks again then). No attempt is used. False: the dispatch is
    no longer current (a duplicate)."""
    params: dict[str, Any] = {"id": str(job_id), "token": str(dispatch_token), "slot": slot_at, "now": timezone.now(),
              "reserved": reserved}  # fmt: skip
    with connection.cursor() as cur:
        cur.execute(_WAIT_FOR_RATE_SQL, params)
        return bool(cur.fetchone()[0])


def pause_for_breaker(job_id: uuid.UUID | str, *, dispatch_token: uuid.UUID | str) -> bool:
    """PENDING/QUEUED → PENDING without a dispatch, paused: its type's circuit breaker is
    open. No attempt is used; the scheduler releases it when the breaker lets jobs through."""
    now = timezone.now()
    return bool(
        Job.objects.filter(
            id=job_id, status__in=[JobStatus.PENDING, JobStatus.QUEUED], dispatch_token=dispatch_token
        ).update(status=JobStatus.PENDING, dispatch_token=None, queued_at=None, breaker_held_at=now, updated_at=now)
    )


# A claimed job whose handler has not started goes back to wait for its owner's share of the
# workers: the claim is undone (attempt counters back, its RUNNING history row deleted, a
# concurrency slot it took given back) and it waits without a dispatch until the slot scan
# releases it. Not a job with a cancel request: that one runs, to be cancelled.
_DEFER_FOR_SHARE_SQL = """
WITH deferred AS (
    UPDATE jobs_job AS j
       SET status = 'PENDING', attempts = j.attempts - 1, attempt_seq = j.attempt_seq - 1, worker = '',
           started_at = NULL, lease_expires_at = NULL, queued_at = NULL, dispatch_token = NULL,
           slot_held_at = %(now)s, updated_at = %(now)s
     WHERE j.id = %(id)s AND (j.status = 'RUNNING') IS TRUE AND j.attempt_seq = %(attempt)s AND j.worker = %(worker)s
       AND j.cancel_requested_at IS NULL
    RETURNING j.id, j.owner_id::text || ':' || j.concurrency_key AS slot
), freed AS (
    UPDATE jobs_concurrencyslot AS s SET running = s.running - 1
      FROM deferred WHERE s.key = deferred.slot AND s.running > 0
), unstarted AS (
    DELETE FROM jobs_jobattempt AS a USING deferred
     WHERE a.job_id = deferred.id AND a.attempt = %(attempt)s AND (a.status = 'RUNNING') IS TRUE
)
SELECT count(*) FROM deferred
"""


# ctx.throttle: the attempt ran and asked to wait. Its history row says so (FAILED, with the
# reason); the job waits for its run_at as PENDING, the attempt given back to its budget
# (`attempts`; the history numbering goes on), its concurrency slot freed and its key's
# blocked jobs woken. Not a job with a cancel request: the caller cancels that one.
_THROTTLE_SQL = f"""
WITH throttled AS (
    UPDATE jobs_job AS j
       SET status = 'PENDING', attempts = greatest(j.attempts - 1, 0), worker = '', started_at = NULL,
           lease_expires_at = NULL, queued_at = NULL, dispatch_token = NULL, run_at = %(run_at)s,
           last_error = %(error)s, updated_at = %(now)s
     WHERE j.id = %(id)s AND (j.status = 'RUNNING') IS TRUE AND j.attempt_seq = %(attempt)s AND j.worker = %(worker)s
       AND j.cancel_requested_at IS NULL
    RETURNING j.id, j.owner_id, j.concurrency_key, j.owner_id::text || ':' || j.concurrency_key AS slot
), {_slot_given_back("throttled")}, closed AS (
    UPDATE jobs_jobattempt AS a SET status = 'FAILED', finished_at = %(now)s, error = %(error)s,
           error_class = %(error_class)s
      FROM throttled WHERE a.job_id = throttled.id AND a.attempt = %(attempt)s AND (a.status = 'RUNNING') IS TRUE
)
SELECT count(*), max(owner_id), max(concurrency_key) FROM throttled
"""  # noqa: S608 (constants only)


def throttle_back(
    job_id: uuid.UUID | str, *, attempt: int, worker: str, run_at: datetime, error: str, error_class: str
) -> bool:
    """RUNNING → PENDING until `run_at`, the attempt not counted (ctx.throttle). A keyed job is
    registered for the blocked scan at `run_at` (the delayed scan leaves keyed jobs to it).
    False: the job has a cancel request, or is no longer this attempt's."""
    params: dict[str, Any] = {"id": str(job_id), "attempt": attempt, "worker": worker, "run_at": run_at,
                              "now": timezone.now(), "error": error, "error_class": error_class}  # fmt: skip
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(_THROTTLE_SQL, params)
        won, owner_id, key = cur.fetchone()
        if won and key:
            register_blocked_keys([(owner_id, key, run_at)])
    return bool(won)


def rate_limit_key_of(job_id: uuid.UUID | str) -> str | None:
    return Job.objects.filter(id=job_id).values_list("rate_limit_key", flat=True).first()


def defer_for_share(job_id: uuid.UUID | str, *, attempt: int, worker: str) -> bool:
    """RUNNING (claimed, its handler not started) → PENDING, deferred for its owner's share of the
    workers, the claim undone. False: the job is no longer this attempt's, or has a cancel
    request (then it runs, to be cancelled)."""
    with connection.cursor() as cur:
        cur.execute(
            _DEFER_FOR_SHARE_SQL, {"id": str(job_id), "attempt": attempt, "worker": worker, "now": timezone.now()}
        )
        return bool(cur.fetchone()[0])


def renew_lease(job_id: uuid.UUID | str, *, attempt: int, lease_seconds: float) -> bool:
    """Heartbeat of a long job: pushes the lease out while the attempt still holds the job."""
    return bool(
        Job.objects.filter(id=job_id, status=JobStatus.RUNNING, attempt_seq=attempt).update(
            lease_expires_at=timezone.now() + timedelta(seconds=lease_seconds)
        )
    )


def renew_leases(owned: list[tuple[uuid.UUID, int]], *, worker: str, lease_seconds: float) -> dict[uuid.UUID, bool]:
    """`renew_lease` for every job a worker holds (a batch it claimed and is working through).
    Returns the jobs it still owns, each with whether a cancel was requested; a job missing was
    taken from the worker (reaped after its lease lapsed, handed back, cancelled). Guarded by
    the worker too: a handed-back job's attempt number is claimed again by another worker."""
    if not owned:
        return {}
    with connection.cursor() as cur:
        cur.execute(
            """UPDATE jobs_job AS j SET lease_expires_at = %(lease)s
                 FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS u(id, attempt)
                WHERE j.id = u.id AND (j.status = 'RUNNING') IS TRUE AND j.attempt_seq = u.attempt
                  AND j.worker = %(worker)s
            RETURNING j.id, j.cancel_requested_at IS NOT NULL""",
            {"ids": pg_array(h[0] for h in owned), "attempts": pg_array(h[1] for h in owned), "worker": worker,
             "lease": timezone.now() + timedelta(seconds=lease_seconds)},
        )  # fmt: skip
        return {uuid.UUID(str(job_id)): cancel for job_id, cancel in cur.fetchall()}


# A dispatch that can never reach a worker: the relay cannot send its message (Kafka refuses
# it for good), or the bridge has no handler for its type. The job ends like a permanent
# failure, without an attempt: DEAD_LETTER with the reason and its `jobs.dead` message.
_UNDISPATCHABLE_SQL = """
WITH ended AS (
    UPDATE jobs_job
       SET status = 'DEAD_LETTER', last_error = %(error)s, finished_at = %(now)s, dispatch_token = NULL,
           next_retry_at = NULL, breaker_held_at = NULL, lease_expires_at = NULL, updated_at = %(now)s
     WHERE id = %(id)s AND status IN ('PENDING', 'QUEUED') AND dispatch_token = %(token)s
    RETURNING id, type, queue, attempt_seq, workflow_id
){dead}
SELECT workflow_id, type, queue FROM ended
"""


def dead_letter_undispatchable(job_id: uuid.UUID | str, *, dispatch_token: uuid.UUID | str, error: str) -> bool:
    """PENDING/QUEUED → DEAD_LETTER for a dispatch that can never be delivered (`error` says
    why), and its `jobs.dead` message. Guarded by the dispatch token: a stale message (the job
    was cancelled, re-dispatched or claimed meanwhile) changes nothing. A job of a workflow
    moves its workflow on in the same transaction."""
    params = {"id": str(job_id), "token": str(dispatch_token), "error": error, "now": timezone.now()}
    return _end_unstarted(job_id, JobStatus.DEAD_LETTER, _UNDISPATCHABLE_SQL.format(dead=_DEAD_OUTBOX_CTE), params)
