"""A walk over keys (pairs such as (owner, concurrency key) or (owner, type)) that resumes
where the last tick stopped and wraps round at the end: a scan's cost per tick is its budget
of keys, and every key is visited at least once every (keys / budget) ticks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")


class Walk(Generic[K]):
    """`fetch(after, limit)` gives up to `limit` keys in order after `after` (None: from the
    start); `visit(key)` acts on one and returns how many jobs it moved."""

    def __init__(self, fetch: Callable[[K | None, int], Sequence[K]]) -> None:
        self.fetch = fetch
        self.after: K | None = None  # the last key visited; None: the start

    def __call__(self, visit: Callable[[K], int], *, budget: int) -> int:
        moved, wrapped = 0, self.after is None
        while budget > 0:
            keys = self.fetch(self.after, budget)
            for key in keys:
                moved += visit(key)
            budget -= len(keys)
            if budget == 0:  # a full page: go on from its last key next tick
                self.after = keys[-1]
                break
            self.after = None  # the end: the keys before the cursor come next
            if wrapped:
                break
            wrapped = True
        return moved
