"""Jobs blocked by their concurrency key → outbox, as far as the key has room.

A worker that finds a key full leaves the job PENDING without a dispatch, and a keyed job due
later waits so from its submit; this scan is the only one that releases such a job. Keys
are each owner's own. Each (owner, key) pair that blocks jobs is registered (jobs.models.
BlockedKey) with when to look at it next: when its first blocked job comes due, or at once when
a slot of it frees (the statement that ends a keyed attempt says so). A tick looks only at
the pairs whose time has come, up to `keys_per_tick`, the longest waiting first, and
releases each one's jobs in the order they became due, as far as it has room; a full key is
looked at again after FULL_REVISIT_SECONDS at the latest. So a million far-future keyed jobs,
or a thousand full keys, delay nobody's key: the tick's cost is the keys whose time came.

A sweep walks every pair that blocks jobs, `sweep_per_tick` a tick from a cursor, and registers
any a writer missed (a job blocked by a worker of older code, during a rolling deploy).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from jobs import selectors, transitions
from orchestration.scheduler.release import release_fenced
from orchestration.scheduler.walk import Walk

FULL_REVISIT_SECONDS = 5.0  # a full key's next look at the latest (a freed slot brings it forward)


class BlockedScan:
    def __init__(self, sweep_per_tick: int = 100) -> None:
        self.sweep_per_tick = sweep_per_tick
        self.sweep: Walk[selectors.BlockedPair] = Walk(
            lambda after, limit: selectors.job_blocked_pairs(after=(after.owner, after.key) if after else None,
                                                          limit=limit)
        )  # fmt: skip

    def __call__(self, epoch: int, clock: Callable[[], datetime], *, keys_per_tick: int) -> int:
        self.sweep(_register, budget=self.sweep_per_tick)
        now = clock()
        released = 0
        for due in selectors.job_blocked_keys_due(now=now, limit=keys_per_tick):
            if due.room > 0:
                moved = release_fenced(epoch, clock, scan="blocked", limit=due.room, key=due.key, owner=due.owner)
                released += len(moved)
            selectors.job_blocked_key_looked_at(
                due.owner,
                due.key,
                now=now + timedelta(minutes=1),
                revisit=now + timedelta(seconds=FULL_REVISIT_SECONDS),
            )
        return released


def _register(pair: selectors.BlockedPair) -> int:
    """The sweep's step: the pair is registered, to be looked at no later than its first blocked
    job's due time (a row already there keeps the earlier time). Moves no job."""
    transitions.register_blocked_keys([(pair.owner, pair.key, pair.due)])
    return 0
