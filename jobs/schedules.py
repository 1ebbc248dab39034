"""Cron schedules: validation, slot arithmetic and firing. The scheduler calls `fire_due`.

Slots are computed with croniter in the schedule's own time zone (so "0 9 * * *" means 9:00
local time across DST changes) and stored in UTC. A slot fires once: ScheduleFire's unique
(schedule, fire_time) and the job's idempotency key `schedule:<id>:<slot>` both refuse a
second firing, so neither a leader change nor a retry can double a slot.

One schedule never stops the others: each fires in its own savepoint. A slot whose key some
other job already holds is skipped with a warning; a schedule that fails otherwise is logged
and counted, and its cursor moves on to its next slot (or, when it has none, the schedule is
disabled), so it is not retried on every tick.
"""

from __future__ import annotations

import logging
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from croniter import croniter
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from jobs import audit
from jobs.errors import IdempotencyConflict, ScheduleNameTaken
from jobs.keys import SCHEDULE_KEY_PREFIX
from jobs.models import MisfirePolicy, Schedule
from jobs.services import JobSpec, job_submit_bulk
from metrics import prom

logger = logging.getLogger("jobs.schedules")


def validate_cron(expression: str) -> str | None:
    """None when valid, else a sentence saying what is wrong."""
    if len(expression.split()) != 5:
        return f"cron expression {expression!r} must have 5 fields (minute hour day month weekday)"
    if not croniter.is_valid(expression):
        return f"cron expression {expression!r} is not valid"
    try:  # valid fields can still name no date at all: 31 February
        croniter(expression, datetime.now(UTC)).get_next(datetime)
    except (ValueError, OverflowError):
        return f"cron expression {expression!r} never matches a date"
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
        due = slot = schedule.next_fire_at
        assert due is not None  # selected by next_fire_at <= now
        try:
            with transaction.atomic():  # a savepoint: a failure undoes this schedule's work only
                slot = latest_slot(schedule, now)  # several missed slots collapse into the latest
                job = None
                if not (slot > due and schedule.misfire_policy == MisfirePolicy.SKIP):
                    job = _fire(schedule, slot)
                schedule.next_fire_at = next_slot(schedule, now)
                schedule.last_fired_at = now
                schedule.save(update_fields=["next_fire_at", "last_fired_at", "updated_at"])
        except Exception as exc:
            _fire_failed(schedule, slot, now, exc)
            continue
        if job is not None:
            fired.append(Fired(str(schedule.id), slot, job))
    return fired


def _fire(schedule: Schedule, slot: datetime) -> str | None:
    """The slot's job, or None when the slot fired already or its key is taken."""
    key = f"{SCHEDULE_KEY_PREFIX}{schedule.id}:{slot.isoformat()}"
    spec = JobSpec(
        type=schedule.type,
        payload=schedule.payload,
        queue=schedule.queue,
        priority=schedule.priority,
        max_attempts=schedule.max_attempts,
        backoff=schedule.backoff,
        timeout_seconds=schedule.timeout_seconds,
        idempotency_key=key,
    )
    try:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(_CLAIM_SLOT_SQL, [schedule.id, slot, timezone.now()])
            row = cur.fetchone()
            if row is None:
                return None  # this slot fired already
            submitted = job_submit_bulk(owner_id=schedule.owner_id, specs=[spec])[0]
            cur.execute("UPDATE jobs_schedulefire SET job_id = %s WHERE id = %s", [submitted.job.id, row[0]])
    except IdempotencyConflict as exc:
        # A job of the owner's own took the key this slot needs (an API key that imitates
        # ours): that job is left alone, and this slot is skipped.
        logger.warning(
            "schedule.slot_taken",
            extra={"schedule_id": str(schedule.id), "slot": slot.isoformat(), "key": key, "taken_by": str(exc.job_id),
                   "reason": f"slot skipped: its idempotency key {key!r} was taken by job {exc.job_id}"},
        )  # fmt: skip
        prom.SCHEDULE_FIRE_FAILED.labels("slot_taken").inc()
        return None
    return str(submitted.job.id)


_CLAIM_SLOT_SQL = """
INSERT INTO jobs_schedulefire (schedule_id, fire_time, created_at) VALUES (%s, %s, %s)
ON CONFLICT (schedule_id, fire_time) DO NOTHING
RETURNING id
"""


def _fire_failed(schedule: Schedule, slot: datetime | None, now: datetime, exc: Exception) -> None:
    """Log and count the failure, then move the cursor on to the next slot; a schedule that has
    no next slot (a cron that matches no date, an unknown time zone) is disabled."""
    context = {"schedule_id": str(schedule.id), "slot": slot.isoformat() if slot else None}
    logger.error("schedule.fire_failed", exc_info=exc, extra={**context, "error": f"{type(exc).__name__}: {exc}"})
    prom.SCHEDULE_FIRE_FAILED.labels("error").inc()
    try:
        with transaction.atomic():
            try:
                following, enabled = next_slot(schedule, now), True
            except Exception as no_next:
                following, enabled = None, False
                logger.error(
                    "schedule.disabled",
                    extra={**context, "reason": f"no next slot: {type(no_next).__name__}: {no_next}"},
                )
            Schedule.objects.filter(id=schedule.id).update(next_fire_at=following, enabled=enabled, updated_at=now)
    except Exception:
        logger.exception("schedule.cursor_not_moved", extra=context)


def schedule_prepare(schedule: Schedule, *, now: datetime) -> None:
    """Set the cursor of a new or edited schedule to its next slot from now."""
    schedule.next_fire_at = next_slot(schedule, now) if schedule.enabled else None


def schedule_delete(schedule: Schedule) -> None:
    with transaction.atomic():
        audit.record("schedule.delete", "schedule", schedule.id, owner_id=schedule.owner_id, name=schedule.name)
        schedule.delete()


def schedule_save(*, owner_id: int, data: dict[str, Any], schedule: Schedule | None = None) -> Schedule:
    """Create or update a schedule; its next slot is computed from now."""
    created = schedule is None
    schedule = schedule or Schedule(owner_id=owner_id)
    for field_name, value in data.items():
        setattr(schedule, field_name, value)
    schedule_prepare(schedule, now=timezone.now())
    try:
        with transaction.atomic():
            schedule.save()
            audit.record("schedule.create" if created else "schedule.update", "schedule", schedule.id,
                         owner_id=schedule.owner_id, changed=sorted(data))  # fmt: skip
    except IntegrityError:  # (owner, name) is unique: a second schedule of that name, or a race
        raise ScheduleNameTaken(schedule.name) from None
    return schedule
