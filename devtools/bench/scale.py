"""`manage.py bench scale`: every hot path at N jobs against the same path before the fill.

Fills PostgreSQL with COPY (a progress line every few seconds) to `--baseline-jobs` (10,000)
and measures each path, then fills on to `--jobs` (10,000,000) and measures every path again
in the same invocation, and prints both with their ratio. The baseline is the newest part of
the same fill, so every page and filter returns as many rows both times: only the table's size
differs (an empty table would compare a page of 50 rows with a page of none). The fill is a
year's traffic in miniature,
over 30 days (or a day less than the shortest retention: `fill_span`) and ten tenants (one
of them owns half): 90 % succeeded, 4 % dead-lettered after 4 attempts, 2 % cancelled, 2 %
pending until a `run_at` a month away, 1 % retrying a month from now, 0.5 % running under a
long lease, 0.5 % tasks of 5-task workflows; every attempt has its history row. Nothing filled
is due within the run, so the running stack leaves it alone, its retention included.

Paths: single and bulk submit, an end-to-end pipeline run through the running stack (claim and
outcome included), each scheduler scan's statement (in a transaction rolled back), every API
list, filter, detail and stats endpoint as the big tenant and as staff, every dashboard page.
API and pages are timed in process through Django's test client (server time, no network).
Afterwards: bytes per job in PostgreSQL (tables and indexes) and per log line in ClickHouse, a
table and a chart written into docs/benchmarks.md between markers, and the filled rows deleted
unless `--keep`.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from config.ids import id_at
from devtools.bench.stats import Out, Progress, percentile
from jobs import selectors, tallies, transitions
from jobs.models import Job, JobStatus
from workflows.models import Workflow

TENANTS = 10
TENANT_PREFIX = "bench-scale-"
PAGE_ROWS = 50  # a full page of every list (the API's default page_size, the dashboard's PAGE)
BIG = TENANT_PREFIX + "0"  # owns half of the filled jobs: the slowest tenant to serve
CHUNK = 50_000
WITHIN = 1.2  # the goal: every path at N jobs within 20 % of empty
PAGE_P95_MS = 100.0

_JOB_COLUMNS = (
    "id, owner_id, type, payload, queue, priority, status, attempts, attempt_seq, max_attempts, backoff, "
    "timeout_seconds, run_at, next_retry_at, request_hash, last_error, result, worker, lease_expires_at, "
    "workflow_id, created_at, updated_at, queued_at, started_at, finished_at"
)
_ATTEMPT_COLUMNS = "job_id, attempt, status, worker, started_at, finished_at, error, traceback"
_BACKOFF = orjson.dumps({"initial": 2.0, "factor": 2.0, "max": 3600, "jitter": 0.2}).decode()
_TYPES = ("billing.charge", "email.send", "report.build", "demo.echo")
_QUEUES = ("default", "emails", "reports")
NULL = r"\N"


# -- the fill ---------------------------------------------------------------------------------


def tenants() -> list[int]:
    """The bench tenants' user ids (created once, login-less, exempt from the rate limit)."""
    ids = []
    unthrottled = Permission.objects.get(codename="unthrottled", content_type__app_label="orchestration_jobs")
    for i in range(TENANTS):
        user, created = get_user_model().objects.get_or_create(username=f"{TENANT_PREFIX}{i}")
        if created:
            user.set_unusable_password()
            user.save()
            user.user_permissions.add(unthrottled)
        ids.append(user.pk)
    return ids


def _owner(n: int, owners: list[int]) -> int:
    """Job or workflow n's tenant: the big one (owners[0]) has every other one."""
    return owners[0] if n % 2 == 0 else owners[1 + (n // 2) % (len(owners) - 1)]


def _kind(i: int) -> str:
    k = i % 1000
    if k < 900:
        return "ok"
    if k < 940:
        return "dead"
    if k < 960:
        return "cancelled"
    if k < 980:
        return "later"
    if k < 990:
        return "retrying"
    if k < 995:
        return "running"
    return "task"


def fill_span() -> timedelta:
    """How far back the fill's jobs are dated: 30 days, or a day short of the shortest
    retention (JOB_RETENTION_DAYS and JOB_RETENTION_DAYS_BY_QUEUE, as this process reads them:
    the stack's own environment), so the running stack archives nothing of the fill while it
    runs. It once did: the workflow tasks' insert then named jobs already gone (a foreign-key
    violation at the end of a 10,000,000-job fill)."""
    kept = [d for d in (settings.JOB_RETENTION_DAYS, *settings.JOB_RETENTION_DAYS_BY_QUEUE.values()) if d > 0]
    days = min([30, *(d - 1 for d in kept)])
    return timedelta(days=days) if days >= 1 else timedelta(hours=12)


def _ts(t: datetime) -> str:
    return t.isoformat()


def _rows(start: int, count: int, total: int, owners: list[int], workflows: dict[int, str]) -> tuple[str, str]:
    """COPY text for jobs start..start+count and their attempts."""
    now = timezone.now()
    newest = now - timedelta(hours=1)
    step = (fill_span() - timedelta(hours=1)) / total  # job 0 the newest, the last `fill_span()` old
    far = _ts(now + timedelta(days=30))
    jobs, attempts = io.StringIO(), io.StringIO()
    for n in range(count):
        i = start + n
        owner = _owner(i, owners)
        created = newest - step * i
        job_id = str(id_at(created.timestamp()))  # as the platform makes them: time-ordered
        c, q, s, f = (
            _ts(created),
            _ts(created + timedelta(milliseconds=500)),
            _ts(created + timedelta(seconds=1)),
            _ts(created + timedelta(seconds=2)),
        )
        kind = _kind(i)
        type_, queue = _TYPES[i % 4], _QUEUES[i % 3]
        workflow = NULL
        status, tries, run_at, retry_at, error, result, lease = "SUCCEEDED", 1, NULL, NULL, "", '{"ok": true}', NULL
        started, finished = s, f
        if kind == "dead":
            status, tries, error, result = "DEAD_LETTER", 4, "Timeout: upstream did not answer", NULL
        elif kind == "cancelled":
            status, tries, result, started = "CANCELLED", 0, NULL, NULL
        elif kind == "later":
            status, tries, run_at, result, q, started, finished = "PENDING", 0, far, NULL, NULL, NULL, NULL
        elif kind == "retrying":
            status, retry_at, error, result, finished = "RETRYING", far, "ConnectionError: reset", NULL, NULL
        elif kind == "running":
            status, lease, result, finished = "RUNNING", far, NULL, NULL
        elif kind == "task":  # the workflow's owner, not the job number's
            workflow, owner = workflows[i // 1000], _owner(i // 1000, owners)
        jobs.write(
            f'{job_id}\t{owner}\t{type_}\t{{"n": {i}}}\t{queue}\t5\t{status}\t{tries}\t{tries}\t4\t{_BACKOFF}\t300\t'
            f"{run_at}\t{retry_at}\t\t{error}\t{result}\tbench\t{lease}\t{workflow}\t{c}\t{f}\t{q}\t{started}\t"
            f"{finished}\n"
        )
        for a in range(1, tries + 1):
            last = a == tries
            a_status = {"SUCCEEDED": "SUCCEEDED", "RUNNING": "RUNNING"}.get(status, "FAILED") if last else "FAILED"
            a_end = NULL if a_status == "RUNNING" else f
            a_error = "" if a_status in ("SUCCEEDED", "RUNNING") else error
            attempts.write(f"{job_id}\t{a}\t{a_status}\tbench\t{s}\t{a_end}\t{a_error}\t\n")
    return jobs.getvalue(), attempts.getvalue()


def _workflows(start: int, stop: int, total: int, owners: list[int]) -> dict[int, str]:
    """One finished 5-task workflow per thousand jobs (its tasks are that block's last five)."""
    blocks = (total + 999) // 1000
    now = timezone.now()
    span = fill_span()
    at = {b: now - timedelta(hours=1) - span * b / max(blocks, 1) for b in range(start // 1000, blocks)}
    ids = {b: str(id_at(at[b].timestamp())) for b in at if start <= b * 1000 + 995 < stop}
    with (
        connection.cursor() as cur,
        cur.copy(
            "COPY workflows_workflow (id, owner_id, name, status, request_hash, tasks_total, tasks_succeeded, "
            "success_seq, failed_task, failed_compensations, created_at, updated_at, finished_at) FROM STDIN"
        ) as copy,
    ):
        for b, wf in ids.items():
            ts = _ts(at[b])
            copy.write(f"{wf}\t{_owner(b, owners)}\tbench\tSUCCEEDED\t\t5\t5\t5\t\t[]\t{ts}\t{ts}\t{ts}\n")
    return ids


def fill(start: int, stop: int, total: int, out: Out) -> float:
    """COPY jobs start..stop of a fill of `total` (with attempts and workflows) into
    PostgreSQL; seconds taken."""
    owners = tenants()
    started = time.perf_counter()
    workflows = _workflows(start, stop, total, owners)
    progress = Progress("fill", stop - start, every=5)
    # The next chunk's rows are made while PostgreSQL takes this one (two cores, both busy).
    with ThreadPoolExecutor(1) as maker:
        made = maker.submit(_rows, start, min(CHUNK, stop - start), total, owners, workflows)
        for chunk in range(start, stop, CHUNK):
            jobs, attempts = made.result()
            following = chunk + CHUNK
            if following < stop:
                made = maker.submit(_rows, following, min(CHUNK, stop - following), total, owners, workflows)
            with transaction.atomic(), connection.cursor() as cur:
                with cur.copy(f"COPY jobs_job ({_JOB_COLUMNS}) FROM STDIN") as copy:
                    copy.write(jobs)
                with cur.copy(f"COPY jobs_jobattempt ({_ATTEMPT_COLUMNS}) FROM STDIN") as copy:
                    copy.write(attempts)
            progress.update(min(stop, following) - start)
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO workflows_workflowtask (workflow_id, task_id, position, type, payload, depends_on, "
            "dependents, pending_parents, options, skipped, succeeded_seq, compensation_state, job_id) "
            "SELECT j.workflow_id, 't' || row_number() OVER w, row_number() OVER w - 1, j.type, '{}', '{}', '{}', "
            "0, '{}', false, row_number() OVER w, '', j.id FROM jobs_job j "
            "WHERE j.workflow_id = ANY(%s::uuid[]) WINDOW w AS (PARTITION BY j.workflow_id ORDER BY j.created_at)",
            [list(workflows.values())],
        )
        # What autovacuum and the checkpointer would do over the next minutes (set hint bits and
        # the visibility map, write gigabytes of dirty pages) is done now, not while measuring.
        out.write("  vacuuming, analyzing and checkpointing\n")
        cur.execute("VACUUM (ANALYZE) jobs_job, jobs_jobattempt, workflows_workflow, workflows_workflowtask")
        cur.execute("CHECKPOINT")
    tallies.fold(now=timezone.now(), batches=1000)
    return time.perf_counter() - started


def delete_filled(out: Out) -> None:
    """Remove every bench tenant's jobs, attempts and workflows, in batches."""
    owners = tenants()
    progress = Progress("delete", Job.objects.filter(owner_id__in=owners).count(), every=5)
    done = 0
    with connection.cursor() as cur:
        while True:
            cur.execute(
                "WITH doomed AS (SELECT id FROM jobs_job WHERE owner_id = ANY(%s) LIMIT %s), "
                "a AS (DELETE FROM jobs_jobattempt WHERE job_id IN (SELECT id FROM doomed)), "
                "o AS (DELETE FROM jobs_outbox WHERE job_id IN (SELECT id FROM doomed)), "
                "t AS (UPDATE workflows_workflowtask SET job_id = NULL WHERE job_id IN (SELECT id FROM doomed)) "
                "DELETE FROM jobs_job WHERE id IN (SELECT id FROM doomed)",
                [owners, CHUNK],
            )
            done += cur.rowcount
            progress.update(done)
            if cur.rowcount < CHUNK:
                break
        cur.execute(
            "DELETE FROM workflows_workflowtask WHERE workflow_id IN "
            "(SELECT id FROM workflows_workflow WHERE owner_id = ANY(%s))",
            [owners],
        )
        cur.execute("DELETE FROM workflows_workflow WHERE owner_id = ANY(%s)", [owners])
    tallies.fold(now=timezone.now(), batches=1000)
    out.write(f"  deleted {done:,} filled jobs\n")


# -- the measurements --------------------------------------------------------------------------


@dataclass
class Timing:
    group: str
    label: str
    samples: list[float] = field(default_factory=list)  # seconds

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50) * 1000

    @property
    def p95(self) -> float:
        return percentile(self.samples, 95) * 1000


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _ok(client: Client, path: str, expect: int = 200, **kwargs: Any) -> Callable[[], Any]:
    method = client.post if "data" in kwargs else client.get

    def call() -> None:
        response = method(path, **kwargs)
        if response.status_code != expect:
            raise SystemExit(f"{path} answered {response.status_code}: {response.content[:300]!r}")

    return call


def _rolled_back(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run a scheduler statement for its cost only: its transaction is rolled back."""

    def call() -> None:
        with transaction.atomic():
            fn()
            transaction.set_rollback(True)

    return call


def _api_client(user: Any) -> Client:
    token, _ = Token.objects.get_or_create(user=user)
    return Client(HTTP_AUTHORIZATION=f"Token {token.key}")


def measure(repeat: int, out: Out) -> list[Timing]:
    """Every hot path but the pipeline, `repeat` times each."""
    users = get_user_model()
    big = users.objects.get(username=BIG)
    staff, _ = users.objects.get_or_create(username=TENANT_PREFIX + "staff", defaults={"is_staff": True})
    staff.user_permissions.add(
        Permission.objects.get(codename="unthrottled", content_type__app_label="orchestration_jobs")
    )
    api, staff_api = _api_client(big), _api_client(staff)
    dead = Job.objects.filter(owner=big, status=JobStatus.DEAD_LETTER).order_by("-created_at").first()
    dead = dead or Job.objects.filter(owner=big).order_by("-created_at").first()
    workflow = Workflow.objects.filter(owner=big).order_by("-created_at").first()
    if dead is None or workflow is None:
        raise SystemExit("no sample job or workflow: seed_samples() runs first")
    week_ago = (timezone.now() - timedelta(days=7)).isoformat().replace("+00:00", "Z")
    now = timezone.now()
    single = orjson.dumps({"type": "demo.noop", "run_at": (now + timedelta(days=60)).isoformat()})
    bulk = orjson.dumps({"jobs": [{"type": "demo.noop", "run_at": (now + timedelta(days=60)).isoformat()}] * 1000})
    paths: list[tuple[str, str, int, Callable[[], Any]]] = [
        ("submit", "POST jobs/ (single)", repeat, _ok(api, "/api/v1/jobs/", 201, data=single,
                                                      content_type="application/json")),
        ("submit", "POST jobs/bulk/ (1,000)", max(3, repeat // 10), _ok(api, "/api/v1/jobs/bulk/", 201, data=bulk,
                                                                         content_type="application/json")),
    ]  # fmt: skip
    for who, client in (("tenant", api), ("staff", staff_api)):
        paths += [
            ("api", f"GET jobs/ ({who})", repeat, _ok(client, "/api/v1/jobs/")),
            ("api", f"GET jobs/?status=DEAD_LETTER ({who})", repeat, _ok(client, "/api/v1/jobs/?status=DEAD_LETTER")),
            ("api", f"GET jobs/?type= ({who})", repeat, _ok(client, "/api/v1/jobs/?type=report.build")),
            ("api", f"GET jobs/?queue= ({who})", repeat, _ok(client, "/api/v1/jobs/?queue=emails")),
            ("api", f"GET jobs/?created_after= ({who})", repeat,
             _ok(client, f"/api/v1/jobs/?created_after={week_ago}&status=SUCCEEDED")),
            ("api", f"GET jobs/stats/ ({who})", repeat, _ok(client, "/api/v1/jobs/stats/")),
            ("api", f"GET workflows/ ({who})", repeat, _ok(client, "/api/v1/workflows/")),
        ]  # fmt: skip
    paths += [
        ("api", "GET jobs/{id}/", repeat, _ok(api, f"/api/v1/jobs/{dead.id}/")),
        ("api", "GET schedules/", repeat, _ok(api, "/api/v1/schedules/")),
        ("api", "GET jobs/?workflow=", repeat, _ok(api, f"/api/v1/jobs/?workflow={workflow.id}")),
        ("api", "GET workflows/{id}/", repeat, _ok(api, f"/api/v1/workflows/{workflow.id}/")),
    ]
    pages = Client()
    pages.force_login(staff)
    for label, path in {
        "overview": "/",
        "overview panel": "/overview/panel/",
        "jobs": "/jobs/",
        "jobs, DEAD_LETTER of a type": "/jobs/?status=DEAD_LETTER&type=billing.charge",
        "jobs, page 20": _deep_page(pages),
        "job page": f"/jobs/{dead.id}/",
        "workflows": "/workflows/",
        "workflow page": f"/workflows/{workflow.id}/",
        "schedules": "/schedules/",
    }.items():
        paths.append(("dashboard", label, repeat, _ok(pages, path)))
    later = now + timedelta(days=1)  # due work the scans would find, nothing of the fill
    paths += [
        ("scheduler", "retries", repeat, _rolled_back(lambda: transitions.release_batch("retries", now=later,
                                                                                          limit=1000))),
        ("scheduler", "delayed", repeat, _rolled_back(lambda: transitions.release_batch("delayed", now=later,
                                                                                          limit=1000))),
        ("scheduler", "expired leases", repeat, lambda: selectors.job_expired_leases(now=later, limit=1000)),
        ("scheduler", "stale dispatches (a page)", repeat,
         lambda: selectors.job_queued_before(later, after=None, limit=1000)),
        ("scheduler", "blocked keys due", repeat, lambda: selectors.job_blocked_keys_due(now=later, limit=1000)),
        ("scheduler", "blocked keys sweep", repeat, lambda: selectors.job_blocked_pairs(after=None, limit=100)),
        ("scheduler", "paused pairs", repeat, lambda: selectors.job_breaker_paused_keys(after=None, limit=1000)),
        ("scheduler", "stats gauges (counts)", repeat, selectors.job_counts_by_status),
        ("scheduler", "tallies fold", repeat, lambda: tallies.fold(now=timezone.now())),
    ]  # fmt: skip
    for *_, fn in paths:
        fn()  # warm up: caches, connections, plans
    # Rounds of one call of each path, not each path's calls in a row: a burst of background
    # work (autovacuum, a checkpoint) then spreads over every path instead of landing on one.
    timings = [Timing(group, label) for group, label, _, _ in paths]
    rounds = max(times for _, _, times, _ in paths)
    progress = Progress("rounds", rounds, every=5)
    for r in range(rounds):
        for timing, (_, _, times, fn) in zip(timings, paths, strict=True):
            if r < times:
                timing.samples.append(_timed(fn))
        progress.update(r + 1)
    # The jobs the submit paths made (due in two months) go: left in place they would be the
    # newest rows of the next measurement, which lists and filters would have to step over.
    Job.objects.filter(owner=big, created_at__gte=now, run_at__gt=now + timedelta(days=59)).delete()
    return timings


def seed_samples() -> None:
    """What the paths read even before the fill: a job of the big tenant (waiting two months,
    so the same row is read before and after) and a page of its workflows (the fill makes one
    per 1,000 jobs: ten in the baseline, so its workflow pages would list 10 rows before the
    fill and 50 after, which times rendering, not the table's size)."""
    from jobs.services import JobSpec, job_submit
    from workflows.services import TaskSpec, WorkflowSpec, workflow_submit

    big = get_user_model().objects.get(username=BIG)
    if not Job.objects.filter(owner=big, workflow__isnull=True).exists():
        job_submit(owner_id=big.pk, spec=JobSpec(type="demo.noop", run_at=timezone.now() + timedelta(days=60)))
    tasks = tuple(TaskSpec(f"t{i}", "demo.sleep", payload={"seconds": 0}) for i in range(5))
    for _ in range(PAGE_ROWS - Workflow.objects.filter(owner=big, name="bench-scale").count()):
        workflow_submit(owner_id=big.pk, spec=WorkflowSpec(tasks=tasks, name="bench-scale"), max_tasks=100)


def _deep_page(client: Client) -> str:
    url = "/jobs/"
    for _ in range(20):
        found = re.search(r'href="\?([^"]*)" rel="next"', client.get(url).content.decode())
        if found is None:
            break
        url = "/jobs/?" + found.group(1).replace("&amp;", "&")
    return url


@dataclass
class Pipeline:
    """One end-to-end run: its rate and the WAL PostgreSQL wrote for it, per job (the whole
    cluster's: autovacuum and checkpoints are part of what a job costs)."""

    rate: float  # jobs/s
    wal_kb: float  # WAL a job
    fpi: float  # full-page images a job: the first change to a page after a checkpoint

    def __str__(self) -> str:
        return f"{self.rate:,.0f} jobs/s, {self.wal_kb:.1f} KB of WAL a job ({self.fpi:.2f} full-page images)"


def _wal() -> tuple[int, int]:
    with connection.cursor() as cur:
        cur.execute("SELECT wal_bytes, wal_fpi FROM pg_stat_wal")
        wal_bytes, fpi = cur.fetchone()
        return int(wal_bytes), int(fpi)


def pipeline_run(base: str, jobs: int) -> Pipeline | None:
    """One end-to-end run through the running stack (None when it is not up)."""
    from devtools.bench import pipeline

    try:
        requests.get(f"{base}/health/ready", timeout=2).raise_for_status()
    except requests.RequestException:
        return None
    big = get_user_model().objects.get(username=BIG)
    token, _ = Token.objects.get_or_create(user=big)
    wal_before, fpi_before = _wal()
    run = pipeline.pipeline(base, token.key, jobs, big.pk, threads=4)
    wal_after, fpi_after = _wal()
    return Pipeline(run.rate, (wal_after - wal_before) / jobs / 1024, (fpi_after - fpi_before) / jobs)


# -- sizes --------------------------------------------------------------------------------------


def bytes_per_job() -> dict[str, float]:
    """PostgreSQL bytes per job (tables, TOAST and indexes of jobs, attempts and workflows) and
    ClickHouse bytes per stored log line."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT sum(pg_total_relation_size(c)) FROM unnest(ARRAY['jobs_job', 'jobs_jobattempt', "
            "'workflows_workflow', 'workflows_workflowtask']::regclass[]) AS c"
        )
        (pg_bytes,) = cur.fetchone()
        cur.execute("SELECT count(*) FROM jobs_job")
        (jobs,) = cur.fetchone()
    sizes: dict[str, Any] = {"postgresql_bytes_per_job": pg_bytes / max(jobs, 1), "jobs": jobs}
    try:
        from logs import store

        result = store.client().query(
            "SELECT sum(bytes_on_disk), sum(rows) FROM system.parts WHERE active AND table = {t:String}",
            parameters={"t": store.table()},
        )
        ch_bytes, rows = result.result_rows[0]
        if rows:
            sizes["clickhouse_bytes_per_log_line"] = ch_bytes / rows
    except Exception as exc:  # no ClickHouse here: PostgreSQL's figure still stands
        sizes["clickhouse_error"] = str(exc)[:200]
    return sizes


# -- the report ---------------------------------------------------------------------------------


def _verdict(group: str, empty: Timing, full: Timing) -> str:
    """Within 20 % of empty by the median (1 ms of slack: below that, timer noise), and API
    and dashboard p95 under 100 ms."""
    if full.p50 > max(empty.p50 * WITHIN, empty.p50 + 1.0):
        return "SLOWER"
    if group in ("api", "dashboard") and full.p95 > PAGE_P95_MS:
        return f"p95 over {PAGE_P95_MS:.0f} ms"
    return "ok"


def table(empty: list[Timing], full: list[Timing], n: int, before: int) -> str:
    lines = [
        f"| path | p50 ms, {before:,} jobs | p95 ms, {before:,} jobs | p50 ms, {n:,} jobs | p95 ms, {n:,} jobs "
        "| p50 ratio | |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for e, f in zip(empty, full, strict=True):
        ratio = f.p50 / e.p50 if e.p50 else float("nan")
        lines.append(
            f"| {e.group}: {e.label} | {e.p50:.1f} | {e.p95:.1f} | {f.p50:.1f} | {f.p95:.1f} | {ratio:.2f} "
            f"| {_verdict(e.group, e, f)} |"
        )
    return "\n".join(lines)


def chart(path: Path, empty: list[Timing], full: list[Timing], n: int, before: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{t.group}: {t.label}" for t in empty]
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(labels) + 1.5))
    ys = range(len(labels))
    ax.barh([y - 0.2 for y in ys], [t.p50 for t in empty], height=0.4, label=f"p50 at {before:,} jobs")
    ax.barh([y + 0.2 for y in ys], [t.p50 for t in full], height=0.4, label=f"p50 at {n:,} jobs")
    ax.scatter([t.p95 for t in full], [y + 0.2 for y in ys], marker="|", color="black", label=f"p95 at {n:,} jobs")
    ax.set_yticks(list(ys), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(PAGE_P95_MS, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("ms (log scale; dotted: the 100 ms p95 goal of API and pages)")
    ax.set_title(f"Hot paths at {before:,} and at {n:,} jobs")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


BEGIN, END = "<!-- bench scale: begin -->", "<!-- bench scale: end -->"


def write_doc(doc: Path, text: str) -> None:
    """Put `text` between the markers in `doc` (appended with them the first time)."""
    body = doc.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in body and END in body:
        body = body[: body.index(BEGIN)] + block + body[body.index(END) + len(END) :]
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(body)


def run(*, base: str, jobs: int, baseline: int, repeat: int, pipeline_jobs: int, keep: bool,
        chart_path: Path | None, doc: Path | None, out: Out) -> None:  # fmt: skip
    """Fill to `baseline` jobs, measure; fill on to `jobs`, measure again. The baseline has
    the same mix, so every page and filter returns as many rows in both measurements: what
    differs is only the table's size."""
    tenants()
    if Job.objects.filter(owner__username__startswith=TENANT_PREFIX).exists():
        out.write("deleting an earlier fill first\n")
        delete_filled(out)
    baseline = min(baseline, jobs)
    out.write(f"filling PostgreSQL with the first {baseline:,} jobs\n")
    fill(0, baseline, jobs, out)
    seed_samples()
    # The end-to-end run first: its bulk-submitted jobs (1,000 to a created_at) are then the
    # newest rows in both measurements, so the first pages read the same rows both times.
    empty_run = pipeline_run(base, pipeline_jobs) if pipeline_jobs else None
    before = Job.objects.count()
    out.write(f"measuring every path at {before:,} jobs\n")
    empty = measure(repeat, out)
    out.write(f"filling PostgreSQL with {jobs - baseline:,} more jobs\n")
    took = fill(baseline, jobs, jobs, out)
    out.write(f"  filled in {took:.0f} s ({(jobs - baseline) / took:,.0f} jobs/s)\n")
    total = Job.objects.count()
    out.write(f"measuring every path at {total:,} jobs\n")
    full = measure(repeat, out)
    full_run = pipeline_run(base, pipeline_jobs) if pipeline_jobs else None
    sizes = bytes_per_job()
    report = [table(empty, full, total, before), ""]
    if empty_run and full_run:
        ratio = full_run.rate / empty_run.rate
        verdict = "ok" if ratio >= 1 / WITHIN else "SLOWER"
        report.append(
            f"End to end ({pipeline_jobs:,} no-op jobs through the running stack, 4 submit threads): "
            f"{empty_run} at {before:,} jobs; {full_run} at {total:,} ({ratio:.2f}x, {verdict})."
        )
    else:
        report.append("End to end: not measured (no stack answering at " + base + ").")
    report.append(
        f"PostgreSQL: {sizes['postgresql_bytes_per_job']:,.0f} bytes per job (jobs, attempts, workflows, "
        "with TOAST and indexes)"
        + (
            f"; ClickHouse: {sizes['clickhouse_bytes_per_log_line']:,.0f} bytes per stored log line."
            if "clickhouse_bytes_per_log_line" in sizes
            else "."
        )
    )
    text = "\n".join(report)
    out.write("\n" + text + "\n")
    if chart_path is not None:
        chart(chart_path, empty, full, total, before)
        out.write(f"chart: {chart_path}\n")
    if doc is not None:
        machine = f"{os.cpu_count()} CPUs, run of {timezone.now():%Y-%m-%d %H:%M} UTC"
        image = f"\n\n![hot paths at the baseline and at full size]({chart_path.name})" if chart_path else ""
        write_doc(doc, f"Last `manage.py bench scale` ({machine}):\n\n{text}{image}")
        out.write(f"table: {doc}\n")
    if not keep:
        delete_filled(out)
