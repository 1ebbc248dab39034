"""End-to-end benchmark (`make bench`, `manage.py bench pipeline`) against the running stack.

1. Baseline: raw Celery (prefork, same concurrency, same Redis, a no-op task) drains N tasks.
2. Pipeline: N `demo.noop` jobs through the bulk API → outbox → relay → Kafka → bridge →
   Celery → worker → SUCCEEDED, timed from the first submit to the last success.
3. Light load: single submits at a steady rate; submit→start latency from the job rows.

Prints both rates, the ratio and the latency percentiles, with progress while it runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import redis
import requests
from django.conf import settings
from django.utils import timezone

from jobs.models import Job, JobStatus
from orchestration.bench.api import bench_token
from orchestration.bench.stats import Progress, percentile

REPO = Path(__file__).resolve().parents[2]


def raw_celery(n: int, concurrency: int) -> float:
    """Jobs/s of plain Celery draining n no-op tasks (worker started first, clock from the
    first enqueue to the last completion)."""
    from orchestration.bench import raw_celery as raw

    env = {**os.environ, "BENCH_RAW_BROKER": settings.REDIS_URL}
    r = redis.Redis.from_url(settings.REDIS_URL)
    r.delete(raw.COUNTER, raw.QUEUE)
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "orchestration.bench.raw_celery", "worker", "--pool", "prefork",
            "--concurrency", str(concurrency), "--queues", raw.QUEUE, "--without-mingle", "--without-gossip",
            "--loglevel", "WARNING",
        ],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        raw.app.conf.broker_url = settings.REDIS_URL
        time.sleep(4)  # let the worker boot and connect
        progress = Progress("raw celery", n)
        started = time.perf_counter()
        with raw.app.producer_or_acquire() as producer:
            for _ in range(n):
                raw.app.send_task("bench.noop", queue=raw.QUEUE, producer=producer)
        while (done := int(r.get(raw.COUNTER) or 0)) < n:
            progress.update(done)
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        worker.terminate()
        worker.wait(30)
        r.delete(raw.COUNTER, raw.QUEUE)
    return n / elapsed


def pipeline(base: str, token: str, n: int, owner_id: int) -> float:
    session = requests.Session()
    session.headers.update({"Authorization": f"Token {token}", "Content-Type": "application/json"})
    since = timezone.now()
    progress = Progress("pipeline", n)
    started = time.perf_counter()
    body = orjson.dumps({"jobs": [{"type": "demo.noop"}] * 1000})
    for _ in range(n // 1000):
        session.post(f"{base}/api/v1/jobs/bulk/", data=body).raise_for_status()
    if n % 1000:
        tail = orjson.dumps({"jobs": [{"type": "demo.noop"}] * (n % 1000)})
        session.post(f"{base}/api/v1/jobs/bulk/", data=tail).raise_for_status()
    mine = Job.objects.filter(owner_id=owner_id, created_at__gte=since)
    while (done := mine.filter(status=JobStatus.SUCCEEDED).count()) < n:
        progress.update(done)
        failed = mine.filter(status__in=[JobStatus.DEAD_LETTER, JobStatus.CANCELLED]).count()
        if failed:
            raise SystemExit(f"{failed} benchmark job(s) failed; see the worker log")
        time.sleep(0.1)
    return n / (time.perf_counter() - started)


def light_load(base: str, token: str, rate: float, seconds: float, owner_id: int) -> list[float]:
    """Single submits at `rate`/s; returns submit→start latencies (started_at - created_at)."""
    session = requests.Session()
    session.headers.update({"Authorization": f"Token {token}", "Content-Type": "application/json"})
    body = orjson.dumps({"type": "demo.noop"})
    ids = []
    total = int(rate * seconds)
    progress = Progress("light load", total)
    t0 = time.perf_counter()
    for i in range(total):
        time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        ids.append(session.post(f"{base}/api/v1/jobs/", data=body).json()["id"])
        progress.update(i + 1)
    deadline = time.monotonic() + 60
    while Job.objects.filter(id__in=ids, started_at__isnull=True).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = Job.objects.filter(id__in=ids, started_at__isnull=False).values_list("created_at", "started_at")
    return [(started - created).total_seconds() for created, started in rows if started and created]


def run(*, base: str, n: int, concurrency: int, rate: float, seconds: float, keep: bool, out: Any) -> dict[str, float]:
    owner_id, token = bench_token()
    try:
        out.write(f"raw Celery: {n} no-op tasks, prefork -c {concurrency}\n")
        raw_rate = raw_celery(n, concurrency)
        out.write(f"pipeline: {n} demo.noop jobs through the bulk API\n")
        pipe_rate = pipeline(base, token, n, owner_id)
        out.write(f"light load: {rate:g} jobs/s for {seconds:g}s\n")
        latencies = light_load(base, token, rate, seconds, owner_id)
    finally:
        if not keep:
            Job.objects.filter(owner_id=owner_id).delete()
    ratio = pipe_rate / raw_rate
    p50, p95, p99 = (percentile(latencies, q) for q in (50, 95, 99))

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    out.write(
        f"\n{'measurement':40} {'jobs/s':>9} {'jobs/min':>10}\n"
        f"{'raw Celery (no-op task)':40} {raw_rate:>9,.0f} {raw_rate * 60:>10,.0f}\n"
        f"{'pipeline (bulk submit → SUCCEEDED)':40} {pipe_rate:>9,.0f} {pipe_rate * 60:>10,.0f}\n\n"
        f"pipeline / raw Celery: {ratio:.2f}  (target ≥ 0.80: {verdict(ratio >= 0.8)})\n"
        f"pipeline jobs/min: {pipe_rate * 60:,.0f}  (target ≥ 30,000: {verdict(pipe_rate * 60 >= 30000)})\n"
        f"submit→start at {rate:g} jobs/s: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
        f"(targets p50 ≤ 30 ms: {verdict(p50 <= 0.03)}, p99 ≤ 200 ms: {verdict(p99 <= 0.2)})\n"
    )
    return {"raw": raw_rate, "pipeline": pipe_rate, "ratio": ratio, "p50": p50, "p95": p95, "p99": p99}
