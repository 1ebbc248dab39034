"""Jobs deferred for their owner's share of a queue's workers (`orchestration.fair_slots`) →
outbox, as the owner's long jobs end, or at once once their kind is known short.

A worker that would start a job beyond its owner's share of long slots undoes the claim and
leaves the job PENDING without a dispatch, with `slot_held_at`; no attempt is counted. This
scan walks the (owner, queue) pairs that have such jobs, up to `keys_per_tick` a tick from
where the last tick stopped, and within each the types deferred (a skip scan, each one's oldest
first):

- a type whose kind (owner, type) is known short by now goes at once, a batch a tick: it
  takes no long slot, so nothing waits for room (a burst of a new tenant's jobs, deferred while
  their first run said what they are, must not trickle out);
- any other type goes as far as the owner's share has room: its cap less the long slots it
  holds now, less the jobs this scan released of it that have not started yet (a released
  job takes a moment to reach a worker; releasing again meanwhile would only make it wait
  behind its own copies). Once they start they hold slots, or ended already: as soon as the
  owner's quick jobs end, the next go, not after a fixed pause.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

from jobs import selectors
from orchestration import fair_slots
from orchestration.scheduler.release import release_fenced
from orchestration.scheduler.walk import Walk


class ShareDeferredScan:
    def __init__(self) -> None:
        self.walk: Walk[tuple[int, str]] = Walk(
            lambda after, limit: selectors.job_share_deferred_keys(after=after, limit=limit)
        )
        self.on_the_way: dict[tuple[int, str], set[uuid.UUID]] = {}  # pair → released, not started yet

    def __call__(self, epoch: int, clock: Callable[[], datetime], *, batch: int, keys_per_tick: int) -> int:
        counts: dict[str, tuple[int, dict[int, int]]] = {}  # queue → its workers and who holds its long slots
        # The database first, then Redis: a job that started in between is counted twice at
        # worst (one release fewer this tick), never missed.
        waiting = selectors.job_not_started([i for ids in self.on_the_way.values() for i in ids])
        self.on_the_way = {pair: left for pair, ids in self.on_the_way.items() if (left := ids & waiting)}

        def release(pair: tuple[int, str]) -> int:
            owner, queue = pair
            released = 0
            room: int | None = None  # of the owner's share, worked out when a type needs it
            for type_ in selectors.job_share_deferred_types(owner, queue):
                if fair_slots.SLOTS.kind(owner, type_) == fair_slots.SHORT:
                    released += len(release_fenced(epoch, clock, scan="deferred", limit=batch, key=queue, owner=owner,
                                                   type_=type_))  # fmt: skip
                    continue
                if room is None:
                    if queue not in counts:
                        counts[queue] = fair_slots.taken_counts(queue)
                    slots, holders = counts[queue]
                    share, _ = fair_slots.shares(owner, queue)
                    on_the_way = len(self.on_the_way.get(pair, ()))
                    room = min(batch, fair_slots.cap(share, slots) - holders.get(owner, 0) - on_the_way)
                if room <= 0:
                    continue
                moved = release_fenced(epoch, clock, scan="deferred", limit=room, key=queue, owner=owner, type_=type_)
                if moved:
                    room -= len(moved)
                    released += len(moved)
                    self.on_the_way.setdefault(pair, set()).update(r.job_id for r in moved)
            return released

        return self.walk(release, budget=keys_per_tick)
