"""What running a dispatched job came to (`Outcome`), and how an outcome is written and told.

Every outcome is written with a transition guarded by the attempt number, so a result that
arrives after the job was reaped, re-dispatched or cancelled changes nothing: `record` logs
it as dropped.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from django.db import InterfaceError, OperationalError, connection

from orchestration.breaker import BREAKERS

# One logger for the whole package: dashboards and log searches know it by this name.
logger = logging.getLogger("orchestration.worker")
T = TypeVar("T")


class Status(StrEnum):
    """What became of a delivered job. A StrEnum whose names are its values: it equals (and
    hashes like) the plain string, which callers and log records have always seen."""

    SUCCEEDED = "SUCCEEDED"
    RETRYING = "RETRYING"
    DEAD_LETTER = "DEAD_LETTER"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"  # the claim was lost: a duplicate or stale delivery
    BLOCKED = "BLOCKED"  # by its concurrency key, at its limit (the blocked scan releases it)
    PAUSED = "PAUSED"  # by its owner's open breaker for its type (the breaker scan releases it)
    RATE_LIMITED = "RATE_LIMITED"  # over its key's rate: it waits for its start slot (the delayed scan)
    THROTTLED = "THROTTLED"  # it asked to wait (ctx.throttle), without using an attempt
    DEFERRED = "DEFERRED"  # for its owner's share of the workers' long slots (the share scan releases it)
    HANDED_BACK = "HANDED_BACK"  # a batch gave it, unstarted, to other workers


@dataclass(frozen=True)
class Outcome:
    job_id: str
    status: Status
    recorded: bool = True  # False: the job had moved on (e.g. reaped) and the outcome was dropped
    breaker_failure: bool = False  # a failure that counts against the type's circuit breaker


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


def record(job_id: uuid.UUID, status: Status, won: bool, **fields: Any) -> Outcome:
    if won:
        logger.info("job.finished", extra={"job_id": str(job_id), "outcome": status, **fields})
    else:
        # The attempt lost its job meanwhile (reaped, re-dispatched or cancelled): drop it.
        logger.warning("job.outcome_dropped", extra={"job_id": str(job_id), "outcome": status})
    return Outcome(str(job_id), status, recorded=won)


def tell_breaker(owner: int, type_: str, outcome: Outcome, *, probe: bool) -> None:
    try:
        if outcome.status == Status.SUCCEEDED and outcome.recorded:
            BREAKERS.record(owner, type_, ok=True, probe=probe)
        elif outcome.breaker_failure:
            BREAKERS.record(owner, type_, ok=False, probe=probe)
        elif probe:
            BREAKERS.abandon_probe(owner, type_)  # claim lost, cancelled, permanent error: no verdict
    except Exception:  # Redis away: the job's outcome is recorded; the breaker just misses one result
        logger.exception("breaker.record_failed", extra={"type": type_})
