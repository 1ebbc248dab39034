"""Weighted fair sharing of a queue's dispatches between owners: pure arithmetic, no I/O.

The relay asks, for each queue with room in its window, how many of each waiting owner's
dispatches go now (`FairShare.quotas`), then says how many it sent (`served`). Each owner
has a virtual time, the dispatches it got divided by its weight; room goes to the owners
furthest behind, filling them up to a common level (water-filling), so over any stretch in
which two owners both have work waiting each gets dispatches in proportion to its weight,
however large either one's backlog is. It is work-conserving: room an owner cannot use (it
has nothing more waiting) goes to the others in the next round, and a lone owner gets all of
it. An owner that had nothing waiting starts again at the queue's current level: idle time
earns no credit to flood with later, and past bursts leave no debt.

A dispatch rides the express lane while its owner has fewer than `express_jobs` jobs in
flight in the queue. Workers take the express lane first, so a light tenant's job
(a few in flight at most) overtakes a heavy tenant's window instead of queueing behind it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

Owner = int


def express_jobs(window: int) -> int:
    """How many jobs an owner may have in flight in a queue and still ride the express lane: a
    sixteenth of the window, 1 to 64. A heavy tenant's express jobs, all a light tenant's job
    can queue behind, stay a small part of its window."""
    return max(1, min(64, window // 16))


def water_fill(times: Mapping[Owner, float], weights: Mapping[Owner, float], room: int) -> dict[Owner, int]:
    """Whole shares of `room` for owners at virtual `times`: raise a level L until the
    owners' weighted gaps below it, sum of w * max(0, L - t), add up to `room`; then round down and
    hand the remainder out by the largest fraction (ties: the owner furthest behind)."""
    if room <= 0 or not times:
        return {}
    order = sorted(times, key=lambda o: (times[o], o))
    level, total_weight, left = times[order[0]], 0.0, float(room)
    for i, owner in enumerate(order):
        total_weight += weights[owner]
        nxt = times[order[i + 1]] if i + 1 < len(order) else math.inf
        fill = (nxt - level) * total_weight
        if fill >= left:
            level += left / total_weight
            break
        left -= fill
        level = nxt
    shares = {o: max(0.0, (level - times[o]) * weights[o]) for o in order}
    whole = {o: int(s) for o, s in shares.items()}
    rest = room - sum(whole.values())
    for owner in sorted(order, key=lambda o: (-(shares[o] - whole[o]), times[o], o))[:rest]:
        whole[owner] += 1
    return {o: n for o, n in whole.items() if n > 0}


class FairShare:
    """The owners' virtual times per queue, kept by one relay process (a restarted relay
    starts everyone equal, which is fair too)."""

    def __init__(self) -> None:
        self.times: dict[str, dict[Owner, float]] = {}  # queue → owner → dispatches / weight
        self.floor: dict[str, float] = {}  # queue → the level an owner (re)starts at

    def quotas(self, queue: str, weights: Mapping[Owner, float], room: int) -> dict[Owner, int]:
        """How many dispatches each owner in `weights` (those with work waiting) gets of `room`."""
        times = self.times.setdefault(queue, {})
        floor = self.floor.get(queue, 0.0)
        for owner in weights:
            times[owner] = max(times.get(owner, floor), floor)
        return water_fill({o: times[o] for o in weights}, weights, room)

    def served(self, queue: str, sent: Mapping[Owner, int], weights: Mapping[Owner, float]) -> None:
        """Count what was sent to owners of `weights` (those with work waiting)."""
        times = self.times.setdefault(queue, {})
        for owner, n in sent.items():
            times[owner] = times.get(owner, self.floor.get(queue, 0.0)) + n / weights[owner]
        waiting = [times[o] for o in weights if o in times]
        if waiting:
            self.floor[queue] = max(self.floor.get(queue, 0.0), min(waiting))

    def forget_idle(self, queue: str, waiting: Mapping[Owner, float]) -> None:
        """`waiting` names every owner with work waiting in the queue: the others are idle,
        and forgotten (they restart at the floor)."""
        times = self.times.setdefault(queue, {})
        for owner in [o for o in times if o not in waiting]:
            del times[owner]
