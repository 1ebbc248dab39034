"""Rate limits in Redis: per queue, shared by every relay, and per job key, shared by every worker.

Per queue: a token bucket.

A queue declared with `rate=5/s burst=10` (config.queues) refills at 5 tokens a second up to
10; a relay takes as many tokens as it has dispatches ready and room for, and gives back
what it did not send. The bucket lives in Redis and is changed by one script with Redis's
own clock, so any number of relays together dispatch no faster than the rate, whatever
their clocks say. Jobs over the limit wait in the outbox (PostgreSQL), holding no worker.
"""

from __future__ import annotations

import hashlib

from django.conf import settings

from config import broker
from config.key_rates import KeyRate
from config.queues import Queue

# KEYS[1]: the bucket; ARGV: rate (tokens/s), burst, tokens wanted (negative: give back).
# Returns the tokens taken (0 when giving back).
_TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tonumber(redis.call('HGET', KEYS[1], 't') or burst)
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or now)
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local take = 0
if want < 0 then
  tokens = math.min(burst, tokens - want)
else
  take = math.min(want, math.floor(tokens))
  tokens = tokens - take
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst / rate + 1) * 1000))
return take
"""


def _key(queue: str) -> str:
    return f"{settings.RATE_LIMIT_PREFIX}:queue:{queue}"


def take(queue: Queue, wanted: int) -> int:
    """Up to `wanted` dispatches of the queue may go now: how many (all of them without a rate)."""
    if queue.rate is None or wanted <= 0:
        return wanted
    return int(broker.client().eval(_TAKE, 1, _key(queue.name), queue.rate, queue.burst, wanted))


def give_back(queue: Queue, unused: int) -> None:
    """Tokens taken but not used (fewer dispatches were waiting than room)."""
    if queue.rate is not None and unused > 0:
        broker.client().eval(_TAKE, 1, _key(queue.name), queue.rate, queue.burst, -unused)


# Per key: each job of a rate-limited key (`rate_limit_key`, its owner's) reserves the next
# start slot the rate allows, the generic cell rate algorithm: `tat` is when the key is next
# free at the steady rate, and a job may start at `tat - tolerance` (tolerance = burst - 1
# intervals), then `tat` moves on by one interval. A job whose slot is later waits for it
# without a worker (PENDING until its slot, `rate_slot_at`) and comes back to start without
# asking again: each waiting job is dispatched once more, at its time, never retried in a loop.
# `pause` is set by ctx.throttle: until then nothing of the key starts, reserved or not.
# Slots are in Redis's clock; a waiting job's `run_at` is the slot's delay added to the
# reserving worker's clock, so clock skew between workers and the scheduler shifts it that much.
# A changed rate rescales the queue of slots already handed out ahead of now (`i` is the
# interval they were handed out at); without a limit only a pause holds a job back. Times are
# written with 6 decimals: Lua's tostring keeps 14 digits, 0.1 ms of a timestamp, which at
# thousands a second would let the key run faster than its rate.
#
# KEYS[1]: the key's state; ARGV: interval (s, 0: no limit), tolerance (s), reserved (1: the
# job holds a slot). Returns how many seconds from now the job may start (<= 0: now).
_RESERVE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local pause = tonumber(redis.call('HGET', KEYS[1], 'pause') or 0)
if ARGV[3] == '1' and pause <= now then
  return '0'
end
local slot = math.max(now, pause)
local tat = now
if interval > 0 then
  tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or now)
  local was = tonumber(redis.call('HGET', KEYS[1], 'i') or interval)
  if tat > now and math.abs(was - interval) > interval * 1e-6 then
    tat = now + (tat - now) * interval / was
  end
  slot = math.max(tat - tolerance, slot)
  tat = math.max(tat, slot) + interval
  redis.call('HSET', KEYS[1], 'tat', string.format('%.6f', tat), 'i', string.format('%.9f', interval))
end
local keep = math.max(tat + tolerance, pause) - now + 60
redis.call('EXPIRE', KEYS[1], math.ceil(keep))
return string.format('%.6f', slot - now)
"""
# KEYS[1]: the key's state; ARGV: seconds from now until which nothing of the key starts.
_PAUSE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local pause = math.max(tonumber(redis.call('HGET', KEYS[1], 'pause') or 0), now + tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'pause', string.format('%.6f', pause))
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or 0)
redis.call('EXPIRE', KEYS[1], math.ceil(math.max(pause, tat) - now + 60))
return 1
"""


def _job_key(owner_id: int, key: str) -> str:
    # Hashed: a key is any text of up to 200 characters (a tenant's name, NUL, ':'), and no
    # key can be shaped like another owner's or like the queues' buckets.
    digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return f"{settings.RATE_LIMIT_PREFIX}:key:{owner_id}:{digest}"


def reserve(owner_id: int, key: str, rate: KeyRate | None, *, reserved: bool) -> float:
    """Seconds until a job of the owner's key may start (<= 0: now), its slot taken. A job
    that `reserved` its slot before starts now unless the key was paused since."""
    interval = rate.interval if rate else 0.0
    tolerance = interval * (rate.burst - 1) if rate else 0.0
    keys = _job_key(owner_id, key)
    return float(broker.client().eval(_RESERVE, 1, keys, interval, tolerance, "1" if reserved else "0"))


def pause(owner_id: int, key: str, seconds: float) -> None:
    """Nothing of the owner's key starts for `seconds` (ctx.throttle: the downstream asked)."""
    broker.client().eval(_PAUSE, 1, _job_key(owner_id, key), max(0.0, seconds))
