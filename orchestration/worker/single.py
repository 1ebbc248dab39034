"""Running one dispatched job inside a Celery worker process: claim, run the handler, record
the outcome.

    breaker gate ─ HOLD → paused until the breaker lets its type run again
    rate gate (a job with a rate_limit_key) ─ its start slot is later → waits for it, no worker held
    claim (PENDING|QUEUED → RUNNING, token must match) ─ lost? → nothing to do (duplicate/stale)
      │ with a concurrency key: a free slot first, else the job is blocked by its key
    run the handler and record its outcome (`running.run_claimed`)
    tell the breaker how it went

All of it is the job's CONSUMER span, `process <queue>` (`running.process_span`), in the
job's trace under its creation context (the envelope's `trace`); it ends saying what became
of the job.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import redis
from django.conf import settings
from django.utils import timezone

from jobs import rate_limits, transitions
from jobs.dispatch import DispatchEnvelope
from logs.context import job_log_context
from metrics import prom
from orchestration import breaker, ratelimit
from orchestration.breaker import BREAKERS
from orchestration.worker.claims import Blocked, claim_keyed, claim_many, worker_id
from orchestration.worker.outcomes import Outcome, Status, tell_breaker, with_reconnect
from orchestration.worker.running import end_process_span, log_context, process_span, run_claimed

logger = logging.getLogger("orchestration.worker")
RATE_RETRY_SECONDS = 2.0  # a rate-limited job's next look when Redis could not count its key


def gate(envelope: DispatchEnvelope) -> str:
    """What the owner's circuit breaker for the job's type says: RUN, PROBE (run as the one
    probe) or HOLD."""
    return BREAKERS.allow(envelope.owner_id or 0, envelope.type, probe_seconds=settings.BREAKER_PROBE_SECONDS)


def execute(envelope: DispatchEnvelope, *, worker: str | None = None, gate_: str | None = None) -> Outcome:
    """Claim and run one dispatched job. Safe to call twice with the same envelope. `gate_`
    is the breaker's answer when the caller already asked (a batch asks once per job)."""
    with process_span(envelope.job_id, envelope.queue, envelope.type, envelope.attempt, envelope.trace) as span:
        outcome = _execute(envelope, worker, gate_)
        end_process_span(span, outcome)
        return outcome


def _execute(envelope: DispatchEnvelope, worker: str | None, gate_: str | None) -> Outcome:
    gate_ = gate_ or gate(envelope)
    # What is logged before a claim (paused, blocked, claim lost) carries the job too: its owner sees why.
    with job_log_context(envelope.log_context()):
        if gate_ == breaker.HOLD:
            token = envelope.dispatch_token
            paused = with_reconnect(lambda: transitions.pause_for_breaker(envelope.job_id, dispatch_token=token))
            logger.info(
                "job.paused_by_breaker", extra={"job_id": envelope.job_id, "type": envelope.type, "paused": paused}
            )
            return Outcome(envelope.job_id, Status.PAUSED, recorded=paused)
        if envelope.rate_limit_key and (waiting := _wait_for_rate(envelope)) is not None:
            tell_breaker(envelope.owner_id or 0, envelope.type, waiting, probe=gate_ == breaker.PROBE)
            return waiting
        outcome = _claim_and_run(envelope, worker or worker_id())
    tell_breaker(envelope.owner_id or 0, envelope.type, outcome, probe=gate_ == breaker.PROBE)
    return outcome


def _wait_for_rate(envelope: DispatchEnvelope) -> Outcome | None:
    """Reserve the job's start slot of its key's rate: None if it may start now, else the job
    waits for its slot without a worker. Redis away: the limit cannot be counted, so the job
    waits a little and asks again, rather than start over the limit."""
    owner, key = envelope.owner_id or 0, str(envelope.rate_limit_key)
    reserved = True
    try:
        rate = rate_limits.limit_for(owner, key)
        delay = ratelimit.reserve(owner, key, rate, reserved=envelope.rate_slot is not None)
    except redis.RedisError:
        logger.warning("job.rate_unknown", extra={"job_id": envelope.job_id}, exc_info=True)
        delay, reserved = RATE_RETRY_SECONDS, False
    if delay <= 0:
        return None
    slot_at = timezone.now() + timedelta(seconds=delay)
    token = envelope.dispatch_token
    waiting = with_reconnect(
        lambda: transitions.wait_for_rate(envelope.job_id, dispatch_token=token, slot_at=slot_at, reserved=reserved)
    )
    if waiting:
        prom.JOBS_RATE_LIMITED.labels(envelope.queue).inc()
    logger.info("job.rate_limited", extra={"job_id": envelope.job_id, "rate_limit_key": key, "wait_seconds": delay,
                                           "waiting": waiting})  # fmt: skip
    return Outcome(envelope.job_id, Status.RATE_LIMITED, recorded=waiting)


def _claim_and_run(envelope: DispatchEnvelope, worker: str) -> Outcome:
    job_id = envelope.job_id
    claim: transitions.Claim | Blocked | None
    if envelope.concurrency_key:
        claim = claim_keyed(envelope, worker)
    else:
        claims = claim_many([(job_id, envelope.dispatch_token)], worker=worker)
        claim = claims[0] if claims else None
    match claim:
        case transitions.Claim():
            # Every record written from here to the outcome (the handler's and ours) carries the job.
            with job_log_context(log_context(claim)):
                return run_claimed(claim)
        case Blocked():
            logger.info("job.blocked_by_key", extra={"job_id": job_id, "concurrency_key": envelope.concurrency_key})
            return Outcome(job_id, Status.BLOCKED)
        case None:
            logger.info("job.claim_lost", extra={"job_id": job_id, "dispatch_token": envelope.dispatch_token})
            return Outcome(job_id, Status.SKIPPED, recorded=False)
