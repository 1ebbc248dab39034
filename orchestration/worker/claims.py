"""Claiming dispatched jobs for this worker: PENDING|QUEUED → RUNNING, the dispatch token must
match, so a duplicate or stale delivery wins nothing. Each claim survives a dropped connection
without orphaning what its first run committed."""

from __future__ import annotations

import os
import socket
import uuid
from enum import StrEnum

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction

from jobs import transitions
from jobs.dispatch import DispatchEnvelope


class Blocked(StrEnum):
    """What a keyed claim gives when its concurrency key had no free slot: the job is blocked
    by its key (the scheduler releases it when a slot frees), not claimed. One member; a
    StrEnum, so it equals the plain string the outcome reports."""

    BLOCKED = "BLOCKED"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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
    owned = {c.job_id: c for c in transitions.claims_owned(dispatches, worker=worker)}
    won = {c.job_id: c for c in transitions.mark_running_many(dispatches, worker=worker, lease_seconds=lease)}
    both = owned | won
    return [both[i] for i in dict.fromkeys(uuid.UUID(d[0]) for d in dispatches) if i in both]


def claim_keyed(envelope: DispatchEnvelope, worker: str) -> transitions.Claim | Blocked | None:
    """`claim_within_limit`, surviving a dropped connection like `claim_many`: run again, it
    would take a second slot and lose the claim its first run committed."""
    try:
        return claim_within_limit(envelope, worker)
    except (OperationalError, InterfaceError):
        connection.close()
    owned = transitions.claims_owned([(envelope.job_id, envelope.dispatch_token)], worker=worker)
    return owned[0] if owned else claim_within_limit(envelope, worker)


def claim_within_limit(envelope: DispatchEnvelope, worker: str) -> transitions.Claim | Blocked | None:
    """Take a slot of the job's concurrency key, then claim; no slot: hold the job (the
    scheduler releases it when a slot frees). One transaction, so a lost claim gives the
    slot back."""
    job_id, token, lease = envelope.job_id, envelope.dispatch_token, settings.JOB_LEASE_SECONDS
    with transaction.atomic():
        if not transitions.take_slot(job_id, envelope.concurrency_limit or 1):
            transitions.block_for_key(job_id, dispatch_token=token)
            return Blocked.BLOCKED
        claim = transitions.mark_running(job_id, dispatch_token=token, worker=worker, lease_seconds=lease)
        if claim is None:
            transitions.give_back_slot(job_id)
        return claim
