"""`manage.py bench flow`: what flow control and batches cost, on the running stack (`make run`).

1. Unused features: plain bulk jobs end to end (submit to the last success), rounds alternating
   the tally triggers with a batch's counting and without it (today's and before), the one
   part of the new features every job pays for in SQL. The ratio should be within noise.
2. Batches: a 1,000-job batch with an on_complete callback (submit to the callback's success)
   against 1,000 plain jobs through the bulk API (submit to the last success), interleaved.
   Target: within 10 %.
3. A rate-limited key: jobs of one `rate_limit_key` limited to `--rate-limit` a second, more
   than that many submitted, their starts counted over `--rate-seconds` once the first ran.
   Target: within 2 % of the limit (and never over it by more than the burst). Run the stack
   with as many worker processes as you want counted (WORKER_CONCURRENCY=4 for four).

Each measurement prints its rounds, median and spread; the figures go in docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta
from importlib import import_module

import requests
from django.db import connection

from devtools.bench.api import bench_token, delete_bench_jobs
from devtools.bench.pipeline import _chunks, _session
from devtools.bench.stats import Out, Progress
from devtools.bench.workflows import _post, _wait_jobs
from jobs import batches
from jobs.models import Job, JobStatus, RateLimit

NOOP = {"type": "demo.noop", "payload": {}}


def plain(base: str, session: requests.Session, n: int) -> float:
    started = time.perf_counter()
    ids: list[str] = []
    for size in _chunks(n, 1000):
        ids += [j["id"] for j in _post(session, f"{base}/api/v1/jobs/bulk/", {"jobs": [NOOP] * size})["jobs"]]
    _wait_jobs(ids, "plain jobs")
    return time.perf_counter() - started


def batch(base: str, session: requests.Session, n: int) -> float:
    started = time.perf_counter()
    made = _post(session, f"{base}/api/v1/batches/", {"jobs": [NOOP] * n, "on_complete": NOOP})
    batch_id = made["batch"]["id"]
    progress = Progress("batch", n)
    while True:
        body = session.get(f"{base}/api/v1/batches/{batch_id}/").json()
        callback = (body["on_complete"] or {}).get("job")
        if callback and Job.objects.filter(id=callback, status=JobStatus.SUCCEEDED).exists():
            return time.perf_counter() - started
        progress.update(body["counts"]["SUCCEEDED"])
        time.sleep(0.02)


def _set_batch_counting(on: bool) -> None:
    """The tally triggers of today (a batch's deltas too) or of before batches (0028's)."""
    migration = import_module("jobs.migrations.0028_batches")
    with connection.cursor() as cur:
        cur.execute(migration.FORWARD if on else migration.BACKWARD)


def _spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def unused(base: str, session: requests.Session, n: int, rounds: int, out: Out) -> float:
    runs: dict[bool, list[float]] = {True: [], False: []}
    try:
        for r in range(rounds):
            for on in (False, True) if r % 2 == 0 else (True, False):
                _set_batch_counting(on)
                runs[on].append(plain(base, session, n))
    finally:
        _set_batch_counting(True)
    ratio = statistics.median(runs[True]) / statistics.median(runs[False])
    out.write(f"  {n} plain jobs, triggers without batch counting  {_spread(runs[False])}\n")
    out.write(f"  {n} plain jobs, triggers with batch counting     {_spread(runs[True])}\n")
    out.write(f"  cost of the unused batch counting: {ratio:.3f}x (target: within noise)\n")
    return ratio


def batch_vs_plain(base: str, session: requests.Session, n: int, rounds: int, out: Out) -> float:
    runs: dict[str, list[float]] = {"plain": [], "batch": []}
    for r in range(rounds):
        for kind in ("plain", "batch") if r % 2 == 0 else ("batch", "plain"):
            runs[kind].append(plain(base, session, n) if kind == "plain" else batch(base, session, n))
    ratio = statistics.median(runs["batch"]) / statistics.median(runs["plain"])
    out.write(f"  {n} plain jobs (bulk)                       {_spread(runs['plain'])}\n")
    out.write(f"  a {n}-job batch with an on_complete callback {_spread(runs['batch'])}\n")
    out.write(f"  batch / plain: {ratio:.3f}x (target: at most 1.10x)\n")
    return ratio


def rate_held(base: str, session: requests.Session, owner_id: int, limit: int, seconds: float, out: Out) -> float:
    key = f"bench-rate-{time.time_ns()}"
    RateLimit.objects.create(owner_id=owner_id, pattern=key, limit=limit, period_seconds=1)
    total = int(limit * (seconds + 20))  # more than the window can start: the key stays at its limit
    for size in _chunks(total, 1000):
        _post(session, f"{base}/api/v1/jobs/bulk/", {"jobs": [NOOP | {"rate_limit_key": key}] * size})
    mine = Job.objects.filter(owner_id=owner_id, rate_limit_key=key)
    while not mine.filter(started_at__isnull=False).exists():
        time.sleep(0.05)
    first = mine.exclude(started_at=None).order_by("started_at").values_list("started_at", flat=True)[0]
    progress = Progress(f"rate-limited key at {limit}/s", int(seconds))
    waited = 0.0
    while waited < seconds + 10:  # the window, and the last starts' writes
        progress.update(int(waited))
        time.sleep(1.0)
        waited += 1.0
    # The window starts 5 s after the first start (the reservations' first pass is over).
    start = first + timedelta(seconds=5)
    end = start + timedelta(seconds=seconds)
    started = mine.filter(started_at__gte=start, started_at__lt=end).count()
    per_second = [
        mine.filter(
            started_at__gte=start + timedelta(seconds=s), started_at__lt=start + timedelta(seconds=s + 1)
        ).count()
        for s in range(int(seconds))
    ]
    held = started / seconds / limit
    out.write(f"  {started} starts in {seconds:.0f} s at a limit of {limit}/s: {started / seconds:.2f}/s, "
              f"{held:.4f}x the limit (target: within 2 %)\n")  # fmt: skip
    out.write(f"  starts a second: min {min(per_second)}, median {statistics.median(per_second):g}, "
              f"max {max(per_second)}\n")  # fmt: skip
    mine.filter(status__in=[JobStatus.PENDING, JobStatus.QUEUED]).update(status=JobStatus.CANCELLED)
    RateLimit.objects.filter(pattern=key).delete()
    return held


def run(
    *, base: str, jobs: int, rounds: int, rate_limit: int, rate_seconds: float, keep: bool, out: Out
) -> dict[str, float]:
    owner_id, token = bench_token()
    session = _session(token)
    _post(session, f"{base}/api/v1/jobs/", NOOP)  # warm the connection and the workers
    results: dict[str, float] = {}
    try:
        out.write("\n1. unused features (batch counting in the tally triggers)\n")
        results["unused_ratio"] = unused(base, session, jobs, rounds, out)
        out.write(f"\n2. a {jobs}-job batch with a callback vs {jobs} plain jobs\n")
        results["batch_ratio"] = batch_vs_plain(base, session, jobs, rounds, out)
        if rate_seconds > 0:
            out.write(f"\n3. a rate-limited key over {rate_seconds:.0f} s\n")
            results["rate_held"] = rate_held(base, session, owner_id, rate_limit, rate_seconds, out)
    finally:
        if not keep:
            delete_bench_jobs(owner_id)
            batches.Batch.objects.filter(owner_id=owner_id).delete()
    return results
