"""Jobs held by a concurrency key → outbox, as far as the key has room.

A worker that finds a key full leaves the job PENDING without a dispatch; this scan is the
only one that releases such a job (the delayed scan once re-released held jobs with a
`run_at` on every tick). Keys are each owner's own. A tick visits up to `keys_per_tick`
(owner, key) pairs from where the last one stopped, wrapping round at the end, and releases
each key's jobs in the order they became due, as far as it has room. What a tick costs
depends on the keys it visits, never on how many jobs they hold, and every key is visited
at least once every (keys / keys_per_tick) ticks: full keys, or one owner's million held
jobs, cannot hide another key with room.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from jobs import selectors
from orchestration.scheduler.release import release_fenced
from orchestration.scheduler.walk import Walk


class HeldScan:
    """The held-keys scan, walking (owner, key) pairs from where the last tick stopped."""

    def __init__(self) -> None:
        self.now: datetime | None = None  # the tick's clock, read by the fetch
        self.walk: Walk[selectors.HeldKey] = Walk(self._fetch)

    def _fetch(self, after: selectors.HeldKey | None, limit: int) -> list[selectors.HeldKey]:
        assert self.now is not None
        return selectors.job_held_keys(now=self.now, after=(after.owner, after.key) if after else None, limit=limit)

    def __call__(self, epoch: int, clock: Callable[[], datetime], *, keys_per_tick: int) -> int:
        self.now = clock()

        def release(held: selectors.HeldKey) -> int:
            if held.room <= 0:
                return 0
            return release_fenced(epoch, clock, scan="held", limit=held.room, key=held.key, owner=held.owner)

        return self.walk(release, budget=keys_per_tick)
