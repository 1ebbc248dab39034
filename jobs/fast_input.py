"""A compiled fast path for job submits: the well-formed request, validated by msgspec.

Why: DRF's per-field machinery (`JobInputSerializer`, nine fields per job) plus `to_spec`
took more than half of the web process's CPU on a 1,000-job bulk submit. The common request
is plain and well formed; msgspec checks its types and ranges in C, and a short Python pass
checks what DRF adds on top (its text rules, the handler registry, reserved and duplicate
keys, the payload's JSON check).

The rule: this module only ever says "valid, and here are the specs", or None, which means
"not sure". On None the view runs the DRF serializers exactly as before, so every 400 (its
message, its shape) and every odd input DRF takes (numbers as strings, `1.0` for an integer,
`true` for a float, text it trims, ISO datetimes for `run_at`) keeps DRF's answer. Whatever
DRF would change or might refuse makes this return None: text with surrounding whitespace,
empty, holding NUL or a surrogate, or not a `str`; a bool or float where an integer belongs;
any `run_at` but null; a null where DRF has no `allow_null`. Accepting what DRF refuses is a
bug; falling back is only slower. The serializers stay the schema (OpenAPI) and the
reference: tests/jobs/test_fast_input.py compares the two on generated input, and checks that
the ranges and defaults below are the serializers' own.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from django.conf import settings
from msgspec import UNSET, Meta, Struct, UnsetType
from rest_framework.exceptions import ValidationError

from config.rest import check_json
from jobs.handlers import submit_problem
from jobs.keys import reserved_prefix
from jobs.models import default_backoff
from jobs.serializers import QUEUE_NAME, BulkInputSerializer
from jobs.services import JobSpec

# Lengths in code points, as Django's MaxLengthValidator counts them.
_Text = Annotated[str, Meta(min_length=1, max_length=200)]


class _Backoff(Struct):
    initial: Annotated[float, Meta(ge=0.0, le=86400.0)] = 2.0
    factor: Annotated[float, Meta(ge=1.0, le=100.0)] = 2.0
    max: Annotated[float, Meta(ge=0.0, le=7 * 86400.0)] = 3600.0
    jitter: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.2


class _Job(Struct):
    """One job as `JobInputSerializer` takes it, minus everything DRF would coerce. msgspec
    ignores unknown keys, as DRF does; it refuses bools and floats for `int`, and bools for
    `float` (DRF takes `true` there as 1.0: that input falls back)."""

    type: _Text
    payload: Any = UNSET  # passed on as the very object DRF would pass on; checked below
    queue: str = "default"
    priority: Annotated[int, Meta(ge=0, le=9)] = 5
    max_attempts: Annotated[int, Meta(ge=1, le=25)] = 4
    backoff: _Backoff | UnsetType = UNSET  # null is an error in DRF: no `| None`
    timeout_seconds: Annotated[int, Meta(ge=1, le=7 * 86400)] = 300
    run_at: None = None  # a datetime is parsed by DRF's DateTimeField only
    idempotency_key: _Text | None = None
    concurrency_key: _Text | None = None
    concurrency_limit: Annotated[int, Meta(ge=1, le=1000)] | None = None
    rate_limit_key: _Text | None = None
    # A unique job is DRF's: the fast path only notices one, and falls back.
    unique_key: Any = UNSET
    unique_for: Any = UNSET
    unique_policy: Any = UNSET
    debounce_seconds: Any = UNSET
    debounce_max_seconds: Any = UNSET


# fullmatch, not DRF's search: `$` also matches before a final newline, which we never accept.
_QUEUE = re.compile(QUEUE_NAME)
# The serializer's limit is fixed when it is declared; the smaller of it and today's setting.
_DECLARED_BULK_MAX: int = BulkInputSerializer._declared_fields["jobs"].max_length  # type: ignore[attr-defined]


class _NotSure(Exception):
    pass


def bulk_specs(data: Any) -> list[JobSpec] | None:
    """The specs of a `jobs/bulk/` body, in order, or None: let `BulkInputSerializer` decide."""
    if type(data) is not dict:
        return None
    items = data.get("jobs")
    if type(items) is not list or not items or len(items) > min(settings.JOBS_BULK_MAX, _DECLARED_BULK_MAX):
        return None
    jobs = _convert(items, list[_Job])
    if jobs is None:
        return None
    keys: set[str] = set()
    try:
        return [_spec(job, keys) for job in jobs]
    except (ValidationError, _NotSure):
        return None


def job_spec(data: Any) -> JobSpec | None:
    """The spec of a single submit's body, or None: let `JobInputSerializer` decide."""
    job = _convert(data, _Job) if type(data) is dict else None
    if job is None:
        return None
    try:
        return _spec(job, set())
    except (ValidationError, _NotSure):
        return None


def _convert(data: Any, kind: Any) -> Any:
    """msgspec's reading of `data` as `kind`, or None when it refuses it in any way. Not only
    with its ValidationError: a string with a surrogate where it wanted a number raised
    UnicodeEncodeError (while it wrote its message), and whatever else it may raise on input it
    does not like is equally DRF's to judge."""
    try:
        return msgspec.convert(data, kind)
    except Exception:  # any refusal: see above
        return None


def _spec(job: _Job, keys: set[str]) -> JobSpec:
    """`JobInputSerializer.to_spec` of what DRF would have validated; `keys`: the idempotency
    keys of the request so far (a duplicate is DRF's to report)."""
    if not _plain(job.type) or submit_problem(job.type) is not None:
        raise _NotSure
    unique = (job.unique_key, job.unique_for, job.unique_policy, job.debounce_seconds, job.debounce_max_seconds)
    if any(value is not UNSET for value in unique):
        raise _NotSure
    if job.payload is UNSET:
        payload: dict[str, Any] = {}
    elif type(job.payload) is dict:
        payload = job.payload
        check_json(payload, "payload", max_bytes=settings.JOB_PAYLOAD_MAX_BYTES, setting="JOB_PAYLOAD_MAX_BYTES")
    else:
        raise _NotSure
    if _QUEUE.fullmatch(job.queue) is None or job.queue not in settings.QUEUES:
        raise _NotSure  # DRF's to report: the name's rule, or the declared queues
    key = job.idempotency_key
    if key is not None:
        if not _plain(key) or reserved_prefix(key) or key in keys:
            raise _NotSure
        keys.add(key)
    limit = job.concurrency_limit
    if job.concurrency_key is None:
        if limit is not None:
            raise _NotSure  # DRF: "needs a concurrency_key"
    else:
        if not _plain(job.concurrency_key):
            raise _NotSure
        if limit is None:
            limit = 1
    if job.rate_limit_key is not None and not _plain(job.rate_limit_key):
        raise _NotSure
    backoff = default_backoff()
    if isinstance(job.backoff, _Backoff):
        b = job.backoff
        backoff = {**backoff, "initial": b.initial, "factor": b.factor, "max": b.max, "jitter": b.jitter}
    return JobSpec(
        type=job.type,
        payload=payload,
        queue=job.queue,
        priority=job.priority,
        max_attempts=job.max_attempts,
        backoff=backoff,
        timeout_seconds=job.timeout_seconds,
        run_at=None,
        idempotency_key=key,
        concurrency_key=job.concurrency_key,
        concurrency_limit=limit,
        rate_limit_key=job.rate_limit_key,
    )


def _plain(text: str) -> bool:
    """Text DRF's CharField keeps as it is and its validators pass: nothing its strip() would
    trim (Python's whitespace, not only ASCII), no NUL, no surrogate (what UTF-8 cannot encode)."""
    if not text or text.strip() != text or "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
