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


class HeldScan:
    """The held-keys scan with its cursor (the last pair it visited; None: the start)."""

    def __init__(self) -> None:
        self.after: tuple[int, str] | None = None

    def __call__(self, epoch: int, clock: Callable[[], datetime], *, keys_per_tick: int) -> int:
        released, budget, wrapped = 0, keys_per_tick, self.after is None
        while budget > 0:
            keys = selectors.job_held_keys(now=clock(), after=self.after, limit=budget)
            for owner, key, room in keys:
                if room > 0:
                    released += release_fenced(epoch, clock, scan="held", limit=room, key=key, owner=owner)
            budget -= len(keys)
            if budget == 0:  # a full page: go on from its last pair next tick
                self.after = (keys[-1].owner, keys[-1].key)
                break
            self.after = None  # the end: the keys before the cursor come next
            if wrapped:
                break
            wrapped = True
        return released
