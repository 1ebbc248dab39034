"""Due retries and delayed jobs → outbox: RETRYING jobs whose backoff is over, and PENDING
jobs whose `run_at` came, get a fresh dispatch token and an outbox row (delayed jobs wait in
PostgreSQL, never in a broker).

Safe to repeat and to race: which rows a scan takes is a row of `jobs.transitions._RELEASE_SCANS`
(a partial index of live rows only); one statement per batch skips rows another scheduler
holds, and each batch is a fenced transaction that writes its outbox rows with it. The held
and breaker scans release through `release_fenced` too.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from django.db import transaction

from jobs import services, transitions
from orchestration.scheduler.fencing import fence


def release_fenced(
    epoch: int,
    clock: Callable[[], datetime],
    *,
    scan: str,
    limit: int,
    key: str | None = None,
    owner: int | None = None,
    type_: str | None = None,
) -> list[transitions.Released]:
    """One fenced transaction: make up to `limit` jobs of a scan dispatchable and write
    their outbox rows. The jobs released."""
    with transaction.atomic():
        fence(epoch)
        released = transitions.release_batch(scan, now=clock(), limit=limit, key=key, owner=owner, type_=type_)
        services.job_dispatch_released(released)
    return released


def release_due(epoch: int, clock: Callable[[], datetime], *, scan: str, batch: int, batches: int) -> int:
    """Due jobs of `scan` ("retries" or "delayed"), a batch per transaction, until a batch
    comes back short or `batches` went out: a tick's work is bounded, so a due backlog of
    millions (one tenant's, say) never starves the tick's other scans, its lock renewal
    among them. The rest goes next tick, oldest first."""
    total = 0
    for _ in range(batches):
        released = len(release_fenced(epoch, clock, scan=scan, limit=batch))
        total += released
        if released < batch:
            break
    return total
