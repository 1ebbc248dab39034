"""Request validation and response shapes for the jobs API.

Output uses a hand-written `to_representation` (a dict built directly from the row) because
bulk responses carry 1,000 jobs and DRF's per-field machinery dominated their time. The
declared fields still drive validation and the OpenAPI schema.

Job submits (single and bulk) try `jobs.fast_input` first, for the same reason on the way in;
`JobInputSerializer` and `BulkInputSerializer` decide whenever it is not sure, and stay the
reference it is tested against (tests/jobs/test_fast_input.py, ranges and defaults included).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from config import key_rates, queues
from config.rest import check_json
from jobs.handlers import submit_problem
from jobs.keys import RESERVED_KEY_PREFIXES, reserved_prefix
from jobs.models import AuditRecord, Job, JobAttempt, JobStatus, RateLimit, Schedule, default_backoff
from jobs.schedules import validate_cron, validate_timezone
from jobs.services import JobSpec

QUEUE_NAME = "^" + queues.QUEUE_NAME.pattern  # config.queues' rule, anchored for DRF's search
QUEUE_ERRORS: dict[str, Any] = {"invalid": "must be 1-100 letters, digits and '_.:-', starting with a letter or digit."}
QUEUE_HELP = "A declared queue (QUEUES; `GET /api/v1/queues/` lists them); any other name is a 400 naming them."


def validate_queue(value: str) -> None:
    """A queue a job may name: one of the declared queues (config.queues)."""
    if problem := queues.problem(value, settings.QUEUES):
        raise serializers.ValidationError(problem)


class QueueField(serializers.RegexField):
    """A job's queue: a valid name (400 with the rule) that is declared (400 naming the declared ones)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("error_messages", QUEUE_ERRORS)
        kwargs.setdefault("help_text", QUEUE_HELP)
        super().__init__(QUEUE_NAME, **kwargs)
        self.validators.append(validate_queue)


KEY_HELP = (
    "Up to 200 characters, scoped per user: the same key with the same body returns the first one (200), with "
    f"another body 409. Keys starting with {', '.join(repr(p) for p in RESERVED_KEY_PREFIXES)} are reserved "
    "for the platform (400). A key holds as long as its job is kept in PostgreSQL: until retention archives it, "
    "JOB_RETENTION_DAYS after it finished (or its queue's own days); after that the same key makes a new job."
)


def validate_idempotency_key(value: str | None) -> str | None:
    """A user's key, which must not be one the platform makes for itself (jobs.keys)."""
    prefix = reserved_prefix(value) if value else None
    if prefix:
        raise serializers.ValidationError(f"keys starting with {prefix!r} are reserved for the platform.")
    return value


PAYLOAD_HELP = (
    f"A JSON object of at most {settings.JOB_PAYLOAD_MAX_BYTES:,} bytes as JSON (JOB_PAYLOAD_MAX_BYTES); no key "
    "or string in it may hold NUL (U+0000). Handlers ignore keys they do not know."
)


class PayloadField(serializers.JSONField):
    """A job's payload: a JSON object PostgreSQL can store, within JOB_PAYLOAD_MAX_BYTES.

    The parser has made it from JSON already, so DRF's check that it encodes (json.dumps, which
    recursed on deep input) is replaced by one orjson pass that also measures it."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("default", dict)
        kwargs.setdefault("help_text", PAYLOAD_HELP)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise serializers.ValidationError(f"payload must be a JSON object, not {type(data).__name__}.")
        name = self.field_name or "payload"
        check_json(data, name, max_bytes=settings.JOB_PAYLOAD_MAX_BYTES, setting="JOB_PAYLOAD_MAX_BYTES")
        return data


class BackoffSerializer(serializers.Serializer):
    initial = serializers.FloatField(min_value=0.0, max_value=86400.0, default=2.0)
    factor = serializers.FloatField(min_value=1.0, max_value=100.0, default=2.0)
    max = serializers.FloatField(min_value=0.0, max_value=7 * 86400.0, default=3600.0)
    jitter = serializers.FloatField(min_value=0.0, max_value=1.0, default=0.2)


class JobOptionsSerializer(serializers.Serializer):
    """How a job runs, apart from what it is: the API's job fields, and a Django task's
    options (`jobs.task_backend.JobTask`), checked by the same rules."""

    max_attempts = serializers.IntegerField(min_value=1, max_value=25, default=4)
    backoff = BackoffSerializer(required=False)
    timeout_seconds = serializers.IntegerField(min_value=1, max_value=7 * 86400, default=300)
    idempotency_key = serializers.CharField(
        max_length=200, required=False, allow_null=True, default=None, help_text=KEY_HELP
    )
    concurrency_key = serializers.CharField(max_length=200, required=False, allow_null=True, default=None)
    concurrency_limit = serializers.IntegerField(
        min_value=1, max_value=1000, required=False, allow_null=True, default=None
    )
    rate_limit_key = serializers.CharField(
        max_length=200, required=False, allow_null=True, default=None,
        help_text="Jobs of yours with this key start no faster than the rate declared for it "
        "(/api/v1/rate-limits/; your keys are your own). Over it, a job waits without a worker.",
    )  # fmt: skip

    unique_key = serializers.CharField(
        max_length=200, required=False, allow_null=True, default=None,
        help_text="At most one job of yours with this key within `unique_for` seconds (your keys are your own).",
    )  # fmt: skip
    unique_for = serializers.IntegerField(
        min_value=1, max_value=30 * 86400, required=False, allow_null=True, default=None,
        help_text="Seconds the key stays taken after the job that took it was submitted (default 60).",
    )  # fmt: skip
    unique_policy = serializers.ChoiceField(
        choices=["reject", "keep_existing", "replace", "debounce"], default="reject",
        help_text="When the key is taken: reject (409 naming the job), keep_existing (that job is the answer), "
        "replace (that job, while it has not started, takes this payload; 409 once it has), debounce (the run "
        "waits until debounce_seconds pass with no new submit, at most debounce_max_seconds; it takes the "
        "latest payload).",
    )  # fmt: skip
    debounce_seconds = serializers.IntegerField(min_value=1, max_value=7 * 86400, required=False, allow_null=True,
                                                default=None)  # fmt: skip
    debounce_max_seconds = serializers.IntegerField(min_value=1, max_value=30 * 86400, required=False,
                                                    allow_null=True, default=None)  # fmt: skip

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("concurrency_limit") is not None and not data.get("concurrency_key"):
            raise serializers.ValidationError({"concurrency_limit": ["needs a concurrency_key"]})
        if data.get("concurrency_key") and data.get("concurrency_limit") is None:
            data["concurrency_limit"] = 1
        if data.get("unique_for") is not None and not data.get("unique_key"):
            raise serializers.ValidationError({"unique_for": ["needs a unique_key"]})
        self._validate_debounce(data)
        return data

    @staticmethod
    def _validate_debounce(data: dict[str, Any]) -> None:
        debounce = data.get("unique_policy") == "debounce"
        wait, most = data.get("debounce_seconds"), data.get("debounce_max_seconds")
        if not debounce:
            for name in ("debounce_seconds", "debounce_max_seconds"):
                if data.get(name) is not None:
                    raise serializers.ValidationError({name: ["needs unique_policy debounce"]})
            return
        if not data.get("unique_key"):
            raise serializers.ValidationError({"unique_policy": ["debounce needs a unique_key"]})
        if wait is None:
            raise serializers.ValidationError({"debounce_seconds": ["is required with unique_policy debounce"]})
        if most is not None and most < wait:
            raise serializers.ValidationError({"debounce_max_seconds": ["must be at least debounce_seconds"]})
        if data.get("unique_for") is not None:
            raise serializers.ValidationError({"unique_for": ["a debounced key is taken for debounce_seconds"]})
        if data.get("run_at") is not None:
            raise serializers.ValidationError(
                {"run_at": ["a debounced job runs debounce_seconds after the last submit"]}
            )

    def validate_idempotency_key(self, value: str | None) -> str | None:
        return validate_idempotency_key(value)


class JobInputSerializer(JobOptionsSerializer):
    type = serializers.CharField(max_length=200)
    payload = PayloadField()
    queue = QueueField(default="default")
    priority = serializers.IntegerField(min_value=0, max_value=9, default=5)
    run_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_type(self, value: str) -> str:
        problem = submit_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def to_spec(self, data: dict[str, Any]) -> JobSpec:
        return JobSpec(
            type=data["type"],
            payload=data["payload"],
            queue=data["queue"],
            priority=data["priority"],
            max_attempts=data["max_attempts"],
            backoff={**default_backoff(), **data.get("backoff", {})},
            timeout_seconds=data["timeout_seconds"],
            run_at=data["run_at"],
            idempotency_key=data["idempotency_key"],
            concurrency_key=data.get("concurrency_key"),
            concurrency_limit=data.get("concurrency_limit"),
            rate_limit_key=data.get("rate_limit_key"),
            unique_key=data.get("unique_key"),
            unique_for=data.get("unique_for"),
            unique_policy=data.get("unique_policy", "reject"),
            debounce_seconds=data.get("debounce_seconds"),
            debounce_max_seconds=data.get("debounce_max_seconds"),
        )


class BulkInputSerializer(serializers.Serializer):
    jobs = JobInputSerializer(  # type: ignore[call-arg]
        many=True, allow_empty=False, max_length=settings.JOBS_BULK_MAX,
        help_text=f"At most {settings.JOBS_BULK_MAX:,} jobs (JOBS_BULK_MAX), each as for a single submit.",
        error_messages={"max_length": "at most {max_length} jobs per request (JOBS_BULK_MAX)."},
    )  # fmt: skip

    def validate_jobs(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Errors by position, the shape DRF uses for the per-item errors of `jobs`.
        seen: dict[str, int] = {}
        errors: dict[int, dict[str, Any]] = {}
        for i, job in enumerate(jobs):
            key = job.get("idempotency_key")
            if key is None:
                continue
            if key in seen:
                errors[i] = {"idempotency_key": [f"duplicates the key of jobs[{seen[key]}] in this request."]}
            seen.setdefault(key, i)
        if errors:
            raise serializers.ValidationError(errors)  # type: ignore[arg-type]
        return jobs


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobAttempt
        fields = ["attempt", "status", "started_at", "finished_at", "error", "worker", "traceback"]


class ProgressSerializer(serializers.Serializer):
    fraction = serializers.FloatField(min_value=0.0, max_value=1.0)
    message = serializers.CharField()
    at = serializers.DateTimeField()


class JobSerializer(serializers.Serializer):
    """A job as the API shows it. `history` only on the detail view.

    Datetimes stay datetime objects: the orjson renderer writes them as ISO 8601 with
    microseconds, several times faster than isoformat() per field."""

    id = serializers.UUIDField()
    type = serializers.CharField()
    payload = serializers.JSONField()
    queue = serializers.CharField()
    priority = serializers.IntegerField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    attempts = serializers.IntegerField()
    max_attempts = serializers.IntegerField()
    backoff = BackoffSerializer()
    timeout_seconds = serializers.IntegerField()
    run_at = serializers.DateTimeField(allow_null=True)
    next_retry_at = serializers.DateTimeField(allow_null=True)
    idempotency_key = serializers.CharField(allow_null=True)
    last_error = serializers.CharField()
    result = serializers.JSONField(allow_null=True)
    concurrency_key = serializers.CharField(allow_null=True)
    concurrency_limit = serializers.IntegerField(allow_null=True)
    rate_limit_key = serializers.CharField(allow_null=True)
    rate_slot_at = serializers.DateTimeField(
        allow_null=True, help_text="Over its key's rate: it waits to start at this time, the slot it reserved."
    )
    workflow = serializers.UUIDField(allow_null=True)
    cancel_requested_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    queued_at = serializers.DateTimeField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    trace_id = serializers.CharField(allow_null=True, help_text="The job's trace (32 hex digits), null if not traced.")
    progress = ProgressSerializer(
        allow_null=True, help_text="How far its running attempt said it is (`ctx.progress`), null if it never said."
    )
    archived = serializers.BooleanField(
        help_text="Moved to the archive by retention (JOB_RETENTION_DAYS): read-only, searched with archived=true."
    )

    def to_representation(self, job: Job) -> dict[str, Any]:
        return {
            "id": str(job.id),
            "type": job.type,
            "payload": job.payload,
            "queue": job.queue,
            "priority": job.priority,
            "status": job.status,
            "attempts": job.attempts,
            "max_attempts": job.max_attempts,
            "backoff": job.backoff,
            "timeout_seconds": job.timeout_seconds,
            "run_at": job.run_at,
            "next_retry_at": job.next_retry_at,
            "idempotency_key": job.idempotency_key,
            "last_error": job.last_error,
            "result": job.result,
            "concurrency_key": job.concurrency_key,
            "concurrency_limit": job.concurrency_limit,
            "rate_limit_key": job.rate_limit_key,
            "rate_slot_at": job.rate_slot_at,
            "workflow": str(job.workflow_id) if job.workflow_id else None,
            "cancel_requested_at": job.cancel_requested_at,
            "created_at": job.created_at,
            "queued_at": job.queued_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "trace_id": job.trace_id,
            "progress": None
            if job.progress is None
            else {"fraction": job.progress, "message": job.progress_message or "", "at": job.progress_at},
            "archived": getattr(job, "archived", False),
        }


class JobDetailSerializer(JobSerializer):
    """A job with its attempt history. Each failed attempt carries `last_log_lines`: the last
    records it wrote before it failed (from ClickHouse; null when the log store is away)."""

    history = AttemptSerializer(many=True)

    def to_representation(self, job: Job) -> dict[str, Any]:
        data = super().to_representation(job)
        history = [dict(h) for h in AttemptSerializer(job.history.all(), many=True).data]
        lines = getattr(job, "failed_log_lines", {})  # read by selectors.job_get_detail
        for h in history:
            if h["attempt"] in lines:
                h["last_log_lines"] = lines[h["attempt"]]
        data["history"] = history
        return data


class BulkOutputSerializer(serializers.Serializer):
    jobs = JobSerializer(many=True)


class JobStatsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    by_status = serializers.DictField(child=serializers.IntegerField())
    throughput = serializers.DictField(child=serializers.FloatField())
    latency_seconds = serializers.DictField(child=serializers.DictField(allow_null=True))


class ScheduleSerializer(serializers.ModelSerializer):
    """A cron schedule and its job template; validated like a job submit."""

    backoff = BackoffSerializer(required=False)
    queue = QueueField(default="default")
    priority = serializers.IntegerField(min_value=0, max_value=9, default=5)
    max_attempts = serializers.IntegerField(min_value=1, max_value=25, default=4)
    timeout_seconds = serializers.IntegerField(min_value=1, max_value=7 * 86400, default=300)
    payload = PayloadField()

    class Meta:
        model = Schedule
        fields = [
            "id", "name", "cron", "timezone", "enabled", "misfire_policy", "type", "payload", "queue", "priority",
            "max_attempts", "backoff", "timeout_seconds", "next_fire_at", "last_fired_at", "created_at",
        ]  # fmt: skip
        read_only_fields = ["id", "next_fire_at", "last_fired_at", "created_at"]

    def validate_cron(self, value: str) -> str:
        problem = validate_cron(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def validate_timezone(self, value: str) -> str:
        problem = validate_timezone(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value

    validate_type = JobInputSerializer.validate_type

    def validate_backoff(self, value: dict[str, Any]) -> dict[str, Any]:
        return {**default_backoff(), **value}


class RateLimitSerializer(serializers.ModelSerializer):
    """How fast jobs whose `rate_limit_key` matches `pattern` may start: `rate` ("100/s",
    "600/m", "1000/h", "20000/d"), up to `burst` at once. Yours hold for your keys; staff's
    (`every_owner`) for every owner's keys, each owner's counted on its own. Where several
    match a key, the slowest holds."""

    rate = serializers.CharField(max_length=20, help_text='"100/s", "600/m", "1000/h" or "20000/d"')
    burst = serializers.IntegerField(min_value=1, max_value=key_rates.MAX_BURST, default=1)
    every_owner = serializers.BooleanField(
        default=False, help_text="Staff only: the limit holds for every owner's keys (each owner's on its own)."
    )

    class Meta:
        model = RateLimit
        fields = ["id", "pattern", "rate", "burst", "every_owner", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate_pattern(self, value: str) -> str:
        problem = key_rates.check_pattern(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def validate_rate(self, value: str) -> tuple[int, int]:
        try:
            return key_rates.parse_rate(value)
        except key_rates.RateError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if "rate" in data:
            data["limit"], data["period_seconds"] = data.pop("rate")
        return data

    def to_representation(self, limit: RateLimit) -> dict[str, Any]:
        return {
            "id": limit.id,
            "pattern": limit.pattern,
            "rate": key_rates.format_rate(limit.limit, limit.period_seconds),
            "burst": limit.burst,
            "every_owner": limit.owner_id is None,
            "created_at": limit.created_at,
            "updated_at": limit.updated_at,
        }


class CallbackSerializer(JobInputSerializer):
    """A batch's callback job, as a job is submitted; it runs when the batch ends, with the
    batch's counts in its payload under `batch`, so it takes no time or key of its own."""

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        data = super().validate(data)
        for name in ("run_at", "idempotency_key", "unique_key"):
            if data.get(name) is not None:
                raise serializers.ValidationError({name: ["a callback runs once, when its batch ends: not with this"]})
        return data


_BATCH_JOB_FIELDS = ("idempotency_key", "unique_key")
_BATCH_JOB_KEY = "a batch's job cannot have one: it could answer with a job outside the batch"


class BatchJobsField(JobInputSerializer):
    """A batch's jobs: as a bulk submit's, without idempotency or unique keys (either could
    answer with a job outside the batch)."""

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        data = super().validate(data)
        for name in _BATCH_JOB_FIELDS:
            if data.get(name) is not None:
                raise serializers.ValidationError({name: [_BATCH_JOB_KEY]})
        return data


def batch_jobs_problem(specs: list[JobSpec]) -> dict[int, dict[str, list[str]]]:
    """The same rule for specs the fast path made."""
    return {
        i: {name: [_BATCH_JOB_KEY]}
        for i, spec in enumerate(specs)
        for name in _BATCH_JOB_FIELDS
        if getattr(spec, name) is not None
    }


class BatchInputSerializer(serializers.Serializer):
    description = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
    jobs = BatchJobsField(  # type: ignore[call-arg]
        many=True, allow_empty=True, required=False, default=list, max_length=settings.JOBS_BULK_MAX,
        help_text=f"At most {settings.JOBS_BULK_MAX:,} jobs a request (JOBS_BULK_MAX); add more while it is open.",
        error_messages={"max_length": "at most {max_length} jobs per request (JOBS_BULK_MAX)."},
    )  # fmt: skip
    on_success = CallbackSerializer(
        required=False, allow_null=True, default=None,
        help_text="A job made once every job of the batch succeeded (once it is closed).",
    )  # fmt: skip
    on_complete = CallbackSerializer(
        required=False, allow_null=True, default=None,
        help_text="A job made once every job of the batch is terminal (once it is closed), whatever the outcomes.",
    )  # fmt: skip
    open = serializers.BooleanField(
        default=False, help_text="Keep it open for more jobs (POST .../jobs/); its callbacks wait for it to be closed."
    )


class BatchAddSerializer(serializers.Serializer):
    jobs = BatchJobsField(  # type: ignore[call-arg]
        many=True, allow_empty=False, max_length=settings.JOBS_BULK_MAX,
        error_messages={"max_length": "at most {max_length} jobs per request (JOBS_BULK_MAX)."},
    )  # fmt: skip
    close = serializers.BooleanField(default=False, help_text="Close the batch with these jobs.")


class BatchCallbackSerializer(serializers.Serializer):
    template = serializers.JSONField(help_text="The callback's job as given.")
    job = serializers.UUIDField(allow_null=True, help_text="Its job, once made.")


class BatchSerializer(serializers.Serializer):
    """A batch with its counts: jobs by state, and the percentage done (finished jobs plus the
    progress running ones report)."""

    id = serializers.UUIDField()
    description = serializers.CharField()
    state = serializers.ChoiceField(choices=["open", "closed", "complete", "cancelled"])
    total = serializers.IntegerField()
    counts = serializers.DictField(child=serializers.IntegerField())
    percent = serializers.FloatField()
    on_success = BatchCallbackSerializer(allow_null=True)
    on_complete = BatchCallbackSerializer(allow_null=True)
    created_at = serializers.DateTimeField()
    closed_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    cancelled_at = serializers.DateTimeField(allow_null=True)

    def to_representation(self, batch: Any) -> dict[str, Any]:
        counts = self.context["counts"][batch.id]

        def callback(name: str) -> dict[str, Any] | None:
            template = getattr(batch, name)
            job_id = getattr(batch, f"{name}_job_id")
            return None if template is None else {"template": template, "job": str(job_id) if job_id else None}

        return {
            "id": str(batch.id),
            "description": batch.description,
            "state": batch.state,
            "total": counts.total,
            "counts": counts.by_status,
            "percent": counts.percent,
            "on_success": callback("on_success"),
            "on_complete": callback("on_complete"),
            "created_at": batch.created_at,
            "closed_at": batch.closed_at,
            "completed_at": batch.completed_at,
            "cancelled_at": batch.cancelled_at,
        }


class AuditRecordSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditRecord
        fields = ["id", "created_at", "actor", "actor_id", "action", "target_type", "target_id", "target_owner_id",
                  "source", "request_id", "trace_id", "details"]  # fmt: skip
        read_only_fields = fields
