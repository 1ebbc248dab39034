"""Cron schedules: validation, slot arithmetic and firing. The scheduler calls `fire_due`.

Slots are computed with croniter in the schedule's own time zone (so "0 9 * * *" means 9:00
local time across DST changes) and stored in UTC. A slot fires once: ScheduleFire's unique
(schedule, fire_time) and the job's idempotency key `schedule:<id>:<slot>` both refuse a
second firing, so neither a leader change nor a retry can double a slot.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import croniter
from django.db import IntegrityError, connection, transaction

from jobs.models import MisfirePolicy, Schedule, ScheduleFire
from jobs.services import JobSpec, job_submit_bulk


def validate_cron(expression: str) -> str | None:
    """None when valid, else a sentence saying what is wrong."""
    if len(expression.split()) != 5:
        return f"cron expression {expression!r} must have 5 fields (minute hour day month weekday)"
    if not croniter.is_valid(expression):
        return f"cron expression {expression!r} is not valid"
    return None


def validate_timezone(name: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r} (use an IANA name such as 'Europe/Paris')"
    return None


def next_slot(schedule: Schedule, after: datetime) -> datetime:
    tz = zoneinfo.ZoneInfo(schedule.timezone)
    return croniter(schedule.cron, after.astimezone(tz)).get_next(datetime).astimezone(UTC)


def latest_slot(schedule: Schedule, at_or_before: datetime) -> datetime:
    """The most recent slot ≤ `at_or_before`."""
    tz = zoneinfo.ZoneInfo(schedule.timezone)
    probe = at_or_before.astimezone(tz)
    slot = croniter(schedule.cron, probe).get_prev(datetime)
    following = croniter(schedule.cron, slot).get_next(datetime)
    return (following if following <= probe else slot).astimezone(UTC)


@dataclass(frozen=True)
class Fired:
    schedule_id: str
    slot: datetime
    job_id: str


_DUE_SQL = """
SELECT id FROM jobs_schedule
 WHERE enabled AND next_fire_at <= %s
 ORDER BY next_fire_at LIMIT %s
   FOR UPDATE SKIP LOCKED
"""


def fire_due(*, now: datetime, limit: int = 100) -> list[Fired]:
    """Fire every due schedule once (call inside the scheduler's fenced transaction)."""
    with connection.cursor() as cur:
        cur.execute(_DUE_SQL, [now, limit])
        ids = [row[0] for row in cur.fetchall()]
    fired = []
    for schedule in Schedule.objects.filter(id__in=ids):
        due = schedule.next_fire_at
        assert due is not None
        slot = latest_slot(schedule, now)  # several missed slots collapse into the latest
        missed = slot > due
        if not (missed and schedule.misfire_policy == MisfirePolicy.SKIP):
            job = _fire(schedule, slot)
            if job is not None:
                fired.append(Fired(str(schedule.id), slot, job))
        schedule.next_fire_at = next_slot(schedule, now)
        schedule.last_fired_at = now
        schedule.save(update_fields=["next_fire_at", "last_fired_at", "updated_at"])
    return fired


def _fire(schedule: Schedule, slot: datetime) -> str | None:
    spec = JobSpec(
        type=schedule.type,
        payload=schedule.payload,
        queue=schedule.queue,
        priority=schedule.priority,
        max_attempts=schedule.max_attempts,
        backoff=schedule.backoff,
        timeout_seconds=schedule.timeout_seconds,
        idempotency_key=f"schedule:{schedule.id}:{slot.isoformat()}",
    )
    try:
        with transaction.atomic():
            fire = ScheduleFire.objects.create(schedule=schedule, fire_time=slot)
            submitted = job_submit_bulk(owner_id=schedule.owner_id, specs=[spec])[0]
            fire.job_id = submitted.job.id
            fire.save(update_fields=["job"])
    except IntegrityError:
        return None  # this slot fired already
    return str(submitted.job.id)


def schedule_prepare(schedule: Schedule, *, now: datetime) -> None:
    """Set the cursor of a new or edited schedule to its next slot from now."""
    schedule.next_fire_at = next_slot(schedule, now) if schedule.enabled else None
