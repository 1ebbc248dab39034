"""How PostgreSQL runs the state machine's batch statements when its statistics are wrong.

Autoanalyze lags: after a quiet spell (every job SUCCEEDED) a burst of PENDING jobs looks
rare to the planner for a minute or more, and a freshly emptied table looks empty. Written
plainly, the relay's statement then walked every PENDING row once per job of its batch
(598 ms for 128 jobs against 20,000 pending, 6 ms by id), and the claim hashed them all
once per batch. Each batch statement must find its rows by key whatever the statistics
say: here the statistics are made wrong on purpose, each statement runs (rolled back) under
EXPLAIN ANALYZE, and the rows its scans of the two tables read are counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from django.db import connection, transaction
from django.utils import timezone

from jobs import transitions
from jobs.models import Job
from jobs.services import JobSpec, job_submit_bulk

pytestmark = pytest.mark.django_db(transaction=True)

# Big enough that reading the table, or all its PENDING rows, is never the right plan
# (with the default random_page_cost of 4 a seq scan still won here, 4 times slower).
JOBS = 20_000
BATCH = 128
READ_AT_MOST = 4 * BATCH  # by key: a few index probes per job of the batch


def _rows_read(plan: dict[str, Any]) -> Iterator[int]:
    """Rows every scan of jobs_job or jobs_jobattempt read, filtered out ones included."""
    if plan.get("Relation Name") in ("jobs_job", "jobs_jobattempt") and "Scan" in plan["Node Type"]:
        loops = plan.get("Actual Loops", 1)
        yield (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * loops
    yield plan.get("Rows Removed by Join Filter", 0) * plan.get("Actual Loops", 1)
    for child in plan.get("Plans", []):
        yield from _rows_read(child)


def _read(sql: str, params: dict[str, Any]) -> int:
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
            raw = cur.fetchone()[0]
        transaction.set_rollback(True)
    return sum(_rows_read((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]))


def _submit(user: Any, n: int) -> None:
    for _ in range(n // 1000):
        job_submit_bulk(owner_id=user.pk, specs=[JobSpec(type="demo.noop") for _ in range(1000)])


def _analyze() -> None:
    with connection.cursor() as cur:
        cur.execute("ANALYZE jobs_job")
        cur.execute("ANALYZE jobs_jobattempt")


def _rows_read_by_batch() -> dict[str, int]:
    rows = list(Job.objects.filter(status="PENDING").values_list("id", "dispatch_token")[:BATCH])
    ids, tokens = transitions.pg_array(r[0] for r in rows), transitions.pg_array(r[1] for r in rows)
    attempts = transitions.pg_array(1 for _ in rows)
    now = timezone.now()
    return {
        "relay": _read(
            transitions._MARK_QUEUED_MANY_SQL.format(skip=" SKIP LOCKED"),
            {"now": now, "ids": ids, "tokens": tokens, "partitions": attempts, "offsets": attempts},
        ),
        "claim": _read(
            transitions._CLAIM_MANY_SQL, {"ids": ids, "tokens": tokens, "worker": "w", "now": now, "lease": now}
        ),
        "succeed": _read(
            transitions._SUCCEEDED_MANY_SQL,
            {"ids": ids, "attempts": attempts, "results": orjson.dumps([None] * len(rows)).decode(), "now": now},
        ),
        "hand back": _read(transitions._HAND_BACK_SQL, {"ids": ids, "attempts": attempts, "now": now}),
    }


def _assert_by_key(read: dict[str, int]) -> None:
    assert all(n <= READ_AT_MOST for n in read.values()), f"rows read per batch of {BATCH}: {read}"


def test_a_burst_after_a_quiet_spell_is_found_by_key(user):
    _submit(user, JOBS)
    Job.objects.update(status="SUCCEEDED")
    _analyze()  # the planner now believes PENDING rows are rare
    _submit(user, JOBS)
    _assert_by_key(_rows_read_by_batch())


def test_a_freshly_emptied_table_is_found_by_key(user):
    _analyze()  # statistics of an empty table
    _submit(user, JOBS)
    _assert_by_key(_rows_read_by_batch())


def test_with_fresh_statistics_too(user):
    _submit(user, JOBS)
    _analyze()
    _assert_by_key(_rows_read_by_batch())
