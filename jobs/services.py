"""Writes on jobs: submit, bulk submit, cancel, retry. Each runs in one transaction.

This is where outbox rows are written, always in the same transaction as the job change
they dispatch, so a crash can never leave a job committed without its dispatch (or the
reverse). Admin actions, the API and management commands all call these functions.

Tracing (config.tracing): a submit is a PRODUCER span, `send <queue>`, whose context every
job it writes keeps (`Job.trace_context`, a carrier: its creation context) and its dispatch
carries; a retry or a scheduler release continues that trace with a PRODUCER span of its own,
which its dispatch carries instead, so each attempt's spans hang under the release that
started it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.db import connection, transaction
from django.db.models.base import ModelState
from django.utils import timezone
from opentelemetry.trace import SpanKind
from psycopg.types.json import Jsonb

from config import tracing
from config.ids import new_id
from jobs import audit, transitions
from jobs.dispatch import DispatchEnvelope
from jobs.errors import IdempotencyConflict, IllegalTransition, JobNotFound, UniqueConflict
from jobs.models import Job, JobStatus, Outbox, default_backoff
from metrics import prom


@dataclass(frozen=True)
class JobSpec:
    """A validated request for one job (the API, CLI and admin all build these)."""

    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    queue: str = "default"
    priority: int = 5
    max_attempts: int = 4
    backoff: dict[str, Any] = field(default_factory=default_backoff)
    timeout_seconds: int = 300
    run_at: datetime | None = None
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    # Jobs of the owner's key start no faster than the key's declared rate (jobs.rate_limits).
    rate_limit_key: str | None = None
    # At most one job per (owner, unique_key) within unique_for seconds of the one that took
    # the key; `unique_policy` says what a submit meeting a taken key gets (`_take_unique_keys`).
    unique_key: str | None = None
    unique_for: int | None = None
    unique_policy: str = "reject"
    # `debounce`: the run waits until this long passes with no new submit of the key, at most
    # debounce_max_seconds after the first (None: no cap).
    debounce_seconds: int | None = None
    debounce_max_seconds: int | None = None
    workflow_id: uuid.UUID | None = None  # set by workflows for their task and compensation jobs
    batch_id: uuid.UUID | None = None  # set by jobs.batches for the jobs of a batch

    def request_hash(self) -> str:
        """Hash of everything but the key: replaying the same body gives the same hash."""
        body = asdict(self)
        body.pop("idempotency_key")
        body["run_at"] = self.run_at.isoformat() if self.run_at else None
        body["workflow_id"] = str(self.workflow_id) if self.workflow_id else None
        body["batch_id"] = str(self.batch_id) if self.batch_id else None
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool  # False: an idempotent replay returned the job created earlier


def _is_due(run_at: datetime | None, now: datetime) -> bool:
    return run_at is None or run_at <= now


# Jobs with an idempotency key go through INSERT ... ON CONFLICT, so the unique index can
# answer "seen before"; the rest are COPYed, about twice as fast for a 1,000-job bulk.
_JOB_COLUMNS = (
    "id", "owner_id", "type", "payload", "queue", "priority", "status", "attempts", "attempt_seq",
    "max_attempts", "backoff", "timeout_seconds", "run_at", "idempotency_key", "request_hash",
    "last_error", "dispatch_token", "worker", "created_at", "updated_at", "concurrency_key", "concurrency_limit",
    "workflow_id", "trace_context", "rate_limit_key", "batch_id",
)  # fmt: skip

_INSERT_KEYED_SQL = f"""
INSERT INTO jobs_job ({", ".join(_JOB_COLUMNS)})
SELECT u.id, %(owner)s, u.type, u.payload::jsonb, u.queue, u.priority, 'PENDING', 0, 0,
       u.max_attempts, u.backoff::jsonb, u.timeout_seconds, u.run_at, u.key, u.hash, '',
       u.token, '', %(now)s, %(now)s, u.ckey, u.climit, u.workflow, %(trace)s::jsonb, u.rkey, u.batch
  FROM unnest(%(id)s::uuid[], %(type)s::text[], %(payload)s::text[], %(queue)s::text[],
              %(priority)s::int[], %(max_attempts)s::int[], %(backoff)s::text[],
              %(timeout)s::int[], %(run_at)s::timestamptz[], %(key)s::text[], %(hash)s::text[],
              %(token)s::uuid[], %(ckey)s::text[], %(climit)s::int[], %(workflow)s::uuid[], %(rkey)s::text[],
              %(batch)s::uuid[])
       AS u(id, type, payload, queue, priority, max_attempts, backoff, timeout_seconds, run_at,
            key, hash, token, ckey, climit, workflow, rkey, batch)
ON CONFLICT (owner_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""  # noqa: S608 (column names are constants)


@dataclass
class _Row:
    """One job about to be inserted: its spec plus what the service generated for it."""

    id: uuid.UUID
    spec: JobSpec
    digest: str
    token: uuid.UUID | None


def _copy_jobs(cur: Any, owner_id: int, rows: Sequence[_Row], now: datetime, trace: str | None) -> None:
    with cur.copy(f"COPY jobs_job ({', '.join(_JOB_COLUMNS)}) FROM STDIN") as copy:
        for r in rows:
            s = r.spec
            copy.write_row((
                r.id, owner_id, s.type, orjson.dumps(s.payload).decode(), s.queue, s.priority, "PENDING", 0, 0,
                s.max_attempts, orjson.dumps(s.backoff).decode(), s.timeout_seconds, s.run_at, None, "", "",
                r.token, "", now, now, s.concurrency_key, s.concurrency_limit, s.workflow_id, trace,
                s.rate_limit_key, s.batch_id,
            ))  # fmt: skip


def _insert_keyed(cur: Any, owner_id: int, rows: Sequence[_Row], now: datetime, trace: str | None) -> set[uuid.UUID]:
    """Returns the ids actually inserted; a key already taken inserts nothing."""
    cur.execute(
        _INSERT_KEYED_SQL,
        {
            "owner": owner_id,
            "now": now,
            "trace": trace,
            "id": [r.id for r in rows],
            "type": [r.spec.type for r in rows],
            "payload": [orjson.dumps(r.spec.payload).decode() for r in rows],
            "queue": [r.spec.queue for r in rows],
            "priority": [r.spec.priority for r in rows],
            "max_attempts": [r.spec.max_attempts for r in rows],
            "backoff": [orjson.dumps(r.spec.backoff).decode() for r in rows],
            "timeout": [r.spec.timeout_seconds for r in rows],
            "run_at": [r.spec.run_at for r in rows],
            "key": [r.spec.idempotency_key for r in rows],
            "hash": [r.digest for r in rows],
            "token": [r.token for r in rows],
            "ckey": [r.spec.concurrency_key for r in rows],
            "climit": [r.spec.concurrency_limit for r in rows],
            "workflow": [r.spec.workflow_id for r in rows],
            "rkey": [r.spec.rate_limit_key for r in rows],
            "batch": [r.spec.batch_id for r in rows],
        },
    )
    return {row[0] for row in cur.fetchall()}


def _write_outbox(rows: Sequence[tuple[uuid.UUID, DispatchEnvelope]], now: datetime) -> None:
    """One COPY for any number of dispatches, in the caller's transaction."""
    if not rows:
        return
    with (
        connection.cursor() as cur,
        cur.cursor.copy(
            "COPY jobs_outbox (job_id, topic, envelope, created_at, queue, owner_id, priority) FROM STDIN"
        ) as copy,
    ):
        for job_id, e in rows:
            copy.write_row((job_id, "jobs", orjson.dumps(e.as_dict()).decode(), now, e.queue, e.owner_id, e.priority))


def job_submit_bulk(
    *, owner_id: int, specs: Sequence[JobSpec], trace: tracing.Carrier | None = None
) -> list[Submitted]:
    """Insert jobs and their outbox rows in one transaction and a fixed number of statements.

    Idempotency: the (owner, key) unique index decides. A key seen before with the same body
    returns the earlier job (created=False); with another body the whole call fails with
    IdempotencyConflict and nothing is created. Concurrent identical requests block on the
    index until the first commits, then replay it.

    The submit is a PRODUCER span (under `trace`, a workflow's trace, else the current one:
    the web request); the jobs keep its context, and so join that trace.
    """
    if not tracing.enabled():
        return _submit(owner_id, specs, None)
    queues = {s.queue for s in specs}
    queue = queues.pop() if len(queues) == 1 else None
    attributes = tracing.messaging(
        "send", queue, count=len(specs) if len(specs) > 1 else None, owner_id=owner_id,
        job_type=specs[0].type if len(specs) == 1 else None,
    )  # fmt: skip
    with tracing.span(f"send {queue or 'jobs'}", parent=trace, attributes=attributes, kind=SpanKind.PRODUCER):
        return _submit(owner_id, specs, tracing.inject() or tracing.valid_carrier(trace))


def _submit(owner_id: int, specs: Sequence[JobSpec], trace: tracing.Carrier | None) -> list[Submitted]:
    stored = orjson.dumps(trace).decode() if trace else None  # the column's JSON, once for every row
    now = timezone.now()
    rows = [_row(s, now) for s in specs]
    with transaction.atomic():
        # Unique keys first: a submit that meets a taken key inserts nothing (its policy
        # says what it gets instead: `existing`, job id by row id). A replay of a request
        # (its idempotency key used before) takes no key: it answers as before, and a key
        # taken for a row that is then not inserted would name no job.
        unique = [r for r in rows if r.spec.unique_key]
        if unique:
            replays_ahead = _used_idempotency_keys(owner_id, [r.spec.idempotency_key for r in unique])
            unique = [r for r in unique if r.spec.idempotency_key not in replays_ahead]
        existing = _take_unique_keys(owner_id, unique, now) if unique else {}
        fresh = [r for r in rows if r.id not in existing]
        plain = [r for r in fresh if not r.spec.idempotency_key]
        keyed = [r for r in fresh if r.spec.idempotency_key]
        inserted = {r.id for r in plain}
        with connection.cursor() as cur:
            if plain:
                _copy_jobs(cur.cursor, owner_id, plain, now, stored)
            if keyed:
                inserted |= _insert_keyed(cur.cursor, owner_id, keyed, now, stored)
        replays = _existing_for_replays(owner_id, [r for r in keyed if r.id not in inserted])
        _write_outbox(
            [
                (
                    r.id,
                    DispatchEnvelope.build(r.id, r.spec, owner_id=owner_id, attempt=1, token=r.token, trace=trace),
                )
                for r in rows
                if r.token is not None and r.id in inserted
            ],
            now,
        )
        # Keyed jobs due later wait blocked by their key: the blocked scan looks at their key then.
        transitions.register_blocked_keys(
            [
                (owner_id, r.spec.concurrency_key, r.spec.run_at)
                for r in rows
                if r.token is None and r.spec.concurrency_key and r.spec.run_at and r.id in inserted
            ]
        )
    _count_submitted([r.spec for r in rows if r.id in inserted])
    made = {r.id: _job_from_row(r, owner_id, now, trace) for r in rows if r.id in inserted}
    earlier = _jobs_by_id({job_id for job_id in existing.values() if job_id not in made})
    return [
        Submitted(made[r.id], True)
        if r.id in inserted
        else Submitted(made.get(existing[r.id]) or earlier[existing[r.id]], False)
        if r.id in existing
        else Submitted(replays[r.spec.idempotency_key], False)  # type: ignore[index]
        for r in rows
    ]


# A unique key is taken when no row holds it, or the row's time is up; the row is locked
# either way (ON CONFLICT ... DO UPDATE locks the row it meets, even when its WHERE says no),
# so concurrent submits of one key queue on it and each sees the one before it committed.
_TAKE_UNIQUE_SQL = """
INSERT INTO jobs_uniquelock (owner_id, key, job_id, expires_at) VALUES (%(owner)s, %(key)s, %(job)s, %(until)s)
ON CONFLICT (owner_id, key) DO UPDATE SET job_id = EXCLUDED.job_id, expires_at = EXCLUDED.expires_at
 WHERE jobs_uniquelock.expires_at <= %(now)s
RETURNING job_id
"""
_UNIQUE_HOLDER_SQL = "SELECT job_id FROM jobs_uniquelock WHERE owner_id = %(owner)s AND key = %(key)s"
# `replace`: the job that holds the key takes the new payload while it has not started.
_REPLACE_PAYLOAD_SQL = """
UPDATE jobs_job SET payload = %(payload)s, updated_at = %(now)s
 WHERE id = %(id)s AND owner_id = %(owner)s AND status IN ('PENDING', 'QUEUED', 'RETRYING')
RETURNING id
"""
DEFAULT_UNIQUE_FOR = 60  # seconds, when a job names a unique key and no unique_for


# `debounce`: the job that holds the key, while it still waits for its run_at (not released
# to run yet), takes the new payload and waits debounce_seconds more, at most until
# debounce_max_seconds after it was made. Returns its new run_at; no row: it is on its way.
_DEBOUNCE_SQL = """
UPDATE jobs_job SET payload = %(payload)s, updated_at = %(now)s,
       run_at = CASE WHEN %(max)s::int IS NULL THEN %(run_at)s
                     ELSE least(%(run_at)s, created_at + %(max)s::int * interval '1 second') END
 WHERE id = %(id)s AND owner_id = %(owner)s AND status = 'PENDING' AND dispatch_token IS NULL
   AND run_at IS NOT NULL AND breaker_held_at IS NULL AND slot_held_at IS NULL
RETURNING run_at
"""
_LOCK_UNTIL_SQL = "UPDATE jobs_uniquelock SET expires_at = %(until)s WHERE owner_id = %(owner)s AND key = %(key)s"
_LOCK_TAKE_OVER_SQL = """
UPDATE jobs_uniquelock SET job_id = %(job)s, expires_at = %(until)s WHERE owner_id = %(owner)s AND key = %(key)s
"""


def _row(sent: JobSpec, now: datetime) -> _Row:
    """A job to insert. Its idempotency digest is of the request as sent: a debounced job's
    run_at is the service's, and differs at every replay."""
    spec = _debounced(sent, now) if sent.unique_policy == "debounce" else sent
    return _Row(
        id=new_id(),
        spec=spec,
        digest=sent.request_hash() if sent.idempotency_key else "",
        token=uuid.uuid4() if _is_due(spec.run_at, now) else None,
    )


def _debounced(spec: JobSpec, now: datetime) -> JobSpec:
    """A debounced job waits debounce_seconds from its submit: its key is taken that long."""
    run_at = now + timedelta(seconds=spec.debounce_seconds or 1)
    return dataclasses.replace(spec, run_at=run_at, unique_for=spec.debounce_seconds)


def _take_unique_keys(owner_id: int, rows: Sequence[_Row], now: datetime) -> dict[uuid.UUID, uuid.UUID]:
    """Take each row's unique key, or apply its policy: row id → the job it gets instead.
    Keys are taken in key order (two bulk submits naming the same keys cannot deadlock);
    `reject`, or `replace` of a job that has started, raises UniqueConflict (the whole call
    fails and nothing is created)."""
    existing: dict[uuid.UUID, uuid.UUID] = {}
    ours = {r.id: r for r in rows}
    with connection.cursor() as cur:
        for r in sorted((r for r in rows if r.spec.unique_key), key=lambda r: str(r.spec.unique_key)):
            spec = r.spec
            until = spec.run_at if spec.unique_policy == "debounce" else None
            params = {"owner": owner_id, "key": spec.unique_key, "job": r.id, "now": now,
                      "until": until or now + timedelta(seconds=spec.unique_for or DEFAULT_UNIQUE_FOR)}  # fmt: skip
            cur.execute(_TAKE_UNIQUE_SQL, params)
            if cur.fetchone() is not None:
                continue  # taken: this row's job is made
            cur.execute(_UNIQUE_HOLDER_SQL, params)
            holder = cur.fetchone()[0]
            holder = existing.get(holder, holder)  # a row of this call that itself got another job
            if spec.unique_policy == "debounce" and holder in ours:
                ours[holder].spec = dataclasses.replace(ours[holder].spec, payload=spec.payload)  # not written yet
                existing[r.id] = holder
            elif spec.unique_policy == "debounce":
                debounce = {"payload": Jsonb(spec.payload), "now": now, "run_at": spec.run_at, "id": holder,
                            "owner": owner_id, "max": spec.debounce_max_seconds}  # fmt: skip
                cur.execute(_DEBOUNCE_SQL, debounce)
                pushed = cur.fetchone()
                if pushed is None:  # released to run (or started) meanwhile: a new window, a new job
                    cur.execute(_LOCK_TAKE_OVER_SQL, params)
                    continue
                cur.execute(_LOCK_UNTIL_SQL, {**params, "until": pushed[0]})
                existing[r.id] = holder
            elif spec.unique_policy == "keep_existing":
                existing[r.id] = holder
            elif spec.unique_policy == "replace" and holder in ours:
                ours[holder].spec = dataclasses.replace(ours[holder].spec, payload=spec.payload)  # not written yet
                existing[r.id] = holder
            elif spec.unique_policy == "replace":
                replace: dict[str, Any] = {"payload": Jsonb(spec.payload), "now": now, "id": holder, "owner": owner_id}
                cur.execute(_REPLACE_PAYLOAD_SQL, replace)
                if cur.fetchone() is None:
                    raise UniqueConflict(
                        str(spec.unique_key), holder, "it has started, too late to replace its payload"
                    )
                existing[r.id] = holder
            else:
                raise UniqueConflict(str(spec.unique_key), holder)
    return existing


def _used_idempotency_keys(owner_id: int, keys: Sequence[str | None]) -> set[str]:
    wanted = [k for k in keys if k]
    if not wanted:
        return set()
    used = Job.objects.filter(owner_id=owner_id, idempotency_key__in=wanted).values_list("idempotency_key", flat=True)
    return {key for key in used if key}


def _jobs_by_id(ids: set[uuid.UUID]) -> dict[uuid.UUID, Job]:
    return {job.id: job for job in Job.objects.filter(id__in=ids)} if ids else {}


def _count_submitted(specs: Sequence[JobSpec]) -> None:
    counts: dict[tuple[str, str], int] = {}
    for s in specs:
        counts[(s.type, s.queue)] = counts.get((s.type, s.queue), 0) + 1
    for (type_, queue), n in counts.items():
        prom.JOBS_SUBMITTED.labels(type_, queue).inc(n)


def _existing_for_replays(owner_id: int, conflicted: Sequence[_Row]) -> dict[str, Job]:
    """The earlier jobs of keys that were taken; raises if any was made from another body."""
    if not conflicted:
        return {}
    keys = [r.spec.idempotency_key for r in conflicted]
    existing = {j.idempotency_key: j for j in Job.objects.filter(owner_id=owner_id, idempotency_key__in=keys)}
    for r in conflicted:
        job = existing[r.spec.idempotency_key]  # type: ignore[index]
        if job.request_hash != r.digest:
            raise IdempotencyConflict(str(r.spec.idempotency_key), job.id)
    return existing  # type: ignore[return-value]


# Model.__init__ costs ~60 µs a row (signals, descriptors, defaults): most of a 1,000-job
# bulk's time. The rows just inserted are known exactly, so their instances are assembled
# directly, the way Django's own `from_db` would see them; every concrete field is set, so
# no attribute can trigger a deferred load.
_FIELD_DEFAULTS = {f.attname: None for f in Job._meta.concrete_fields}


def _job_from_row(r: _Row, owner_id: int, now: datetime, trace: tracing.Carrier | None) -> Job:
    s = r.spec
    job = Job.__new__(Job)
    job.__dict__.update(
        _FIELD_DEFAULTS,
        id=r.id, owner_id=owner_id, type=s.type, payload=s.payload, queue=s.queue, priority=s.priority,
        status=JobStatus.PENDING, attempts=0, attempt_seq=0, max_attempts=s.max_attempts, backoff=s.backoff,
        timeout_seconds=s.timeout_seconds, run_at=s.run_at, idempotency_key=s.idempotency_key,
        request_hash=r.digest, last_error="", dispatch_token=r.token, worker="", created_at=now, updated_at=now,
        concurrency_key=s.concurrency_key, concurrency_limit=s.concurrency_limit, workflow_id=s.workflow_id,
        trace_context=trace, rate_limit_key=s.rate_limit_key, batch_id=s.batch_id,
    )  # fmt: skip
    job._state = ModelState()
    job._state.adding = False
    job._state.db = "default"
    return job


def job_submit(*, owner_id: int, spec: JobSpec) -> Submitted:
    return job_submit_bulk(owner_id=owner_id, specs=[spec])[0]


def discard_dispatches(job_ids: Sequence[uuid.UUID | str]) -> None:
    """Delete the unrelayed dispatches of jobs just cancelled (in the caller's transaction,
    which has locked the jobs). A row the relay holds is being published: it is skipped, for
    the relay locked it first and now waits for the job's row (waiting for the outbox row
    back was a deadlock); its message carries a token the cancel cleared, so it loses its
    claim, and the relay deletes the row."""
    mine = Outbox.objects.filter(job_id__in=job_ids, topic="jobs").select_for_update(skip_locked=True)
    Outbox.objects.filter(id__in=mine.values("id")).delete()


def job_cancel(*, job_id: uuid.UUID | str) -> Job:
    """Waiting jobs end CANCELLED at once; a RUNNING job gets a persisted cancel request
    that its worker acts on. Anything finished raises IllegalTransition."""
    with transaction.atomic():
        if transitions.cancel_waiting(job_id):
            # Its dispatch, if not yet relayed, is pointless now (and would lose its claim).
            discard_dispatches([job_id])
        elif not transitions.request_cancel(job_id):
            _raise_illegal(job_id, "cancel")
        job = Job.objects.get(id=job_id)
        audit.record("job.cancel", "job", job.id, owner_id=job.owner_id, status=job.status)
    return job


def job_retry(*, job_id: uuid.UUID | str) -> Job:
    """DEAD_LETTER or CANCELLED → PENDING with a fresh budget; history is kept."""
    with transaction.atomic():
        job = (
            Job.objects.filter(id=job_id)
            .only(
                "id",
                "owner_id",
                "type",
                "queue",
                "priority",
                "run_at",
                "attempt_seq",
                "concurrency_key",
                "concurrency_limit",
                "rate_limit_key",
                "workflow_id",
                "trace_context",
            )
            .first()
        )
        if job is None:
            raise JobNotFound(job_id)
        if job.workflow_id is not None:
            # Its workflow has moved on (compensated, failed): a lone rerun would bypass it.
            raise IllegalTransition(
                job_id, transitions.current_status(job_id), f"retry a job of workflow {job.workflow_id}"
            )
        now = timezone.now()
        token = uuid.uuid4() if _is_due(job.run_at, now) else None
        if not transitions.requeue(job_id, dispatch_token=token):
            _raise_illegal(job_id, "retry")
        if token is None and job.concurrency_key and job.run_at:
            transitions.register_blocked_keys([(job.owner_id, job.concurrency_key, job.run_at)])
        if token is not None:
            attempt = job.attempt_seq + 1
            envelope = DispatchEnvelope.build(
                job.id, job, owner_id=job.owner_id, attempt=attempt, token=token,
                trace=_redispatch_trace(job.id, job.queue, attempt, job.trace_context, retry=True),
            )  # fmt: skip
            _write_outbox([(job.id, envelope)], now)
        audit.record("job.retry", "job", job.id, owner_id=job.owner_id)
    return Job.objects.get(id=job_id)


def job_dispatch_released(released: Sequence[transitions.Released]) -> None:
    """Outbox rows for jobs the scheduler made dispatchable (call in its transaction)."""
    _write_outbox([(r.job_id, _released_envelope(r)) for r in released], timezone.now())


# A job whose reserved start slot (a rate-limited key's) has come is dispatched at the top
# priority: ahead of its owner's jobs that have not asked for a slot yet, it reaches a worker at
# its time, not late behind them (where the key's slots that passed would start together).
SLOT_PRIORITY = 9


def _released_envelope(r: transitions.Released) -> DispatchEnvelope:
    envelope = DispatchEnvelope.build(
        r.job_id, r, owner_id=r.owner_id, attempt=r.attempt, token=r.dispatch_token,
        trace=_redispatch_trace(r.job_id, r.queue, r.attempt, r.trace_context),
        rate_slot=r.rate_slot_at.timestamp() if r.rate_slot_at else None,
    )  # fmt: skip
    return dataclasses.replace(envelope, priority=SLOT_PRIORITY) if envelope.rate_slot is not None else envelope


def _redispatch_trace(
    job_id: uuid.UUID, queue: str, attempt: int, trace: tracing.Carrier | None, *, retry: bool = False
) -> tracing.Carrier | None:
    """What a new dispatch of a traced job carries: a PRODUCER span of its own in the job's
    trace (a retry's or a scheduler release's: this attempt's creation context), under which
    that attempt's spans will hang; the job's own context when tracing is off here."""
    trace = tracing.valid_carrier(trace)
    if trace is None or not tracing.enabled():
        return trace
    attributes = tracing.messaging(
        "send", queue, message_id=str(job_id), attempt=attempt, dispatch="retry" if retry else "release"
    )
    with tracing.span(f"send {queue}", parent=trace, attributes=attributes, kind=SpanKind.PRODUCER,
                      links=tracing.link_to_current()):  # fmt: skip
        return tracing.inject() or trace


def _raise_illegal(job_id: uuid.UUID | str, action: str) -> None:
    current = transitions.current_status(job_id)
    if current is None:
        raise JobNotFound(job_id)
    raise IllegalTransition(job_id, current, action)
