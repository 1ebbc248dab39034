"""Submit-API benchmark: single and bulk submits over HTTP against the running web server,
next to a baseline that inserts the same rows (job + outbox) with psycopg's executemany.

Targets (issue: control plane): bulk submit ≥ 50% of the raw insert rate, single submit
p50 ≤ 15 ms on 2 cores.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
import psycopg
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.utils import timezone
from rest_framework.authtoken.models import Token

from config.ids import new_id
from devtools.bench.stats import Progress, ms, percentile
from jobs.dispatch import DispatchEnvelope
from jobs.models import TERMINAL_STATUSES, Job
from jobs.services import JobSpec

BENCH_USER = "bench"


@dataclass
class Result:
    label: str
    jobs: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


def bench_token(username: str = BENCH_USER) -> tuple[int, str]:
    """A login-less bench user, exempt from the rate limit, and its API token."""
    user, _ = get_user_model().objects.get_or_create(username=username)
    if user.has_usable_password():
        user.set_unusable_password()
        user.save(update_fields=["password"])
    user.user_permissions.add(
        Permission.objects.get(codename="unthrottled", content_type__app_label="orchestration_jobs")
    )
    token, _ = Token.objects.get_or_create(user=user)
    return user.pk, token.key


def delete_bench_jobs(owner_id: int, *, settle_seconds: float = 60.0) -> None:
    """Delete the bench user's jobs once the running stack has let go of them (Django deletes
    a job's attempts, then the job: a worker claiming it in between would leave its attempt
    behind), then vacuum the tables they were in.

    The vacuum is for the next run: it would insert its index entries right where this run's
    dead ones are (the newest `created_at` of each status), and PostgreSQL would sift through
    them at every insert, its bottom-up deletion. A run after a delete of 20,000 jobs spent
    up to 1.9 ms of PostgreSQL CPU a job instead of 0.2 (issue 33). A stack in service
    deletes its oldest jobs, far from where new ones go, and autovacuum has minutes, not
    milliseconds, before the same pages fill again."""
    mine = Job.objects.filter(owner_id=owner_id)
    deadline = time.monotonic() + settle_seconds
    while mine.exclude(status__in=TERMINAL_STATUSES).exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    mine.delete()
    with connection.cursor() as cur:
        cur.execute("VACUUM jobs_job, jobs_jobattempt, jobs_outbox")


def single_submits(base: str, token: str, n: int) -> Result:
    body = orjson.dumps({"type": "demo.noop", "payload": {"bench": True}})
    return _timed_posts(base, token, "jobs/", body, requests_n=n, jobs_each=1, warmups=20, label="single submit",
                        name="single submit (HTTP)")  # fmt: skip


def bulk_submits(base: str, token: str, batches: int, size: int) -> Result:
    body = orjson.dumps({"jobs": [{"type": "demo.noop", "payload": {"i": i}} for i in range(size)]})
    # Fewer warm-ups: each is a whole bulk; three reach every web worker's connection and imports.
    return _timed_posts(base, token, "jobs/bulk/", body, requests_n=batches, jobs_each=size, warmups=3,
                        label="bulk submit", name=f"bulk submit (HTTP, {size}/request)")  # fmt: skip


def _timed_posts(
    base: str,
    token: str,
    path: str,
    body: bytes,
    *,
    requests_n: int,
    jobs_each: int,
    warmups: int,
    label: str,
    name: str,
) -> Result:
    """POST `body` to /api/v1/`path` `requests_n` times, one at a time, after `warmups` that
    are not measured; each request's latency, and the jobs per second over all of them."""
    session = requests.Session()
    session.headers.update({"Authorization": f"Token {token}", "Content-Type": "application/json"})
    url = f"{base}/api/v1/{path}"
    for _ in range(warmups):  # warm connections and caches; not measured
        session.post(url, data=body).raise_for_status()
    progress = Progress(label, requests_n * jobs_each)
    latencies = []
    started = time.perf_counter()
    for i in range(requests_n):
        t0 = time.perf_counter()
        response = session.post(url, data=body)
        latencies.append(time.perf_counter() - t0)
        if response.status_code != 201:
            raise SystemExit(f"{label} answered {response.status_code}: {response.text[:300]}")
        progress.update((i + 1) * jobs_each)
    return Result(name, requests_n * jobs_each, time.perf_counter() - started, latencies)


_RAW_JOB = """
INSERT INTO jobs_job (id, owner_id, type, payload, queue, priority, status, attempts, attempt_seq,
    max_attempts, backoff, timeout_seconds, last_error, request_hash, dispatch_token, worker,
    created_at, updated_at)
VALUES (%s, %s, 'demo.noop', %s, 'default', 5, 'PENDING', 0, 0, 4, %s, 300, '', '', %s, '', %s, %s)
"""
_RAW_OUTBOX = "INSERT INTO jobs_outbox (job_id, topic, envelope, created_at) VALUES (%s, 'jobs', %s, %s)"
_COPY_JOB = """COPY jobs_job (id, owner_id, type, payload, queue, priority, status, attempts, attempt_seq,
    max_attempts, backoff, timeout_seconds, last_error, request_hash, dispatch_token, worker, created_at,
    updated_at) FROM STDIN"""
_COPY_OUTBOX = "COPY jobs_outbox (job_id, envelope, topic, created_at) FROM STDIN"


_BACKOFF = orjson.dumps({"initial": 2.0, "factor": 2.0, "max": 3600, "jitter": 0.2}).decode()


def database_url() -> str:
    """Our database's URL, for a connection of the benchmark's own (psycopg, or asyncpg,
    which reads URLs only: PgQueuer's workers take a database of their own on this server)."""
    db = settings.DATABASES["default"]
    user = quote(db.get("USER") or "", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    host = quote(db.get("HOST") or "", safe="")  # a socket directory is a path
    return f"postgresql://{user}{password}@{host}:{db.get('PORT') or 5432}/{quote(db['NAME'], safe='')}"


def _timed_batches(
    label: str, batches: int, size: int, write: Callable[[Any, list[tuple[uuid.UUID, uuid.UUID]]], None]
) -> Result:
    """Run `write(cursor, [(job_id, token), ...])` once per batch, one transaction each."""
    latencies = []
    progress = Progress(label, batches * size)
    with psycopg.connect(database_url()) as conn:
        started = time.perf_counter()
        for b in range(batches):
            t0 = time.perf_counter()
            ids = [(new_id(), uuid.uuid4()) for _ in range(size)]
            with conn.transaction(), conn.cursor() as cur:
                write(cur, ids)
            latencies.append(time.perf_counter() - t0)
            progress.update((b + 1) * size)
        elapsed = time.perf_counter() - started
    return Result(label, batches * size, elapsed, latencies)


def _envelope(job_id: uuid.UUID, owner_id: int, token: uuid.UUID) -> str:
    env = DispatchEnvelope.build(job_id, JobSpec(type="demo.noop"), owner_id=owner_id, attempt=1, token=token)
    return orjson.dumps(env.as_dict()).decode()


def raw_inserts(owner_id: int, batches: int, size: int) -> Result:
    """Baseline: the same rows (job + outbox) with psycopg executemany (pipelined); no HTTP,
    no validation, no Django."""

    def write(cur: Any, ids: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
        now = timezone.now()
        cur.executemany(
            _RAW_JOB,
            [(i, owner_id, orjson.dumps({"i": n}).decode(), _BACKOFF, t, now, now) for n, (i, t) in enumerate(ids)],
        )
        cur.executemany(_RAW_OUTBOX, [(i, _envelope(i, owner_id, t), now) for i, t in ids])

    return _timed_batches(f"raw insert (psycopg executemany, {size}/txn)", batches, size, write)


def raw_copy(owner_id: int, batches: int, size: int) -> Result:
    """A second, stronger baseline: the same rows through COPY (what the service itself uses
    for jobs without an idempotency key)."""

    def write(cur: Any, ids: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
        now = timezone.now()
        with cur.copy(_COPY_JOB) as copy:
            for n, (i, t) in enumerate(ids):
                copy.write_row((
                    i, owner_id, "demo.noop", orjson.dumps({"i": n}).decode(), "default", 5, "PENDING", 0, 0,
                    4, _BACKOFF, 300, "", "", t, "", now, now,
                ))  # fmt: skip
        with cur.copy(_COPY_OUTBOX) as copy:
            for i, t in ids:
                copy.write_row((i, _envelope(i, owner_id, t), "jobs", now))

    return _timed_batches(f"raw insert (psycopg COPY, {size}/txn)", batches, size, write)


def report(results: list[Result], out) -> None:  # type: ignore[no-untyped-def]
    out.write(f"\n{'measurement':44} {'jobs':>7} {'jobs/s':>9} {'p50':>10} {'p95':>10} {'p99':>10}\n")
    for r in results:
        out.write(
            f"{r.label:44} {r.jobs:>7} {r.rate:>9,.0f} {ms(percentile(r.latencies, 50)):>10} "
            f"{ms(percentile(r.latencies, 95)):>10} {ms(percentile(r.latencies, 99)):>10}\n"
        )


def run(*, base: str, singles: int, batches: int, size: int, keep: bool, out) -> dict[str, float]:  # type: ignore[no-untyped-def]
    owner_id, token = bench_token()
    connection.close()  # the raw baseline and the server use their own connections
    try:
        single = single_submits(base, token, singles)
        bulk = bulk_submits(base, token, batches, size)
        raw = raw_inserts(owner_id, batches, size)
        copy = raw_copy(owner_id, batches, size)
    finally:
        if not keep:
            delete_bench_jobs(owner_id)
    report([single, bulk, raw, copy], out)
    ratio = bulk.rate / raw.rate
    p50 = percentile(single.latencies, 50)
    out.write(
        f"\nbulk / raw executemany rate: {ratio:.2f}  (target ≥ 0.50: {'met' if ratio >= 0.5 else 'NOT met'})\n"
        f"bulk / raw COPY rate: {bulk.rate / copy.rate:.2f}  (for information: COPY is the fastest way in)\n"
        f"single submit p50: {ms(p50)}  (target ≤ 15 ms: {'met' if p50 <= 0.015 else 'NOT met'})\n"
    )
    return {"ratio": ratio, "single_p50": p50, "bulk_rate": bulk.rate, "raw_rate": raw.rate, "copy_rate": copy.rate}
