"""Reads on jobs: querysets scoped to what a user may see, statistics, and what the
scheduler's scans read."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import django_filters
from django import forms
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.utils import timezone
from django_filters.fields import IsoDateTimeField
from rest_framework.exceptions import ValidationError

from config.rest import Pager, cut_page, decode_cursor, in_utc
from jobs import archive, tallies, visibility
from jobs.errors import BatchNotFound, JobNotFound, RateLimitNotFound, ScheduleNotFound
from jobs.models import BLOCKED_DUE_SQL, BLOCKED_SQL, AuditRecord, Batch, Job, JobStatus, RateLimit, Schedule

M = TypeVar("M", Job, Schedule, Batch)


def visible_to(queryset: QuerySet[M], user: Any) -> QuerySet[M]:
    """The rows `user` may see (jobs.visibility: their own and their administered owners';
    staff all; nobody else any)."""
    return visibility.scope(user).filter(queryset)


def job_visible_to(user: Any) -> QuerySet[Job]:
    return visible_to(Job.objects.all(), user)


def job_get(*, user: Any, job_id: uuid.UUID | str, archived: bool = False) -> Job:
    """A job the user may see, or JobNotFound (another user's job is indistinguishable).
    With `archived`, a job retention moved to the archive too (read-only, `job.archived`)."""
    try:
        return job_visible_to(user).get(id=job_id)
    except (Job.DoesNotExist, ValueError):
        found = job_get_archived(user=user, job_id=job_id) if archived else None
        if found is None:
            raise JobNotFound(job_id) from None
        return found


def job_get_archived(*, user: Any, job_id: uuid.UUID | str) -> Job | None:
    """The archived job, if the user may see it (None without ClickHouse)."""
    if not settings.CLICKHOUSE_URL:
        return None
    try:
        return archive.get(job_id, owners=stats_owners(user))
    except ValueError:  # not a UUID
        return None


FAILED_ATTEMPT_STATUSES = frozenset({"FAILED", "TIMED_OUT", "LOST"})


def job_get_detail(*, user: Any, job_id: uuid.UUID | str) -> Job:
    """`job_get` (archived jobs included), plus the last log lines of each failed attempt as
    `job.failed_log_lines`: {attempt: records}, the records None when the log store cannot say."""
    job = job_get(user=user, job_id=job_id, archived=True)
    failed = [h.attempt for h in job.history.all() if h.status in FAILED_ATTEMPT_STATUSES]
    lines = _last_log_lines(job.id, failed) if failed else {}
    job.failed_log_lines = {a: None if lines is None else lines.get(a, []) for a in failed}  # type: ignore[attr-defined]
    return job


def _last_log_lines(job_id: uuid.UUID, attempts: list[int]) -> dict[int, list[dict[str, Any]]] | None:
    from logs import search

    if not settings.CLICKHOUSE_URL:
        return None
    try:
        by_attempt = search.last_lines_by_attempt(job_id, attempts, settings.JOB_FAILED_LOG_LINES)
    except search.LogStoreUnavailable:
        return None  # the job is still worth showing without its logs
    keep = ("timestamp", "level", "logger", "message", "exception")
    return {a: [{k: r[k] for k in keep} for r in records] for a, records in by_attempt.items()}


class CSVChoiceFilter(django_filters.BaseInFilter, django_filters.ChoiceFilter):
    """`status=FAILED` or `status=PENDING,RUNNING`."""


class UTCIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 time, in UTC. Any offset Python accepts (up to ±23:59) works, where
    PostgreSQL would reject one beyond ±15:59 as a parameter (a 500 schemathesis found); a
    time that leaves years 1-9999 once in UTC is a field error."""

    def to_python(self, value: Any) -> datetime | None:
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return in_utc(parsed)
        except ValueError:
            raise forms.ValidationError("is out of range once converted to UTC", code="invalid") from None


class UTCDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UTCIsoDateTimeField


class JobFilter(django_filters.FilterSet):
    status = CSVChoiceFilter(field_name="status", choices=JobStatus.choices)
    type = django_filters.CharFilter(field_name="type")
    queue = django_filters.CharFilter(field_name="queue")
    created_after = UTCDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCDateTimeFilter(field_name="created_at", lookup_expr="lt")
    workflow = django_filters.UUIDFilter(field_name="workflow_id")
    batch = django_filters.UUIDFilter(field_name="batch_id")
    log_contains = django_filters.CharFilter(method="filter_log_contains", max_length=200)
    # Chooses where the list reads (the archive, see `archive_filters`), filters nothing here.
    archived = django_filters.TypedChoiceFilter(
        choices=[("true", "true"), ("false", "false")], coerce=lambda v: v == "true", method="filter_nothing"
    )

    class Meta:
        model = Job
        fields = [
            "status", "type", "queue", "workflow", "batch", "created_after", "created_before", "log_contains",
            "archived",
        ]  # fmt: skip

    def filter_nothing(self, queryset: QuerySet[Job], name: str, value: Any) -> QuerySet[Job]:
        return queryset

    def pager(self) -> Pager | None:
        """Where the rows come from: the archive's pager when `archived=true` was asked for,
        else None (this filterset's queryset). Call after is_valid."""
        if not self.form.cleaned_data.get("archived"):
            return None
        return job_archive_pager(user=self.request.user, filters=self.archive_filters())

    def archive_filters(self) -> archive.Filters:
        """The same filters, for the archive (call after is_valid)."""
        data = self.form.cleaned_data
        if data.get("batch"):
            raise ValidationError({"batch": ["the archive keeps no batch: list a batch's jobs without archived=true"]})
        ids = self._log_job_ids(data["log_contains"]) if data.get("log_contains") else None
        return archive.Filters(
            statuses=list(data["status"]) if data.get("status") else None,
            type=data.get("type") or None,
            queue=data.get("queue") or None,
            workflow=data.get("workflow"),
            created_after=data.get("created_after"),
            created_before=data.get("created_before"),
            ids=ids,
        )

    def filter_log_contains(self, queryset: QuerySet[Job], name: str, value: str) -> QuerySet[Job]:
        return queryset.filter(id__in=self._log_job_ids(value))

    def _log_job_ids(self, value: str) -> list[str]:
        """Jobs with a log record containing `value` (any case), asked of ClickHouse first;
        a job's records are never older than the job, so `created_after` bounds that search."""
        from logs import search

        user = self.request.user if self.request is not None else None
        limit = settings.JOBS_LOG_CONTAINS_MAX
        ids = search.job_ids_with_text(
            value,
            owners=visibility.scope(user).owners,  # no request, no user: nobody, not everyone
            since=self.form.cleaned_data.get("created_after"),  # only an integer reaches ClickHouse
            limit=limit + 1,
        )
        if len(ids) > limit:
            raise ValidationError(
                {
                    "log_contains": [
                        f"matches the logs of more than {limit} jobs; narrow it with created_after, type or status"
                    ]
                }
            )
        return list(ids)


def job_archive_pager(*, user: Any, filters: archive.Filters) -> Pager:
    """A keyset pager over the archived jobs the user may see, newest first."""

    def pager(_queryset: Any, cursor: str | None, size: int) -> tuple[list[Job], str | None]:
        after = None
        if cursor:
            created, pk = decode_cursor(cursor)
            after = (created, str(uuid.UUID(pk)))  # a ValueError is an invalid cursor
        if not settings.CLICKHOUSE_URL:
            return [], None  # nothing is archived without ClickHouse
        return cut_page(archive.page(filters, owners=stats_owners(user), after=after, size=size + 1), size)

    return pager


def _percentiles(values: list[float] | None) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50": round(values[0], 4), "p95": round(values[1], 4), "p99": round(values[2], 4)}


def stats_owners(user: Any) -> frozenset[int] | None:
    """Whose jobs a user's statistics (and archive reads) cover: the owners it sees, or
    everyone's (None) for staff (jobs.visibility)."""
    return visibility.scope(user).owners


@dataclass(frozen=True)
class LastHour:
    """What finished in each of the last 60 minutes (the current one so far included)."""

    now: datetime
    since: datetime  # the first of the 60 minutes
    minutes: dict[datetime, tallies.Minute]


def job_last_hour(user: Any) -> LastHour:
    now = timezone.now()
    since = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
    return LastHour(now, since, tallies.minutes_since(since, stats_owners(user)))


def job_get_stats(*, user: Any, last_hour: LastHour | None = None) -> dict[str, Any]:
    """Counts by status (exact), throughput over the last minute and hour, latency percentiles
    of the last hour's successes (end to end and queue wait), all from the tallies: nothing
    here reads jobs_job, whatever its size (jobs.tallies says how). `last_hour`: the caller's
    read of the last hour, when it has one already."""
    hour = last_hour or job_last_hour(user)
    now, minutes = hour.now, hour.minutes
    by_status = tallies.status_counts(stats_owners(user))
    end_to_end, queue_wait = tallies.Histogram(), tallies.Histogram()
    for minute in minutes.values():
        end_to_end.add(minute.end_to_end)
        queue_wait.add(minute.queue_wait)
    # The last 60 seconds: this minute so far, and the part of the one before still inside
    # them, assumed even (an estimate: the tallies are per minute).
    this_minute = now.replace(second=0, microsecond=0)
    before = minutes.get(this_minute - timedelta(minutes=1))
    current = minutes.get(this_minute)
    share_of_before = 1 - (now - this_minute).total_seconds() / 60
    last_minute = (current.finished[JobStatus.SUCCEEDED] if current else 0) + (
        before.finished[JobStatus.SUCCEEDED] * share_of_before if before else 0
    )
    succeeded_last_hour = sum(m.finished[JobStatus.SUCCEEDED] for m in minutes.values())
    return {
        "total": sum(by_status.values()),
        "by_status": by_status,
        "throughput": {
            "succeeded_last_minute": round(last_minute),
            "succeeded_per_minute_last_hour": round(succeeded_last_hour / 60, 2),
        },
        "latency_seconds": {
            "end_to_end": _percentiles(end_to_end.percentiles()),
            "queue_wait": _percentiles(queue_wait.percentiles()),
        },
    }


def schedule_visible_to(user: Any) -> QuerySet[Schedule]:
    return visible_to(Schedule.objects.all(), user)


def schedule_get(*, user: Any, schedule_id: uuid.UUID | str) -> Schedule:
    try:
        return schedule_visible_to(user).get(id=schedule_id)
    except (Schedule.DoesNotExist, ValueError):
        raise ScheduleNotFound(schedule_id) from None


def batch_visible_to(user: Any) -> QuerySet[Batch]:
    return visible_to(Batch.objects.all(), user)


def batch_get(*, user: Any, batch_id: uuid.UUID | str) -> Batch:
    """A batch the user may see, or BatchNotFound (another user's is indistinguishable)."""
    try:
        return batch_visible_to(user).get(id=batch_id)
    except (Batch.DoesNotExist, ValueError, ValidationError):
        raise BatchNotFound(batch_id) from None


def rate_limit_visible_to(user: Any) -> QuerySet[RateLimit]:
    """The limits of the owners the user sees and those for every owner's keys (staff: all)."""
    owners = visibility.scope(user).owners
    limits = RateLimit.objects.order_by("pattern", "id")
    return limits if owners is None else limits.filter(Q(owner_id__in=sorted(owners)) | Q(owner__isnull=True))


def rate_limit_get(*, user: Any, limit_id: int | str, to_change: bool = False) -> RateLimit:
    """One limit the user sees; `to_change`: one the user may change (its own; staff: any).
    A limit for every owner is visible to all and changed by staff only (PermissionDenied)."""
    try:
        limit = rate_limit_visible_to(user).get(id=int(limit_id))
    except (RateLimit.DoesNotExist, ValueError):
        raise RateLimitNotFound(limit_id) from None
    if to_change and limit.owner_id is None and not visibility.scope(user).everyone:
        raise PermissionDenied(f"rate limit {limit_id} holds for every owner: only staff change it")
    return limit


# -- what the scheduler reads (its writes are in transitions and services) ---------------------


def job_counts_by_status() -> dict[str, int]:
    """Jobs per status, all owners (the scheduler's `jobs_in_state` gauges and heartbeat)."""
    return tallies.status_counts()


def job_breaker_paused_counts() -> dict[str, int]:
    """Jobs paused by an open breaker, per type, all owners (absent: none paused)."""
    return dict(
        Job.objects.filter(status=JobStatus.PENDING, breaker_held_at__isnull=False)
        .order_by()
        .values_list("type")
        .annotate(n=Count("id"))
    )


def _pairs_after_sql(where: str, second: str) -> str:
    """(owner, `second`) pairs of jobs matching `where` after a cursor (%(owner)s, %(second)s),
    in order, at most %(limit)s: a skip scan of an index leading with (owner, `second`) under
    that condition, one probe per pair however many jobs each has (a DISTINCT would read them
    all every tick). `where` (unqualified columns: they are the inner scan's, the only table
    with them) and `second` are constants of this module, never input."""
    return f"""
WITH RECURSIVE pairs AS (
    (SELECT owner_id, {second} FROM jobs_job
      WHERE {where} AND (owner_id, {second}) > (%(owner)s, %(second)s)
      ORDER BY owner_id, {second} LIMIT 1)
    UNION ALL
    SELECT n.owner_id, n.{second}
      FROM pairs h CROSS JOIN LATERAL (
           SELECT j.owner_id, j.{second} FROM jobs_job j
            WHERE {where} AND (j.owner_id, j.{second}) > (h.owner_id, h.{second})
            ORDER BY j.owner_id, j.{second} LIMIT 1) n
)
SELECT owner_id, {second} FROM pairs LIMIT %(limit)s
"""  # noqa: S608 (constants only)


# (owner, type) pairs with jobs paused by their breaker (job_owner_breaker_held), and (owner,
# queue) pairs with jobs deferred for the owner's share of the queue's workers (job_slot_held).
_BREAKER_PAUSED_KEYS_SQL = _pairs_after_sql("status = 'PENDING' AND breaker_held_at IS NOT NULL", "type")
_SHARE_DEFERRED_KEYS_SQL = _pairs_after_sql("status = 'PENDING' AND slot_held_at IS NOT NULL", "queue")


def _pairs_after(sql: str, after: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
    owner, second = after if after is not None else (0, "")
    with connection.cursor() as cur:
        cur.execute(sql, {"owner": owner, "second": second, "limit": limit})
        return [(row[0], row[1]) for row in cur.fetchall()]


def job_share_deferred_keys(*, after: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
    """Up to `limit` (owner, queue) pairs that have jobs deferred for the owner's share of the
    queue's workers, in order after `after`. The cost is per pair, not per deferred job."""
    return _pairs_after(_SHARE_DEFERRED_KEYS_SQL, after, limit)


# The types of a pair's deferred jobs: a skip scan within (owner, queue), one probe per type.
_SHARE_DEFERRED_TYPES_SQL = """
WITH RECURSIVE types(type) AS (
    (SELECT type FROM jobs_job
      WHERE status = 'PENDING' AND slot_held_at IS NOT NULL AND owner_id = %(owner)s AND queue = %(queue)s
      ORDER BY type LIMIT 1)
    UNION ALL
    SELECT (SELECT j.type FROM jobs_job j
             WHERE j.status = 'PENDING' AND j.slot_held_at IS NOT NULL AND j.owner_id = %(owner)s
               AND j.queue = %(queue)s AND j.type > types.type
             ORDER BY j.type LIMIT 1)
      FROM types WHERE types.type IS NOT NULL
)
SELECT type FROM types WHERE type IS NOT NULL LIMIT %(limit)s
"""


def job_share_deferred_types(owner: int, queue: str, *, limit: int = 100) -> list[str]:
    """The types of an owner's jobs deferred for its share of a queue's workers (at most `limit`)."""
    with connection.cursor() as cur:
        cur.execute(_SHARE_DEFERRED_TYPES_SQL, {"owner": owner, "queue": queue, "limit": limit})
        return [row[0] for row in cur.fetchall()]


def job_not_started(ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Of jobs released to run, those still on their way: dispatched, not started, not deferred
    again (one primary-key probe each)."""
    if not ids:
        return set()
    return set(
        Job.objects.filter(
            id__in=ids, status__in=(JobStatus.PENDING, JobStatus.QUEUED), slot_held_at__isnull=True
        ).values_list("id", flat=True)
    )


def job_breaker_paused_keys(*, after: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
    """Up to `limit` (owner, type) pairs that have jobs paused by their breaker, in order after
    `after` (a previous page's last pair). The cost is per pair, not per paused job."""
    return _pairs_after(_BREAKER_PAUSED_KEYS_SQL, after, limit)


_BLOCKED = BLOCKED_SQL.format(t="h.")
_DUE = BLOCKED_DUE_SQL.format(t="h.")
# A pair's room: the limit its first due blocked job carries, less its running jobs and its jobs
# already dispatched (0 when none is due). A few index probes, however many jobs it holds.
_ROOM_SQL = f"""
SELECT p.owner_id, p.key, coalesce(first.lim - coalesce(slot.running, 0) - dispatched.n, 0)
  FROM pairs p
 LEFT JOIN LATERAL (
       SELECT coalesce(h.concurrency_limit, 1) AS lim FROM jobs_job h
        WHERE {_BLOCKED} AND h.owner_id = p.owner_id AND h.concurrency_key = p.key AND {_DUE}
        ORDER BY coalesce(h.run_at, h.created_at) LIMIT 1) first ON true
  LEFT JOIN jobs_concurrencyslot slot ON slot.key = p.owner_id::text || ':' || p.key
 CROSS JOIN LATERAL (
       SELECT count(*) AS n FROM jobs_job f
        WHERE f.owner_id = p.owner_id AND f.concurrency_key = p.key
          AND f.status IN ('PENDING', 'QUEUED') AND f.dispatch_token IS NOT NULL) dispatched
"""  # noqa: S608 (_BLOCKED is a constant)

# The registered keys whose time to be looked at has come (jobs.models.BlockedKeyDue), the longest
# waiting first, with their room. "Now" is the later of the scheduler's clock and the
# database's (which the writers of "look at once" use).
_BLOCKED_KEYS_DUE_SQL = f"""
WITH pairs AS (
    SELECT owner_id, key, visit_at FROM jobs_heldkey WHERE visit_at <= greatest(%(now)s, now())
     ORDER BY visit_at LIMIT %(limit)s
)
{_ROOM_SQL} ORDER BY p.visit_at
"""  # noqa: S608 (a constant)


class BlockedKeyDue(NamedTuple):
    """An owner's concurrency key that holds jobs, and how many of them may go now."""

    owner: int
    key: str
    room: int  # 0 or less: full, or nothing due yet


def job_blocked_keys_due(*, now: datetime, limit: int) -> list[BlockedKeyDue]:
    """Up to `limit` registered (owner, concurrency key) pairs whose time to be looked at has
    come, the longest waiting first, each with its room. Keys with jobs due later, or full
    ones already looked at, cost nothing here."""
    with connection.cursor() as cur:
        cur.execute(_BLOCKED_KEYS_DUE_SQL, {"now": now, "limit": limit})
        return [BlockedKeyDue(*row) for row in cur.fetchall()]


# After a pair's look: its row goes when it holds no job any more; else it is looked at again
# when its first blocked job is due, or `revisit` when one is due already (the key was full: the
# statement that ends a keyed attempt brings it forward as soon as a slot frees).
_BLOCKED_KEY_DONE_SQL = f"""
DELETE FROM jobs_heldkey k WHERE k.owner_id = %(owner)s AND k.key = %(key)s
   AND NOT EXISTS (SELECT 1 FROM jobs_job h WHERE {_BLOCKED} AND h.owner_id = k.owner_id AND h.concurrency_key = k.key)
"""  # noqa: S608 (_BLOCKED is a constant)
_BLOCKED_KEY_NEXT_SQL = f"""
UPDATE jobs_heldkey SET visit_at = CASE WHEN n.first <= %(now)s THEN %(revisit)s ELSE n.first END
  FROM (SELECT coalesce(h.run_at, h.created_at) AS first FROM jobs_job h
         WHERE {_BLOCKED} AND h.owner_id = %(owner)s AND h.concurrency_key = %(key)s
         ORDER BY coalesce(h.run_at, h.created_at) LIMIT 1) n
 WHERE owner_id = %(owner)s AND key = %(key)s
"""  # noqa: S608 (_BLOCKED is a constant)


def job_blocked_key_looked_at(owner: int, key: str, *, now: datetime, revisit: datetime) -> None:
    """Record that the blocked scan looked at a pair (see _BLOCKED_KEY_DONE_SQL)."""
    params: dict[str, Any] = {"owner": owner, "key": key, "now": now, "revisit": revisit}
    with connection.cursor() as cur:
        cur.execute(_BLOCKED_KEY_DONE_SQL, params)
        if not cur.rowcount:
            cur.execute(_BLOCKED_KEY_NEXT_SQL, params)


# Every (owner, key) pair that holds jobs, after a cursor (the skip scan of `_pairs_after_sql`
# on job_keyed_held), with its first blocked job's due time: the sweep that registers any key a
# writer missed.
_BLOCKED_PAIRS_SQL = f"""
WITH probed AS ({_pairs_after_sql(BLOCKED_SQL.format(t=""), "concurrency_key")})
SELECT p.owner_id, p.concurrency_key, first.due
  FROM probed p CROSS JOIN LATERAL (
       SELECT coalesce(h.run_at, h.created_at) AS due FROM jobs_job h
        WHERE {_BLOCKED} AND h.owner_id = p.owner_id AND h.concurrency_key = p.concurrency_key
        ORDER BY coalesce(h.run_at, h.created_at) LIMIT 1) first
 ORDER BY p.owner_id, p.concurrency_key
"""  # noqa: S608 (constants only)


class BlockedPair(NamedTuple):
    owner: int
    key: str
    due: datetime  # when its first blocked job comes due


def job_blocked_pairs(*, after: tuple[int, str] | None, limit: int) -> list[BlockedPair]:
    """Up to `limit` (owner, concurrency key) pairs that hold jobs, in (owner, key) order after
    `after`, each with its first blocked job's due time. The cost is per pair, not per blocked job."""
    owner, key = after if after is not None else (0, "")
    with connection.cursor() as cur:
        cur.execute(_BLOCKED_PAIRS_SQL, {"limit": limit, "owner": owner, "second": key})
        return [BlockedPair(*row) for row in cur.fetchall()]


class ExpiredLease(NamedTuple):
    """A RUNNING job whose lease expired, with what the reaper needs to end its attempt."""

    id: uuid.UUID
    attempt_seq: int
    attempts: int
    max_attempts: int
    backoff: dict[str, Any]
    worker: str
    cancel_requested_at: datetime | None


def job_expired_leases(*, now: datetime, limit: int) -> list[ExpiredLease]:
    """Up to `limit` RUNNING jobs whose lease expired before `now` (their worker is lost), the
    longest expired first."""
    return [
        ExpiredLease._make(row)
        for row in Job.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=now)
        .order_by("lease_expires_at")
        .values_list(*ExpiredLease._fields)[:limit]
    ]


class QueuedDispatch(NamedTuple):
    """A QUEUED job and where its dispatch message landed in Kafka (None: not known)."""

    id: uuid.UUID
    queue: str
    partition: int | None
    offset: int | None
    queued_at: datetime  # never None here: the window is queued_at < stale_before


def job_queued_before(
    stale_before: datetime, *, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[QueuedDispatch]:
    """One page of the jobs QUEUED before `stale_before`, in (queued_at, id) order, starting
    after `after` (a page's last (queued_at, id)), so a caller can page through the window."""
    candidates = Job.objects.filter(status=JobStatus.QUEUED, queued_at__lt=stale_before)
    if after is not None:
        at, job_id = after
        candidates = candidates.filter(queued_at__gte=at).filter(Q(queued_at__gt=at) | Q(id__gt=job_id))
    return [
        QueuedDispatch._make(row)
        for row in candidates.order_by("queued_at", "id").values_list(
            "id", "queue", "dispatch_partition", "dispatch_offset", "queued_at"
        )[:limit]
    ]


# -- what the relay and the queues' readers count -----------------------------------------------


def outbox_backlog() -> tuple[int, float]:
    """Outbox rows waiting (every queue's backlog, and dead-letter notices) and the age of the
    oldest in seconds (0: none waits); the oldest by id: the primary key gives it in one probe."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM jobs_outbox),"
            " (SELECT extract(epoch FROM now() - created_at) FROM jobs_outbox ORDER BY id LIMIT 1)"
        )
        pending, age = cur.fetchone()
    return pending, round(float(age or 0.0), 3)


def owner_weights(owner_ids: list[int]) -> dict[int, float]:
    """Each owner's weight (OwnerShare; 1 without a row)."""
    from jobs.models import OwnerShare

    weights = dict.fromkeys(owner_ids, 1.0)
    weights.update(OwnerShare.objects.filter(owner_id__in=owner_ids).values_list("owner_id", "weight"))
    return weights


# A queue's backlog (dispatches waiting in the outbox) and its oldest, all owners' or some's.
# The oldest of some owners is the least id over each one's priority levels: one probe of
# outbox_fair per owner and level, however many rows they have.
_BACKLOG_SQL = """
SELECT (SELECT count(*) FROM jobs_outbox
         WHERE topic = 'jobs' AND queue = %(queue)s AND (%(owners)s::int[] IS NULL OR owner_id = ANY(%(owners)s))),
       (SELECT extract(epoch FROM %(now)s - created_at) FROM jobs_outbox
         WHERE id = CASE WHEN %(owners)s::int[] IS NULL
                         THEN (SELECT id FROM jobs_outbox
                                WHERE topic = 'jobs' AND queue = %(queue)s ORDER BY id LIMIT 1)
                         ELSE (SELECT min((SELECT id FROM jobs_outbox
                                            WHERE topic = 'jobs' AND queue = %(queue)s AND owner_id = o
                                              AND priority = p ORDER BY id LIMIT 1))
                                 FROM unnest(%(owners)s::int[]) AS o, generate_series(0, 9) AS p) END),
       (SELECT count(*) FROM jobs_job
         WHERE status = 'QUEUED' AND queue = %(queue)s AND (%(owners)s::int[] IS NULL OR owner_id = ANY(%(owners)s)))
"""


class QueueBacklog(NamedTuple):
    waiting: int  # dispatches in the outbox, waiting for room in the queue's window
    oldest_seconds: float  # how long the oldest of them has waited (0: none waits)
    in_flight: int  # dispatched, not yet started (QUEUED)


def queue_backlog(queue: str, *, owners: Collection[int] | None) -> QueueBacklog:
    """A queue's backlog: all owners' (`owners` None) or those owners'."""
    params = {"queue": queue, "owners": None if owners is None else sorted(owners), "now": timezone.now()}
    with connection.cursor() as cur:
        cur.execute(_BACKLOG_SQL, params)
        waiting, oldest, in_flight = cur.fetchone()
    return QueueBacklog(waiting, round(float(oldest or 0.0), 3), in_flight)


AUDIT_SOURCES = ("api", "dashboard", "admin", "cli")  # where an audited action came from (jobs.audit)


class AuditFilter(django_filters.FilterSet):
    actor = django_filters.CharFilter(field_name="actor")
    action = django_filters.CharFilter(field_name="action")
    target_type = django_filters.CharFilter(field_name="target_type")
    target_id = django_filters.CharFilter(field_name="target_id")
    owner = django_filters.NumberFilter(field_name="target_owner_id")
    source = django_filters.ChoiceFilter(
        field_name="source", choices=[(s, s) for s in ("api", "dashboard", "admin", "cli")]
    )
    request_id = django_filters.CharFilter(field_name="request_id")
    created_after = UTCDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditRecord
        fields = ["actor", "action", "target_type", "target_id", "owner", "source", "request_id"]
