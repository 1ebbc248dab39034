"""Declared rate limits per `rate_limit_key`: which one holds for an owner's key, and saving them.

Limits come from settings (JOB_RATE_LIMITS, every owner's keys), from staff through the API
(a RateLimit without an owner, the same) and from each owner for its own keys. Where several
patterns match a key the slowest wins: an owner may tighten what staff set, never loosen it.
Workers ask `limit_for` before each keyed claim; an owner's limits are read at most every
JOB_RATE_LIMIT_CACHE_SECONDS (one query for all of them), so a changed limit holds everywhere
within that time. The counting itself is in orchestration.ratelimit.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from fnmatch import fnmatchcase
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q

from config.key_rates import KeyRate
from jobs import audit
from jobs.errors import RateLimitPatternTaken
from jobs.models import RateLimit

_cache: dict[int, tuple[float, list[KeyRate]]] = {}
_lock = threading.Lock()


def declared_for(owner_id: int) -> list[KeyRate]:
    """Every limit that can hold for the owner's keys: settings', staff's and its own."""
    now = time.monotonic()
    hit = _cache.get(owner_id)
    if hit is not None and hit[0] > now:
        return hit[1]
    rows = RateLimit.objects.filter(Q(owner_id=owner_id) | Q(owner__isnull=True)).values_list(
        "pattern", "limit", "period_seconds", "burst"
    )
    rates = [*settings.JOB_RATE_LIMITS, *(KeyRate(*row) for row in rows)]
    with _lock:
        if len(_cache) > 10_000:  # many owners: start over rather than grow without end
            _cache.clear()
        _cache[owner_id] = (now + settings.JOB_RATE_LIMIT_CACHE_SECONDS, rates)
    return rates


def limit_for(owner_id: int, key: str) -> KeyRate | None:
    """The limit that holds for the owner's key: the slowest matching rate, with the smallest
    matching burst (a large burst would loosen a slower rate's limit). None: no limit."""
    matching = [r for r in declared_for(owner_id) if fnmatchcase(key, r.pattern)]
    if not matching:
        return None
    slowest = max(matching, key=lambda r: r.interval)
    return dataclasses.replace(slowest, burst=min(r.burst for r in matching))


def forget_cached() -> None:
    """Drop this process's cached limits (tests, and after a change made here)."""
    with _lock:
        _cache.clear()


def rate_limit_delete(limit: RateLimit) -> None:
    with transaction.atomic():
        audit.record("rate_limit.delete", "rate_limit", limit.pk, owner_id=limit.owner_id, pattern=limit.pattern)
        limit.delete()
    forget_cached()


def rate_limit_save(*, owner_id: int | None, data: dict[str, Any], limit: RateLimit | None = None) -> RateLimit:
    """Create or change a limit (owner None: every owner's keys, staff only; the caller checks)."""
    limit = limit or RateLimit(owner_id=owner_id)
    for name in ("pattern", "limit", "period_seconds", "burst"):
        if name in data:
            setattr(limit, name, data[name])
    try:
        with transaction.atomic():
            created = limit.pk is None
            limit.save()
            audit.record("rate_limit.create" if created else "rate_limit.update", "rate_limit", limit.pk,
                         owner_id=limit.owner_id, pattern=limit.pattern, limit=limit.limit,
                         period_seconds=limit.period_seconds, burst=limit.burst)  # fmt: skip
    except IntegrityError:  # (owner, pattern) is unique: a second limit for the pattern, or a race
        raise RateLimitPatternTaken(limit.pattern) from None
    forget_cached()
    return limit
