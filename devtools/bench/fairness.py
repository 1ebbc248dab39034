"""Fairness benchmark (`manage.py bench fairness`, and a line of `make bench`) against the
running dev stack: two tenants on one platform.

1. Flood. Tenant A bulk-submits N no-op jobs from T threads (1,000 a request, the API's
   bulk maximum) while tenant B submits single jobs at R a second, until A's last job ran.
   Reported: B's start wait (submit → started_at: p50, p99, max) and A's throughput (first
   submit to last success). Run with fair dispatch on, and off (FAIR_DISPATCH=false: each
   queue's room first come, first served, no express lane, no share of slots), in
   interleaved rounds, median and spread: the same stack, the same machine, the same jobs.
2. Long jobs. A submits as many S-second `demo.sleep` jobs as there are workers (it may take
   only its share of them); once they run, B submits R a second for D seconds. Reported:
   B's start wait, on and off. A's sleeps are cancelled afterwards (they stop early).

Goals (issue 28), same run: B's p99 start wait ≤ 1 s during A's flood, and A's throughput
with fairness on within 5 % of the run with it off. Fair dispatch is switched by restarting
the relay and the workers with FAIR_DISPATCH through circus (`make run`'s supervisor).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from django.db import connection
from django.db.models import Max
from django.utils import timezone

from devtools.bench.api import bench_token
from devtools.bench.pipeline import BULK, Meter, Run, _chunks, _session, in_threads, restart_roles
from devtools.bench.stats import Progress, percentile
from jobs.models import Job, JobStatus
from metrics import heartbeat

ON, OFF = "on", "off"


@dataclass
class Flood:
    mode: str
    run: Run  # A's throughput, and where the CPU went
    waits: list[float]  # B's start waits, seconds
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the run, B's wait)

    def p(self, q: float) -> float:
        return percentile(self.waits, q) if self.waits else float("nan")


def _workers() -> int:
    """Live worker processes: those that beat within the last two beats (a restarted one's
    old record stays until it expires)."""
    from django.conf import settings

    fresh = 2 * settings.HEARTBEAT_SECONDS
    return sum(1 for r in heartbeat.roles() if r["role"] == "worker" and r["age"] < fresh)


def set_fair(mode: str) -> None:
    """Restart the relay and the workers with fair dispatch on or off."""
    restart_roles(["relay", "worker"], {"FAIR_DISPATCH": "true" if mode == ON else "false"})


def _delete(owner_ids: Sequence[int]) -> None:
    """The tenants' jobs, in plain SQL (the ORM's delete collects 200,000 rows first)."""
    with connection.cursor() as cur:
        cur.execute("DELETE FROM jobs_outbox WHERE job_id IN (SELECT id FROM jobs_job WHERE owner_id = ANY(%s))",
                    [list(owner_ids)])  # fmt: skip
        cur.execute(
            "DELETE FROM jobs_jobattempt WHERE job_id IN (SELECT id FROM jobs_job WHERE owner_id = ANY(%s))",
            [list(owner_ids)],
        )
        cur.execute("DELETE FROM jobs_job WHERE owner_id = ANY(%s)", [list(owner_ids)])


def _settle(owner_ids: Sequence[int], seconds: float = 120.0) -> None:
    """Wait until nothing of the tenants' is on its way or running."""
    live = Job.objects.filter(owner_id__in=owner_ids).exclude(
        status__in=[JobStatus.SUCCEEDED, JobStatus.DEAD_LETTER, JobStatus.CANCELLED]
    )
    deadline = time.monotonic() + seconds
    while live.exists() and time.monotonic() < deadline:
        time.sleep(0.5)


class Trickle(threading.Thread):
    """B: single submits at `rate` a second until stopped; the ids it made, when."""

    def __init__(self, base: str, token: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.base, self.token, self.rate = base, token, rate
        self.stop = threading.Event()
        self.ids: list[str] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            session = _session(self.token)
            body = orjson.dumps({"type": "demo.noop"})
            t0, i = time.perf_counter(), 0
            while not self.stop.is_set():
                self.stop.wait(max(0.0, t0 + i / self.rate - time.perf_counter()))
                if self.stop.is_set():
                    break
                response = session.post(f"{self.base}/api/v1/jobs/", data=body)
                response.raise_for_status()
                self.ids.append(response.json()["id"])
                i += 1
        except BaseException as exc:
            self.errors.append(exc)


def _waits(ids: Sequence[str]) -> tuple[list[float], list[tuple[float, float]]]:
    """B's start waits (all its jobs started, at most 120 s), and each over the run's time."""
    jobs = Job.objects.filter(id__in=list(ids))
    deadline = time.monotonic() + 120
    while jobs.filter(started_at__isnull=True).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    rows = list(jobs.values_list("created_at", "started_at"))
    waits = [((s or timezone.now()) - c).total_seconds() for c, s in rows]  # not started in time: counted as now
    start = min((c for c, _ in rows), default=None)
    timeline = sorted(((c - start).total_seconds(), w) for (c, _), w in zip(rows, waits, strict=True)) if start else []
    return waits, timeline


def flood(base: str, a: tuple[int, str], b: tuple[int, str], *, mode: str, n: int, threads: int,
          rate: float) -> Flood:  # fmt: skip
    """A floods n no-op jobs; B trickles at `rate` until A's last job ran."""
    (a_id, a_token), (_, b_token) = a, b
    bodies = {k: orjson.dumps({"jobs": [{"type": "demo.noop"}] * k}) for k in {*_chunks(n, BULK)}}

    def sender() -> Any:
        session = _session(a_token)
        return lambda k: session.post(f"{base}/api/v1/jobs/bulk/", data=bodies[k]).raise_for_status()

    since = timezone.now()
    trickle = Trickle(base, b_token, rate)
    meter = Meter()
    meter.start()
    trickle.start()
    progress = Progress(f"flood, fairness {mode}", n)
    in_threads(threads, n, BULK, sender)
    mine = Job.objects.filter(owner_id=a_id, created_at__gte=since)
    while (done := mine.filter(status=JobStatus.SUCCEEDED).count()) < n:
        progress.update(done)
        if mine.filter(status__in=[JobStatus.DEAD_LETTER, JobStatus.CANCELLED]).exists():
            raise SystemExit("a benchmark job failed; see the worker log")
        time.sleep(0.5)
    trickle.stop.set()
    trickle.join(10)
    if trickle.errors:
        raise trickle.errors[0]
    last = mine.aggregate(last=Max("finished_at"))["last"]
    run = meter.stop(f"A, fairness {mode}", "flood", n, (last - since).total_seconds())
    waits, timeline = _waits(trickle.ids)
    return Flood(mode, run, waits, timeline)


def long_jobs(base: str, a: tuple[int, str], b: tuple[int, str], *, mode: str, seconds: float, rate: float,
              duration: float) -> Flood:  # fmt: skip
    """A's `seconds`-long sleeps on every worker it may take; meanwhile B at `rate` for `duration`."""
    (_, a_token), (_, b_token) = a, b
    workers = max(1, _workers())
    session = _session(a_token)
    body = orjson.dumps({"jobs": [{"type": "demo.sleep", "payload": {"seconds": seconds}}] * workers})
    sleeps = [j["id"] for j in session.post(f"{base}/api/v1/jobs/bulk/", data=body).json()["jobs"]]
    started = Job.objects.filter(id__in=sleeps, history__isnull=False)
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # every worker A may take runs a sleep by now (its others are deferred, or running)
    meter = Meter()
    meter.start()
    trickle = Trickle(base, b_token, rate)
    t0 = time.monotonic()
    trickle.start()
    progress = Progress(f"long jobs, fairness {mode}, seconds", int(duration))
    while (elapsed := time.monotonic() - t0) < duration:
        progress.update(int(elapsed))
        time.sleep(min(1.0, duration - elapsed))
    trickle.stop.set()
    trickle.join(10)
    waits, timeline = _waits(trickle.ids)
    run = meter.stop(f"B, fairness {mode}", "long jobs", len(trickle.ids), duration)
    for job_id in sleeps:
        session.post(f"{base}/api/v1/jobs/{job_id}/cancel/")
    return Flood(mode, run, waits, timeline)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def report(floods: list[Flood], longs: list[Flood], *, n: int, threads: int, rate: float, out: Any) -> dict[str, float]:
    results: dict[str, float] = {}
    out.write(f"\nflood: A {n:,} no-op jobs from {threads} threads; B {rate:g} jobs/s (single submits)\n")
    out.write(f"{'fairness':9} {'A jobs/s median':>16} {'spread':>13} {'B p50 s':>8} {'B p99 s':>8} {'B max s':>8} "
              f"{'runs':>5}\n")  # fmt: skip
    for mode in (ON, OFF):
        runs = [f for f in floods if f.mode == mode]
        if not runs:
            continue
        rates = [f.run.rate for f in runs]
        p50, p99, worst = (_median([f.p(q) for f in runs]) for q in (50, 99, 100))
        results |= {f"{mode}_rate": _median(rates), f"{mode}_p50": p50, f"{mode}_p99": p99, f"{mode}_max": worst}
        out.write(f"{mode:9} {_median(rates):>16,.0f} {_spread(rates):>13} {p50:>8.3f} {p99:>8.3f} {worst:>8.3f} "
                  f"{len(runs):>5}\n")  # fmt: skip
    if "on_rate" in results and "off_rate" in results:
        ratio = results["throughput_ratio"] = results["on_rate"] / results["off_rate"]
        verdict = "met" if ratio >= 0.95 else "NOT met"
        out.write(f"A's throughput, fairness on ÷ off: {ratio:.3f} (goal ≥ 0.95: {verdict})\n")
    if "on_p99" in results:
        verdict = "met" if results["on_p99"] <= 1.0 else "NOT met"
        out.write(
            f"B's p99 start wait during A's flood, fairness on: {results['on_p99']:.3f} s (goal ≤ 1 s: {verdict})\n"
        )
    for f in longs:
        out.write(f"long jobs, fairness {f.mode}: B p50 {f.p(50):.3f} s, p99 {f.p(99):.3f} s, max {f.p(100):.3f} s "
                  f"({len(f.waits)} jobs)\n")  # fmt: skip
        results[f"long_{f.mode}_p99"] = f.p(99)
    return results


def chart(path: Path, floods: list[Flood], longs: list[Flood]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {ON: "tab:blue", OFF: "tab:red"}
    shown: set[str] = set()
    for f in floods:
        xs, ys = zip(*f.timeline, strict=True) if f.timeline else ((), ())
        label = f"fairness {f.mode}" if f.mode not in shown else None
        shown.add(f.mode)
        left.plot(xs, ys, ".", color=colors[f.mode], alpha=0.5, markersize=3, label=label)
    left.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="goal: p99 ≤ 1 s")
    left.set(yscale="log", xlabel="seconds into A's flood", ylabel="B's submit → start, s (log)",
             title="B's jobs while A floods (every round)")  # fmt: skip
    left.legend(fontsize=8)
    left.grid(alpha=0.3, which="both")
    for f in longs:
        xs, ys = zip(*f.timeline, strict=True) if f.timeline else ((), ())
        right.plot(xs, ys, ".", color=colors[f.mode], markersize=4, label=f"fairness {f.mode}")
    right.set(yscale="log", xlabel="seconds into B's run", ylabel="B's submit → start, s (log)",
              title="B's jobs while A's long jobs run")  # fmt: skip
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(*, base: str, n: int, threads: int, rate: float, rounds: int, long_seconds: float, long_duration: float,
        out: Any, chart_path: Path | None = None) -> dict[str, float]:  # fmt: skip
    a, b = bench_token("bench-a"), bench_token("bench-b")
    owners = [a[0], b[0]]
    floods: list[Flood] = []
    longs: list[Flood] = []
    out.write(f"bench fairness: {_workers()} workers; {rounds} rounds of the flood, fairness on and off\n")
    try:
        for i in range(rounds):
            for mode in (ON, OFF) if i % 2 == 0 else (OFF, ON):  # interleaved: drift touches both alike
                out.write(f"round {i + 1} of {rounds}: fairness {mode}\n")
                set_fair(mode)
                floods.append(flood(base, a, b, mode=mode, n=n, threads=threads, rate=rate))
                out.write(f"  A {floods[-1].run.rate:,.0f} jobs/s; B p99 {floods[-1].p(99):.3f} s\n")
                _settle(owners)
                _delete(owners)
        if long_seconds:
            for mode in (ON, OFF):
                out.write(f"long jobs: fairness {mode}, {long_seconds:g} s sleeps, B for {long_duration:g} s\n")
                set_fair(mode)
                longs.append(long_jobs(base, a, b, mode=mode, seconds=long_seconds, rate=rate,
                                       duration=long_duration))  # fmt: skip
                _settle(owners)
                _delete(owners)
    finally:
        set_fair(ON)
        _settle(owners, 30)
        _delete(owners)
    results = report(floods, longs, n=n, threads=threads, rate=rate, out=out)
    if chart_path is not None:
        chart(chart_path, floods, longs)
        out.write(f"chart: {chart_path}\n")
    return results
