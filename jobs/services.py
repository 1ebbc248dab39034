"""Writes on jobs: submit, bulk submit, cancel, retry. Each runs in one transaction.

This is where outbox rows are written, always in the same transaction as the job change
they dispatch, so a crash can never leave a job committed without its dispatch (or the
reverse). Admin actions, the API and management commands all call these functions.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import orjson
from django.db import connection, transaction
from django.utils import timezone

from jobs import transitions
from jobs.errors import IdempotencyConflict, IllegalTransition, JobNotFound
from jobs.models import Job, JobStatus, Outbox, default_backoff

ENVELOPE_VERSION = 1


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

    def request_hash(self) -> str:
        """Hash of everything but the key: replaying the same body gives the same hash."""
        body = asdict(self)
        body.pop("idempotency_key")
        body["run_at"] = self.run_at.isoformat() if self.run_at else None
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool  # False: an idempotent replay returned the job created earlier


def dispatch_envelope(
    job_id: uuid.UUID, *, type: str, queue: str, priority: int, attempt: int, token: uuid.UUID
) -> dict[str, Any]:
    """The small, versioned message the relay publishes to Kafka for one dispatch."""
    return {
        "v": ENVELOPE_VERSION,
        "job_id": str(job_id),
        "type": type,
        "queue": queue,
        "priority": priority,
        "attempt": attempt,
        "dispatch_token": str(token),
    }


def _is_due(run_at: datetime | None, now: datetime) -> bool:
    return run_at is None or run_at <= now


_INSERT_JOBS_SQL = """
INSERT INTO jobs_job (
    id, owner_id, type, payload, queue, priority, status, attempts, attempt_seq, max_attempts,
    backoff, timeout_seconds, run_at, idempotency_key, request_hash, last_error, dispatch_token,
    worker, created_at, updated_at
)
SELECT u.id, %(owner)s, u.type, u.payload::jsonb, u.queue, u.priority, 'PENDING', 0, 0,
       u.max_attempts, u.backoff::jsonb, u.timeout_seconds, u.run_at, u.key, u.hash, '',
       u.token, '', %(now)s, %(now)s
  FROM unnest(%(id)s::uuid[], %(type)s::text[], %(payload)s::text[], %(queue)s::text[],
              %(priority)s::int[], %(max_attempts)s::int[], %(backoff)s::text[],
              %(timeout)s::int[], %(run_at)s::timestamptz[], %(key)s::text[], %(hash)s::text[],
              %(token)s::uuid[])
       AS u(id, type, payload, queue, priority, max_attempts, backoff, timeout_seconds, run_at,
            key, hash, token)
ON CONFLICT (owner_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""

_INSERT_OUTBOX_SQL = """
INSERT INTO jobs_outbox (job_id, topic, envelope, created_at)
SELECT u.job_id, 'jobs', u.envelope::jsonb, %(now)s
  FROM unnest(%(job_id)s::uuid[], %(envelope)s::text[]) AS u(job_id, envelope)
"""


def _write_outbox(rows: Sequence[tuple[uuid.UUID, dict[str, Any]]], now: datetime) -> None:
    """One statement for any number of dispatches."""
    if not rows:
        return
    with connection.cursor() as cur:
        cur.execute(
            _INSERT_OUTBOX_SQL,
            {
                "now": now,
                "job_id": [job_id for job_id, _ in rows],
                "envelope": [orjson.dumps(env).decode() for _, env in rows],
            },
        )


def job_submit_bulk(*, owner_id: int, specs: Sequence[JobSpec]) -> list[Submitted]:
    """Insert jobs and their outbox rows in one transaction and a fixed number of statements.

    Idempotency: the (owner, key) unique index decides. A key seen before with the same body
    returns the earlier job (created=False); with another body the whole call fails with
    IdempotencyConflict and nothing is created. Concurrent identical requests block on the
    index until the first commits, then replay it.
    """
    now = timezone.now()
    ids = [uuid.uuid4() for _ in specs]
    hashes = [s.request_hash() if s.idempotency_key else "" for s in specs]
    tokens = [uuid.uuid4() if _is_due(s.run_at, now) else None for s in specs]
    params: dict[str, Any] = {
        "owner": owner_id,
        "now": now,
        "id": ids,
        "type": [s.type for s in specs],
        "payload": [orjson.dumps(s.payload).decode() for s in specs],
        "queue": [s.queue for s in specs],
        "priority": [s.priority for s in specs],
        "max_attempts": [s.max_attempts for s in specs],
        "backoff": [orjson.dumps(s.backoff).decode() for s in specs],
        "timeout": [s.timeout_seconds for s in specs],
        "run_at": [s.run_at for s in specs],
        "key": [s.idempotency_key for s in specs],
        "hash": hashes,
        "token": tokens,
    }
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute(_INSERT_JOBS_SQL, params)
            inserted = {row[0] for row in cur.fetchall()}
        replays = _existing_for_replays(owner_id, specs, ids, hashes, inserted)
        _write_outbox(
            [
                (
                    ids[i],
                    dispatch_envelope(ids[i], type=s.type, queue=s.queue, priority=s.priority, attempt=1, token=token),
                )
                for i, (s, token) in enumerate(zip(specs, tokens, strict=True))
                if token is not None and ids[i] in inserted
            ],
            now,
        )
    results = []
    for i, spec in enumerate(specs):
        if ids[i] in inserted:
            results.append(Submitted(_job_from_spec(ids[i], owner_id, spec, hashes[i], tokens[i], now), True))
        else:
            results.append(Submitted(replays[spec.idempotency_key], False))  # type: ignore[index]
    return results


def _existing_for_replays(
    owner_id: int, specs: Sequence[JobSpec], ids: list[uuid.UUID], hashes: list[str], inserted: set[uuid.UUID]
) -> dict[str, Job]:
    """The earlier jobs of keys that conflicted; raises if any was made from another body."""
    conflicted = {specs[i].idempotency_key: hashes[i] for i in range(len(specs)) if ids[i] not in inserted}
    if not conflicted:
        return {}
    existing = {
        j.idempotency_key: j for j in Job.objects.filter(owner_id=owner_id, idempotency_key__in=list(conflicted))
    }
    for key, digest in conflicted.items():
        job = existing[key]  # type: ignore[index]
        if job.request_hash != digest:
            raise IdempotencyConflict(str(key), job.id)
    return existing  # type: ignore[return-value]


def _job_from_spec(
    job_id: uuid.UUID, owner_id: int, spec: JobSpec, digest: str, token: uuid.UUID | None, now: datetime
) -> Job:
    """The row just inserted, built in memory rather than read back."""
    return Job(
        id=job_id,
        owner_id=owner_id,
        type=spec.type,
        payload=spec.payload,
        queue=spec.queue,
        priority=spec.priority,
        status=JobStatus.PENDING,
        max_attempts=spec.max_attempts,
        backoff=spec.backoff,
        timeout_seconds=spec.timeout_seconds,
        run_at=spec.run_at,
        idempotency_key=spec.idempotency_key,
        request_hash=digest,
        dispatch_token=token,
        created_at=now,
        updated_at=now,
    )


def job_submit(*, owner_id: int, spec: JobSpec) -> Submitted:
    return job_submit_bulk(owner_id=owner_id, specs=[spec])[0]


def job_cancel(*, job_id: uuid.UUID | str) -> Job:
    """Waiting jobs end CANCELLED at once; a RUNNING job gets a persisted cancel request
    that its worker acts on. Anything finished raises IllegalTransition."""
    with transaction.atomic():
        if transitions.cancel_waiting(job_id):
            # Its dispatch, if not yet relayed, is pointless now (and would lose its claim).
            Outbox.objects.filter(job_id=job_id).delete()
        elif not transitions.request_cancel(job_id):
            _raise_illegal(job_id, "cancel")
    return Job.objects.get(id=job_id)


def job_retry(*, job_id: uuid.UUID | str) -> Job:
    """DEAD_LETTER or CANCELLED → PENDING with a fresh budget; history is kept."""
    with transaction.atomic():
        job = Job.objects.filter(id=job_id).only("id", "type", "queue", "priority", "run_at", "attempt_seq").first()
        if job is None:
            raise JobNotFound(job_id)
        now = timezone.now()
        token = uuid.uuid4() if _is_due(job.run_at, now) else None
        if not transitions.requeue(job_id, dispatch_token=token):
            _raise_illegal(job_id, "retry")
        if token is not None:
            envelope = dispatch_envelope(
                job.id, type=job.type, queue=job.queue, priority=job.priority, attempt=job.attempt_seq + 1, token=token
            )
            _write_outbox([(job.id, envelope)], now)
    return Job.objects.get(id=job_id)


def _raise_illegal(job_id: uuid.UUID | str, action: str) -> None:
    current = transitions.current_status(job_id)
    if current is None:
        raise JobNotFound(job_id)
    raise IllegalTransition(job_id, current, action)
