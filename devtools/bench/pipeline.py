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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
import requests
from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from config import broker
from devtools.bench.api import bench_token, delete_bench_jobs
from devtools.bench.processes import CpuMeter
from devtools.bench.stats import Progress, percentile
from jobs.models import Job, JobStatus

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Peer:
    """Another job queue draining n no-op tasks on the same Redis with `workers` processes:
    its worker command, how to enqueue one task, and the counter its task bumps."""

    name: str
    module: str  # devtools.bench.raw_* (imported after BENCH_RAW_BROKER is set)
    command: Callable[[int], list[str]]  # worker processes → the worker's command line
    enqueue: Callable[[Any, int], None]  # (the imported module, n): enqueue n no-op tasks

    def drain(self, n: int, workers: int) -> float:
        """Jobs/s from the first enqueue to the last completion (worker started first)."""
        os.environ["BENCH_RAW_BROKER"] = settings.REDIS_URL  # read by the module, here and in its workers
        raw = importlib.import_module(self.module)
        r = broker.client()  # the same Redis (REDIS_URL); the peer's keys are raw, as it writes them
        _forget(r, raw)
        worker = subprocess.Popen(
            [sys.executable, "-m", *self.command(workers)], cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            time.sleep(4)  # let the workers boot and connect
            progress = Progress(self.name, n)
            started = time.perf_counter()
            self.enqueue(raw, n)
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


PEERS = (
    Peer("Celery", "devtools.bench.raw_celery", lambda w: [
        "celery", "-A", "devtools.bench.raw_celery", "worker", "--pool", "prefork", "--concurrency", str(w),
        "--queues", "bench-raw-celery", "--without-mingle", "--without-gossip", "--loglevel", "WARNING"],
        _enqueue_celery),
    Peer("Dramatiq", "devtools.bench.raw_dramatiq", lambda w: [
        "dramatiq", "devtools.bench.raw_dramatiq", "--processes", str(w)], _enqueue_calls),
    Peer("Huey", "devtools.bench.raw_huey", lambda w: [
        "huey.bin.huey_consumer", "devtools.bench.raw_huey.huey", "--workers", str(w), "--worker-type", "process",
        "--logfile", os.devnull], _enqueue_calls),
)  # fmt: skip


def _session(token: str) -> requests.Session:
    session = requests.Session()
    session.headers.update({"Authorization": f"Token {token}", "Content-Type": "application/json"})
    return session


def _start_latencies(jobs: QuerySet[Job]) -> list[float]:
    """submit→start (started_at - created_at) of `jobs`, once all started (at most 60 s)."""
    deadline = time.monotonic() + 60
    while jobs.filter(started_at__isnull=True).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = jobs.filter(started_at__isnull=False).values_list("created_at", "started_at")
    return [(started - created).total_seconds() for created, started in rows if started and created]


def pipeline(base: str, token: str, n: int, owner_id: int) -> float:
    session = _session(token)
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
    session = _session(token)
    body = orjson.dumps({"type": "demo.noop"})
    ids = []
    total = int(rate * seconds)
    progress = Progress("light load", total)
    t0 = time.perf_counter()
    for i in range(total):
        time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        ids.append(session.post(f"{base}/api/v1/jobs/", data=body).json()["id"])
        progress.update(i + 1)
    return _start_latencies(Job.objects.filter(id__in=ids))


def offered_load(base: str, token: str, rate: float, seconds: float, owner_id: int) -> list[float]:
    """Bulk submits every 50 ms adding up to `rate` jobs/s; returns submit→start latencies."""
    session = _session(token)
    ticks = int(seconds * 20)
    since = timezone.now()
    owed = 0.0
    t0 = time.perf_counter()
    for i in range(ticks):
        time.sleep(max(0.0, t0 + i * 0.05 - time.perf_counter()))
        owed += rate * 0.05
        if owed >= 1:
            body = orjson.dumps({"jobs": [{"type": "demo.noop"}] * int(owed)})
            session.post(f"{base}/api/v1/jobs/bulk/", data=body).raise_for_status()
            owed -= int(owed)
    return _start_latencies(Job.objects.filter(owner_id=owner_id, created_at__gte=since))


def set_bridge_batch_size(size: int | None) -> None:
    """Restart `make run`'s bridge with BRIDGE_BATCH_SIZE=size (None: as configured), through
    circus' control socket, and wait until it holds its partitions again."""
    from circus.client import CircusClient

    from devtools import engines
    from metrics import heartbeat

    client = CircusClient(endpoint=f"ipc://{engines.default_data_dir() / 'circus' / 'control.sock'}", timeout=30)
    env = client.call({"command": "get", "properties": {"name": "bridge", "keys": ["env"]}})["options"]["env"]
    env = {k: v for k, v in env.items() if k != "BRIDGE_BATCH_SIZE"}
    if size is not None:
        env["BRIDGE_BATCH_SIZE"] = str(size)
    old = {r["pid"] for r in heartbeat.roles() if r["role"] == "bridge"}
    # Stop, set, start: setting the env of a running watcher reloads it, which may start the
    # new bridge before the old one left, and a member leaving mid-join wedges the embedded
    # broker's group (see docs/reliability.md).
    client.call({"command": "stop", "properties": {"name": "bridge", "waiting": True}})
    client.call({"command": "set", "properties": {"name": "bridge", "options": {"env": env}}})
    client.call({"command": "start", "properties": {"name": "bridge", "waiting": True}})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        bridges = [r for r in heartbeat.roles() if r["role"] == "bridge" and r["age"] < 2 and r["pid"] not in old]
        if bridges and all(r.get("assigned") for r in bridges):
            return
        time.sleep(0.5)
    raise SystemExit("the bridge did not get its partitions back within 60 s")


def cpu_table(cpu: dict[str, float], wall: float, n: int) -> str:
    """Where the pipeline's CPU went, per role and engine, per job."""
    total = sum(cpu.values())
    lines = [f"{'process (CPU during the pipeline run)':40} {'CPU s':>7} {'µs/job':>8} {'share':>6}"]
    for role, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        if seconds >= 0.05:
            lines.append(f"{role:40} {seconds:>7.1f} {seconds / n * 1e6:>8.0f} {seconds / total:>6.0%}")
    busy = f"({total / wall:.2f} of {os.cpu_count()} cores busy)"
    lines.append(f"{'all':40} {total:>7.1f} {total / n * 1e6:>8.0f}   {busy}")
    return "\n".join(lines)


def chart(path: Path, peers: dict[str, float], sizes: dict[int, float], load: dict[float, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = sorted(sizes)
    left.plot(xs, [sizes[x] for x in xs], "o-", color="tab:blue", label="pipeline (bulk submit → SUCCEEDED)")
    for (name, value), style in zip(peers.items(), ("--", "-.", ":"), strict=False):
        left.axhline(value, linestyle=style, color="gray", label=f"{name} drain")
    left.set(xscale="log", xlabel="BRIDGE_BATCH_SIZE (jobs per Celery message, log scale)", ylabel="jobs/s",
             title="Throughput against batch size")  # fmt: skip
    left.set_xticks(xs, [str(x) for x in xs])
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    rates = sorted(load)
    for q, style in ((50, "o-"), (95, "s--"), (99, "^:")):
        right.plot(rates, [percentile(load[r], q) * 1000 for r in rates], style, label=f"p{q}")
    right.axhline(30, color="tab:red", linewidth=0.8, label="p50 target 30 ms")
    right.set(xscale="log", yscale="log", xlabel="offered load, jobs/s (log)", ylabel="submit → start, ms (log)",
              title="Latency against offered load")  # fmt: skip
    right.set_xticks(rates, [f"{r:g}" for r in rates])
    right.xaxis.set_minor_formatter(NullFormatter())
    right.yaxis.set_major_formatter(ScalarFormatter())
    right.yaxis.set_minor_formatter(NullFormatter())
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(*, base: str, n: int, concurrency: int, rate: float, seconds: float, keep: bool, out: Any,
        batch_sizes: Sequence[int] = (), sweep_jobs: int = 10_000, loads: Sequence[float] = (),
        load_seconds: float = 5.0, chart_path: Path | None = None) -> dict[str, float]:  # fmt: skip
    owner_id, token = bench_token()
    rates: dict[str, float] = {}
    sizes: dict[int, float] = {}
    by_load: dict[float, list[float]] = {}
    try:
        for peer in PEERS:
            out.write(f"{peer.name}: {n} no-op tasks, {concurrency} worker processes\n")
            rates[peer.name] = peer.drain(n, concurrency)
        out.write(f"pipeline: {n} demo.noop jobs through the bulk API\n")
        meter = CpuMeter()
        meter.start()
        rates["pipeline"] = pipe_rate = pipeline(base, token, n, owner_id)
        cpu, wall = meter.stop()
        out.write(f"light load: {rate:g} jobs/s for {seconds:g}s\n")
        latencies = light_load(base, token, rate, seconds, owner_id)
        for load in loads:
            out.write(f"offered load: {load:g} jobs/s for {load_seconds:g}s\n")
            by_load[load] = offered_load(base, token, load, load_seconds, owner_id)
        try:
            for size in batch_sizes:
                out.write(f"batch size {size}: bridge restarted, {sweep_jobs} jobs\n")
                set_bridge_batch_size(size)
                sizes[size] = pipeline(base, token, sweep_jobs, owner_id)
        finally:
            if batch_sizes:
                set_bridge_batch_size(None)
    finally:
        if not keep:
            delete_bench_jobs(owner_id)
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
        f"(targets p50 ≤ 30 ms: {verdict(p50 <= 0.03)}, p99 ≤ 200 ms: {verdict(p99 <= 0.2)})\n\n"
        f"{cpu_table(cpu, wall, n)}\n"
    )
    if sizes:
        out.write(f"\n{'BRIDGE_BATCH_SIZE':>18} {'jobs/s':>9}\n")
        for size, value in sizes.items():
            out.write(f"{size:>18} {value:>9,.0f}\n")
    if by_load:
        out.write(f"\n{'offered jobs/s':>15} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}\n")
        for load, values in by_load.items():
            out.write(f"{load:>15g} " + " ".join(f"{percentile(values, q) * 1000:>8.1f}" for q in (50, 95, 99)) + "\n")
    if chart_path is not None and sizes and by_load:
        chart(chart_path, {k: v for k, v in rates.items() if k != "pipeline"}, sizes, by_load)
        out.write(f"\nchart: {chart_path}\n")
    return {**rates, "p50": p50, "p95": p95, "p99": p99}
