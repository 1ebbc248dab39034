"""Jobs held by a concurrency key → outbox, as far as the key has room.

A worker that finds a key full leaves the job PENDING without a dispatch; this scan is the
only one that releases such a job (the delayed scan once re-released held jobs with a
`run_at` on every tick). Keys are each owner's own. It asks only for keys with room, the key
of the oldest held job first, so full keys cannot fill its window and hide a key with room.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from jobs import selectors
from orchestration.scheduler.release import release_fenced


def release_held(epoch: int, clock: Callable[[], datetime], *, keys_per_tick: int) -> int:
    """Jobs held by a concurrency key go out, oldest first, as far as the key has room
    (keys are each owner's own):
    limit - running - already dispatched. Up to `keys_per_tick` keys a tick, those
    of the oldest held jobs first; the rest come next tick."""
    keys = selectors.job_held_keys_with_room(now=clock(), limit=keys_per_tick)
    return sum(release_fenced(epoch, clock, scan="held", limit=room, key=key, owner=owner) for owner, key, room in keys)
