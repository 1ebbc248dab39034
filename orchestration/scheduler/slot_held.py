"""Jobs held for their owner's share of a queue's workers (`orchestration.fair_slots`) →
outbox, as the owner's long jobs end, or at once once their kind is known short.

A worker that would start a job beyond its owner's share of long slots undoes the claim and
leaves the job PENDING without a dispatch, with `slot_held_at`; no attempt is counted. This
scan walks the (owner, queue) pairs that hold such jobs, up to `keys_per_tick` a tick from
where the last tick stopped, and within each the types held (a skip scan, each one's oldest
first):

- a type whose kind (owner, type) is known short by now goes at once, a batch a tick: it
  takes no long slot, so nothing waits for room (a burst of a new tenant's jobs, held while
  their first run said what they are, must not trickle out);
- any other type goes as far as the owner's share has room: its cap less the long slots it
  holds now, less what this scan released of it in the last few seconds (a released job takes
  a moment to reach a worker; releasing again meanwhile would only make it wait behind its
  own copies).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from jobs import selectors
from orchestration import fair_slots
from orchestration.scheduler.release import release_fenced
from orchestration.scheduler.walk import Walk

RECENT_SECONDS = 5.0  # a released job is counted against its owner's room this long


class SlotHeldScan:
    def __init__(self) -> None:
        self.walk: Walk[tuple[int, str]] = Walk(
            lambda after, limit: selectors.job_slot_held_keys(after=after, limit=limit)
        )
        self.recent: dict[tuple[int, str], list[tuple[float, int]]] = {}  # pair → (released at, how many)

    def __call__(self, epoch: int, clock: Callable[[], datetime], *, batch: int, keys_per_tick: int) -> int:
        counts: dict[str, tuple[int, dict[int, int]]] = {}  # queue → its workers and who holds its long slots
        now = time.monotonic()
        self.recent = {
            k: r for k, v in self.recent.items() if (r := [(t, n) for t, n in v if now - t < RECENT_SECONDS])
        }

        def release(pair: tuple[int, str]) -> int:
            owner, queue = pair
            released = 0
            room: int | None = None  # of the owner's share, worked out when a type needs it
            for type_ in selectors.job_slot_held_types(owner, queue):
                if fair_slots.SLOTS.kind(owner, type_) == fair_slots.SHORT:
                    released += release_fenced(epoch, clock, scan="slot", limit=batch, key=queue, owner=owner,
                                               type_=type_)  # fmt: skip
                    continue
                if room is None:
                    if queue not in counts:
                        counts[queue] = fair_slots.held_counts(queue)
                    slots, holders = counts[queue]
                    share, _ = fair_slots.shares(owner, queue)
                    recent = sum(n for _, n in self.recent.get(pair, []))
                    room = min(batch, fair_slots.cap(share, slots) - holders.get(owner, 0) - recent)
                if room <= 0:
                    continue
                moved = release_fenced(epoch, clock, scan="slot", limit=room, key=queue, owner=owner, type_=type_)
                if moved:
                    room -= moved
                    released += moved
                    self.recent.setdefault(pair, []).append((now, moved))
            return released

        return self.walk(release, budget=keys_per_tick)
