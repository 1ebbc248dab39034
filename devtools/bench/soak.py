"""`make soak` (`manage.py bench soak`): a long steady run against the running stack.

Submits `--jobs` jobs (default 200,000) through the bulk API at `--rate` jobs/s (a mix with
retries and dead letters: 90 % succeed at once, 5 % succeed on their second attempt, 5 % fail
for good), samples the memory (RSS) of every role process every 10 seconds, and
reports: the end-to-end rate next to raw Celery measured in the same run, how each role's
memory moved from the first minute to the last, and that every job reached the state it
should. A chart of memory over time goes to docs/soak-memory.png.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import requests
from django.db.models import Count
from django.utils import timezone

from devtools.bench.api import bench_token
from devtools.bench.pipeline import DRAIN, PEERS
from devtools.bench.processes import role_processes
from devtools.bench.stats import Out, Progress
from jobs.models import Job, JobStatus

REPO = Path(__file__).resolve().parents[2]
FAST = {"initial": 0.2, "factor": 2.0, "max": 1.0, "jitter": 0.1}


class MemorySampler(threading.Thread):
    def __init__(self, every: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.stop = threading.Event()
        self.samples: list[tuple[float, dict[str, float]]] = []  # (seconds, role → MiB summed over its processes)
        self.started = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            by_role: dict[str, float] = {}
            for pid, role in role_processes(engines=True).items():
                with contextlib.suppress(psutil.Error):
                    by_role[role] = by_role.get(role, 0.0) + psutil.Process(pid).memory_info().rss / 2**20
            self.samples.append((time.monotonic() - self.started, by_role))
            self.stop.wait(self.every)


def submit(base: str, token: str, total: int, rate: float, out: Out) -> float:
    session = requests.Session()
    session.headers.update({"Authorization": f"Token {token}", "Content-Type": "application/json"})
    batch = max(1, int(rate))  # one bulk request per second
    # One type for the retries, mostly succeeding at once: a type that failed half the time
    # would (rightly) open its circuit breaker and hold its jobs back.
    mix = [{"type": "demo.flaky", "payload": {"failures": 0}}] * 18 + [
        {"type": "demo.flaky", "payload": {"failures": 1}, "backoff": FAST},
        {"type": "demo.fail", "payload": {"retryable": False}},
    ]
    progress = Progress("soak submit", total, every=30)
    started = time.perf_counter()
    sent = 0
    while sent < total:
        size = min(batch, total - sent)
        body = orjson.dumps({"jobs": [mix[(sent + i) % len(mix)] for i in range(size)]})
        for _ in range(30):
            try:
                if session.post(f"{base}/api/v1/jobs/bulk/", data=body, timeout=30).status_code == 201:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        sent += size
        progress.update(sent)
        time.sleep(max(0.0, started + sent / rate - time.perf_counter()))
    return time.perf_counter() - started


def run(*, base: str, jobs: int, rate: float, keep: bool, out: Out) -> dict[str, Any]:
    owner_id, token = bench_token()
    out.write("baseline: raw Celery, 20,000 no-op tasks ...\n")
    celery = next(p for p in PEERS if p.name == "Celery")
    baseline = celery.run(DRAIN, 20_000, 2, 1).rate
    since = timezone.now()
    sampler = MemorySampler()
    sampler.start()
    try:
        submit_seconds = submit(base, token, jobs, rate, out)
        mine = Job.objects.filter(owner_id=owner_id, created_at__gte=since)
        progress = Progress("soak drain", jobs, every=30)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = mine.filter(status__in=[JobStatus.SUCCEEDED, JobStatus.DEAD_LETTER]).count()
            progress.update(done)
            if done >= jobs:
                break
            time.sleep(5)
        elapsed = time.monotonic() - sampler.started
        counts = dict(mine.order_by().values_list("status").annotate(n=Count("id")))
        last_finish = mine.order_by("-finished_at").values_list("finished_at", flat=True).first()
    finally:
        sampler.stop.set()
        sampler.join(15)
    rate_e2e = jobs / ((last_finish - since).total_seconds()) if last_finish else 0.0
    out.write(
        f"\nsubmitted {jobs:,} jobs in {submit_seconds:.0f} s (offered {rate:.0f}/s); all done after {elapsed:.0f} s\n"
    )
    out.write(f"states: {counts}\n")
    expected_dead = sum(1 for i in range(jobs) if i % 20 == 19)
    out.write(f"expected dead letters {expected_dead:,}, got {counts.get('DEAD_LETTER', 0):,}; "
              f"unfinished {jobs - counts.get('SUCCEEDED', 0) - counts.get('DEAD_LETTER', 0):,}\n")  # fmt: skip
    out.write(f"end-to-end rate {rate_e2e:.0f} jobs/s (offered {rate:.0f}/s); raw Celery drained {baseline:.0f}/s "
              f"in the same run ({rate_e2e / baseline:.2f}x)\n")  # fmt: skip
    report = memory_report(sampler.samples, out)
    if not keep:
        mine.delete()
    return {"rate": rate_e2e, "baseline": baseline, "states": counts, "memory": report}


def memory_report(samples: list[tuple[float, dict[str, float]]], out: Out) -> dict[str, tuple[float, float]]:
    """Each role's median RSS over its first and its last 10 % of the run (after a minute)."""
    settled = [s for s in samples if s[0] >= 60] or samples
    k = max(1, len(settled) // 10)
    roles = sorted({r for _, by_role in settled for r in by_role})
    report = {}
    out.write(f"\n{'role':<20}{'early MiB':>10}{'late MiB':>10}{'change':>9}\n")
    for role in roles:
        early = sorted(s[1].get(role, 0) for s in settled[:k])[k // 2]
        late = sorted(s[1].get(role, 0) for s in settled[-k:])[k // 2]
        report[role] = (early, late)
        out.write(f"{role:<20}{early:>10.0f}{late:>10.0f}{(late - early) / max(early, 1) * 100:>8.0f}%\n")
    chart(samples, roles)
    return report


def chart(samples: list[tuple[float, dict[str, float]]], roles: list[str]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for role in roles:
        ax.plot([t / 60 for t, _ in samples], [s.get(role, 0) for _, s in samples], label=role)
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS, MiB (all processes of the role)")
    ax.set_title("Memory of every role during the soak")
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(REPO / "docs" / "soak-memory.png", dpi=110)
