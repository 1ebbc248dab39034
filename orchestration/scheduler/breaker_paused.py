"""Jobs paused by their owner's circuit breaker for their type (`orchestration.breaker`) →
outbox, once the breaker lets them through.

A worker that meets an open breaker leaves the job PENDING without a dispatch and with
`breaker_held_at`; no attempt is counted. This scan, run by the single leader, releases one
paused job as the probe once the open period is over, and the rest once the breaker closed.
Breakers are each owner's own, so the scan visits (owner, type) pairs: up to `keys_per_tick`
a tick by a skip scan from where the last tick stopped, wrapping round at the end. A tick's
cost is per pair visited, and every pair is visited at least once every (pairs /
keys_per_tick) ticks: one owner's thousands of open breakers cannot hide another's closed one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from jobs import selectors
from orchestration import breaker
from orchestration.scheduler.release import release_fenced
from orchestration.scheduler.walk import Walk


class BreakerPausedScan:
    """The breaker scan, walking (owner, type) pairs from where the last tick stopped."""

    def __init__(self) -> None:
        self.walk: Walk[tuple[int, str]] = Walk(
            lambda after, limit: selectors.job_breaker_paused_keys(after=after, limit=limit)
        )

    def __call__(self, epoch: int, clock: Callable[[], datetime], *, batch: int, keys_per_tick: int) -> int:
        return self.walk(lambda key: _release(epoch, clock, *key, batch), budget=keys_per_tick)


def _release(epoch: int, clock: Callable[[], datetime], owner: int, type_: str, batch: int) -> int:
    """All of a pair's paused jobs (a batch a tick) once its breaker closed; one, as the probe,
    once its open period is over and no probe runs."""
    state = breaker.state_of(owner, type_)
    if state.state == "closed":
        limit = batch
    elif state.state == "half_open" and not state.probe_running:
        limit = 1
    else:
        return 0
    return len(release_fenced(epoch, clock, scan="paused", limit=limit, key=type_, owner=owner))
