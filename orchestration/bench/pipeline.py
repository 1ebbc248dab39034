"""End-to-end benchmark (`make bench`, `manage.py bench pipeline`) against the running stack.

1. Baselines: raw Celery (prefork), Dramatiq and Huey, each with the same number of worker
   processes on the same Redis, drain N no-op tasks of their own.
2. Pipeline: N `demo.noop` jobs through the bulk API → outbox → relay → Kafka → bridge →
   Celery → worker → SUCCEEDED, timed from the first submit to the last success.
3. Light load: single submits at a steady rate; submit→start latency from the job rows.

Prints both rates, the ratio and the latency percentiles, with progress while it runs.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Peer:
    """Another job queue draining n no-op tasks on the same Redis with `workers` processes:
    its worker command, how to enqueue one task, and the counter its task bumps."""

    name: str
    module: str  # orchestration.bench.raw_* (imported after BENCH_RAW_BROKER is set)
    command: Callable[[int], list[str]]  # worker processes → the worker's command line

    def drain(self, n: int, workers: int) -> float:
        """Jobs/s from the first enqueue to the last completion (worker started first)."""
        os.environ["BENCH_RAW_BROKER"] = settings.REDIS_URL  # read by the module, here and in its workers
        raw = importlib.import_module(self.module)
        r = redis.Redis.from_url(settings.REDIS_URL)
        _forget(r, raw)
        worker = subprocess.Popen(
            [sys.executable, "-m", *self.command(workers)], cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            time.sleep(4)  # let the workers boot and connect
            progress = Progress(self.name, n)
            started = time.perf_counter()
            _ENQUEUE[self.name](raw, n)
            while (done := int(r.get(raw.COUNTER) or 0)) < n:
                progress.update(done)
                if worker.poll() is not None:
                    raise SystemExit(f"{self.name} worker exited with {worker.returncode}")
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
            _forget(r, raw)
        return n / elapsed


def _forget(r: redis.Redis, raw: Any) -> None:
    keys = [raw.COUNTER, raw.QUEUE, *r.scan_iter(f"*{raw.QUEUE}*", count=1000)]
    r.delete(*keys)


def _enqueue_celery(raw: Any, n: int) -> None:
    with raw.app.producer_or_acquire() as producer:
        for _ in range(n):
            raw.app.send_task("bench.noop", queue=raw.QUEUE, producer=producer)


def _enqueue_calls(raw: Any, n: int) -> None:
    send = raw.noop.send if hasattr(raw.noop, "send") else raw.noop  # Dramatiq actor / Huey task
    for _ in range(n):
        send()


_ENQUEUE: dict[str, Callable[[Any, int], None]] = {"Celery": _enqueue_celery, "Dramatiq": _enqueue_calls,
                                                    "Huey": _enqueue_calls}  # fmt: skip

PEERS = (
    Peer("Celery", "orchestration.bench.raw_celery", lambda w: [
        "celery", "-A", "orchestration.bench.raw_celery", "worker", "--pool", "prefork", "--concurrency", str(w),
        "--queues", "bench-raw-celery", "--without-mingle", "--without-gossip", "--loglevel", "WARNING"]),
    Peer("Dramatiq", "orchestration.bench.raw_dramatiq", lambda w: [
        "dramatiq", "orchestration.bench.raw_dramatiq", "--processes", str(w)]),
    Peer("Huey", "orchestration.bench.raw_huey", lambda w: [
        "huey.bin.huey_consumer", "orchestration.bench.raw_huey.huey", "--workers", str(w), "--worker-type", "process",
        "--logfile", os.devnull]),
)  # fmt: skip


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
    rates: dict[str, float] = {}
    try:
        for peer in PEERS:
            out.write(f"{peer.name}: {n} no-op tasks, {concurrency} worker processes\n")
            rates[peer.name] = peer.drain(n, concurrency)
        out.write(f"pipeline: {n} demo.noop jobs through the bulk API\n")
        rates["pipeline"] = pipe_rate = pipeline(base, token, n, owner_id)
        out.write(f"light load: {rate:g} jobs/s for {seconds:g}s\n")
        latencies = light_load(base, token, rate, seconds, owner_id)
    finally:
        if not keep:
            Job.objects.filter(owner_id=owner_id).delete()
    p50, p95, p99 = (percentile(latencies, q) for q in (50, 95, 99))

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    out.write(f"\n{'measurement (no-op jobs, same Redis, same 2 cores)':52} {'jobs/s':>9} {'pipeline ÷ this':>16}\n")
    for name, value in rates.items():
        label = "pipeline (bulk submit → SUCCEEDED)" if name == "pipeline" else f"{name} (its own no-op task)"
        out.write(f"{label:52} {value:>9,.0f} {pipe_rate / value:>16.2f}\n")
    fastest = max((v, k) for k, v in rates.items() if k != "pipeline")
    out.write(
        f"\npipeline ÷ fastest peer ({fastest[1]}): {pipe_rate / fastest[0]:.2f}  "
        f"(target ≥ 1.0: {verdict(pipe_rate >= fastest[0])})\n"
        f"pipeline jobs/min: {pipe_rate * 60:,.0f}  (target ≥ 30,000: {verdict(pipe_rate * 60 >= 30000)})\n"
        f"submit→start at {rate:g} jobs/s: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
        f"(targets p50 ≤ 30 ms: {verdict(p50 <= 0.03)}, p99 ≤ 200 ms: {verdict(p99 <= 0.2)})\n"
    )
    return {**rates, "p50": p50, "p95": p95, "p99": p99}
