"""Running a claimed job: its handler under the job's timeout, then its outcome recorded. The
one way both the single-job path and the batch path run a job.

    a monitor thread renews the lease and watches for a cancel request
    handler(payload, ctx) under the job's timeout
      ├ returns          → SUCCEEDED with the result
      ├ cancelled        → CANCELLED
      ├ timed out        → failure (TIMED_OUT attempt) → policy
      ├ PermanentError   → DEAD_LETTER
      ├ other exception  → policy: RETRYING at next_retry_at, or DEAD_LETTER
      └ BaseException    → the same (SystemExit, CancelledError…: a handler's, not ours);
                           a worker being stopped (KeyboardInterrupt, Celery's shutdown)
                           records the failure, then lets the exception go on
    a cancel requested meanwhile wins over a retry: the job ends CANCELLED

Whatever a handler returns or raises is stored (`jobs.outputs`): NUL replaced, size bounded.

Tracing: the handler runs in a span, `job.handler` (each attempt one: what it logs carries
its ids), and the outcome is written in another, `job.outcome`; both in the job's trace,
which the caller made current. A success handed to a batch's recorder gets its outcome span
when the recorder writes it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any, Protocol

import orjson
from celery.exceptions import WorkerShutdown, WorkerTerminate
from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string
from opentelemetry.trace import Span, SpanKind, StatusCode
from redis.exceptions import RedisError

from config import tracing
from jobs import outputs, progress, transitions
from jobs.handlers import (
    Handler,
    JobCancelled,
    JobContext,
    PermanentError,
    PermanentFailure,
    Throttled,
    class_path,
    get_handler,
)
from jobs.models import AttemptStatus
from logs.context import JobLogContext
from logs.shipping import flush_all, job_records_written
from metrics import prom
from orchestration import fair_slots, policy, ratelimit
from orchestration.worker.monitor import MONITOR, Interrupted, handler_running
from orchestration.worker.outcomes import Outcome, Status, record, with_reconnect

logger = logging.getLogger("orchestration.worker")

# Raised in a handler's thread when the worker process itself is being stopped: the attempt's
# failure is recorded, then the exception goes on so the process stops. Every other
# BaseException from a handler (sys.exit in argparse or click, asyncio.CancelledError) is
# that job's failure, and the worker goes on.
STOPPING: tuple[type[BaseException], ...] = (KeyboardInterrupt, WorkerShutdown, WorkerTerminate)


class SuccessSink(Protocol):
    """Where a batch collects its jobs' successes to write them together (`batch.Recorder`)."""

    def succeeded(self, claim: transitions.Claim, result: Any, *, logged: bool) -> None: ...


def log_context(claim: transitions.Claim) -> JobLogContext:
    """What every record written while the claimed job runs carries: the job's own fields."""
    return JobLogContext(
        job_id=str(claim.job_id), attempt=claim.attempt, type=claim.type, queue=claim.queue,
        owner_id=claim.owner_id, workflow_id=str(claim.workflow_id) if claim.workflow_id else None,
    )  # fmt: skip


def _process_attributes(job_id: str, queue: str, job_type: str, attempt: int) -> dict[str, Any]:
    """What a job's `process <queue>` span says, made alone or after the fact."""
    return tracing.messaging("process", queue, message_id=job_id, job_type=job_type, attempt=attempt)


def process_span(
    job_id: str, queue: str, job_type: str, attempt: int, trace: tracing.Carrier | None
) -> AbstractContextManager[Span | None]:
    """A job's CONSUMER span, `process <queue>` (the OTel messaging conventions), on the
    single-job path: in the job's trace under its creation context, current while the worker
    takes, runs and records it, so the handler's own spans and the statements nest under it.
    A job of a batch that takes this path links the batch's span, whose trace it is not in.
    (A batch's other jobs have none: `record_failed_attempt`.)"""
    if not tracing.enabled():
        return nullcontext()
    attributes = _process_attributes(job_id, queue, job_type, attempt)
    return tracing.span(f"process {queue}", parent=trace, kind=SpanKind.CONSUMER, attributes=attributes,
                        link_current=True)  # fmt: skip


FAILED = frozenset({Status.RETRYING, Status.DEAD_LETTER})  # what a failed attempt became


def end_process_span(span: Span | None, outcome: Outcome) -> None:
    """What became of the job, on its span: a failed attempt's span is an error."""
    if span is not None:
        span.set_attribute(f"{tracing.PREFIX}job.status", str(outcome.status))
        if outcome.status in FAILED:
            span.set_status(StatusCode.ERROR)


def record_failed_attempt(
    claim: transitions.Claim, trace: tracing.Carrier | None, outcome: Outcome, started: int
) -> None:
    """A failed attempt of a batch's job: its `process` span, after the fact, in its trace and
    linked to the batch (a job of a batch has no span of its own otherwise)."""
    attributes = _process_attributes(str(claim.job_id), claim.queue, claim.type, claim.attempt)
    attributes[f"{tracing.PREFIX}job.status"] = str(outcome.status)
    tracing.record(f"process {claim.queue}", parent=trace, start_time=started, attributes=attributes,
                   kind=SpanKind.CONSUMER, links=tracing.link_to_current(), error=str(outcome.status))  # fmt: skip


def _permanent_exceptions() -> tuple[type[BaseException], ...]:
    return (PermanentError, *(import_string(path) for path in settings.JOB_PERMANENT_EXCEPTIONS))


class _LongRun:
    """A running job's slot, as the monitor tells it (`monitor.LongRun`). Redis away: the
    slot's bookkeeping is skipped (logged); the job goes on."""

    def __init__(self, slot: fair_slots.Slot) -> None:
        self.slot = slot

    def ran_long(self) -> None:
        _quietly(fair_slots.SLOTS.ran_long, self.slot)

    def renew(self) -> None:
        _quietly(fair_slots.SLOTS.renew, self.slot)


def _quietly(step: Callable[[fair_slots.Slot], None], slot: fair_slots.Slot) -> None:
    try:
        step(slot)
    except RedisError as exc:
        logger.warning("slots.unavailable", extra={"error": str(exc)[:300]})


def _take_slot(claim: transitions.Claim) -> fair_slots.Slot | str | None:
    """The job's slot among its queue's workers (`fair_slots`); a string: its owner's (or
    queue's) share is full, the job waits; None: no limit applies, or Redis cannot say (the
    job runs: fairness never fails a job)."""
    owner_share, queue_share = fair_slots.shares(claim.owner_id, claim.queue)
    if owner_share >= 1 and queue_share >= 1:
        return None
    try:
        return fair_slots.SLOTS.take(
            queue=claim.queue, owner=claim.owner_id, type_=claim.type, share=owner_share, queue_share=queue_share
        )
    except RedisError as exc:
        logger.warning("slots.unavailable", extra={"error": str(exc)[:300]})
        return None


def run_claimed(claim: transitions.Claim, deferred: SuccessSink | None = None) -> Outcome:
    """Run a claimed job's handler and record its outcome. With `deferred`, a success of a
    job outside any workflow is handed to the batch's recorder instead of written now. A job
    whose owner has its share of the queue's workers busy with long jobs is deferred instead, its
    claim undone (it runs when one of them ends)."""
    slot = _take_slot(claim)
    if isinstance(slot, str):
        was_deferred = with_reconnect(
            lambda: transitions.defer_for_share(claim.job_id, attempt=claim.attempt, worker=claim.worker)
        )
        if was_deferred:
            logger.info("job.deferred_for_share", extra={"job_id": str(claim.job_id), "full": slot})
            return Outcome(str(claim.job_id), Status.DEFERRED)
        slot = None  # a cancel request (or it is no longer this attempt's): it runs, to end as it should
    try:
        return _run_claimed(claim, deferred, _LongRun(slot) if slot is not None else None)
    finally:
        if slot is not None:
            _quietly(fair_slots.SLOTS.done, slot)


def _run_claimed(claim: transitions.Claim, deferred: SuccessSink | None, long_run: _LongRun | None) -> Outcome:
    job_id = claim.job_id
    in_workflow = claim.workflow_id is not None  # its end moves the workflow on, in one transaction
    handler = get_handler(claim.type)
    reporter = progress.Reporter(job_id, claim.attempt)
    ctx = JobContext(
        job_id=job_id, attempt=claim.attempt, type=claim.type, queue=claim.queue,
        is_cancel_requested=MONITOR.cancel_requested, report_progress=reporter.report,
    )  # fmt: skip
    if claim.waiting_since is not None:
        wait = (timezone.now() - claim.waiting_since).total_seconds()
        prom.JOB_QUEUE_WAIT.labels(claim.type, claim.queue).observe(max(wait, 0.0))
    recorder = None if in_workflow else deferred
    try:
        if handler is None:
            raise PermanentError(f"no handler registered for job type {claim.type!r} on this worker")
        result, logged = _call_handler(
            handler, claim, ctx, deferring=recorder is not None, long_run=long_run, reporter=reporter
        )
    except Throttled as exc:
        return _throttled(claim, exc.seconds, str(exc), in_workflow)
    except (JobCancelled, Interrupted) as exc:
        if isinstance(exc, JobCancelled) or exc.reason == "cancelled":
            return _cancelled(claim, in_workflow)
        return _fail(claim, f"timed out after {claim.timeout_seconds}s", "", AttemptStatus.TIMED_OUT, permanent=False)
    except Exception as exc:
        permanent = isinstance(exc, _permanent_exceptions())
        return _fail_with(claim, exc.error if isinstance(exc, PermanentFailure) else exc, permanent)
    except BaseException as exc:
        outcome = _fail_with(claim, exc, permanent=False)
        if isinstance(exc, STOPPING):
            raise
        return outcome
    if recorder is not None:
        recorder.succeeded(claim, result, logged=logged)
        return Outcome(str(job_id), Status.SUCCEEDED, recorded=False)  # the recorder has the verdict
    return _succeeded(claim, result, in_workflow)


def _succeeded(claim: transitions.Claim, result: Any, in_workflow: bool) -> Outcome:
    job_id, attempt = claim.job_id, claim.attempt
    won = with_reconnect(
        lambda: transitions.mark_succeeded(job_id, attempt=attempt, result=result, in_workflow=in_workflow)
    )
    return record(job_id, Status.SUCCEEDED, won)


def _throttled(claim: transitions.Claim, seconds: float, reason: str, in_workflow: bool) -> Outcome:
    """The handler asked to wait (ctx.throttle): back to PENDING until then, the attempt given
    back; with a cancel request meanwhile it ends as asked instead."""
    run_at = timezone.now() + timedelta(seconds=seconds)
    won = with_reconnect(
        lambda: transitions.throttle_back(
            claim.job_id, attempt=claim.attempt, worker=claim.worker, run_at=run_at, error=reason,
            error_class=class_path(Throttled),
        )
    )  # fmt: skip
    if won:
        _slow_key(claim, seconds)
        return record(claim.job_id, Status.THROTTLED, True, retry_in=seconds)
    return _cancelled(claim, in_workflow)  # a cancel request (or it is no longer ours: a no-op)


def _slow_key(claim: transitions.Claim, seconds: float) -> None:
    """The downstream said slow down: nothing of the job's rate_limit_key starts for that long."""
    try:
        key = with_reconnect(lambda: transitions.rate_limit_key_of(claim.job_id))
        if key:
            ratelimit.pause(claim.owner_id or 0, key, seconds)
    except RedisError:  # the job waits as asked; only its key's other jobs are not slowed
        logger.warning("job.key_not_slowed", extra={"job_id": str(claim.job_id)}, exc_info=True)


def _cancelled(claim: transitions.Claim, in_workflow: bool) -> Outcome:
    job_id, attempt = claim.job_id, claim.attempt
    won = with_reconnect(lambda: transitions.mark_cancelled(job_id, attempt=attempt, in_workflow=in_workflow))
    return record(job_id, Status.CANCELLED, won)


def _call_handler(
    handler: Handler,
    claim: transitions.Claim,
    ctx: JobContext,
    *,
    deferring: bool,
    long_run: _LongRun | None,
    reporter: progress.Reporter | None = None,
) -> tuple[Any, bool]:
    """Call the handler under the job's timeout and return its result, bounded for storing,
    and whether the attempt wrote log lines. Whatever it raises goes to the caller (a result
    that is not JSON as a PermanentError), after the duration is observed and the logs flushed."""
    started = time.perf_counter()
    records_before = job_records_written()
    succeeded = False
    try:
        with handler_running(claim.job_id, claim.attempt, claim.timeout_seconds, long_run, reporter):
            try:
                result = handler(claim.payload, ctx)
            finally:  # failures and timeouts have a duration too
                prom.JOB_DURATION.labels(claim.type, claim.queue).observe(time.perf_counter() - started)
        result = outputs.bounded_result(result)  # must be JSON; stored whatever its content
        succeeded = True
    except orjson.JSONEncodeError as exc:
        raise PermanentError(f"handler result is not JSON-serializable: {exc}") from exc
    finally:
        # The attempt's log lines reach Kafka before its outcome commits: a worker killed
        # right after cannot leave a finished job with lines missing. A success handed to
        # the recorder (`deferring`) leaves it to the recorder, which flushes once for the
        # whole batch.
        logged = job_records_written() != records_before
        if logged and not (succeeded and deferring):
            flush_all(timeout=settings.LOG_FLUSH_BEFORE_OUTCOME_SECONDS)
    return result, logged


def _fail_with(claim: transitions.Claim, exc: BaseException, permanent: bool) -> Outcome:
    """The attempt failed with `exc`: its text, traceback and class are recorded."""
    tb = "".join(traceback.format_exception(exc))
    return _fail(claim, f"{type(exc).__name__}: {exc}", tb, AttemptStatus.FAILED, permanent, class_path(type(exc)))


def _fail(
    claim: transitions.Claim, error: str, tb: str, attempt_status: str, permanent: bool, error_class: str = ""
) -> Outcome:
    return _failed(claim, error, tb, attempt_status, permanent, error_class)


def _failed(
    claim: transitions.Claim, error: str, tb: str, attempt_status: str, permanent: bool, error_class: str
) -> Outcome:
    error, tb = outputs.bounded_error(error), outputs.bounded_traceback(tb)
    decision = policy.decide(
        attempts=claim.attempts, max_attempts=claim.max_attempts, backoff=claim.backoff, now=timezone.now(),
        permanent=permanent,
    )  # fmt: skip
    if isinstance(decision, policy.Retry):
        at = decision.at
        won = with_reconnect(
            lambda: transitions.schedule_retry(
                claim.job_id, attempt=claim.attempt, next_retry_at=at, error=error, tb=tb,
                error_class=error_class, attempt_status=attempt_status,
            )
        )  # fmt: skip
        if not won:  # a cancel was requested meanwhile (or the attempt lost its job): not again
            return _cancel_failed(claim, error, tb, attempt_status, error_class)
        outcome = record(claim.job_id, Status.RETRYING, won, error=error, retry_in=round(decision.delay_seconds, 3))
        return dataclasses.replace(outcome, breaker_failure=not permanent)
    won = with_reconnect(
        lambda: transitions.move_to_dead_letter(
            claim.job_id, attempt=claim.attempt, error=error, tb=tb, error_class=error_class,
            attempt_status=attempt_status, in_workflow=claim.workflow_id is not None,
        )
    )  # fmt: skip
    outcome = record(claim.job_id, Status.DEAD_LETTER, won, error=error, reason=decision.reason)
    return dataclasses.replace(outcome, breaker_failure=not permanent)


def _cancel_failed(claim: transitions.Claim, error: str, tb: str, attempt_status: str, error_class: str) -> Outcome:
    """The attempt failed after its job's cancel was requested: the job ends CANCELLED, its
    history keeps the failure (the reaper does the same for a lost worker)."""
    won = with_reconnect(
        lambda: transitions.mark_cancelled(
            claim.job_id, attempt=claim.attempt, reason=error, attempt_status=attempt_status, tb=tb,
            error_class=error_class, in_workflow=claim.workflow_id is not None,
        )
    )  # fmt: skip
    return record(claim.job_id, Status.CANCELLED, won, error=error)
