"""`manage.py bench flow`: what flow control and batches cost, on the running stack (`make run`).

1. Unused features: plain bulk jobs end to end (submit to the last success) and the CPU every
   role and engine spent on them, rounds alternating with the batch-counting row triggers on
   jobs_job and without them (before batches): the part of the new features every job could
   pay for in SQL (their `WHEN` should make it nothing). The ratio should be within noise.
2. Batches: a 1,000-job batch with an on_complete callback (submit to the callback's success)
   against 1,000 plain jobs through the bulk API (submit to the last success), interleaved:
   the CPU of every role and engine (the cost; target within 10 %), and the wall time, whose
   difference is mostly the callback's wait for the scheduler's next tick.
3. A rate-limited key: jobs of one `rate_limit_key` limited to `--rate-limit` a second, more
   than that many submitted, their starts counted over `--rate-seconds` once every job has
   reserved its slot (the first pass through the workers is over).
   Target: within 2 % of the limit (and never over it by more than the burst). Run the stack
   with as many worker processes as you want counted (WORKER_CONCURRENCY=4 for four).

Each measurement prints its rounds, median and spread; the figures go in docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta
from importlib import import_module
from typing import Any

import requests
from django.db import connection
from django.utils import timezone

from devtools.bench.api import bench_token, delete_bench_jobs
from devtools.bench.pipeline import Meter, _chunks, _session
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
    while True:  # read from the database, as the plain run does: polling the API would cost the web
        callback = batches.Batch.objects.filter(id=batch_id).values_list("on_complete_job_id", flat=True)[0]
        if callback and Job.objects.filter(id=callback, status=JobStatus.SUCCEEDED).exists():
            return time.perf_counter() - started
        progress.update(Job.objects.filter(batch_id=batch_id, status=JobStatus.SUCCEEDED).count())
        time.sleep(0.02)


def _set_batch_counting(on: bool) -> None:
    """The batch-counting row triggers of today, or none (before batches): 0028's own SQL."""
    migration = import_module("jobs.migrations.0028_batches")
    with connection.cursor() as cur:
        cur.execute(migration.BACKWARD)
        if on:
            cur.execute(migration.FORWARD)


def _spread(values: list[float], unit: str = "s") -> str:
    digits = 0 if unit == "µs" else 3
    return (f"median {statistics.median(values):.{digits}f} {unit} "
            f"(min {min(values):.{digits}f}, max {max(values):.{digits}f})")  # fmt: skip


def _measured(run_once: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds of every role and engine) of one run."""
    meter = Meter()
    meter.start()
    wall = run_once()
    return wall, sum(meter.stop("flow", "e2e", 1, wall).cpu.values())


def compare(label: str, runs: dict[str, list[tuple[float, float]]], a: str, b: str, n: int,
            out: Out) -> tuple[float, float]:  # fmt: skip
    """Print each kind's rounds; (CPU, wall) of b over a, medians."""
    for kind in (a, b):
        walls, cpus = [r[0] for r in runs[kind]], [r[1] / n * 1e6 for r in runs[kind]]
        out.write(f"  {kind:<44} wall {_spread(walls)}; CPU a job {_spread(cpus, 'µs')}\n")
    cpu = statistics.median(r[1] for r in runs[b]) / statistics.median(r[1] for r in runs[a])
    wall = statistics.median(r[0] for r in runs[b]) / statistics.median(r[0] for r in runs[a])
    out.write(f"  {label}: CPU {cpu:.3f}x, wall {wall:.3f}x\n")
    return cpu, wall


def interleaved(rounds: int, pair: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) of each of two runs, `rounds` times, alternating which goes first."""
    a, b = pair
    runs: dict[str, list[tuple[float, float]]] = {a: [], b: []}
    for r in range(rounds):
        for kind in (a, b) if r % 2 == 0 else (b, a):
            runs[kind].append(_measured(pair[kind]))
    return runs


def unused(base: str, session: requests.Session, n: int, rounds: int, out: Out) -> float:
    without, with_ = "plain jobs, no batch-counting triggers", "plain jobs, batch-counting triggers"
    runs: dict[str, list[tuple[float, float]]] = {without: [], with_: []}
    try:
        for r in range(rounds):
            for kind in (without, with_) if r % 2 == 0 else (with_, without):
                _set_batch_counting(kind == with_)
                runs[kind].append(_measured(lambda: plain(base, session, n)))
    finally:
        _set_batch_counting(True)
    return compare("with / without (target: within noise)", runs, without, with_, n, out)[0]


def batch_vs_plain(base: str, session: requests.Session, n: int, rounds: int, out: Out) -> float:
    plain_kind, batch_kind = f"{n} plain jobs (bulk)", f"a {n}-job batch with an on_complete callback"
    runs = interleaved(
        rounds, {plain_kind: lambda: plain(base, session, n), batch_kind: lambda: batch(base, session, n)}
    )
    return compare("batch / plain (target: CPU at most 1.10x)", runs, plain_kind, batch_kind, n, out)[0]


def rate_held(base: str, session: requests.Session, owner_id: int, limit: int, seconds: float, out: Out) -> float:
    key = f"bench-rate-{time.time_ns()}"
    RateLimit.objects.create(owner_id=owner_id, pattern=key, limit=limit, period_seconds=1)
    total = int(limit * (seconds + 40))  # more than the window can start: the key stays at its limit
    for size in _chunks(total, 1000):
        _post(session, f"{base}/api/v1/jobs/bulk/", {"jobs": [NOOP | {"rate_limit_key": key}] * size})
    mine = Job.objects.filter(owner_id=owner_id, rate_limit_key=key)
    # The window opens once every job has been through a worker once: started, or waiting
    # for the slot it reserved (before that, the first pass competes with the released ones).
    unreserved = mine.filter(started_at__isnull=True, rate_slot_at__isnull=True)
    while unreserved.exists():
        time.sleep(0.2)
    start = timezone.now() + timedelta(seconds=1)
    end = start + timedelta(seconds=seconds)
    progress = Progress(f"rate-limited key at {limit}/s", int(seconds))
    while timezone.now() < end + timedelta(seconds=5):  # the window, and the last starts' writes
        progress.update(int((timezone.now() - start).total_seconds()))
        time.sleep(1.0)
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
        out.write("\n1. unused features (the batch-counting triggers on every job)\n")
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
