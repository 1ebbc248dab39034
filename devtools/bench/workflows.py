"""`manage.py bench workflows`: what a workflow costs per task, against plain jobs doing the
same work in the same run, on the running stack (`make run`).

1. Wide: one workflow of N independent `demo.noop` tasks against a bulk submit of N plain jobs
   (submit to the last success).
2. Chain: a workflow of M tasks, each depending on the previous one, against M plain jobs
   submitted one after another, each once the previous one succeeded (what a client would do
   without workflows; it learns of each success by polling the database every 2 ms).

Per-task overhead = workflow seconds per task / plain seconds per job (target ≤ 2).

3. Signals (issue 31): `signals` workflows each waiting on a signal before a `demo.noop` task;
   once all wait, one signal each through the API at `signal_rate` a second; the time from a
   signal's answer to its next task's start, p50 and p99.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import requests

from devtools.bench.api import bench_token
from devtools.bench.stats import Out, Progress, percentile
from jobs.models import Job, JobStatus
from workflows.models import WORKFLOW_TERMINAL, Workflow

NOOP = {"type": "demo.noop", "payload": {}}


def _session(token: str) -> requests.Session:
    session = requests.Session()
    session.headers.update({"Authorization": f"Token {token}", "Content-Type": "application/json"})
    return session


def _post(session: requests.Session, url: str, body: Any) -> dict[str, Any]:
    response = session.post(url, data=orjson.dumps(body))
    if response.status_code not in (200, 201):
        raise SystemExit(f"{url} answered {response.status_code}: {response.text[:300]}")
    return response.json()


def _wait_jobs(ids: list[str], label: str) -> None:
    progress = Progress(label, len(ids))
    while (done := Job.objects.filter(id__in=ids, status=JobStatus.SUCCEEDED).count()) < len(ids):
        progress.update(done)
        time.sleep(0.05)


def _wait_workflow(workflow_id: str, label: str, total: int) -> None:
    progress = Progress(label, total)
    while True:
        workflow = Workflow.objects.get(id=workflow_id)
        if workflow.status in WORKFLOW_TERMINAL:
            if workflow.status != "SUCCEEDED":
                raise SystemExit(f"workflow {workflow_id} ended {workflow.status}")
            return
        progress.update(workflow.tasks_succeeded)
        time.sleep(0.05)


def plain_wide(base: str, session: requests.Session, n: int) -> float:
    started = time.perf_counter()
    ids = [j["id"] for j in _post(session, f"{base}/api/v1/jobs/bulk/", {"jobs": [NOOP] * n})["jobs"]]
    _wait_jobs(ids, "plain jobs (bulk)")
    return time.perf_counter() - started


def workflow_wide(base: str, session: requests.Session, n: int) -> float:
    tasks = [{"id": f"t{i}", **NOOP} for i in range(n)]
    started = time.perf_counter()
    workflow = _post(session, f"{base}/api/v1/workflows/", {"name": "bench-wide", "tasks": tasks})
    _wait_workflow(workflow["id"], "workflow (wide)", n)
    return time.perf_counter() - started


def plain_chain(base: str, session: requests.Session, m: int) -> float:
    progress = Progress("plain jobs (one after another)", m)
    started = time.perf_counter()
    for i in range(m):
        job_id = _post(session, f"{base}/api/v1/jobs/", NOOP)["id"]
        while Job.objects.filter(id=job_id, status=JobStatus.SUCCEEDED).count() == 0:
            time.sleep(0.002)
        progress.update(i + 1)
    return time.perf_counter() - started


def workflow_chain(base: str, session: requests.Session, m: int) -> float:
    tasks = [{"id": f"t{i}", **NOOP, "depends_on": [f"t{i - 1}"] if i else []} for i in range(m)]
    started = time.perf_counter()
    workflow = _post(session, f"{base}/api/v1/workflows/", {"name": "bench-chain", "tasks": tasks})
    _wait_workflow(workflow["id"], "workflow (chain)", m)
    return time.perf_counter() - started


def signal_to_start(base: str, session: requests.Session, n: int, rate: float) -> list[float]:
    tasks = [{"id": "approval", "wait": {"signal": "go"}}, {"id": "next", **NOOP, "depends_on": ["approval"]}]
    ids = [_post(session, f"{base}/api/v1/workflows/", {"name": "bench-signal", "tasks": tasks})["id"]
           for _ in range(n)]  # fmt: skip
    sent: dict[str, float] = {}
    progress = Progress("signals", n)
    for i, workflow_id in enumerate(ids):
        _post(session, f"{base}/api/v1/workflows/{workflow_id}/signals/go", {"i": i})
        sent[workflow_id] = time.time()
        progress.update(i + 1)
        time.sleep(1.0 / rate)
    started = dict(
        Job.objects.filter(workflow_id__in=ids, workflow_task__task_id="next", status=JobStatus.SUCCEEDED).values_list(
            "workflow_id", "started_at"
        )
    )
    deadline = time.monotonic() + 60
    while len(started) < n and time.monotonic() < deadline:
        time.sleep(0.2)
        started = dict(
            Job.objects.filter(
                workflow_id__in=ids, workflow_task__task_id="next", status=JobStatus.SUCCEEDED
            ).values_list("workflow_id", "started_at")
        )
    return sorted(at.timestamp() - sent[str(w)] for w, at in started.items() if at is not None)


def run(*, base: str, wide: int, chain: int, keep: bool, out: Out, signals: int = 0,
        signal_rate: float = 20.0) -> dict[str, float]:  # fmt: skip
    owner_id, token = bench_token()
    session = _session(token)
    _post(session, f"{base}/api/v1/jobs/", NOOP)  # warm the connection and the workers
    results: dict[str, float] = {}
    try:
        results["plain_wide"] = plain_wide(base, session, wide)
        results["workflow_wide"] = workflow_wide(base, session, wide)
        results["plain_chain"] = plain_chain(base, session, chain)
        results["workflow_chain"] = workflow_chain(base, session, chain)
        waits = signal_to_start(base, session, signals, signal_rate) if signals else []
    finally:
        if not keep:
            Workflow.objects.filter(owner_id=owner_id).delete()
            Job.objects.filter(owner_id=owner_id).delete()
    out.write(f"\n{'':<34}{'seconds':>9}{'per task':>12}{'overhead':>10}\n")
    for label, plain, flow, n in (
        (f"{wide} independent tasks", "plain_wide", "workflow_wide", wide),
        (f"chain of {chain}", "plain_chain", "workflow_chain", chain),
    ):
        ratio = results[flow] / results[plain]
        results[f"{flow}_ratio"] = ratio
        out.write(f"  plain jobs, {label:<21}{results[plain]:>9.2f}{results[plain] / n * 1000:>9.1f} ms\n")
        out.write(f"  workflow, {label:<23}{results[flow]:>9.2f}{results[flow] / n * 1000:>9.1f} ms{ratio:>9.2f}x\n")
    out.write("  (target: per-task overhead ≤ 2x a plain job's)\n")
    if waits:
        results["signal_p50"], results["signal_p99"] = percentile(waits, 50), percentile(waits, 99)
        p50, p99 = results["signal_p50"] * 1000, results["signal_p99"] * 1000
        out.write(f"\n  a signal to its next task's start, {len(waits)} workflows at {signal_rate:g}/s: "
                  f"p50 {p50:.1f} ms, p99 {p99:.1f} ms\n")  # fmt: skip
    return results
