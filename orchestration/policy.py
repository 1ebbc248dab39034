"""Retry and dead-letter policy: pure functions, no database.

The delay before attempt n+1 (n = attempts used so far) is
    min(max, initial · factor^(n-1)), then scaled by a uniform factor in [1 - jitter, 1 + jitter]
and the job dead-letters once it has used `max_attempts` or the failure is permanent.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

# factor^exponent overflows floats long before any sane `max`; clamping the exponent keeps
# the arithmetic finite without changing the (already capped) result.
_MAX_EXPONENT = 64


@dataclass(frozen=True)
class Retry:
    delay_seconds: float
    at: datetime


@dataclass(frozen=True)
class DeadLetter:
    reason: str


Decision = Retry | DeadLetter


def backoff_delay(attempts: int, backoff: Mapping[str, Any], rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after `attempts` failed attempts (attempts ≥ 1)."""
    initial = float(backoff.get("initial", 2.0))
    factor = float(backoff.get("factor", 2.0))
    cap = float(backoff.get("max", 3600))
    jitter = float(backoff.get("jitter", 0.2))
    exponent = min(max(attempts - 1, 0), _MAX_EXPONENT)
    base = min(cap, initial * math.pow(factor, exponent))
    return max(0.0, base * (1 + jitter * (2 * rand() - 1)))


def decide(
    *,
    attempts: int,
    max_attempts: int,
    backoff: Mapping[str, Any],
    now: datetime,
    permanent: bool = False,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """What happens after a failed attempt: retry at a time, or dead-letter and why."""
    if permanent:
        return DeadLetter("permanent error")
    if attempts >= max_attempts:
        return DeadLetter(f"out of attempts ({attempts}/{max_attempts})")
    delay = backoff_delay(attempts, backoff, rand)
    return Retry(delay, now + timedelta(seconds=delay))
