"""Running one job inside a Celery worker process: claim, run the handler, record the outcome.

    claim (PENDING|QUEUED → RUNNING, token must match) ─ lost? → nothing to do (duplicate/stale)
      │ a monitor thread renews the lease and watches for a cancel request
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

Every outcome is written with a transition guarded by the attempt number, so a result that
arrives after the job was reaped, re-dispatched or cancelled changes nothing.

Interrupting a handler (timeout, or a cancel it did not notice within the grace period) uses
SIGALRM in the process's main thread, which is where prefork and solo pools run tasks.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from celery.exceptions import WorkerShutdown, WorkerTerminate
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from jobs import outputs, transitions
from jobs.handlers import JobCancelled, JobContext, PermanentError, get_handler
from jobs.models import AttemptStatus, Job
from logs.context import JobLogContext, job_log_context
from logs.shipping import flush_all, job_records_written
from metrics import prom
from orchestration import breaker, policy
from orchestration.breaker import BREAKERS

if TYPE_CHECKING:
    from orchestration.batch import BatchRun, Recorder

logger = logging.getLogger("orchestration.worker")
T = TypeVar("T")

# Raised in a handler's thread when the worker process itself is being stopped: the attempt's
# failure is recorded, then the exception goes on so the process stops. Every other
# BaseException from a handler (sys.exit in argparse or click, asyncio.CancelledError) is
# that job's failure, and the worker goes on.
STOPPING: tuple[type[BaseException], ...] = (KeyboardInterrupt, WorkerShutdown, WorkerTerminate)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Interrupted(BaseException):  # BaseException: a handler's `except Exception` cannot swallow it
    """Raised inside a handler by SIGALRM: its timeout passed, or its cancel grace ran out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Watch:
    job_id: uuid.UUID
    attempt: int
    started: float
    cancel_requested_at: float | None = None
    interrupt_reason: str | None = None


class Monitor:
    """One thread per worker process that watches the job the process is running: renews its
    lease every third of it, checks for a cancel request every second once the job has run
    for a second (no-op jobs never cost a query), and interrupts a handler that ignores a
    cancel for longer than the grace period."""

    TICK = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watch: _Watch | None = None
        self._batch: BatchRun | None = None  # the batch this process is working through
        self._main_thread = threading.main_thread().ident
        self._thread: threading.Thread | None = None
        self._pid = 0

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():  # forked child
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="job-monitor", daemon=True)
            self._thread.start()

    def watch(self, job_id: uuid.UUID, attempt: int) -> _Watch:
        self._ensure_thread()
        with self._lock:
            self._watch = _Watch(job_id, attempt, time.monotonic())
            return self._watch

    def clear(self) -> None:
        with self._lock:
            self._watch = None

    def hold(self, batch: BatchRun) -> None:
        """Until `release`, tick the batch this process works through: it keeps its jobs'
        leases alive and acts while a long job of it runs (`BatchRun.tick`)."""
        self._ensure_thread()
        with self._lock:
            self._batch = batch

    def release(self) -> None:
        with self._lock:
            self._batch = None

    def cancel_requested(self) -> bool:
        watch = self._watch
        return watch is not None and watch.cancel_requested_at is not None

    def _run(self) -> None:
        from django.db import connection

        last_renew = last_check = 0.0
        while True:
            time.sleep(self.TICK)
            lease = settings.JOB_LEASE_SECONDS
            batch, watch = self._batch, self._watch
            if batch is not None:
                try:
                    batch.tick(running_for=time.monotonic() - watch.started if watch is not None else 0.0)
                except Exception:  # the database may be briefly away; the lease has slack
                    logger.exception("job.monitor_failed")
                    connection.close()
            if watch is None:
                if batch is None and connection.connection is not None:
                    connection.close()  # only long jobs and batches need this thread's connection
                continue
            now = time.monotonic()
            try:
                if now - watch.started >= 1.0 and now - last_check >= 1.0:
                    last_check = now
                    if (
                        watch.cancel_requested_at is None
                        and Job.objects.filter(id=watch.job_id, cancel_requested_at__isnull=False).exists()
                    ):
                        watch.cancel_requested_at = now
                if now - watch.started >= lease / 3 and now - last_renew >= lease / 3:
                    last_renew = now
                    if not transitions.renew_lease(watch.job_id, attempt=watch.attempt, lease_seconds=lease):
                        logger.warning("job.lease_lost", extra={"job_id": str(watch.job_id), "attempt": watch.attempt})
            except Exception:  # the database may be briefly away; the lease has slack
                logger.exception("job.monitor_failed")
                connection.close()
            if (
                watch.cancel_requested_at is not None
                and watch.interrupt_reason is None
                and now - watch.cancel_requested_at >= settings.JOB_CANCEL_GRACE_SECONDS
            ):
                self.interrupt(watch, "cancelled")

    def interrupt(self, watch: _Watch, reason: str) -> None:
        with self._lock:
            if _armed is watch and watch.interrupt_reason is None and self._main_thread is not None:
                watch.interrupt_reason = reason
                signal.pthread_kill(self._main_thread, signal.SIGALRM)


MONITOR = Monitor()


_armed: _Watch | None = None  # the watch whose handler SIGALRM may interrupt right now


def _on_alarm(signum: int, frame: Any) -> None:
    watch = _armed
    if watch is None:
        return  # a late alarm after the handler finished: ignore it, never die of SIGALRM
    if watch.interrupt_reason is None:
        watch.interrupt_reason = "timed out"
    raise Interrupted(watch.interrupt_reason)


@contextmanager
def _handler_running(job_id: uuid.UUID, attempt: int, timeout: float) -> Iterator[None]:
    """While the body runs the handler: the monitor watches the job, and SIGALRM is armed for
    `timeout` (the alarm, or the monitor after an ignored cancel, raises Interrupted inside
    it). Outside the main thread only the cooperative checks apply."""
    global _armed
    watch = MONITOR.watch(job_id, attempt)
    armed = threading.current_thread() is threading.main_thread()
    if armed:
        if signal.getsignal(signal.SIGALRM) is not _on_alarm:
            signal.signal(signal.SIGALRM, _on_alarm)
        _armed = watch
        signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.001))
    try:
        yield
    finally:
        if armed:
            _armed = None
            signal.setitimer(signal.ITIMER_REAL, 0)
        MONITOR.clear()


def _permanent_exceptions() -> tuple[type[BaseException], ...]:
    return (PermanentError, *(import_string(path) for path in settings.JOB_PERMANENT_EXCEPTIONS))


@dataclass(frozen=True)
class Outcome:
    job_id: str
    # SUCCEEDED, RETRYING, DEAD_LETTER, CANCELLED, SKIPPED (claim lost), HELD (limit or breaker)
    # or HANDED_BACK (a batch gave it, unstarted, to other workers)
    status: str
    recorded: bool = True  # False: the job had moved on (e.g. reaped) and the outcome was dropped
    breaker_failure: bool = False  # a failure that counts against the type's circuit breaker


def gate(envelope: dict[str, Any]) -> str:
    """What the job type's circuit breaker says: RUN, PROBE (run as the one probe) or HOLD."""
    type_ = envelope.get("type")
    return BREAKERS.allow(type_, probe_seconds=settings.BREAKER_PROBE_SECONDS) if type_ else breaker.RUN


def execute(envelope: dict[str, Any], *, worker: str | None = None, gate_: str | None = None) -> Outcome:
    """Claim and run one dispatched job. Safe to call twice with the same envelope. `gate_`
    is the breaker's answer when the caller already asked (a batch asks once per job)."""
    job_id = uuid.UUID(envelope["job_id"])
    type_ = envelope.get("type")
    gate_ = gate_ or gate(envelope)
    if gate_ == breaker.HOLD:
        held = with_reconnect(lambda: transitions.hold_for_breaker(job_id, dispatch_token=envelope["dispatch_token"]))
        logger.info("job.held_by_breaker", extra={"job_id": str(job_id), "type": type_, "held": held})
        return Outcome(str(job_id), "HELD", recorded=held)
    outcome = _claim_and_run(envelope, job_id, worker)
    if type_:
        tell_breaker(type_, outcome, probe=gate_ == breaker.PROBE)
    return outcome


def tell_breaker(type_: str, outcome: Outcome, *, probe: bool) -> None:
    try:
        if outcome.status == "SUCCEEDED" and outcome.recorded:
            BREAKERS.record(type_, ok=True, probe=probe)
        elif outcome.breaker_failure:
            BREAKERS.record(type_, ok=False, probe=probe)
        elif probe:
            BREAKERS.abandon_probe(type_)  # claim lost, cancelled, permanent error: no verdict
    except Exception:  # Redis away: the job's outcome is recorded; the breaker just misses one result
        logger.exception("breaker.record_failed", extra={"type": type_})


def _claim_and_run(envelope: dict[str, Any], job_id: uuid.UUID, worker: str | None) -> Outcome:
    if envelope.get("concurrency_key"):
        claim = _claim_keyed(envelope, worker or worker_id())
        if claim == "HELD":
            logger.info("job.held", extra={"job_id": str(job_id), "concurrency_key": envelope["concurrency_key"]})
            return Outcome(str(job_id), "HELD")
    else:
        claims = claim_many([(str(job_id), envelope["dispatch_token"])], worker=worker or worker_id())
        claim = claims[0] if claims else None
    assert not isinstance(claim, str)
    if claim is None:
        logger.info("job.claim_lost", extra={"job_id": str(job_id), "dispatch_token": envelope["dispatch_token"]})
        return Outcome(str(job_id), "SKIPPED", recorded=False)

    # Every record written from here to the outcome (the handler's and ours) carries the job.
    with job_log_context(
        JobLogContext(
            job_id=str(job_id),
            attempt=claim.attempt,
            type=claim.type,
            queue=claim.queue,
            owner_id=claim.owner_id,
            workflow_id=str(claim.workflow_id) if claim.workflow_id else None,
        )
    ):
        return run_claimed(claim)


def run_claimed(claim: transitions.Claim, deferred: Recorder | None = None) -> Outcome:
    """Run a claimed job's handler and record its outcome. With `deferred`, a success of a
    job outside any workflow is handed to the batch's recorder instead of written now."""
    job_id = claim.job_id
    in_workflow = claim.workflow_id is not None  # its end moves the workflow on, in one transaction
    handler = get_handler(claim.type)
    ctx = JobContext(
        job_id=job_id, attempt=claim.attempt, type=claim.type, queue=claim.queue,
        is_cancel_requested=MONITOR.cancel_requested,
    )  # fmt: skip
    if claim.waiting_since is not None:
        wait = (timezone.now() - claim.waiting_since).total_seconds()
        prom.JOB_QUEUE_WAIT.labels(claim.type, claim.queue).observe(max(wait, 0.0))
    started = time.perf_counter()
    records_before = job_records_written()
    recorder = None if in_workflow else deferred
    logged = succeeded = False
    try:
        if handler is None:
            raise PermanentError(f"no handler registered for job type {claim.type!r} on this worker")
        try:
            with _handler_running(job_id, claim.attempt, claim.timeout_seconds):
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
            # the recorder leaves it to the recorder, which flushes once for the whole batch.
            logged = job_records_written() != records_before
            if logged and not (succeeded and recorder is not None):
                flush_all(timeout=settings.LOG_FLUSH_BEFORE_OUTCOME_SECONDS)
    except (JobCancelled, Interrupted) as exc:
        if isinstance(exc, JobCancelled) or exc.reason == "cancelled":
            won = with_reconnect(
                lambda: transitions.mark_cancelled(job_id, attempt=claim.attempt, in_workflow=in_workflow)
            )
            return _record(job_id, "CANCELLED", won)
        return _fail(claim, f"timed out after {claim.timeout_seconds}s", "", AttemptStatus.TIMED_OUT, permanent=False)
    except Exception as exc:
        permanent = isinstance(exc, _permanent_exceptions())
        return _fail(claim, f"{type(exc).__name__}: {exc}", traceback.format_exc(), AttemptStatus.FAILED, permanent)
    except BaseException as exc:
        outcome = _fail(claim, f"{type(exc).__name__}: {exc}", traceback.format_exc(), AttemptStatus.FAILED, False)
        if isinstance(exc, STOPPING):
            raise
        return outcome
    if recorder is not None:
        recorder.succeeded(claim, result, logged=logged)
        return Outcome(str(job_id), "SUCCEEDED", recorded=False)  # the recorder has the verdict
    won = with_reconnect(
        lambda: transitions.mark_succeeded(job_id, attempt=claim.attempt, result=result, in_workflow=in_workflow)
    )
    return _record(job_id, "SUCCEEDED", won)


def claim_many(dispatches: list[tuple[str, str]], *, worker: str) -> list[transitions.Claim]:
    """Claim (job id, dispatch token) pairs, surviving a dropped connection. The claim may
    have committed before its reply was lost: then running it again wins nothing, so what
    this worker already holds of them is taken back too (else the job would sit RUNNING
    until reaped as LOST, an attempt used by a job that never ran)."""
    lease = settings.JOB_LEASE_SECONDS
    try:
        return transitions.mark_running_many(dispatches, worker=worker, lease_seconds=lease)
    except (OperationalError, InterfaceError):
        connection.close()
    held = {c.job_id: c for c in transitions.claims_held(dispatches, worker=worker)}
    won = {c.job_id: c for c in transitions.mark_running_many(dispatches, worker=worker, lease_seconds=lease)}
    both = held | won
    return [both[i] for i in dict.fromkeys(uuid.UUID(d[0]) for d in dispatches) if i in both]


def _claim_keyed(envelope: dict[str, Any], worker: str) -> transitions.Claim | str | None:
    """`_claim_within_limit`, surviving a dropped connection like `claim_many`: run again, it
    would take a second slot and lose the claim its first run committed."""
    try:
        return _claim_within_limit(envelope, worker)
    except (OperationalError, InterfaceError):
        connection.close()
    held = transitions.claims_held([(envelope["job_id"], envelope["dispatch_token"])], worker=worker)
    return held[0] if held else _claim_within_limit(envelope, worker)


def _claim_within_limit(envelope: dict[str, Any], worker: str) -> transitions.Claim | str | None:
    """Take a slot of the job's concurrency key, then claim; no slot: hold the job (the
    scheduler releases it when a slot frees). One transaction, so a lost claim gives the
    slot back."""
    job_id, limit = envelope["job_id"], int(envelope.get("concurrency_limit") or 1)
    with transaction.atomic():
        if not transitions.take_slot(job_id, limit):
            transitions.hold(envelope["job_id"], dispatch_token=envelope["dispatch_token"])
            return "HELD"
        claim = transitions.mark_running(
            envelope["job_id"], dispatch_token=envelope["dispatch_token"], worker=worker,
            lease_seconds=settings.JOB_LEASE_SECONDS,
        )  # fmt: skip
        if claim is None:
            transitions.give_back_slot(job_id)
        return claim


def with_reconnect(write: Callable[[], T]) -> T:
    """Each transition is one statement (atomic by itself). The worker keeps its connection
    between tasks, so after a PostgreSQL restart the first statement fails on a dead
    connection: reconnect and run it once more. Running it twice is safe: the second run of
    a guarded transition that already won simply finds nothing to change."""
    try:
        return write()
    except (OperationalError, InterfaceError):
        connection.close()
        return write()


def _fail(claim: transitions.Claim, error: str, tb: str, attempt_status: str, permanent: bool) -> Outcome:
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
                attempt_status=attempt_status,
            )
        )  # fmt: skip
        if not won:  # a cancel was requested meanwhile (or the attempt lost its job): not again
            return _cancel_failed(claim, error, tb, attempt_status)
        outcome = _record(claim.job_id, "RETRYING", won, error=error, retry_in=round(decision.delay_seconds, 3))
        return dataclasses.replace(outcome, breaker_failure=not permanent)
    won = with_reconnect(
        lambda: transitions.move_to_dead_letter(
            claim.job_id, attempt=claim.attempt, error=error, tb=tb, attempt_status=attempt_status,
            in_workflow=claim.workflow_id is not None,
        )
    )  # fmt: skip
    outcome = _record(claim.job_id, "DEAD_LETTER", won, error=error, reason=decision.reason)
    return dataclasses.replace(outcome, breaker_failure=not permanent)


def _cancel_failed(claim: transitions.Claim, error: str, tb: str, attempt_status: str) -> Outcome:
    """The attempt failed after its job's cancel was requested: the job ends CANCELLED, its
    history keeps the failure (the reaper does the same for a lost worker)."""
    won = with_reconnect(
        lambda: transitions.mark_cancelled(
            claim.job_id, attempt=claim.attempt, reason=error, attempt_status=attempt_status, tb=tb,
            in_workflow=claim.workflow_id is not None,
        )
    )  # fmt: skip
    return _record(claim.job_id, "CANCELLED", won, error=error)


def _record(job_id: uuid.UUID, status: str, won: bool, **fields: Any) -> Outcome:
    if won:
        logger.info("job.finished", extra={"job_id": str(job_id), "outcome": status, **fields})
    else:
        # The attempt lost its job meanwhile (reaped, re-dispatched or cancelled): drop it.
        logger.warning("job.outcome_dropped", extra={"job_id": str(job_id), "outcome": status})
    return Outcome(str(job_id), status, recorded=won)
