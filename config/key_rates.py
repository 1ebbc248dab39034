"""Rates of jobs per `rate_limit_key`: how they are written, and the ones declared in settings.

A rate is `<count>/<unit>`: `100/s`, `600/m`, `1000/h`, `20000/d`. `JOB_RATE_LIMITS` declares
limits that apply to every owner's keys, `;` between them, a key pattern (shell-style glob),
the rate, and an optional burst:

    JOB_RATE_LIMITS="stripe-* 100/s burst=20; mail:* 1000/h"

Owners and staff declare more through the API (jobs.models.RateLimit). This module reads
settings only; it imports nothing of ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RATE = re.compile(r"([1-9]\d{0,8})/(s|sec|second|m|min|minute|h|hour|d|day)\Z")
_PERIOD = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
           "d": 86400, "day": 86400}  # fmt: skip
_UNIT = {1: "s", 60: "m", 3600: "h", 86400: "d"}
MAX_PATTERN = 200
MAX_BURST = 100_000
MAX_PER_SECOND = 100_000  # a start slot is kept to the microsecond: far above any real downstream


class RateError(ValueError):
    """A rate or a declared limit that cannot be used; the text says which part and why."""


@dataclass(frozen=True)
class KeyRate:
    """`limit` jobs per `period_seconds`, up to `burst` at once, for keys matching `pattern`."""

    pattern: str
    limit: int
    period_seconds: int
    burst: int = 1

    @property
    def interval(self) -> float:
        """Seconds between two starts at the steady rate."""
        return self.period_seconds / self.limit


def parse_rate(text: str) -> tuple[int, int]:
    """'100/s' → (100, 1); '1000/h' → (1000, 3600). Raises RateError."""
    match = _RATE.fullmatch(text.strip())
    if match is None:
        raise RateError(f"{text!r} is not a rate like '100/s', '600/m', '1000/h' or '20000/d'")
    limit, period = int(match.group(1)), _PERIOD[match.group(2)]
    if limit > MAX_PER_SECOND * period:
        raise RateError(f"{text!r} is more than {MAX_PER_SECOND:,}/s, the most a key can be limited to")
    return limit, period


def format_rate(limit: int, period_seconds: int) -> str:
    unit = _UNIT.get(period_seconds)
    return f"{limit}/{unit}" if unit else f"{limit}/{period_seconds}s"


def check_pattern(pattern: str) -> str | None:
    """What is wrong with a key pattern, or None."""
    if not pattern or len(pattern) > MAX_PATTERN:
        return f"a pattern is 1 to {MAX_PATTERN} characters"
    if "\x00" in pattern or any(c.isspace() for c in pattern):
        return "a pattern has no whitespace or NUL"
    return None


def parse(text: str) -> list[KeyRate]:
    """The limits `text` declares, in order. Raises RateError naming the part at fault."""
    rates: list[KeyRate] = []
    seen: set[str] = set()
    for part in filter(None, (p.strip() for p in text.split(";"))):
        pattern, *rest = part.split()
        problem = check_pattern(pattern)
        if problem:
            raise RateError(f"{pattern!r}: {problem}")
        if pattern in seen:
            raise RateError(f"{pattern!r} is declared twice")
        if not rest or len(rest) > 2:
            raise RateError(f"{pattern}: expected a rate and an optional burst=N, got {' '.join(rest)!r}")
        limit, period = parse_rate(rest[0])
        burst = 1
        if len(rest) == 2:
            key, _, value = rest[1].partition("=")
            if key != "burst" or not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_BURST:
                raise RateError(f"{pattern}: {rest[1]!r} is not burst=N with N from 1 to {MAX_BURST}")
            burst = int(value)
        seen.add(pattern)
        rates.append(KeyRate(pattern, limit, period, burst))
    return rates
