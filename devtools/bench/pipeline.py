"""End-to-end benchmark (`make bench`, `manage.py bench pipeline`) against the running stack.

1. Rounds (3 by default), each running every system once, interleaved so that drift in a
   noisy machine touches all of them alike; the report gives each one's median and spread:
   - pipeline: N `demo.noop` jobs through the bulk API from T client threads → outbox →
     relay → Kafka → bridge → Celery → worker → SUCCEEDED, first submit to last success;
   - each peer (Dramatiq, Huey, PgQueuer, raw Celery), with as many worker processes as ours
     on the same Redis (PgQueuer: the same PostgreSQL server, a database of its own), two
     ways: end to end (its workers running, T threads enqueue N no-op tasks, in its batch
     API's chunks where it has one, until the last is done) and drain only (N already
     queued, from the first task done to the last).
2. Light load: single submits at a steady rate; submit→start latency from the job rows.
3. A latency curve against offered load, and a sweep of fixed batch sizes.

Every timed run also accounts the machine's busy cores and each process's CPU, and says
what the system ran out of: all cores, one core (a single busy process), or neither
(it was waiting on round trips).
"""

from __future__ import annotations

import importlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
import redis
import requests
from django.conf import settings
from django.db.models import Max, QuerySet
from django.utils import timezone

from config import broker
from devtools.bench import raw_count
from devtools.bench.api import bench_token, database_url, delete_bench_jobs
from devtools.bench.processes import CpuMeter
from devtools.bench.stats import Progress, percentile
from jobs.models import Job, JobStatus

REPO = Path(__file__).resolve().parents[2]
BULK = 1000  # jobs per bulk request, the API's maximum
PIPELINE = "pipeline"
E2E, DRAIN = "end to end", "drain only"


@dataclass
class Run:
    """One timed run of one system: its rate and where the CPU went meanwhile."""

    system: str
    mode: str
    jobs: int
    rate: float
    wall: float
    cpu: dict[str, float]  # role → CPU seconds, engines included
    busiest: tuple[str, float]  # (role of the busiest single process, its CPU seconds)
    machine_busy: float  # cores busy on the whole machine (steal counts as busy)

    def cpu_per_job(self) -> float:
        return sum(self.cpu.values()) / self.jobs

    def ran_out_of(self) -> str:
        cores = os.cpu_count() or 1
        role, seconds = self.busiest
        one = seconds / self.wall
        if self.machine_busy >= 0.9 * cores:
            return f"CPU ({self.machine_busy:.2f} of {cores} cores busy)"
        if one >= 0.85:
            return f"one core ({role}: {one:.0%} of a core)"
        return f"neither: waiting ({self.machine_busy:.2f} cores busy, {role} {one:.0%} of a core)"


class Meter:
    """CpuMeter plus the machine's busy cores, around a timed run."""

    def __init__(self) -> None:
        self.cpu = CpuMeter()

    @staticmethod
    def _machine() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    def start(self) -> None:
        self.busy0 = self._machine()
        self.cpu.start()

    def stop(self, system: str, mode: str, jobs: int, elapsed: float) -> Run:
        busy = self._machine() - self.busy0
        by_role, wall, busiest = self.cpu.stop()
        return Run(system, mode, jobs, jobs / elapsed, wall, by_role, busiest, busy / wall)


def _chunks(n: int, size: int) -> Iterator[int]:
    while n > 0:
        yield min(size, n)
        n -= size


def in_threads(threads: int, n: int, chunk: int, setup: Callable[[], Callable[[int], None]]) -> None:
    """Send n items in chunks of `chunk` from `threads` threads; each thread calls `setup`
    once for its own sender (a session, a producer) and takes chunks until none are left."""
    pending = _chunks(n, chunk)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            send = setup()
            while True:
                with lock:
                    size = next(pending, 0)
                if not size or errors:
                    return
                send(size)
        except BaseException as exc:  # reported by the caller's thread
            errors.append(exc)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]


@dataclass(frozen=True)
class Peer:
    """Another job queue on the same Redis (or, for PgQueuer, the same PostgreSQL server), with
    as many worker processes as ours: its worker command, a per-thread sender of k no-op
    tasks, and the counter its task bumps."""

    name: str
    module: str  # devtools.bench.raw_* (imported after BENCH_RAW_BROKER is set)
    command: Callable[[int], list[str]]  # worker processes → the worker's command line
    sender: Callable[[Any], Callable[[int], None]]  # (the imported module) → send(k), one per thread
    jobs: Callable[[int], int] = field(default=lambda n: n)  # how many of the run's n it takes
    chunk: int = 100  # tasks a sender call enqueues: its batch API's chunk, as our bulk's 1,000

    def _module(self) -> Any:
        # Read by the module, here and in its workers.
        os.environ["BENCH_RAW_BROKER"] = settings.REDIS_URL
        os.environ["BENCH_RAW_DATABASE"] = database_url()
        return importlib.import_module(self.module)

    def _start(self, workers: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", *self.command(workers)], cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def run(self, mode: str, n: int, workers: int, threads: int) -> Run:
        """End to end: workers up first, then `threads` threads enqueue n, until all are done.
        Drain only: n enqueued first, then the workers start; timed from the first task done."""
        raw = self._module()
        r = broker.client()  # the same Redis (REDIS_URL); the peer's keys are raw, as it writes them
        _forget(r, raw)
        meter = Meter()
        progress = Progress(f"{self.name} ({mode})", n)
        worker = None
        try:
            if mode == DRAIN:
                in_threads(threads, n, self.chunk, lambda: self.sender(raw))
                worker = self._start(workers)
                while (first := int(r.get(raw.COUNTER) or 0)) == 0:
                    self._check(worker)
                    time.sleep(0.005)
                meter.start()
                started = time.perf_counter()
            else:
                worker = self._start(workers)
                time.sleep(4)  # let the workers boot and connect
                first = 0
                meter.start()
                started = time.perf_counter()
                in_threads(threads, n, self.chunk, lambda: self.sender(raw))
            while (done := int(r.get(raw.COUNTER) or 0)) < n:
                progress.update(done)
                self._check(worker)
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
            time.sleep(2 * raw_count.FLUSH_SECONDS)  # any count still in a worker's flusher
            if (done := int(r.get(raw.COUNTER) or 0)) != n:
                raise SystemExit(f"{self.name} ran {done} tasks of {n}: its count is not one a task")
            return meter.stop(self.name, mode, n - first, elapsed)
        finally:
            if worker is not None:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
            _forget(r, raw)

    def _check(self, worker: subprocess.Popen[bytes]) -> None:
        if worker.poll() is not None:
            raise SystemExit(f"{self.name} worker exited with {worker.returncode}")


def _forget(r: redis.Redis, raw: Any) -> None:
    """Empty a peer's queue and counter (and make its database, if it keeps one)."""
    keys = [raw.COUNTER, raw.QUEUE, *r.scan_iter(f"*{raw.QUEUE}*", count=1000)]
    r.delete(*keys)
    if hasattr(raw, "prepare"):
        raw.prepare(database_url())


def _celery_sender(raw: Any) -> Callable[[int], None]:
    def send(k: int) -> None:
        # A producer from the pool for each chunk, given back after it: the pool is bounded
        # (broker_pool_limit), and holding one per thread for good ran it dry by round 2.
        with raw.app.producer_or_acquire() as producer:
            for _ in range(k):
                raw.app.send_task("bench.noop", queue=raw.QUEUE, producer=producer)

    return send


def _call_sender(raw: Any) -> Callable[[int], None]:
    one = raw.noop.send if hasattr(raw.noop, "send") else raw.noop  # Dramatiq actor / Huey task

    def send(k: int) -> None:
        for _ in range(k):
            one()

    return send


PEERS = (
    Peer("Dramatiq", "devtools.bench.raw_dramatiq", lambda w: [
        "dramatiq", "devtools.bench.raw_dramatiq", "--processes", str(w)], _call_sender),
    Peer("Huey", "devtools.bench.raw_huey", lambda w: [
        "huey.bin.huey_consumer", "devtools.bench.raw_huey.huey", "--workers", str(w), "--worker-type", "process",
        "--logfile", os.devnull], _call_sender),
    # Prefork Celery drains a few hundred a second: a quarter of the jobs keeps its runs short.
    Peer("Celery", "devtools.bench.raw_celery", lambda w: [
        "celery", "-A", "devtools.bench.raw_celery", "worker", "--pool", "prefork", "--concurrency", str(w),
        "--queues", "bench-raw-celery", "--without-mingle", "--without-gossip", "--loglevel", "WARNING"],
        _celery_sender, jobs=lambda n: max(n // 4, 1)),
    Peer("PgQueuer", "devtools.bench.raw_pgqueuer", lambda w: ["devtools.bench.raw_pgqueuer", str(w)],
         lambda raw: raw.sender(), chunk=BULK),
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


def pipeline(base: str, token: str, n: int, owner_id: int, threads: int = 1) -> Run:
    """n no-op jobs posted in bulks of 1,000 from `threads` threads, until all SUCCEEDED."""
    bodies = {k: orjson.dumps({"jobs": [{"type": "demo.noop"}] * k}) for k in {*_chunks(n, BULK)}}

    def sender() -> Callable[[int], None]:
        session = _session(token)
        return lambda k: session.post(f"{base}/api/v1/jobs/bulk/", data=bodies[k]).raise_for_status()

    since = timezone.now()
    progress = Progress(PIPELINE, n)
    meter = Meter()
    meter.start()
    in_threads(threads, n, BULK, sender)
    mine = Job.objects.filter(owner_id=owner_id, created_at__gte=since)
    # Counting 20,000 rows is work for PostgreSQL, on the cores being measured: poll slowly
    # and take the end from the rows' own finished_at, not from when a poll noticed it.
    while (done := mine.filter(status=JobStatus.SUCCEEDED).count()) < n:
        progress.update(done)
        failed = mine.filter(status__in=[JobStatus.DEAD_LETTER, JobStatus.CANCELLED]).count()
        if failed:
            raise SystemExit(f"{failed} benchmark job(s) failed; see the worker log")
        time.sleep(0.5)
    last: datetime = mine.aggregate(last=Max("finished_at"))["last"]  # every one SUCCEEDED: never None
    elapsed = (last - since).total_seconds()
    return meter.stop(PIPELINE, E2E, n, elapsed)


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
    """Restart `make run`'s bridge with fixed batches of `size` (BRIDGE_BATCH_SIZE and
    BRIDGE_BATCH_MAX; None: as configured)."""
    value = None if size is None else str(size)
    restart_bridge({"BRIDGE_BATCH_SIZE": value, "BRIDGE_BATCH_MAX": value})


def restart_bridge(overrides: dict[str, str | None]) -> None:
    """Restart `make run`'s bridge with these environment variables (None: as configured),
    and wait until it holds its partitions again."""
    restart_roles(["bridge"], overrides, ready=lambda r: bool(r.get("assigned")))


def restart_roles(
    roles: Sequence[str],
    overrides: dict[str, str | None],
    ready: Callable[[dict[str, Any]], bool] = lambda r: True,
    *,
    beating: Sequence[str] | None = None,
    envs: dict[str, dict[str, str]] | None = None,
) -> dict[str, dict[str, str]]:
    """Restart `make run`'s roles (circus watchers) with these environment variables (None:
    as configured), through circus' control socket, and wait until each of `beating` (default:
    all; the web sends no heartbeat) beats again (and is `ready`, by its heartbeat). `envs`:
    each role's whole environment instead, as this returned it (what each had before)."""
    from circus.client import CircusClient

    from devtools import engines
    from metrics import heartbeat

    beating = list(roles if beating is None else beating)
    client = CircusClient(endpoint=f"ipc://{engines.default_data_dir() / 'circus' / 'control.sock'}", timeout=60)
    old = {r["pid"] for r in heartbeat.roles() if r["role"] in beating}
    before: dict[str, dict[str, str]] = {}
    for role in roles:
        env = client.call({"command": "get", "properties": {"name": role, "keys": ["env"]}})["options"]["env"]
        before[role] = dict(env)
        if envs is not None:
            env = envs[role]
        else:
            env = {k: v for k, v in env.items() if k not in overrides}
            env.update({k: v for k, v in overrides.items() if v is not None})
        # Stop, set, start: setting the env of a running watcher reloads it, which may start
        # the new bridge before the old one left, and a member leaving mid-join wedges the
        # embedded broker's group (see docs/reliability.md).
        client.call({"command": "stop", "properties": {"name": role, "waiting": True}})
        client.call({"command": "set", "properties": {"name": role, "options": {"env": env}}})
        client.call({"command": "start", "properties": {"name": role, "waiting": True}})
    deadline = time.monotonic() + 90
    back: set[str] = set()  # each role once a new process of it beat and was ready (they beat out of step)
    while time.monotonic() < deadline:
        back |= {r["role"] for r in heartbeat.roles() if r["role"] in beating and r["pid"] not in old and ready(r)}
        if back == set(beating):
            return before
        time.sleep(0.5)
    raise SystemExit(f"{', '.join(beating)} did not come back within 90 s")


def cpu_table(run: Run) -> str:
    """Where a run's CPU went, per role and engine, per job."""
    total = sum(run.cpu.values())
    lines = [f"{'process (CPU during the pipeline run)':40} {'CPU s':>7} {'µs/job':>8} {'share':>6}"]
    for role, seconds in sorted(run.cpu.items(), key=lambda kv: -kv[1]):
        if seconds >= 0.05:
            lines.append(f"{role:40} {seconds:>7.1f} {seconds / run.jobs * 1e6:>8.0f} {seconds / total:>6.0%}")
    busy = f"({total / run.wall:.2f} of {os.cpu_count()} cores busy)"
    lines.append(f"{'all':40} {total:>7.1f} {total / run.jobs * 1e6:>8.0f}   {busy}")
    return "\n".join(lines)


@dataclass
class Summary:
    """The repeated runs of one system in one mode."""

    system: str
    mode: str
    runs: list[Run]

    @property
    def median(self) -> float:
        return statistics.median(r.rate for r in self.runs)

    @property
    def spread(self) -> str:
        rates = [r.rate for r in self.runs]
        return f"{min(rates):,.0f} to {max(rates):,.0f}"

    def middle(self) -> Run:
        """The run whose rate is the median (its CPU accounting stands for the system)."""
        return sorted(self.runs, key=lambda r: r.rate)[len(self.runs) // 2]


def chart(path: Path, summaries: list[Summary], sizes: dict[int, float], load: dict[float, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    panels = 1 + bool(sizes) + bool(load)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.8))
    axes = list(axes) if panels > 1 else [axes]
    bars = axes.pop(0)
    labels = [f"{s.system}\n{s.mode}" for s in summaries]
    medians = [s.median for s in summaries]
    low = [s.median - min(r.rate for r in s.runs) for s in summaries]
    high = [max(r.rate for r in s.runs) - s.median for s in summaries]
    colors = ["tab:blue" if s.system == PIPELINE else "tab:gray" if s.mode == E2E else "silver" for s in summaries]
    bars.bar(range(len(summaries)), medians, yerr=[low, high], color=colors, capsize=4)
    bars.set_xticks(range(len(summaries)), labels, fontsize=7)
    runs = len(summaries[0].runs)
    bars.set(ylabel="jobs/s", title=f"No-op jobs/s, median of {runs} interleaved runs (bars: min to max)")
    bars.grid(alpha=0.3, axis="y")
    if sizes:
        left = axes.pop(0)
        xs = sorted(sizes)
        left.plot(xs, [sizes[x] for x in xs], "o-", color="tab:blue", label="pipeline (bulk submit → SUCCEEDED)")
        left.set(xscale="log", xlabel="fixed batch size (jobs per Celery message, log scale)", ylabel="jobs/s",
                 title="Throughput against batch size")  # fmt: skip
        left.set_xticks(xs, [str(x) for x in xs])
        left.legend(fontsize=8)
        left.grid(alpha=0.3)
    if load:
        right = axes.pop(0)
        rates = sorted(load)
        for q, style in ((50, "o-"), (95, "s--"), (99, "^:")):
            right.plot(rates, [percentile(load[r], q) * 1000 for r in rates], style, label=f"p{q}")
        right.axhline(15, color="tab:red", linewidth=0.8, label="p50 target 15 ms (light load)")
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


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def compare(base: str, token: str, owner_id: int, *, n: int, concurrency: int, threads: int, rounds: int,
            peers: Sequence[Peer], out: Any) -> list[Summary]:  # fmt: skip
    """Every system `rounds` times, interleaved: each round runs each system once."""
    runs: dict[tuple[str, str], list[Run]] = {(PIPELINE, E2E): []}
    for peer in peers:
        runs[(peer.name, E2E)], runs[(peer.name, DRAIN)] = [], []
    for i in range(rounds):
        out.write(f"round {i + 1} of {rounds}: pipeline {n} jobs from {threads} threads\n")
        run = pipeline(base, token, n, owner_id, threads)
        runs[(PIPELINE, E2E)].append(run)
        delete_bench_jobs(owner_id)
        for peer in peers:
            for mode in (E2E, DRAIN):
                k = peer.jobs(n)
                out.write(f"round {i + 1} of {rounds}: {peer.name} {mode}, {k} tasks, {concurrency} processes\n")
                runs[(peer.name, mode)].append(peer.run(mode, k, concurrency, threads))
    return [Summary(system, mode, found) for (system, mode), found in runs.items()]


def report(summaries: list[Summary], threads: int, latencies: list[float], rate: float, out: Any) -> dict[str, float]:
    ours = next(s for s in summaries if s.system == PIPELINE)
    out.write(
        f"\n{'system':10} {'how':46} {'median jobs/s':>13} {'spread':>13} {'pipeline ÷':>10} "
        f"{'µs CPU/job':>10}  ran out of (median run)\n"
    )
    ours_how = f"bulk submit from {threads} threads → SUCCEEDED"
    how = {E2E: f"workers running, {threads} threads enqueue", DRAIN: "drain only (all queued before workers start)"}
    for s in summaries:
        middle = s.middle()
        out.write(
            f"{s.system:10} {ours_how if s is ours else how[s.mode]:46} {s.median:>13,.0f} {s.spread:>13} "
            f"{ours.median / s.median:>10.2f} {middle.cpu_per_job() * 1e6:>10.0f}  {middle.ran_out_of()}\n"
        )
    contenders = [s for s in summaries if s.system in ("Dramatiq", "Huey")] or [s for s in summaries if s is not ours]
    results: dict[str, float] = {f"{s.system} {s.mode}": s.median for s in summaries}
    out.write("\n")
    for mode, target, key in ((E2E, 1.3, "e2e_ratio"), (DRAIN, 1.0, "drain_ratio")):
        best = max((s for s in contenders if s.mode == mode), key=lambda s: s.median, default=None)
        if best is not None:
            results[key] = ratio = ours.median / best.median
            out.write(f"{mode}: pipeline ÷ best peer {mode} ({best.system}): {ratio:.2f}  "
                      f"(target ≥ {target:g}: {_verdict(ratio >= target)})\n")  # fmt: skip
    pgq = next((s for s in summaries if s.system == "PgQueuer" and s.mode == E2E), None)
    if pgq is not None:
        results["pgqueuer_ratio"] = ratio = ours.median / pgq.median
        out.write(f"{E2E}: pipeline ÷ PgQueuer {E2E}: {ratio:.2f}  (target ≥ 0.85: {_verdict(ratio >= 0.85)})\n")
    cpu = ours.middle().cpu_per_job()
    p50, p95, p99 = (percentile(latencies, q) for q in (50, 95, 99))
    out.write(
        f"CPU per job, all roles and engines (median run): {cpu * 1e6:.0f} µs  "
        f"(target ≤ 400: {_verdict(cpu <= 400e-6)})\n"
        f"submit→start at {rate:g} jobs/s: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
        f"(targets p50 ≤ 15 ms: {_verdict(p50 <= 0.015)}, p99 ≤ 50 ms: {_verdict(p99 <= 0.05)})\n"
        f"pipeline jobs/min: {ours.median * 60:,.0f}\n\n"
        f"{cpu_table(ours.middle())}\n"
    )
    return {**results, "cpu_per_job": cpu, "p50": p50, "p95": p95, "p99": p99}


def run(*, base: str, n: int, concurrency: int, rate: float, seconds: float, keep: bool, out: Any,
        threads: int = 4, rounds: int = 3, peers: Sequence[str] = ("Dramatiq", "Huey", "PgQueuer", "Celery"),
        batch_sizes: Sequence[int] = (), sweep_jobs: int = 10_000, loads: Sequence[float] = (),
        load_seconds: float = 5.0, chart_path: Path | None = None) -> dict[str, float]:  # fmt: skip
    owner_id, token = bench_token()
    sizes: dict[int, float] = {}
    by_load: dict[float, list[float]] = {}
    chosen = [p for p in PEERS if p.name in peers]
    try:
        summaries = compare(base, token, owner_id, n=n, concurrency=concurrency, threads=threads, rounds=rounds,
                            peers=chosen, out=out)  # fmt: skip
        out.write(f"light load: {rate:g} jobs/s for {seconds:g}s\n")
        latencies = light_load(base, token, rate, seconds, owner_id)
        for load in loads:
            out.write(f"offered load: {load:g} jobs/s for {load_seconds:g}s\n")
            by_load[load] = offered_load(base, token, load, load_seconds, owner_id)
        try:
            for size in batch_sizes:
                out.write(f"batch size {size}: bridge restarted, {sweep_jobs} jobs\n")
                set_bridge_batch_size(size)
                sizes[size] = pipeline(base, token, sweep_jobs, owner_id, threads).rate
        finally:
            if batch_sizes:
                set_bridge_batch_size(None)
    finally:
        if not keep:
            delete_bench_jobs(owner_id)
    results = report(summaries, threads, latencies, rate, out)
    if sizes:
        out.write(f"\n{'fixed batch size':>18} {'jobs/s':>9}\n")
        for size, value in sizes.items():
            out.write(f"{size:>18} {value:>9,.0f}\n")
    if by_load:
        out.write(f"\n{'offered jobs/s':>15} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}\n")
        for load, values in by_load.items():
            out.write(f"{load:>15g} " + " ".join(f"{percentile(values, q) * 1000:>8.1f}" for q in (50, 95, 99)) + "\n")
    if chart_path is not None:
        chart(chart_path, summaries, sizes, by_load)
        out.write(f"\nchart: {chart_path}\n")
    return results
