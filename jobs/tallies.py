"""Counts by status and per-minute latency histograms, read without scanning jobs_job.

Statement triggers on jobs_job (migration 0012) append deltas in the same transaction as the
change: JobCountDelta (owner, status, ±n) and, for jobs reaching a terminal status,
JobMinuteDelta (the minute, the status, and for successes end-to-end and queue-wait latency
buckets). The scheduler's `fold` moves deltas into the totals (JobCount, JobMinute) in one
statement each, so a read of totals + unfolded deltas is exact in any snapshot, whether the
fold ran a moment ago or not at all. Inserting deltas, rather than updating one counter row
per status, keeps concurrent transitions from queueing on the same row.

Latency percentiles come from the histograms: bucket b holds [1.1^b, 1.1^(b+1)) ms and reads
back as its geometric middle, so a percentile is within 5 % of the exact one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection

from jobs.models import JobStatus, TallyMetric

MINUTES_KEPT = 120  # the stats read the last hour; the rest is slack for a late fold
FOLD_BATCH = 20_000  # deltas moved per statement

_FOLD_COUNTS_SQL = """
WITH moved AS (
    DELETE FROM jobs_jobcountdelta
     WHERE id IN (SELECT id FROM jobs_jobcountdelta ORDER BY id LIMIT %(limit)s)
    RETURNING owner_id, status, n
), folded AS (
    INSERT INTO jobs_jobcount (owner_id, status, n)
    SELECT owner_id, status, sum(n) FROM moved GROUP BY owner_id, status
    ON CONFLICT (owner_id, status) DO UPDATE SET n = jobs_jobcount.n + excluded.n
)
SELECT count(*) FROM moved
"""

# Deltas of minutes already past MINUTES_KEPT are dropped, not folded.
_FOLD_MINUTES_SQL = """
WITH moved AS (
    DELETE FROM jobs_jobminutedelta
     WHERE id IN (SELECT id FROM jobs_jobminutedelta ORDER BY id LIMIT %(limit)s)
    RETURNING minute, owner_id, status, metric, bucket, n
), folded AS (
    INSERT INTO jobs_jobminute (minute, owner_id, status, metric, bucket, n)
    SELECT minute, owner_id, status, metric, bucket, sum(n) FROM moved
     WHERE minute >= %(keep_from)s
     GROUP BY minute, owner_id, status, metric, bucket
    ON CONFLICT (minute, owner_id, status, metric, bucket) DO UPDATE SET n = jobs_jobminute.n + excluded.n
)
SELECT count(*) FROM moved
"""


def fold(*, now: datetime, batches: int = 10) -> int:
    """Move up to `batches` * FOLD_BATCH deltas of each kind into the totals and drop minutes
    older than MINUTES_KEPT. Safe anywhere and any number of times at once: a delta is deleted
    and added in one statement, and a concurrent fold skips the rows this one took. Returns
    how many deltas moved."""
    keep_from = now - timedelta(minutes=MINUTES_KEPT)
    moved = 0
    with connection.cursor() as cur:
        for sql in (_FOLD_COUNTS_SQL, _FOLD_MINUTES_SQL):
            for _ in range(batches):
                cur.execute(sql, {"limit": FOLD_BATCH, "keep_from": keep_from})
                (taken,) = cur.fetchone()
                moved += taken
                if taken < FOLD_BATCH:
                    break
        cur.execute("DELETE FROM jobs_jobminute WHERE minute < %s", [keep_from])
    return moved


# -- reads ------------------------------------------------------------------------------------

_COUNTS_SQL = """
SELECT status, sum(n)::bigint FROM (
    SELECT status, n FROM jobs_jobcount {where}
    UNION ALL
    SELECT status, n FROM jobs_jobcountdelta {where}
) t GROUP BY status
"""


def status_counts(owners: Collection[int] | None = None) -> dict[str, int]:
    """Jobs per status, exact: of these owners, or of all (None). Every status is present."""
    where, params = ("WHERE owner_id = ANY(%(owners)s)", {"owners": sorted(owners)}) if owners is not None else ("", {})
    counts = dict.fromkeys(JobStatus.values, 0)
    with connection.cursor() as cur:
        cur.execute(_COUNTS_SQL.format(where=where), params)
        for status, n in cur.fetchall():
            if status in counts:
                counts[status] = int(n)
    return counts


_MINUTES_SQL = """
SELECT minute, status, metric, bucket, sum(n)::bigint FROM (
    SELECT minute, status, metric, bucket, n FROM jobs_jobminute WHERE minute >= %(since)s {owner}
    UNION ALL
    SELECT minute, status, metric, bucket, n FROM jobs_jobminutedelta WHERE minute >= %(since)s {owner}
) t GROUP BY minute, status, metric, bucket
"""


def bucket_seconds(bucket: int) -> float:
    """The value a latency bucket reads back as: its geometric middle, in seconds."""
    return 1.1 ** (bucket + 0.5) / 1000


@dataclass
class Histogram:
    """Latency counts by bucket."""

    counts: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, other: Histogram) -> None:
        for bucket, n in other.counts.items():
            self.counts[bucket] += n

    def percentiles(self, qs: Iterable[float] = (0.5, 0.95, 0.99)) -> list[float] | None:
        """The latency (seconds) at each quantile, or None when empty."""
        total = sum(self.counts.values())
        if not total:
            return None
        ordered = sorted(self.counts.items())
        out = []
        for q in qs:
            rank, seen = max(1, math.ceil(q * total)), 0
            for bucket, n in ordered:
                seen += n
                if seen >= rank:
                    out.append(bucket_seconds(bucket))
                    break
        return out


@dataclass
class Minute:
    """What finished in one minute: counts by terminal status and latency histograms."""

    finished: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    end_to_end: Histogram = field(default_factory=Histogram)
    queue_wait: Histogram = field(default_factory=Histogram)


def minutes_since(since: datetime, owners: Collection[int] | None = None) -> dict[datetime, Minute]:
    """Per minute from `since` (rounded down to its minute) on, what finished: of these
    owners, or of all (None). Minutes in which nothing finished are absent."""
    params: dict[str, Any] = {"since": since.replace(second=0, microsecond=0)}
    owner = ""
    if owners is not None:
        owner, params["owners"] = "AND owner_id = ANY(%(owners)s)", sorted(owners)
    out: dict[datetime, Minute] = defaultdict(Minute)
    with connection.cursor() as cur:
        cur.execute(_MINUTES_SQL.format(owner=owner), params)
        for minute, status, metric, bucket, n in cur.fetchall():
            m = out[minute]
            if metric == TallyMetric.FINISHED:
                m.finished[status] += n
            elif metric == TallyMetric.END_TO_END:
                m.end_to_end.counts[bucket] += n
            elif metric == TallyMetric.QUEUE_WAIT:
                m.queue_wait.counts[bucket] += n
    return dict(out)
