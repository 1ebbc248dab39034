"""Dispatch rate limits per queue, shared by every relay: a token bucket in Redis.

A queue declared with `rate=5/s burst=10` (config.queues) refills at 5 tokens a second up to
10; a relay takes as many tokens as it has dispatches ready and room for, and gives back
what it did not send. The bucket lives in Redis and is changed by one script with Redis's
own clock, so any number of relays together dispatch no faster than the rate, whatever
their clocks say. Jobs over the limit wait in the outbox (PostgreSQL), holding no worker.
"""

from __future__ import annotations

from django.conf import settings

from config import broker
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
