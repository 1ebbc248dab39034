"""Circuit breakers per owner and job type, shared by every worker through Redis.

    closed ── failures ≥ BREAKER_FAILURE_RATIO of ≥ BREAKER_MIN_CALLS results
       ▲      within BREAKER_WINDOW_SECONDS ──▶ open (for BREAKER_OPEN_SECONDS)
       │                                          │ time is up
       └── the probe succeeds ── half-open: one job runs as the probe ──┘
                                  (the probe fails: open again)

Each owner has its own breaker for each type: one tenant's failing or timing-out jobs (a
downstream of its own, `timeout_seconds: 1`) open its breaker only, and never hold another
tenant's jobs of the same type.

While a breaker is open its jobs are paused, not burned through their attempts:
the worker leaves them PENDING without a dispatch (`breaker_held_at` set) and does not
claim them; the scheduler releases paused jobs once the breaker is closed, and one of them as
the probe once the open period is over.

Only failures that say something about the job's dependencies count: a handler that raised
(other than PermanentError, which is about the job's own input) or timed out.

Results are counted per process and added to Redis at most every BREAKER_FLUSH_SECONDS (one
round trip a second per worker rather than one per job); a probe's result is sent at once.
A worker also keeps a breaker's "closed" answer for BREAKER_CACHE_SECONDS.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from config import broker

RUN, PROBE, HOLD = "run", "probe", "hold"

# allow(type): KEYS[1] = state hash; ARGV = now, probe timeout
_ALLOW = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then return 'run' end
local now = tonumber(ARGV[1])
if now < tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0') then return 'hold' end
if now < tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0') then return 'hold' end
redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[2]))
return 'probe'
"""

# record: KEYS[1] = state hash, KEYS[2] = current bucket, KEYS[3..] = the window's buckets
# ARGV = now, ok count, failed count, is probe (0/1), probe ok (0/1), bucket ttl,
#        min calls, failure ratio, open seconds
_RECORD = """
local now = tonumber(ARGV[1])
local open_for = tonumber(ARGV[9])
if ARGV[4] == '1' then
  if ARGV[5] == '1' then
    redis.call('DEL', KEYS[1])
    for i = 3, #KEYS do redis.call('DEL', KEYS[i]) end
    return 'closed'
  end
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + open_for, 'probe_until', 0, 'opened_at', now)
  return 'open'
end
if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', KEYS[2], 'ok', ARGV[2]) end
if tonumber(ARGV[3]) > 0 then redis.call('HINCRBY', KEYS[2], 'failed', ARGV[3]) end
redis.call('EXPIRE', KEYS[2], ARGV[6])
if redis.call('HGET', KEYS[1], 'state') == 'open' then return 'open' end
local ok, failed = 0, 0
for i = 3, #KEYS do
  ok = ok + tonumber(redis.call('HGET', KEYS[i], 'ok') or '0')
  failed = failed + tonumber(redis.call('HGET', KEYS[i], 'failed') or '0')
end
local total = ok + failed
if total >= tonumber(ARGV[7]) and failed / total >= tonumber(ARGV[8]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + open_for, 'probe_until', 0, 'opened_at', now)
  return 'opened'
end
return 'closed'
"""

BUCKETS = 6  # the window is counted in this many buckets


@dataclass(frozen=True)
class BreakerState:
    owner: int
    type: str
    state: str  # closed, open, half_open (open period over; a probe may run)
    ok: int
    failed: int
    opened_at: float | None
    open_until: float | None
    probe_running: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "owner": self.owner, "type": self.type, "state": self.state, "successes": self.ok,
            "failures": self.failed, "opened_at": self.opened_at, "open_until": self.open_until,
            "probe_running": self.probe_running,
        }  # fmt: skip


# Keys: `<prefix>:<owner>:<type>:...`. The owner is a number and comes first, so no job type
# (any text) can make one owner's key look like another's.
def _state_key(owner: int, type_: str) -> str:
    return f"{settings.BREAKER_PREFIX}:{owner}:{type_}:state"


def _bucket_keys(owner: int, type_: str, now: float) -> list[str]:
    width = settings.BREAKER_WINDOW_SECONDS / BUCKETS
    current = int(now // width)
    return [f"{settings.BREAKER_PREFIX}:{owner}:{type_}:w:{current - i}" for i in range(BUCKETS)]


Key = tuple[int, str]  # (owner, type)


class Breakers:
    """The breakers as one worker process sees them."""

    def __init__(self) -> None:
        self._closed_until: dict[Key, float] = {}
        self._counts: dict[Key, Counter[str]] = {}
        self._last_flush = time.monotonic()

    def allow(self, owner: int, type_: str, *, probe_seconds: float) -> str:
        if not settings.BREAKER_ENABLED:
            return RUN
        now, key = time.time(), (owner, type_)
        if self._closed_until.get(key, 0.0) > now:
            return RUN
        decision = broker.text(broker.client().eval(_ALLOW, 1, _state_key(owner, type_), now, probe_seconds))
        if decision == RUN:
            self._closed_until[key] = now + settings.BREAKER_CACHE_SECONDS
        return str(decision)

    def record(self, owner: int, type_: str, *, ok: bool, probe: bool) -> None:
        if not settings.BREAKER_ENABLED:
            return
        if probe:
            self._send((owner, type_), 0, 0, probe=True, probe_ok=ok)
            return
        self._counts.setdefault((owner, type_), Counter())["ok" if ok else "failed"] += 1
        if time.monotonic() - self._last_flush >= settings.BREAKER_FLUSH_SECONDS:
            self.flush()

    def abandon_probe(self, owner: int, type_: str) -> None:
        """The probe did not run (its claim lost, or it was cancelled): let another one go."""
        broker.client().hset(_state_key(owner, type_), "probe_until", 0)

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        self._last_flush = time.monotonic()
        for key, c in counts.items():
            if self._send(key, c["ok"], c["failed"], probe=False, probe_ok=False) == "opened":
                self._closed_until.pop(key, None)

    def _send(self, key: Key, ok: int, failed: int, *, probe: bool, probe_ok: bool) -> str:
        now = time.time()
        owner, type_ = key
        buckets = _bucket_keys(owner, type_, now)
        result = broker.client().eval(
            _RECORD, 2 + len(buckets), _state_key(owner, type_), buckets[0], *buckets,
            now, ok, failed, int(probe), int(probe_ok), int(settings.BREAKER_WINDOW_SECONDS * 2),
            settings.BREAKER_MIN_CALLS, settings.BREAKER_FAILURE_RATIO, settings.BREAKER_OPEN_SECONDS,
        )  # fmt: skip
        result = broker.text(result)
        if result != "closed":
            self._closed_until.pop(key, None)
        return result


BREAKERS = Breakers()


def state_of(owner: int, type_: str, now: float | None = None) -> BreakerState:
    """An owner's breaker for a type as stored in Redis (the API, the scheduler and metrics
    read this)."""
    now = time.time() if now is None else now
    client = broker.client()
    raw = {broker.text(k): broker.text(v) for k, v in client.hgetall(_state_key(owner, type_)).items()}
    ok = failed = 0
    pipe = client.pipeline()
    for key in _bucket_keys(owner, type_, now):
        pipe.hmget(key, "ok", "failed")
    for bucket_ok, bucket_failed in pipe.execute():
        ok += int(bucket_ok or 0)
        failed += int(bucket_failed or 0)
    state = raw.get("state", "closed")
    open_until = float(raw["open_until"]) if "open_until" in raw else None
    if state == "open" and open_until is not None and now >= open_until:
        state = "half_open"
    return BreakerState(
        owner=owner, type=type_, state=state, ok=ok, failed=failed,
        opened_at=float(raw["opened_at"]) if "opened_at" in raw else None,
        open_until=open_until if state != "closed" else None,
        probe_running=float(raw.get("probe_until", 0)) > now,
    )  # fmt: skip


def known(owner: int | None = None) -> list[Key]:
    """(owner, type) of the breakers with a state or recent results in Redis; only `owner`'s
    when given."""
    prefix = f"{settings.BREAKER_PREFIX}:"
    match = f"{prefix}{owner}:*" if owner is not None else f"{prefix}*"
    found = set()
    for raw in broker.client().scan_iter(match=match, count=1000):
        owner_text, sep, rest = broker.text(raw)[len(prefix) :].partition(":")
        if not sep or not owner_text.isdigit():
            continue  # not one of ours (a key of the old per-type layout, say)
        type_ = rest.rsplit(":state", 1)[0] if rest.endswith(":state") else rest.rsplit(":w:", 1)[0]
        found.add((int(owner_text), type_))
    return sorted(found)
