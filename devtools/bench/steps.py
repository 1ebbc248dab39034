"""`manage.py bench steps` (a line of `make bench`; issue 31): what workflows that wait and
grow cost, on the running stack (`make run`).

1. Waiting workflows: `--waiting` workflows (100,000) each waiting on a signal, half of them
   with a timeout three days away, filled straight into the database as the API leaves them.
   Rounds in the order without, with, with, without (one fill, one delete): each measures
   - the scheduler's scans as a tick runs them (its wake scan's and deadline scan's queries,
     `--scans` times): milliseconds and the buffers PostgreSQL touched, which must not grow
     with the waiting workflows (a range of a partial index, bounded per tick);
   - the submit-to-start latency of plain jobs at light load (20/s for 10 s): p50 and p99.
2. A map of `--map` children (demo.noop) against as many plain jobs through the bulk API,
   interleaved rounds: submit to the workflow's success against submit to the last job's
   success, wall and CPU of every role and engine. Target: within 15 %.
3. A signal to its next task's start, p50 and p99 (`bench workflows --signals`'s measure).
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta
from typing import Any

import orjson
import requests
from django.db import connection
from django.utils import timezone

from devtools.bench.api import bench_token, delete_bench_jobs
from devtools.bench.flow import compare, interleaved
from devtools.bench.flow import plain as plain_jobs
from devtools.bench.pipeline import _session, light_load
from devtools.bench.stats import Out, Progress, percentile
from devtools.bench.workflows import _post, signal_to_start
from jobs import batches
from jobs.models import JobStatus
from workflows import steps
from workflows.models import StepKind, StepState, Workflow, WorkflowStatus, WorkflowTask

FILL_NAME = "bench-waiting"
FILL_CHUNK = 5000


def fill(owner_id: int, n: int) -> None:
    """n RUNNING workflows, each a signal wait (WAITING; every other one with a timeout three
    days away) before a demo.noop task not reached."""
    now = timezone.now()
    progress = Progress(f"filling {n:,} waiting workflows", n)
    for start in range(0, n, FILL_CHUNK):
        size = min(FILL_CHUNK, n - start)
        flows = Workflow.objects.bulk_create(
            [Workflow(owner_id=owner_id, name=FILL_NAME, tasks_total=2) for _ in range(size)], batch_size=FILL_CHUNK
        )
        tasks = []
        for i, flow in enumerate(flows):
            timeout = (start + i) % 2 == 0
            wait = {"signal": "go", **({"timeout_seconds": 259200, "on_timeout": "fail"} if timeout else {})}
            tasks += [
                WorkflowTask(workflow=flow, task_id="wait", position=0, type="wait", kind=StepKind.WAIT, wait=wait,
                             state=StepState.WAITING, wake_at=now + timedelta(days=3) if timeout else None,
                             dependents=["next"]),
                WorkflowTask(workflow=flow, task_id="next", position=1, type="demo.noop", depends_on=["wait"],
                             pending_parents=1),
            ]  # fmt: skip
        WorkflowTask.objects.bulk_create(tasks, batch_size=FILL_CHUNK * 2)
        progress.update(start + size)
    with connection.cursor() as cur:
        cur.execute("ANALYZE workflows_workflow; ANALYZE workflows_workflowtask")


def unfill(owner_id: int) -> None:
    with connection.cursor() as cur:
        cur.execute(
            "DELETE FROM workflows_workflowtask WHERE workflow_id IN "
            "(SELECT id FROM workflows_workflow WHERE owner_id = %s AND name = %s)",
            [owner_id, FILL_NAME],
        )
        cur.execute("DELETE FROM workflows_workflow WHERE owner_id = %s AND name = %s", [owner_id, FILL_NAME])


def _buffers(sql: str, params: list[Any]) -> int:
    """Buffers (8 kB pages) PostgreSQL touched running the statement: the work it did."""
    with connection.cursor() as cur:
        cur.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params)
        plan = cur.fetchone()[0]
    plan = plan if isinstance(plan, list) else orjson.loads(plan)
    top = plan[0]["Plan"]
    return int(top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0))


def scans(times: int) -> dict[str, float]:
    """The scheduler's wake and deadline scans as a tick runs them, `times` times."""
    wake_ms, deadline_ms = [], []
    for _ in range(times):
        now = timezone.now()
        t0 = time.perf_counter()
        steps.due(now=now, limit=steps.WAKE_BATCH)
        t1 = time.perf_counter()
        due = Workflow.objects.filter(status=WorkflowStatus.RUNNING, deadline_at__lte=now).order_by("deadline_at")
        list(due.values_list("id", flat=True)[: steps.WAKE_BATCH])
        deadline_ms.append((time.perf_counter() - t1) * 1000)
        wake_ms.append((t1 - t0) * 1000)
    now = timezone.now()
    wake_sql, wake_params = (
        WorkflowTask.objects.filter(state=StepState.WAITING, wake_at__lte=now)
        .order_by("wake_at")
        .values_list("pk", "workflow_id")[: steps.WAKE_BATCH]
        .query.sql_with_params()
    )
    return {
        "wake_p50": percentile(wake_ms, 50), "wake_p99": percentile(wake_ms, 99),
        "deadline_p50": percentile(deadline_ms, 50), "deadline_p99": percentile(deadline_ms, 99),
        "wake_buffers": _buffers(wake_sql, list(wake_params)),
    }  # fmt: skip


def waiting(base: str, token: str, owner_id: int, n: int, times: int, out: Out) -> dict[str, float]:
    rounds: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    order = ("without", "with", "with", "without")
    try:
        for i, kind in enumerate(order):
            if kind == "with" and order[i - 1] == "without":
                fill(owner_id, n)
            elif kind == "without" and i and order[i - 1] == "with":
                unfill(owner_id)
            found = scans(times)
            latencies = light_load(base, token, 20.0, 10.0, owner_id)
            found["start_p50"], found["start_p99"] = percentile(latencies, 50), percentile(latencies, 99)
            rounds[kind].append(found)
            p50, p99 = found["start_p50"] * 1000, found["start_p99"] * 1000
            out.write(f"  round {i + 1}, {kind} the {n:,} waiting: wake scan p50 {found['wake_p50']:.2f} ms "
                      f"({found['wake_buffers']} buffers), deadline scan p50 {found['deadline_p50']:.2f} ms, "
                      f"submit→start p50 {p50:.1f} ms p99 {p99:.1f} ms\n")  # fmt: skip
    finally:
        unfill(owner_id)
    result: dict[str, float] = {}
    for key in ("wake_p50", "wake_p99", "deadline_p50", "wake_buffers", "start_p50", "start_p99"):
        without = statistics.median(r[key] for r in rounds["without"])
        with_ = statistics.median(r[key] for r in rounds["with"])
        result[f"{key}_without"], result[f"{key}_with"] = without, with_
        unit = "" if key == "wake_buffers" else (" ms" if key.startswith(("wake", "deadline")) else " s")
        out.write(f"  {key:<14} without {without:.4g}{unit}, with {with_:.4g}{unit}"
                  f" ({with_ / without if without else float('nan'):.2f}x)\n")  # fmt: skip
    return result


def map_run(base: str, session: requests.Session, n: int) -> float:
    tasks = [
        {"id": "split", "type": "demo.echo", "payload": {"items": list(range(n))}},
        {"id": "fan", "map": {"over": "split", "path": "items", "task": {"type": "demo.noop", "payload": {}}}},
    ]
    started = time.perf_counter()
    flow = _post(session, f"{base}/api/v1/workflows/", {"name": "bench-map", "tasks": tasks})
    progress = Progress(f"a map of {n:,}", n)
    polls = 0
    # Polled as often as the plain run polls its jobs; the children counted once a second only
    # (counting is work for PostgreSQL, on the cores being measured).
    while (status := Workflow.objects.values_list("status", flat=True).get(id=flow["id"])) == "RUNNING":
        polls += 1
        batch_id = WorkflowTask.objects.values_list("batch_id", flat=True).get(workflow_id=flow["id"], task_id="fan")
        if batch_id and polls % 20 == 0:
            progress.update(batches.batch_counts(batch_id).by_status[JobStatus.SUCCEEDED])
        time.sleep(0.05)
    if status != "SUCCEEDED":
        raise SystemExit(f"the map's workflow {flow['id']} ended {status}")
    return time.perf_counter() - started


def map_vs_plain(base: str, session: requests.Session, n: int, rounds: int, out: Out) -> float:
    plain_kind, map_kind = f"{n:,} plain jobs (bulk)", f"a map of {n:,} children"
    runs = interleaved(
        rounds, {plain_kind: lambda: plain_jobs(base, session, n), map_kind: lambda: map_run(base, session, n)}
    )
    return compare("map / plain (target: wall within 15 %)", runs, plain_kind, map_kind, n, out)[1]


def run(*, base: str, waiting_n: int, scan_times: int, map_n: int, rounds: int, signals: int, keep: bool,
        out: Out) -> dict[str, float]:  # fmt: skip
    owner_id, token = bench_token()
    session = _session(token)
    _post(session, f"{base}/api/v1/jobs/", {"type": "demo.noop"})  # warm the connection and the workers
    results: dict[str, float] = {}
    try:
        if waiting_n:
            out.write(f"\n1. {waiting_n:,} workflows waiting on a signal: the scheduler's scans, other jobs' starts\n")
            results |= waiting(base, token, owner_id, waiting_n, scan_times, out)
        if map_n:
            out.write(f"\n2. a map of {map_n:,} children vs {map_n:,} plain jobs\n")
            results["map_ratio"] = map_vs_plain(base, session, map_n, rounds, out)
        if signals:
            waits = signal_to_start(base, session, signals, 20.0)
            results["signal_p50"], results["signal_p99"] = percentile(waits, 50), percentile(waits, 99)
            p50, p99 = results["signal_p50"] * 1000, results["signal_p99"] * 1000
            out.write(f"\n3. a signal to its next task's start, {len(waits)} workflows at 20/s: "
                      f"p50 {p50:.1f} ms, p99 {p99:.1f} ms\n")  # fmt: skip
    finally:
        if not keep:
            unfill(owner_id)
            Workflow.objects.filter(owner_id=owner_id).delete()
            delete_bench_jobs(owner_id)
            batches.Batch.objects.filter(owner_id=owner_id).delete()
    return results
