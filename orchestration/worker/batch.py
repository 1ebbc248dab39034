"""Running a batch of dispatched jobs in one Celery task (the bridge packs a backlog so).

    breaker gate per job ─ HOLD/PROBE or a concurrency limit → the single-job path, at its turn
    claim the rest with one statement, before anything runs ─ jobs not won: duplicate or
    stale delivery, skipped (a job given twice in the batch is claimed and run once)
    for each job, in the batch's order:
        on the single-job path? → `single.execute` (breaker hold or probe, a concurrency slot)
        taken from the batch meanwhile (reaped after its lease lapsed)? → skipped
        cancel requested meanwhile? → CANCELLED without running
        run its handler as the single path does (timeout, failure, retry: its own policy)
        success outside a workflow → the recorder, which writes many in one statement
    the monitor ticks the batch: every job it owns keeps its lease until the batch is done
    the worker being stopped mid-batch: successes written, jobs not started handed back

Per-job semantics stay those of the single path (`single`, `running`): every edge is guarded
by the job's dispatch token or attempt number, so a duplicate batch claims nothing twice, and
a worker killed mid-batch leaves RUNNING jobs whose leases run out and the reaper retries. A
success still in the recorder when the worker dies is such a job: its handler ran, its outcome
was never written, and it runs again (at least once, as after any crash before the outcome).

Tracing: the batch is one CONSUMER span, `process <queue>`, linked to each of its jobs'
contexts (the OTel conventions' batch process; the claim and the recorder's writes are its
statements). Each job runs in its own context (its handler's spans and log lines are in the
job's trace, baggage included), without a span of its own: one span a job cost the worker
about as much again as a no-op job. An attempt that fails gets its span, after the fact, in
its trace (an error, linked to the batch). A job of the batch on the single-job path gets
its `process` span there.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from opentelemetry.trace import SpanKind

from config import tracing
from config.celery import app
from jobs import transitions
from jobs.dispatch import DispatchEnvelope
from logs.context import JobLogContext, job_log_context
from logs.shipping import flush_all
from orchestration import breaker, celery_queues
from orchestration.worker.claims import claim_many, worker_id
from orchestration.worker.monitor import MONITOR
from orchestration.worker.outcomes import Outcome, Status, tell_breaker, with_reconnect
from orchestration.worker.running import FAILED, log_context, record_failed_attempt, run_claimed
from orchestration.worker.single import execute, gate

logger = logging.getLogger("orchestration.worker")

CANCEL_CHECK_SECONDS = 1.0  # a batch looks for cancel requests of its waiting jobs this often


# A success waiting for the recorder's write: its claim and its result.
Success = tuple[transitions.Claim, Any]


class Recorder:
    """Successes of a batch, written together: at the end of the batch, or once the oldest
    has waited RECORD_SECONDS, by the batch before its next job or by the monitor while a
    long job runs (so a batch never sits on finished jobs). `run_claimed` hands it its
    successes (a `running.SuccessSink`)."""

    RECORD_SECONDS = 0.05

    def __init__(self) -> None:
        self.pending: list[Success] = []
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
        try:
            won = with_reconnect(
                lambda: transitions.mark_succeeded_many([(c.job_id, c.attempt, result) for c, result in pending])
            )
        except BaseException:
            self.pending = pending + self.pending  # kept for the next flush, not dropped
            raise
        # One line for the lot: a line per no-op job was a seventh of the worker's CPU, and
        # more again in the log pipeline. Per job only what needs a look (or at DEBUG).
        dropped = len(pending) - len(won)
        logger.info("jobs.finished", extra={"outcome": Status.SUCCEEDED, "jobs": len(won), "dropped": dropped})
        each = logger.isEnabledFor(logging.DEBUG)
        for claim, _ in pending:
            recorded = claim.job_id in won
            if not recorded or each:
                with job_log_context(log_context(claim)):
                    if recorded:
                        logger.debug("job.finished", extra={"job_id": str(claim.job_id), "outcome": Status.SUCCEEDED})
                    else:  # reaped or cancelled meanwhile: the attempt lost its job
                        extra = {"job_id": str(claim.job_id), "outcome": Status.SUCCEEDED}
                        logger.warning("job.outcome_dropped", extra=extra)
            self.outcomes[claim.job_id] = Outcome(str(claim.job_id), Status.SUCCEEDED, recorded=recorded)


@dataclass(frozen=True)
class Single:
    """A job of the batch that takes the single-job path at its turn: its breaker holds it or
    lets it through as the probe (`gate`, asked once), or it needs a concurrency slot."""

    envelope: DispatchEnvelope
    gate: str


# What a batch works through, in its order: claimed jobs, and jobs for the single-job path.
Item = transitions.Claim | Single


def execute_batch(envelopes: list[DispatchEnvelope], *, worker: str | None = None) -> list[Outcome]:
    """Claim and run a batch of dispatched jobs. Safe to call twice with the same batch, and
    with the same job twice in it (the relay re-sends by design: both copies can be packed
    together): each job is claimed and run at most once.

    Every plain job is claimed before anything runs, a job for the single-job path included:
    a slow keyed job or probe first in the batch once left the jobs behind it (other tenants'
    too) unclaimed for its whole run, where neither the hand-back nor the stale scan reached
    them."""
    worker = worker or worker_id()
    outcomes: list[Outcome] = []
    seen: set[tuple[str, str]] = set()
    order: list[DispatchEnvelope | Single] = []
    batch: dict[tuple[str, str], DispatchEnvelope] = {}
    for envelope in envelopes:
        dispatch = (envelope.job_id, envelope.dispatch_token)
        if dispatch in seen:
            outcomes.append(_skipped(envelope.log_context(), "duplicate in batch"))
            continue
        seen.add(dispatch)
        answer = gate(envelope)
        if answer != breaker.RUN or envelope.concurrency_key or envelope.rate_limit_key:
            order.append(Single(envelope, answer))
        else:
            batch[dispatch] = envelope
            order.append(envelope)
    with _batch_span(envelopes):
        return [*outcomes, *_claim_and_run(batch, order, worker)]


def _batch_span(envelopes: list[DispatchEnvelope]) -> Any:
    if not tracing.enabled():
        return nullcontext()
    queue = envelopes[0].queue if envelopes else None
    attributes = tracing.messaging("process", queue, count=len(envelopes))
    return tracing.batch_span(f"process {queue}", (e.trace for e in envelopes), kind=SpanKind.CONSUMER,
                              attributes=attributes)  # fmt: skip


def _claim_and_run(
    batch: dict[tuple[str, str], DispatchEnvelope], order: list[DispatchEnvelope | Single], worker: str
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    claims = claim_many(list(batch), worker=worker)
    won = {(str(c.job_id), str(c.dispatch_token)): c for c in claims}
    outcomes.extend(_skipped(e.log_context(), "claim lost") for dispatch, e in batch.items() if dispatch not in won)
    items: list[Item] = []
    for entry in order:
        if isinstance(entry, Single):
            items.append(entry)
        elif (claim := won.get((entry.job_id, entry.dispatch_token))) is not None:
            items.append(claim)
    outcomes.extend(_run_items(items, {job_id: batch[(job_id, token)] for job_id, token in won}, worker))
    return outcomes


def _skipped(job: JobLogContext, why: str) -> Outcome:
    with job_log_context(job):  # the line is the job's too: its owner sees what happened to it
        logger.info("job.claim_lost", extra={"job_id": job.job_id, "batch": True, "why": why})
    return Outcome(job.job_id, Status.SKIPPED, recorded=False)


class BatchRun:
    """A claimed batch being worked through: the jobs not started yet, the recorder, and what
    the monitor thread does while a long job runs (`tick`: a `monitor.Ticking`)."""

    def __init__(self, items: list[Item], envelopes: dict[str, DispatchEnvelope], worker: str) -> None:
        self.worker = worker
        # Renewed until the batch is done.
        self.leases = [(c.job_id, c.attempt) for c in items if isinstance(c, transitions.Claim)]
        self.renewed_at = self.checked_at = time.monotonic()
        self.cancelled: set[uuid.UUID] = set()  # of the jobs it owned at the last look
        self.lost: set[uuid.UUID] = set()  # taken from the batch: never to be started here
        self.waiting: collections.deque[Item] = collections.deque(items)
        self.envelopes = envelopes
        self.recorder = Recorder()
        self.handed_back: list[transitions.Claim] = []
        self.handed_back_singles: list[Single] = []
        self._lock = threading.Lock()

    def next(self) -> Item | None:
        with self._lock:
            return self.waiting.popleft() if self.waiting else None

    def renew(self) -> None:
        """Push out the leases of every job it still owns and learn which it does not (reaped after
        they lapsed, cancelled) and which have a cancel request. Before it starts a waiting
        job the batch looks again if it has not for a while: a handler that held the GIL, or
        a hung connection, can keep the monitor from renewing until the leases lapse."""
        with self._lock:
            leases = list(self.leases)
        owned = transitions.renew_leases(leases, worker=self.worker, lease_seconds=settings.JOB_LEASE_SECONDS)
        with self._lock:
            self.lost |= {job_id for job_id, _ in leases if job_id not in owned}
            self.cancelled = {job_id for job_id, cancel in owned.items() if cancel}
            self.renewed_at = self.checked_at = time.monotonic()

    def tick(self, *, running_for: float) -> None:
        """From the monitor thread: every job of the batch keeps its lease (the ones waiting
        their turn must not look like a dead worker's; a finished one's renewal changes
        nothing), successes waited long enough are written, and once the current job has run
        BATCH_HAND_BACK_SECONDS the jobs still waiting go back."""
        if time.monotonic() - self.renewed_at >= settings.JOB_LEASE_SECONDS / 3:
            self.renew()
        self.recorder.flush_if_due()
        if running_for >= settings.BATCH_HAND_BACK_SECONDS:
            self.hand_back()

    def hand_back(self) -> None:
        """Give the jobs still waiting to other workers: undo their claims, then dispatch them
        again as one batch (the same tokens; their messages go to the queue's tail). A worker
        killed in between leaves them QUEUED without a message: the lost-message scan sends
        them again. Jobs with a cancel request stay, to be cancelled here."""
        with self._lock:
            waiting, self.waiting = list(self.waiting), collections.deque()
        if not waiting:
            return
        rest = [c for c in waiting if isinstance(c, transitions.Claim)]
        singles = [s for s in waiting if isinstance(s, Single)]
        try:
            back = transitions.hand_back_many([(c.job_id, c.attempt) for c in rest])
        except Exception:
            with self._lock:  # the database is away: keep them and run them here
                self.waiting.extendleft(reversed(waiting))
            raise
        with self._lock:
            self.waiting.extend(c for c in rest if c.job_id not in back)
            self.handed_back.extend(c for c in rest if c.job_id in back)
            self.handed_back_singles.extend(singles)
            # Another worker claims them under the same attempt numbers: hands off their leases.
            self.leases = [(job_id, attempt) for job_id, attempt in self.leases if job_id not in back]
        for single in singles:  # never claimed here: they go as they came, their gate asked again there
            if single.gate == breaker.PROBE:
                breaker.BREAKERS.abandon_probe(single.envelope.owner_id or 0, single.envelope.type)
        again = [self.envelopes[str(c.job_id)] for c in rest if c.job_id in back]
        _dispatch_again(again + [s.envelope for s in singles])
        logger.info("batch.handed_back", extra={"jobs": len(back) + len(singles), "kept": len(rest) - len(back)})


def _wind_down(run: BatchRun) -> None:
    """The batch stops early (the worker is being stopped, or the database went away): write
    the successes it has, and give the jobs it never started to other workers, so neither is
    left RUNNING for the reaper to fail as LOST. Best effort: what fails here is reaped."""
    for step in (run.recorder.flush, run.hand_back):
        try:
            step()
        except Exception:
            logger.exception("batch.wind_down_failed", extra={"step": step.__name__})


def _dispatch_again(envelopes: list[DispatchEnvelope]) -> None:
    for (queue, priority), group in celery_queues.by_queue(envelopes).items():
        celery_queues.publish(app, queue, priority, group)


def _run_items(items: list[Item], envelopes: dict[str, DispatchEnvelope], worker: str) -> list[Outcome]:
    run = BatchRun(items, envelopes, worker)
    recorder = run.recorder
    ran: list[tuple[transitions.Claim | None, Outcome]] = []  # None: a single-path job (told its breaker)
    MONITOR.hold(run)
    try:
        while (claim := run.next()) is not None:
            recorder.flush_if_due()
            if isinstance(claim, Single):
                # Its own claim, run and breaker verdict; the monitor ticks the batch meanwhile
                # (the leases of the claimed jobs waiting, their hand-back once it runs long).
                ran.append((None, execute(claim.envelope, worker=worker, gate_=claim.gate)))
                continue
            if time.monotonic() - run.checked_at >= CANCEL_CHECK_SECONDS:
                with_reconnect(run.renew)
            if claim.job_id in run.lost:
                ran.append((claim, _skipped(log_context(claim), "taken from the batch (lease lapsed)")))
                continue
            if claim.job_id in run.cancelled:
                ran.append((claim, _cancel_unstarted(claim)))
                continue
            envelope = run.envelopes.get(str(claim.job_id))
            trace = envelope.trace if envelope is not None else None
            started = time.time_ns()
            with job_log_context(log_context(claim)), tracing.continued(trace):
                outcome = run_claimed(claim, recorder)
            if outcome.status in FAILED and tracing.enabled():
                record_failed_attempt(claim, trace, outcome, started)
            ran.append((claim, outcome))
        recorder.flush()
    except BaseException:
        _wind_down(run)
        raise
    finally:
        MONITOR.release()
    outcomes = []
    for claim, outcome in ran:
        if claim is not None:
            outcome = recorder.outcomes.get(claim.job_id, outcome)
            tell_breaker(claim.owner_id, claim.type, outcome, probe=False)
        outcomes.append(outcome)
    outcomes.extend(Outcome(str(c.job_id), Status.HANDED_BACK, recorded=True) for c in run.handed_back)
    outcomes.extend(Outcome(s.envelope.job_id, Status.HANDED_BACK, recorded=True) for s in run.handed_back_singles)
    return outcomes


def _cancel_unstarted(claim: transitions.Claim) -> Outcome:
    job_id, attempt, in_workflow = claim.job_id, claim.attempt, claim.workflow_id is not None
    won = with_reconnect(lambda: transitions.mark_cancelled(job_id, attempt=attempt, in_workflow=in_workflow))
    with job_log_context(log_context(claim)):
        logger.info("job.cancelled_before_start", extra={"job_id": str(claim.job_id), "recorded": won})
    return Outcome(str(claim.job_id), Status.CANCELLED, recorded=won)
