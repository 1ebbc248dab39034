"""`manage.py bench dashboard`: server time of every dashboard page with a large jobs table.

Seeds `--jobs` jobs (default 100,000) straight into PostgreSQL for a bench user (spread over
a week, 80 % succeeded, 10 % dead-lettered, the rest waiting far in the future so no running
stack picks them up), then renders each page `--repeat` times through Django's test client
(the view, middleware and template: what the server spends, without the network) and prints
p50/p95 per page against `/health/live` measured the same way. Deletes what it seeded unless
`--keep`. Target: every page under 300 ms.
"""

from __future__ import annotations

import re
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from devtools.bench.stats import Out, Progress, percentile
from jobs.models import Job
from workflows.models import Workflow

BENCH_USER = "bench-dashboard"

_SEED_SQL = """
INSERT INTO jobs_job (id, owner_id, type, payload, queue, priority, status, attempts, attempt_seq, max_attempts,
                      backoff, timeout_seconds, run_at, next_retry_at, request_hash, last_error, result, worker,
                      created_at, updated_at, started_at, finished_at, queued_at)
SELECT gen_random_uuid(), %(owner)s,
       (ARRAY['billing.charge', 'email.send', 'report.build', 'demo.echo'])[1 + (n %% 4)],
       jsonb_build_object('n', n), (ARRAY['default', 'emails', 'reports'])[1 + (n %% 3)], 5,
       CASE WHEN n %% 20 < 16 THEN 'SUCCEEDED' WHEN n %% 20 < 18 THEN 'DEAD_LETTER'
            WHEN n %% 20 = 18 THEN 'RETRYING' ELSE 'PENDING' END,
       1, 1, 4, '{"initial": 2, "factor": 2, "max": 3600, "jitter": 0.2}'::jsonb, 300,
       CASE WHEN n %% 20 = 19 THEN now() + interval '30 days' END,
       CASE WHEN n %% 20 = 18 THEN now() + interval '30 days' END,
       '', CASE WHEN n %% 20 BETWEEN 16 AND 17 THEN 'Timeout: upstream did not answer' ELSE '' END,
       CASE WHEN n %% 20 < 16 THEN '{}'::jsonb END, 'bench',
       t, t, t + interval '1 second', CASE WHEN n %% 20 < 18 THEN t + interval '2 seconds' END, t
  FROM (SELECT n, now() - (n * interval '1 second') * (604800.0 / %(count)s) AS t
          FROM generate_series(1, %(count)s) AS n) AS s
"""


def seed(count: int) -> Any:
    user, _ = get_user_model().objects.get_or_create(username=BENCH_USER, defaults={"is_staff": True})
    user.is_staff = True
    user.set_unusable_password()
    user.save()
    started = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute(_SEED_SQL, {"owner": user.pk, "count": count})
        cur.execute("ANALYZE jobs_job")
    return user, time.perf_counter() - started


def run(*, jobs: int, repeat: int, keep: bool, out: Out) -> dict[str, float]:
    user, took = seed(jobs)
    total = Job.objects.count()
    out.write(f"  seeded {jobs:,} jobs in {took:.1f} s ({total:,} in the table)\n")
    client = Client()
    client.force_login(user)
    one = Job.objects.filter(owner=user, status="DEAD_LETTER").order_by("-created_at").first()
    workflow = _seed_workflow(user)
    pages = {
        "/health/live (baseline)": "/health/live",
        "overview": "/",
        "overview panel (refresh)": "/overview/panel/",
        "jobs": "/jobs/",
        "jobs, DEAD_LETTER of a type": "/jobs/?status=DEAD_LETTER&type=billing.charge",
        "jobs, page 20 (cursor)": None,
        "job page": f"/jobs/{one.id}/" if one else None,
        "job panel (refresh)": f"/jobs/{one.id}/panel/" if one else None,
        "workflows": "/workflows/",
        "workflow page": f"/workflows/{workflow.id}/" if workflow else None,
        "logs search": "/logs/?q=timeout&window=24h",
        "schedules": "/schedules/",
    }
    # A deep page: follow the "older jobs" link 20 times.
    url = "/jobs/"
    for _ in range(20):
        body = client.get(url).content.decode()
        found = re.search(r'href="\?([^"]*)" rel="next"', body)
        if found is None:
            break
        url = "/jobs/?" + found.group(1).replace("&amp;", "&")
    pages["jobs, page 20 (cursor)"] = url
    results: dict[str, float] = {}
    out.write(f"\n  {'page':<30}{'p50':>9}{'p95':>9}   status\n")
    try:
        for label, path in pages.items():
            if path is None:
                continue
            client.get(path)  # warm up
            timings = []
            progress = Progress(label, repeat, every=5)
            status = 0
            for i in range(repeat):
                started = time.perf_counter()
                response = client.get(path)
                timings.append(time.perf_counter() - started)
                status = response.status_code
                progress.update(i + 1)
            p50, p95 = percentile(timings, 50) * 1000, percentile(timings, 95) * 1000
            results[label] = p95
            flag = "" if p95 <= 300 else "  over 300 ms"
            out.write(f"  {label:<30}{p50:>7.1f}ms{p95:>7.1f}ms   {status}{flag}\n")
    finally:
        if not keep:
            Workflow.objects.filter(owner=user).delete()
            Job.objects.filter(owner=user).delete()
    return results


def _seed_workflow(user: Any) -> Workflow:
    """A 200-task workflow (a fan-out of 199 under one root) for the workflow page."""
    from workflows.services import TaskSpec, WorkflowSpec, workflow_submit

    tasks = (TaskSpec("root", "demo.noop"), *(TaskSpec(f"t{i}", "demo.noop", depends_on=("root",)) for i in range(199)))
    workflow, _ = workflow_submit(owner_id=user.pk, spec=WorkflowSpec(tasks=tasks, name="bench"), max_tasks=10_000)
    return workflow
