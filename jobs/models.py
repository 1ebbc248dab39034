"""Jobs, their attempts and the outbox. Fields, constraints and indexes only.

State changes never happen here: they live in `jobs.transitions`, one conditional UPDATE
each, so that PostgreSQL decides every race.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from config import tracing
from config.ids import new_id


class JobStatus(models.TextChoices):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    RETRYING = "RETRYING"
    DEAD_LETTER = "DEAD_LETTER"
    CANCELLED = "CANCELLED"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.DEAD_LETTER, JobStatus.CANCELLED})


class AttemptStatus(models.TextChoices):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    LOST = "LOST"
    CANCELLED = "CANCELLED"


def default_backoff() -> dict[str, Any]:
    return {"initial": 2.0, "factor": 2.0, "max": 3600, "jitter": 0.2}


# The words for a job waiting without a dispatch, each with its own scan to release it:
#   blocked   by its concurrency key, at its limit     (BLOCKED_SQL; jobs_heldkey registers the keys)
#   paused    by its owner's open breaker for its type  (breaker_held_at)
#   deferred  for its owner's share of the long slots   (slot_held_at)
# Columns, tables and indexes keep the names they were created with ("held"): a rename in
# place would break the release still running during a deploy (docs/design.md, migrations).
#
# A job blocked by its concurrency key: the job_keyed_held index's condition, in the SQL of
# the blocked scan and of its release, which must imply it for the index to serve them
# ({t}: the table's alias and a dot, or nothing).
BLOCKED_SQL = (
    "{t}status = 'PENDING' AND {t}dispatch_token IS NULL AND {t}concurrency_key IS NOT NULL"
    " AND {t}breaker_held_at IS NULL AND {t}slot_held_at IS NULL"
)
# A blocked job due by %(now)s: a range of the job_keyed_held index, then the exact test on each
# row. created_at comes from a web process's
# clock and now from the scheduler's, so a job may look made a moment after now: the range
# reaches a minute further (at most a minute of scheduled jobs to step over).
BLOCKED_DUE_SQL = (
    "coalesce({t}run_at, {t}created_at) <= %(now)s + interval '1 minute'"
    " AND ({t}run_at IS NULL OR {t}run_at <= %(now)s)"
)


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=new_id, editable=False)
    # Not indexed alone: job_owner_created leads with it. Every status change rewrites an
    # entry in each full index of this table (no HOT update: status is indexed), so each
    # index is a cost every job pays three times.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs", db_index=False)
    type = models.CharField(max_length=200)
    payload = models.JSONField(default=dict)
    queue = models.CharField(max_length=100, default="default")
    priority = models.PositiveSmallIntegerField(default=5, validators=[MaxValueValidator(9)])
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.PENDING)
    # Attempts in the current budget; `retry` resets it. `attempt_seq` numbers history rows
    # across budgets, so the history of a requeued job goes on 5, 6, ... after 1-4.
    attempts = models.PositiveSmallIntegerField(default=0)
    attempt_seq = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=4, validators=[MinValueValidator(1), MaxValueValidator(25)])
    backoff = models.JSONField(default=default_backoff)
    timeout_seconds = models.PositiveIntegerField(default=300)
    run_at = models.DateTimeField(null=True, blank=True)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 NULL = no key; unique only when set
    # sha256 of the canonical request body that created the job, to tell a replay (same key,
    # same body: the first job again) from a conflict (same key, another body: 409).
    request_hash = models.CharField(max_length=64, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    result = models.JSONField(null=True, blank=True)
    # Dispatch: a fresh token per dispatch; only a delivery carrying the current token can
    # claim the job, so a stale or duplicated message loses its claim.
    dispatch_token = models.UUIDField(null=True, blank=True)
    # Where the current dispatch message landed in Kafka (set by the relay).
    dispatch_partition = models.IntegerField(null=True, blank=True)
    dispatch_offset = models.BigIntegerField(null=True, blank=True)
    # At most `concurrency_limit` jobs with the same key run at once (across all workers).
    concurrency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 NULL = no limit
    concurrency_limit = models.PositiveSmallIntegerField(null=True, blank=True)
    # Jobs with the same key start no faster than the key's declared rate (RateLimit, across
    # all workers). A job over the limit waits PENDING for the slot it reserved: `rate_slot_at`
    # (jobs/rate_limits.py), cleared when it is claimed.
    rate_limit_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 NULL = no limit
    rate_slot_at = models.DateTimeField(null=True, blank=True)
    # The batch this job belongs to (jobs.batches). No foreign key: adding one would lock and
    # scan the table; a batch is never deleted while its jobs are kept.
    batch_id = models.UUIDField(null=True, blank=True)
    # The workflow this job is a task (or a compensation) of.
    workflow = models.ForeignKey(
        "orchestration_workflows.Workflow",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="jobs",
        db_index=False,
    )  # indexed only where set (job_workflow): most jobs have none
    # Paused by its type's open circuit breaker (PENDING, no dispatch) since then; the
    # scheduler releases paused jobs when the breaker lets them through.
    breaker_held_at = models.DateTimeField(null=True, blank=True)
    # Deferred (PENDING, no dispatch) since then because its owner had its share of the
    # queue's workers busy with long jobs (orchestration.fair_slots); released as they end.
    slot_held_at = models.DateTimeField(null=True, blank=True)
    # How far the running attempt says it is (`ctx.progress`, jobs/progress.py): a fraction
    # from 0 to 1, a short message, and when it said so. Not indexed: written while it runs.
    progress = models.FloatField(null=True, blank=True)
    progress_message = models.CharField(max_length=200, blank=True, default="", db_default="")
    progress_at = models.DateTimeField(null=True, blank=True)
    # The job's trace context (the propagators' carrier of its submit span: traceparent,
    # tracestate, baggage; NULL when tracing was off): every dispatch of it, retries
    # included, continues this trace (config.tracing).
    trace_context = models.JSONField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "jobs_job"
        ordering = ["-created_at", "-id"]
        permissions = [("unthrottled", "Not subject to the API rate limit (service accounts, benchmarks)")]
        constraints = [
            # Idempotency keys are per user; the constraint, not a lookup, settles races.
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="job_owner_idempotency_key_uniq",
            ),
            models.CheckConstraint(condition=Q(priority__lte=9), name="job_priority_range"),
            models.CheckConstraint(
                condition=Q(max_attempts__gte=1) & Q(max_attempts__lte=25), name="job_max_attempts_range"
            ),
            models.CheckConstraint(condition=Q(status__in=JobStatus.values), name="job_status_valid"),
        ]
        indexes = [
            # List pages: own jobs newest first, optionally by status/type/queue.
            models.Index(fields=["owner", "-created_at"], name="job_owner_created"),
            models.Index(fields=["owner", "status", "-created_at"], name="job_owner_status_created"),
            models.Index(fields=["status", "-created_at"], name="job_status_created"),
            models.Index(fields=["type", "-created_at"], name="job_type_created"),
            models.Index(fields=["queue", "-created_at"], name="job_queue_created"),
            models.Index(fields=["-created_at"], name="job_created"),
            models.Index(fields=["workflow"], condition=Q(workflow__isnull=False), name="job_workflow"),
            models.Index(fields=["batch_id", "status"], condition=Q(batch_id__isnull=False), name="job_batch_status"),
            # Dispatcher scans touch only live rows: partial indexes stay small with millions
            # of finished jobs in the table.
            models.Index(
                fields=["run_at"], condition=Q(status=JobStatus.PENDING, run_at__isnull=False), name="job_due_run_at"
            ),
            models.Index(fields=["next_retry_at"], condition=Q(status=JobStatus.RETRYING), name="job_due_retry"),
            models.Index(fields=["lease_expires_at"], condition=Q(status=JobStatus.RUNNING), name="job_running_lease"),
            models.Index(fields=["queued_at"], condition=Q(status=JobStatus.QUEUED), name="job_queued_at"),
            # What each queue's window holds, per owner: the relay's room and lanes.
            models.Index(fields=["queue", "owner"], condition=Q(status=JobStatus.QUEUED), name="job_queued_owner"),
            # Jobs paused by their owner's breaker for their type: the paused scan skips from
            # (owner, type) to (owner, type) and releases each pair's oldest first.
            models.Index(
                fields=["owner", "type", "breaker_held_at"],
                condition=Q(status=JobStatus.PENDING, breaker_held_at__isnull=False),
                name="job_owner_breaker_held",
            ),
            # Jobs deferred for their owner's share of a queue's workers: the deferred scan skips from
            # (owner, queue) to (owner, queue), then from type to type within it, and releases
            # each one's oldest first.
            models.Index(
                fields=["owner", "queue", "type", "slot_held_at"],
                condition=Q(status=JobStatus.PENDING, slot_held_at__isnull=False),
                name="job_slot_held",
            ),
            # Keyed jobs blocked for room, per (owner, key) in the order they became due: the
            # blocked scan skips from key to key and reads only each key's first due jobs, so a
            # key with a million blocked (or far-future) jobs costs it no more than one with one.
            models.Index(
                "owner",
                "concurrency_key",
                Coalesce("run_at", "created_at"),
                condition=Q(
                    status=JobStatus.PENDING,
                    dispatch_token__isnull=True,
                    concurrency_key__isnull=False,
                    breaker_held_at__isnull=True,
                    slot_held_at__isnull=True,
                ),
                name="job_keyed_held",
            ),
            # Keyed jobs dispatched and not yet running: what a key's room subtracts.
            models.Index(
                fields=["owner", "concurrency_key"],
                condition=Q(
                    status__in=[JobStatus.PENDING, JobStatus.QUEUED],
                    dispatch_token__isnull=False,
                    concurrency_key__isnull=False,
                ),
                name="job_keyed_dispatched",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def trace_id(self) -> str | None:
        """The id of the job's trace (32 hex digits), None when it was not traced."""
        return tracing.trace_id_of(self.trace_context)


class JobAttempt(models.Model):
    """One row per attempt, written the moment it starts; its status follows the attempt."""

    # Not indexed alone: the unique (job, attempt) constraint leads with it. No constraint in
    # the database (issue 33): a row is written only by a transition, from the job row it
    # updates, and every delete of jobs (retention, Django's cascade) deletes the attempts
    # first; the check locked the job row (FOR KEY SHARE) at every claim's commit, 8 µs a job.
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="history", db_index=False, db_constraint=False)
    attempt = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=AttemptStatus.choices, default=AttemptStatus.RUNNING)
    worker = models.CharField(max_length=200, blank=True, default="")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    # The failure's exception class as an import path ("billing.errors.CardDeclined"), taken
    # from the exception itself: a Django task's TaskError names it, whatever the traceback's
    # length. Empty for a success, and for attempts recorded before the column existed.
    error_class = models.CharField(max_length=255, blank=True, default="", db_default="")
    traceback = models.TextField(blank=True, default="")

    class Meta:
        db_table = "jobs_jobattempt"
        ordering = ["job", "attempt"]
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt"], name="attempt_job_attempt_uniq"),
            # The invariant "at most one running attempt per job", enforced by PostgreSQL.
            models.UniqueConstraint(
                fields=["job"], condition=Q(status=AttemptStatus.RUNNING), name="attempt_one_running_per_job"
            ),
        ]

    def __str__(self) -> str:
        return f"attempt {self.attempt} of {self.job_id} ({self.status})"


class ConcurrencySlot(models.Model):
    """Running jobs per owner and concurrency key. Taken with a conditional UPDATE when a job
    is claimed, given back in the same statement that ends the attempt: PostgreSQL keeps the
    count. Keys are each owner's own (`<owner id>:<concurrency key>`, see `key_for`): the
    same name in another tenant's jobs neither takes nor widens these slots."""

    key = models.CharField(max_length=255, primary_key=True)
    running = models.PositiveIntegerField(default=0)

    # The same key in SQL, over a jobs_job row.
    KEY_SQL = "owner_id::text || ':' || concurrency_key"

    class Meta:
        db_table = "jobs_concurrencyslot"

    def __str__(self) -> str:
        return f"{self.key}: {self.running} running"

    @staticmethod
    def key_for(owner_id: int, concurrency_key: str) -> str:
        return f"{owner_id}:{concurrency_key}"


class BlockedKey(models.Model):
    """An owner's concurrency key that blocks jobs (PENDING, no dispatch: the key was full, or
    they wait for a `run_at`), and when the blocked scan should look at it next: a job of it
    comes due, or a slot of it frees (the statement that ends a keyed attempt brings this
    forward). The blocked scan reads only the keys whose time has come, so a million keys with
    far-future or full jobs cost it nothing; rows are written beside the blocks that need them
    and a slow sweep registers any key a writer missed (a rolling deploy's older code)."""

    id = models.BigAutoField(primary_key=True)
    owner_id = models.IntegerField()  # no foreign key: a deleted owner's row finds no jobs and goes
    key = models.CharField(max_length=200)
    visit_at = models.DateTimeField()

    class Meta:
        db_table = "jobs_heldkey"
        constraints = [models.UniqueConstraint(fields=["owner_id", "key"], name="heldkey_owner_key_uniq")]
        indexes = [models.Index(fields=["visit_at"], name="heldkey_visit_at")]

    def __str__(self) -> str:
        return f"owner {self.owner_id} key {self.key}: next look {self.visit_at:%H:%M:%S}"


class UniqueLock(models.Model):
    """Who holds an owner's unique key (a job's `unique_key`) until when: the one row the
    submits of that key meet, so PostgreSQL's unique index decides among concurrent ones.
    A submit takes the row when there is none or it has expired (`unique_for` after the job
    that took it was submitted); otherwise the job's `unique_policy` says what happens."""

    id = models.BigAutoField(primary_key=True)
    owner_id = models.IntegerField()  # no foreign key: a deleted owner's rows lock nothing anyone else has
    key = models.CharField(max_length=200)
    job_id = models.UUIDField()
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "jobs_uniquelock"
        constraints = [models.UniqueConstraint(fields=["owner_id", "key"], name="uniquelock_owner_key_uniq")]

    def __str__(self) -> str:
        return f"owner {self.owner_id} key {self.key}: job {self.job_id} until {self.expires_at:%H:%M:%S}"


class RateLimit(models.Model):
    """How fast jobs whose `rate_limit_key` matches `pattern` (a shell-style glob: `stripe-*`)
    may start: `limit` per `period_seconds`, up to `burst` at once. An owner's limit applies to
    that owner's keys; one without an owner (set by staff, or declared in JOB_RATE_LIMITS)
    applies to every owner's keys, each owner's key counted on its own. Where several match,
    the slowest wins, so an owner cannot loosen what staff set."""

    id = models.BigAutoField(primary_key=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )  # NULL: every owner's keys
    pattern = models.CharField(max_length=200)
    limit = models.PositiveIntegerField()
    period_seconds = models.PositiveIntegerField()
    burst = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "jobs_ratelimit"
        constraints = [
            models.UniqueConstraint(fields=["owner", "pattern"], name="ratelimit_owner_pattern_uniq"),
            models.UniqueConstraint(
                fields=["pattern"], condition=Q(owner__isnull=True), name="ratelimit_global_pattern_uniq"
            ),
            models.CheckConstraint(
                condition=Q(limit__gte=1) & Q(period_seconds__gte=1) & Q(burst__gte=1), name="ratelimit_positive"
            ),
        ]

    def __str__(self) -> str:
        whose = f"owner {self.owner_id}" if self.owner_id else "every owner"
        return f"{self.pattern}: {self.limit}/{self.period_seconds}s burst {self.burst} ({whose})"


class Outbox(models.Model):
    """Dispatch requests written in the same transaction as the job change they belong to.

    The outbox is the backlog: a dispatch waits here until its queue's window has room, and
    the relay picks the next ones fairly across owners (by owner, then priority, then age:
    `outbox_fair`), publishes them to Kafka and deletes the rows. A crash between commit and
    publish loses nothing. Dead-letter notices (`jobs.dead`) have no queue and go at once.
    """

    id = models.BigAutoField(primary_key=True)
    # No constraint in the database (issue 33): a row is written in its job's transaction and
    # deleted before it (relay, cancel, retention, Django's cascade); the check cost the submit
    # path a job-row lock a job, 11 µs of its 49 (docs/benchmarks.md).
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    topic = models.CharField(max_length=100, default="jobs")
    envelope = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    # The dispatch's queue, owner and priority (copies of the envelope's), for the relay's
    # fair pick; NULL on a `jobs.dead` row (and on a dispatch row written by code from
    # before they existed: the relay sends those as it always did).
    queue = models.CharField(max_length=100, null=True, blank=True)  # noqa: DJ001
    owner_id = models.IntegerField(null=True, blank=True)
    priority = models.SmallIntegerField(null=True, blank=True)

    class Meta:
        db_table = "jobs_outbox"
        verbose_name_plural = "outbox"
        indexes = [
            # The relay's pick: the owners with work in a queue (a skip scan), and each one's
            # next dispatches, highest priority first, then oldest.
            models.Index(
                "queue",
                "owner_id",
                models.F("priority").desc(),
                "id",
                condition=Q(topic="jobs", queue__isnull=False),
                name="outbox_fair",
            ),
            # A queue's oldest waiting dispatch: its lag.
            models.Index(fields=["queue", "id"], condition=Q(topic="jobs", queue__isnull=False), name="outbox_queue"),
            # Rows without a queue: dead-letter notices, and dispatches written before queues
            # were copied to the row. They go out at once, oldest first.
            models.Index(fields=["id"], condition=Q(queue__isnull=True), name="outbox_unrouted"),
        ]

    def __str__(self) -> str:
        return f"outbox {self.id} → {self.topic} ({self.job_id})"


class OwnerShare(models.Model):
    """How an owner's work is weighed against other owners' where they share something: a
    queue's dispatches (by `weight`, relative to other owners with work waiting there) and its
    workers' slots (at most `slot_share` of them for long jobs; empty: FAIR_SLOT_SHARE).
    Owners without a row weigh 1. Staff set these in the admin."""

    owner = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True,
                                 related_name="share")  # fmt: skip
    weight = models.FloatField(
        default=1.0, validators=[MinValueValidator(0.01), MaxValueValidator(1000.0)],
        help_text="Relative share of each queue's dispatches while other owners have work waiting (0.01-1000).",
    )  # fmt: skip
    slot_share = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.01), MaxValueValidator(1.0)],
        help_text="The most of a queue's worker slots this owner's long jobs may hold (empty: FAIR_SLOT_SHARE).",
    )  # fmt: skip
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "jobs_ownershare"
        constraints = [
            models.CheckConstraint(condition=Q(weight__gte=0.01) & Q(weight__lte=1000.0), name="ownershare_weight"),
            models.CheckConstraint(
                condition=Q(slot_share__isnull=True) | (Q(slot_share__gt=0) & Q(slot_share__lte=1.0)),
                name="ownershare_slot_share",
            ),
        ]

    def __str__(self) -> str:
        return f"owner {self.owner_id}: weight {self.weight:g}"


class OwnerAdmin(models.Model):
    """`admin` administers `owner`'s tenant: sees and acts on its jobs, workflows, batches,
    schedules, limits and logs as the owner can (jobs.visibility). Staff grant and revoke it
    in the admin; a grant is made or removed, never edited."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="admins")
    # No index of its own: the unique (admin, owner) pair leads with it (scope's lookup).
    admin = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="administers",
                              db_index=False)  # fmt: skip
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        db_table = "jobs_owneradmin"
        constraints = [
            models.UniqueConstraint(fields=["admin", "owner"], name="owneradmin_admin_owner_uniq"),
            models.CheckConstraint(condition=~Q(admin=models.F("owner")), name="owneradmin_not_self"),
        ]

    def __str__(self) -> str:
        return f"user {self.admin_id} administers owner {self.owner_id}"


class MisfirePolicy(models.TextChoices):
    # After downtime, fire the most recent missed slot once, then go on with the schedule.
    FIRE_ONCE = "fire_once"
    # After downtime, fire nothing missed; go on from the next slot.
    SKIP = "skip"


class Schedule(models.Model):
    """A cron schedule: a job template submitted at every slot of a cron expression."""

    id = models.UUIDField(primary_key=True, default=new_id, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="schedules")
    name = models.CharField(max_length=200)
    cron = models.CharField(max_length=200, help_text="Five-field cron expression, e.g. '*/5 * * * *'.")
    timezone = models.CharField(max_length=64, default="UTC", help_text="IANA time zone the expression is read in.")
    enabled = models.BooleanField(default=True)
    misfire_policy = models.CharField(max_length=16, choices=MisfirePolicy.choices, default=MisfirePolicy.FIRE_ONCE)
    # The job template
    type = models.CharField(max_length=200)
    payload = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=100, default="default")
    priority = models.PositiveSmallIntegerField(default=5, validators=[MaxValueValidator(9)])
    max_attempts = models.PositiveSmallIntegerField(default=4, validators=[MinValueValidator(1), MaxValueValidator(25)])
    backoff = models.JSONField(default=default_backoff)
    timeout_seconds = models.PositiveIntegerField(default=300)
    # The scheduler's cursor: the next slot to fire (indexed: the due scan reads only these).
    next_fire_at = models.DateTimeField(null=True, blank=True)
    last_fired_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "jobs_schedule"
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="schedule_owner_name_uniq")]
        indexes = [models.Index(fields=["next_fire_at"], condition=Q(enabled=True), name="schedule_due")]

    def __str__(self) -> str:
        return f"{self.name} ({self.cron} {self.timezone})"


class ScheduleFire(models.Model):
    """One fired slot. The unique (schedule, fire_time) pair is what guarantees a slot fires
    at most once, whichever scheduler instance (old leader or new) tries."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="fires")
    fire_time = models.DateTimeField()
    job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "jobs_schedulefire"
        ordering = ["-fire_time"]
        constraints = [models.UniqueConstraint(fields=["schedule", "fire_time"], name="schedule_fire_once")]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.fire_time:%Y-%m-%d %H:%M}"


# -- tallies: counts and latency histograms kept by triggers, so no read scans jobs_job --------
# Triggers on jobs_job append deltas in the transaction that changes a job (insert-only: no row
# every transition would fight over); the scheduler folds them into the totals (jobs.tallies).
# A count is totals + the deltas not folded yet, so it is exact in any snapshot.


class JobCount(models.Model):
    """Jobs per owner and status (folded)."""

    owner_id = models.IntegerField()  # no foreign key: the deltas of a deleted owner still fold
    status = models.CharField(max_length=16)
    n = models.BigIntegerField(default=0)

    class Meta:
        db_table = "jobs_jobcount"
        constraints = [models.UniqueConstraint(fields=["owner_id", "status"], name="jobcount_owner_status_uniq")]

    def __str__(self) -> str:
        return f"owner {self.owner_id} {self.status}: {self.n}"


class JobCountDelta(models.Model):
    """A change to JobCount written by a trigger, not folded yet."""

    id = models.BigAutoField(primary_key=True)
    owner_id = models.IntegerField()
    status = models.CharField(max_length=16)
    n = models.BigIntegerField()

    class Meta:
        db_table = "jobs_jobcountdelta"

    def __str__(self) -> str:
        return f"owner {self.owner_id} {self.status}: {self.n:+}"


class Batch(models.Model):
    """Jobs submitted together, with callbacks: `on_success` once every job succeeded,
    `on_complete` once every job is terminal. Jobs may be added while it is open; the
    callbacks wait for it to be closed. Counted by row triggers on its jobs (BatchDelta, folded
    into BatchCount by the scheduler, which fires the callbacks: jobs.batches)."""

    id = models.UUIDField(primary_key=True, default=new_id, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False)
    description = models.CharField(max_length=200, blank=True, default="")
    # A callback's job as the API takes it (type, payload, queue, ...), checked when given.
    on_success = models.JSONField(null=True, blank=True)
    on_complete = models.JSONField(null=True, blank=True)
    # The callback jobs once made: set by the conditional UPDATE that makes each, so each is made once.
    on_success_job_id = models.UUIDField(null=True, blank=True)
    on_complete_job_id = models.UUIDField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)  # NULL: open, jobs may be added
    cancelled_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)  # closed, and every job terminal (first time)
    # The scheduler looks at it on its next tick though no job of it ended (closed, cancelled).
    check_needed = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "jobs_batch"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="batch_owner_created"),
            models.Index(fields=["check_needed"], condition=Q(check_needed=True), name="batch_check_needed"),
        ]

    def __str__(self) -> str:
        return f"batch {self.id}" + (f" ({self.description})" if self.description else "")

    @property
    def state(self) -> str:
        if self.cancelled_at:
            return "cancelled"
        if self.completed_at:
            return "complete"
        return "closed" if self.closed_at else "open"


class BatchCount(models.Model):
    """A batch's jobs ever added (status TOTAL) and those that reached each terminal status (folded)."""

    batch_id = models.UUIDField()
    status = models.CharField(max_length=16)
    n = models.BigIntegerField(default=0)

    class Meta:
        db_table = "jobs_batchcount"
        constraints = [models.UniqueConstraint(fields=["batch_id", "status"], name="batchcount_batch_status_uniq")]

    def __str__(self) -> str:
        return f"batch {self.batch_id} {self.status}: {self.n}"


class BatchDelta(models.Model):
    """A change to BatchCount written by a trigger, not folded yet."""

    id = models.BigAutoField(primary_key=True)
    batch_id = models.UUIDField()
    status = models.CharField(max_length=16)
    n = models.BigIntegerField()

    class Meta:
        db_table = "jobs_batchdelta"

    def __str__(self) -> str:
        return f"batch {self.batch_id} {self.status}: {self.n:+}"


class TallyMetric(models.IntegerChoices):
    FINISHED = 0  # bucket 0: how many jobs reached the status in the minute
    END_TO_END = 1  # SUCCEEDED: finished_at - created_at, by latency bucket
    QUEUE_WAIT = 2  # SUCCEEDED: started_at - queued_at (or created_at), by latency bucket


class JobMinute(models.Model):
    """Jobs that finished in a minute, per owner and terminal status, with latency histograms
    (folded; kept for `jobs.tallies.MINUTES_KEPT`)."""

    minute = models.DateTimeField()
    owner_id = models.IntegerField()
    status = models.CharField(max_length=16)
    metric = models.SmallIntegerField(choices=TallyMetric.choices)
    bucket = models.SmallIntegerField()
    n = models.BigIntegerField(default=0)

    class Meta:
        db_table = "jobs_jobminute"
        constraints = [
            models.UniqueConstraint(
                fields=["minute", "owner_id", "status", "metric", "bucket"], name="jobminute_key_uniq"
            )
        ]

    def __str__(self) -> str:
        return f"{self.minute:%H:%M} owner {self.owner_id} {self.status} {self.metric}/{self.bucket}: {self.n}"


class JobMinuteDelta(models.Model):
    """A change to JobMinute written by a trigger, not folded yet."""

    id = models.BigAutoField(primary_key=True)
    minute = models.DateTimeField()
    owner_id = models.IntegerField()
    status = models.CharField(max_length=16)
    metric = models.SmallIntegerField(choices=TallyMetric.choices)
    bucket = models.SmallIntegerField()
    n = models.BigIntegerField()

    class Meta:
        db_table = "jobs_jobminutedelta"

    def __str__(self) -> str:
        return f"{self.minute:%H:%M} owner {self.owner_id} {self.status} {self.metric}/{self.bucket}: {self.n:+}"


class AuditRecord(models.Model):
    """One operator action (jobs.audit): who, when, what, on what, from where. Append-only:
    nothing edits it (a trigger refuses UPDATE and DELETE: migration 0031), and job retention
    leaves it be."""

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now)
    # The user by id and by name as it was then: no foreign key, so deleting a user changes no record.
    actor_id = models.IntegerField(null=True, blank=True)
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=32)
    target_id = models.CharField(max_length=200)
    target_owner_id = models.IntegerField(null=True, blank=True)  # whose object it was
    source = models.CharField(max_length=16)  # api, dashboard, admin, cli
    request_id = models.CharField(max_length=64, blank=True, default="")
    trace_id = models.CharField(max_length=32, blank=True, default="")
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "jobs_auditrecord"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="audit_created"),
            models.Index(fields=["actor_id", "-created_at"], name="audit_actor_created"),
            models.Index(fields=["target_type", "target_id"], name="audit_target"),
            models.Index(fields=["action", "-created_at"], name="audit_action_created"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target_type} {self.target_id}"
