"""Jobs held by their type's circuit breaker (`orchestration.breaker`) → outbox, once the
breaker lets them through.

A worker that meets an open breaker leaves the job PENDING without a dispatch and with
`breaker_held_at`; no attempt is counted. This scan, run by the single leader, releases one
held job as the probe once the open period is over, and the rest once the breaker closed.
It finds every held type by a skip scan, so open breakers cannot hide a closed one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from jobs import selectors
from orchestration import breaker
from orchestration.scheduler.release import release_fenced


def release_breaker_held(epoch: int, clock: Callable[[], datetime], *, batch: int) -> int:
    """Jobs held by an open circuit breaker: all of them (in batches) once it closed; one,
    as the probe, once its open period is over and no probe runs. Every held type is
    looked at each tick (types are registered handlers: few)."""
    total = 0
    for type_ in selectors.job_breaker_held_types():
        state = breaker.state_of(type_)
        if state.state == "closed":
            limit = batch
        elif state.state == "half_open" and not state.probe_running:
            limit = 1
        else:
            continue
        total += release_fenced(epoch, clock, scan="breaker", limit=limit, key=type_)
    return total
