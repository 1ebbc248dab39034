"""Running a batch of dispatched jobs in one Celery task (the bridge packs a backlog so).

    breaker gate per job ─ HOLD/PROBE or a concurrency limit → the single-job path
    claim the rest with one statement ─ jobs not won: duplicate or stale delivery, skipped
    for each claimed job, in order:
        cancel requested meanwhile? → CANCELLED without running
        run its handler as the single path does (timeout, failure, retry: its own policy)
        success outside a workflow → the recorder, which writes many in one statement
    the monitor ticks the batch: every held job's lease stays alive until the batch is done

Per-job semantics stay those of `orchestration.worker`: every edge is guarded by the job's
dispatch token or attempt number, so a duplicate batch claims nothing twice, and a worker
killed mid-batch leaves RUNNING jobs whose leases run out and the reaper retries. A success
still in the recorder when the worker dies is such a job: its handler ran, its outcome was
never written, and it runs again (at least once, as after any crash before the outcome).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from typing import Any

from django.conf import settings

from config.celery import app
from jobs import transitions
from logs.context import JobLogContext, job_log_context
from logs.handler import flush_all
from orchestration import breaker, celery_queues
from orchestration.worker import MONITOR, Outcome, execute, gate, run_claimed, tell_breaker, with_reconnect, worker_id

logger = logging.getLogger("orchestration.worker")

CANCEL_CHECK_SECONDS = 1.0  # a batch looks for cancel requests of its waiting jobs this often


class Recorder:
    """Successes of a batch, written together: at the end of the batch, or once the oldest
    has waited RECORD_SECONDS, by the batch before its next job or by the monitor while a
    long job runs (so a batch never sits on finished jobs)."""

    RECORD_SECONDS = 0.05

    def __init__(self) -> None:
        self.pending: list[tuple[transitions.Claim, Any]] = []
        self.logged = False
        self.first_at = 0.0
        self.outcomes: dict[uuid.UUID, Outcome] = {}
        # The batch's thread and the monitor's (while a long job runs) both flush.
        self._lock = threading.Lock()

    def succeeded(self, claim: transitions.Claim, result: Any, *, logged: bool) -> None:
        with self._lock:
            if not self.pending:
                self.first_at = time.monotonic()
            self.pending.append((claim, result))
            self.logged |= logged

    def flush_if_due(self) -> None:
        if self.pending and time.monotonic() - self.first_at >= self.RECORD_SECONDS:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if self.pending:
                self._write()

    def _write(self) -> None:
        pending, self.pending = self.pending, []
        if self.logged:  # the jobs' log lines reach Kafka before their outcomes commit
            flush_all(timeout=settings.LOG_FLUSH_BEFORE_OUTCOME_SECONDS)
            self.logged = False
        won = with_reconnect(
            lambda: transitions.mark_succeeded_many([(c.job_id, c.attempt, result) for c, result in pending])
        )
        # One line for the lot: a line per no-op job was a seventh of the worker's CPU, and
        # more again in the log pipeline. Per job only what needs a look (or at DEBUG).
        dropped = len(pending) - len(won)
        logger.info("jobs.finished", extra={"outcome": "SUCCEEDED", "jobs": len(won), "dropped": dropped})
        each = logger.isEnabledFor(logging.DEBUG)
        for claim, _ in pending:
            recorded = claim.job_id in won
            if not recorded or each:
                with job_log_context(_log_context(claim)):
                    if recorded:
                        logger.debug("job.finished", extra={"job_id": str(claim.job_id), "outcome": "SUCCEEDED"})
                    else:  # reaped or cancelled meanwhile: the attempt lost its job
                        extra = {"job_id": str(claim.job_id), "outcome": "SUCCEEDED"}
                        logger.warning("job.outcome_dropped", extra=extra)
            self.outcomes[claim.job_id] = Outcome(str(claim.job_id), "SUCCEEDED", recorded=recorded)


def _log_context(claim: transitions.Claim) -> JobLogContext:
    return JobLogContext(
        job_id=str(claim.job_id), attempt=claim.attempt, type=claim.type, queue=claim.queue,
        owner_id=claim.owner_id, workflow_id=str(claim.workflow_id) if claim.workflow_id else None,
    )  # fmt: skip


def execute_batch(envelopes: list[dict[str, Any]], *, worker: str | None = None) -> list[Outcome]:
    """Claim and run a batch of dispatched jobs. Safe to call twice with the same batch."""
    worker = worker or worker_id()
    outcomes: list[Outcome] = []
    batch: list[dict[str, Any]] = []
    for envelope in envelopes:
        answer = gate(envelope)
        if answer != breaker.RUN or envelope.get("concurrency_key"):
            outcomes.append(execute(envelope, worker=worker, gate_=answer))
        else:
            batch.append(envelope)
    claims = with_reconnect(
        lambda: transitions.mark_running_many(
            [(e["job_id"], e["dispatch_token"]) for e in batch], worker=worker,
            lease_seconds=settings.JOB_LEASE_SECONDS,
        )
    )  # fmt: skip
    claimed = {str(c.job_id) for c in claims}
    for envelope in batch:
        if envelope["job_id"] not in claimed:
            logger.info("job.claim_lost", extra={"job_id": envelope["job_id"], "batch": True})
            outcomes.append(Outcome(envelope["job_id"], "SKIPPED", recorded=False))
    outcomes.extend(_run_claims(claims, {e["job_id"]: e for e in batch}))
    return outcomes


class BatchRun:
    """A claimed batch being worked through: the jobs not started yet, the recorder, and what
    the monitor thread does while a long job runs (`tick`)."""

    def __init__(self, claims: list[transitions.Claim], envelopes: dict[str, dict[str, Any]]) -> None:
        self.leases = [(c.job_id, c.attempt) for c in claims]  # renewed until the batch is done
        self.renewed_at = time.monotonic()
        self.waiting = collections.deque(claims)
        self.envelopes = envelopes
        self.recorder = Recorder()
        self.handed_back: list[transitions.Claim] = []
        self._lock = threading.Lock()

    def next(self) -> transitions.Claim | None:
        with self._lock:
            return self.waiting.popleft() if self.waiting else None

    def waiting_ids(self) -> list[uuid.UUID]:
        with self._lock:
            return [c.job_id for c in self.waiting]

    def tick(self, *, running_for: float) -> None:
        """From the monitor thread: every job of the batch keeps its lease (the ones waiting
        their turn must not look like a dead worker's; a finished one's renewal changes
        nothing), successes waited long enough are written, and once the current job has run
        BATCH_HAND_BACK_SECONDS the jobs still waiting go back."""
        lease = settings.JOB_LEASE_SECONDS
        if time.monotonic() - self.renewed_at >= lease / 3:
            self.renewed_at = time.monotonic()
            transitions.renew_leases(self.leases, lease_seconds=lease)
        self.recorder.flush_if_due()
        if running_for >= settings.BATCH_HAND_BACK_SECONDS:
            self.hand_back()

    def hand_back(self) -> None:
        """Give the jobs still waiting to other workers: undo their claims, then dispatch them
        again as one batch (the same tokens; their messages go to the queue's tail). A worker
        killed in between leaves them QUEUED without a message: the lost-message scan sends
        them again. Jobs with a cancel request stay, to be cancelled here."""
        with self._lock:
            rest, self.waiting = list(self.waiting), collections.deque()
        if not rest:
            return
        try:
            back = transitions.hand_back_many([(c.job_id, c.attempt) for c in rest])
        except Exception:
            with self._lock:  # the database is away: keep them and run them here
                self.waiting.extendleft(reversed(rest))
            raise
        with self._lock:
            self.waiting.extend(c for c in rest if c.job_id not in back)
            self.handed_back.extend(c for c in rest if c.job_id in back)
        _dispatch_again([self.envelopes[str(c.job_id)] for c in rest if c.job_id in back])
        logger.info("batch.handed_back", extra={"jobs": len(back), "kept": len(rest) - len(back)})


def _dispatch_again(envelopes: list[dict[str, Any]]) -> None:
    for (queue, priority), group in celery_queues.by_queue(envelopes).items():
        celery_queues.publish(app, queue, priority, group)


def _run_claims(claims: list[transitions.Claim], envelopes: dict[str, dict[str, Any]]) -> list[Outcome]:
    run = BatchRun(claims, envelopes)
    recorder = run.recorder
    ran: list[tuple[transitions.Claim, Outcome]] = []
    MONITOR.hold(run)
    try:
        checked, cancelled = time.monotonic(), set[uuid.UUID]()
        while (claim := run.next()) is not None:
            recorder.flush_if_due()
            if time.monotonic() - checked >= CANCEL_CHECK_SECONDS:
                waiting = [claim.job_id, *run.waiting_ids()]
                cancelled = with_reconnect(lambda: transitions.cancel_requested_among(waiting))  # noqa: B023
                checked = time.monotonic()
            if claim.job_id in cancelled:
                ran.append((claim, _cancel_unstarted(claim)))
                continue
            with job_log_context(_log_context(claim)):
                ran.append((claim, run_claimed(claim, recorder)))
        recorder.flush()
    finally:
        MONITOR.release()
    outcomes = []
    for claim, outcome in ran:
        outcome = recorder.outcomes.get(claim.job_id, outcome)
        tell_breaker(claim.type, outcome, probe=False)
        outcomes.append(outcome)
    outcomes.extend(Outcome(str(c.job_id), "HANDED_BACK", recorded=True) for c in run.handed_back)
    return outcomes


def _cancel_unstarted(claim: transitions.Claim) -> Outcome:
    job_id, attempt, in_workflow = claim.job_id, claim.attempt, claim.workflow_id is not None
    won = with_reconnect(lambda: transitions.mark_cancelled(job_id, attempt=attempt, in_workflow=in_workflow))
    with job_log_context(_log_context(claim)):
        logger.info("job.cancelled_before_start", extra={"job_id": str(claim.job_id), "recorded": won})
    return Outcome(str(claim.job_id), "CANCELLED", recorded=won)
