"""Retention: finished jobs past JOB_RETENTION_DAYS (or their queue's own) move, with their
attempts, to the ClickHouse archive (jobs.archive), then leave PostgreSQL.

Each tick looks at one page of at most JOB_RETENTION_SCAN_ROWS jobs, in (created_at, id) order
through the created_at index, archives at most one batch of JOB_RETENTION_BATCH of them (the
budget that keeps retention from crowding out the pipeline), and goes on from there the next
tick: no job is due before
`now - the shortest retention` (a job finishes after it is created), so only that window is
read, and a window full of jobs that are not due (still waiting, in an unfinished workflow,
or in a queue kept longer) cannot hide due ones behind it; after the window's end the scan
starts over. Jobs of an unfinished workflow are never touched.

A batch is one fenced transaction: lock the due jobs (re-checked, so a job retried meanwhile
stays), insert them into ClickHouse, delete them and their attempts, and clear the links that
point at them (workflow tasks, schedule fires). A crash after the insert leaves the jobs in
PostgreSQL, archived again later: the archive keeps the newest copy of each.

The same pass copies the audit log to ClickHouse beside the archived jobs (`AuditArchiveScan`,
a scan of its own in the tick, so that neither stops the other). It deletes nothing: audit
records stay in PostgreSQL for good.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from jobs import archive, audit
from orchestration.scheduler.fencing import fence

logger = logging.getLogger("orchestration.scheduler")

TERMINAL = "('SUCCEEDED', 'DEAD_LETTER', 'CANCELLED')"
_WORKFLOW_DONE = "('SUCCEEDED', 'FAILED', 'CANCELLED')"


class Policy:
    """Days kept per queue (None: kept for good), from the settings."""

    def __init__(self, default_days: int, by_queue: dict[str, int]) -> None:
        self.default = default_days or None
        self.by_queue = {q: (d or None) for q, d in by_queue.items()}

    @classmethod
    def from_settings(cls) -> Policy:
        return cls(settings.JOB_RETENTION_DAYS, settings.JOB_RETENTION_DAYS_BY_QUEUE)

    @property
    def shortest(self) -> int | None:
        days = [d for d in (self.default, *self.by_queue.values()) if d]
        return min(days) if days else None

    def due_sql(self, alias: str = "j", *, paused: list[str] | None = None) -> tuple[str, dict[str, Any]]:
        """The condition "finished and past its queue's retention, not in an unfinished
        workflow (nor in a `paused` queue)", and its parameters (`now` among them)."""
        params: dict[str, Any] = {"default_days": self.default, "paused": paused or []}
        cases = []
        for n, (queue, days) in enumerate(sorted(self.by_queue.items())):
            cases.append(f"WHEN %(q{n})s THEN %(d{n})s::int")
            params[f"q{n}"], params[f"d{n}"] = queue, days
        days_sql = (
            f"CASE {alias}.queue {' '.join(cases)} ELSE %(default_days)s::int END"
            if cases
            else ("%(default_days)s::int")
        )
        sql = (  # fixed fragments only: queue names and days are bound
            f"{alias}.status IN {TERMINAL} "  # noqa: S608
            f"AND {alias}.finished_at < %(now)s - make_interval(days => {days_sql}) "
            f"AND ({alias}.workflow_id IS NULL OR EXISTS (SELECT 1 FROM workflows_workflow w "
            f"WHERE w.id = {alias}.workflow_id AND w.status IN {_WORKFLOW_DONE})) "
            f"AND NOT ({alias}.queue = ANY(%(paused)s::text[]))"
        )
        return sql, params


_PAGE_SQL = """
SELECT j.id, j.created_at, ({due}) AS due
  FROM jobs_job j
 WHERE j.created_at < %(window_end)s {after}
 ORDER BY j.created_at, j.id
 LIMIT %(limit)s
"""

_JOB_COLUMNS = [c for c in archive.COLUMNS if c not in ("history", "archived_at")]

_LOCK_SQL = """
SELECT {columns}, j.updated_at FROM jobs_job j
 WHERE j.id = ANY(%(ids)s) AND {due}
 ORDER BY j.id
 FOR UPDATE OF j SKIP LOCKED
"""

_ATTEMPTS_SQL = """
SELECT job_id, attempt, status, worker, started_at, finished_at, error, error_class, traceback
  FROM jobs_jobattempt WHERE job_id = ANY(%(ids)s)
"""

# What points at a job goes before it: Django's SET_NULL and CASCADE live in Python, not in
# the database's foreign keys. A workflow's task keeps what its page shows of the job.
_DELETE_SQL = (
    """UPDATE workflows_workflowtask AS t
          SET archived = coalesce(t.archived, '{}'::jsonb) || jsonb_build_object(
                  'job', j.id, 'status', j.status, 'started_at', j.started_at, 'finished_at', j.finished_at),
              job_id = NULL
         FROM jobs_job j WHERE t.job_id = j.id AND j.id = ANY(%(ids)s)""",
    """UPDATE workflows_workflowtask AS t
          SET archived = coalesce(t.archived, '{}'::jsonb) || jsonb_build_object(
                  'compensation_job', j.id, 'compensation_status', j.status),
              compensation_job_id = NULL
         FROM jobs_job j WHERE t.compensation_job_id = j.id AND j.id = ANY(%(ids)s)""",
    "UPDATE jobs_schedulefire SET job_id = NULL WHERE job_id = ANY(%(ids)s)",
    "DELETE FROM jobs_outbox WHERE job_id = ANY(%(ids)s)",
    "DELETE FROM jobs_jobattempt WHERE job_id = ANY(%(ids)s)",
    "DELETE FROM jobs_job WHERE id = ANY(%(ids)s)",
)


# Per queue: its jobs dispatched and not yet started (what its window holds, small) and its
# dispatches waiting in the outbox, counted up to `enough` (a backlog of millions costs no more).
_BUSY_SQL = """
SELECT q.queue
  FROM unnest(%(queues)s::text[]) AS q(queue)
 WHERE (SELECT count(*) FROM jobs_job WHERE status = 'QUEUED' AND queue = q.queue)
     + (SELECT count(*) FROM (SELECT 1 FROM jobs_outbox o
                               WHERE o.topic = 'jobs' AND o.queue = q.queue LIMIT %(enough)s) w) >= %(enough)s
"""


def busy_queues(enough: int) -> list[str]:
    """The declared queues with at least `enough` jobs on their way to a worker (waiting in
    the outbox, or dispatched and not yet claimed): a burst is arriving there."""
    with connection.cursor() as cur:
        cur.execute(_BUSY_SQL, {"queues": list(settings.QUEUES), "enough": enough})
        return [row[0] for row in cur.fetchall()]


class RetentionScan:
    """The retention scan, and where it is in its window from one tick to the next.

    Retention is background work: it runs a batch at most every JOB_RETENTION_INTERVAL_SECONDS,
    and leaves alone the jobs of a queue with JOB_RETENTION_PAUSE_BACKLOG or more jobs on their
    way to a worker (in the outbox or QUEUED: a burst is arriving there): archiving a job
    costs about as much CPU as running a no-op one, and it can wait for a quiet moment. Per
    queue: one tenant's parked or rate-limited queue, its backlog waiting for good, pauses
    only that queue's archiving, never everyone's."""

    def __init__(self) -> None:
        self.after: tuple[datetime, uuid.UUID] | None = None
        self.next_at = 0.0  # time.monotonic() of the next batch

    def __call__(self, epoch: int, clock: Callable[[], datetime]) -> int:
        policy = Policy.from_settings()
        shortest = policy.shortest
        if not settings.CLICKHOUSE_URL or shortest is None or time.monotonic() < self.next_at:
            return 0
        self.next_at = time.monotonic() + settings.JOB_RETENTION_INTERVAL_SECONDS
        busy = busy_queues(settings.JOB_RETENTION_PAUSE_BACKLOG)
        now = clock()
        due_sql, params = policy.due_sql(paused=busy)
        params |= {"now": now, "window_end": now - timedelta(days=shortest), "limit": settings.JOB_RETENTION_SCAN_ROWS}
        after = ""
        if self.after is not None:
            after = "AND j.created_at >= %(after_at)s AND (j.created_at, j.id) > (%(after_at)s, %(after_id)s)"
            params["after_at"], params["after_id"] = self.after
        with connection.cursor() as cur:
            cur.execute(_PAGE_SQL.format(due=due_sql, after=after), params)
            page = cur.fetchall()
        # At most one batch a tick (the budget that keeps retention from crowding out the
        # pipeline); the next tick goes on after the last row this one took or passed over.
        due: list[uuid.UUID] = []
        last = None
        for job_id, created_at, is_due in page:
            last = (created_at, job_id)
            if is_due:
                due.append(job_id)
                if len(due) == settings.JOB_RETENTION_BATCH:
                    break
        full = len(due) == settings.JOB_RETENTION_BATCH or len(page) == settings.JOB_RETENTION_SCAN_ROWS
        self.after = last if full else None
        moved = archive_batch(epoch, now, due, policy) if due else 0
        if moved:
            logger.info("scheduler.archived", extra={"jobs": moved})
        return moved


def archive_batch(epoch: int, now: datetime, ids: list[uuid.UUID], policy: Policy) -> int:
    """Archive those of `ids` still due, in one fenced transaction; how many moved."""
    due_sql, params = policy.due_sql()
    params |= {"now": now, "ids": ids}
    with transaction.atomic():
        fence(epoch)
        with connection.cursor() as cur:
            cur.execute(_LOCK_SQL.format(columns=", ".join(f"j.{c}" for c in _JOB_COLUMNS), due=due_sql), params)
            rows = cur.fetchall()
            if not rows:
                return 0
            jobs = [dict(zip([*_JOB_COLUMNS, "updated_at"], r, strict=True)) for r in rows]
            locked = [j["id"] for j in jobs]
            cur.execute(_ATTEMPTS_SQL, {"ids": locked})
            attempts: dict[uuid.UUID, list[dict[str, Any]]] = {}
            names = [d.name for d in cur.description]
            for r in cur.fetchall():
                a = dict(zip(names, r, strict=True))
                attempts.setdefault(a["job_id"], []).append(a)
            # The same jobs in the same versions give the same token: a retried insert of this
            # batch is stored once.
            token = hashlib.sha256(
                "".join(f"{j['id']}{j['updated_at'].isoformat()}" for j in jobs).encode()
            ).hexdigest()
            archive.insert(
                [archive.row_of({k: v for k, v in j.items() if k != "updated_at"}, attempts.get(j["id"], []), now)
                 for j in jobs],
                dedup_token=token,
            )  # fmt: skip
            for sql in _DELETE_SQL:
                cur.execute(sql, {"ids": locked})
    return len(jobs)


class AuditArchiveScan:
    """The audit log's copy in ClickHouse (`archive.audit_table()`), kept up to date by the
    retention pass: records in id order, at most JOB_RETENTION_BATCH a call, one call every
    JOB_RETENTION_INTERVAL_SECONDS at most, as long as the archive is on (CLICKHOUSE_URL and a
    retention). Nothing in PostgreSQL changes: its records are kept for good.

    - The watermark is the copy itself: the newest id in ClickHouse (`archive.audit_watermark`),
      read when this instance starts leading and after a failure, then followed in memory. A
      batch is one insert that lands whole, so a crash anywhere loses nothing and a restart goes
      on after what is there.
    - A batch sent again (its insert landed but the answer was lost, or a deposed leader's late
      copy) carries the same token and is stored once; the table keeps one row per id anyway.
    - Only ids up to `horizon` are copied: every record up to it is final (`audit.
      newest_and_writers`), so a record that commits after a higher id was copied is not
      passed over. A long transaction adding records holds the copy back until it ends.
    - ClickHouse down: the call raises (the tick counts a failed scan and goes on with the
      others); the watermark stays where it was, and the next call tries again.
    - Writes nothing to PostgreSQL, so no fence: a deposed leader's late batch is a duplicate
      that the copy keeps once."""

    def __init__(self) -> None:
        self.after: int | None = None  # the last id known to be in the copy; None: ask ClickHouse
        self.epoch: int | None = None
        self.horizon = 0  # every id up to it is final
        self.pending: tuple[int, frozenset[str]] | None = None  # (newest id, its writers then)
        self.next_at = 0.0  # time.monotonic() of the next batch

    def __call__(self, epoch: int, clock: Callable[[], datetime]) -> int:
        if not settings.CLICKHOUSE_URL or Policy.from_settings().shortest is None or time.monotonic() < self.next_at:
            return 0
        self.next_at = time.monotonic() + settings.JOB_RETENTION_INTERVAL_SECONDS
        if epoch != self.epoch:  # leading (again): another instance may have copied meanwhile
            self.epoch, self.after = epoch, None
        self._advance_horizon()
        batch = settings.JOB_RETENTION_BATCH
        try:
            if self.after is None:
                self.after = archive.audit_watermark()
            if self.after >= self.horizon:
                return 0
            records = audit.records_between(self.after, self.horizon, batch)
            if records:
                # The same records give the same token: a batch sent again is stored once.
                token = hashlib.sha256(",".join(str(r.id) for r in records).encode()).hexdigest()
                now = clock()
                archive.insert_audit([archive.audit_row_of(r, now) for r in records], dedup_token=token)
        except Exception:
            self.after = None  # what reached ClickHouse is not known: ask it next time
            raise
        # A short batch took every record up to the horizon (the rest of the range never commits).
        self.after = records[-1].id if len(records) == batch else self.horizon
        if records:
            logger.info("scheduler.audit_archived", extra={"records": len(records), "upto": self.after})
        return len(records)

    def _advance_horizon(self) -> None:
        newest, writers = audit.newest_and_writers(known=self.horizon)
        if self.pending is not None and self.pending[1].isdisjoint(writers):
            self.horizon = max(self.horizon, self.pending[0])  # its writers have ended
            self.pending = None
        if not writers:
            self.horizon, self.pending = max(self.horizon, newest), None
        elif self.pending is None:
            self.pending = (newest, writers)
