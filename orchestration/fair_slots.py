"""A fair share of the running slots: one owner's long jobs never hold every worker.

A slot is a worker process: it runs one job at a time. Without a limit, an owner whose jobs
run for minutes takes each worker as it frees up, and another owner's one-millisecond jobs
wait for the minutes. Running jobs cannot be taken back (they are user code), so the only
way another owner's job can start within a second is that some worker was never given to
the long ones. Hence:

- A job holds a *long slot* while it runs if its kind (owner and type) is not known to be
  short: a kind is short once a run of it ended within FAIR_LONG_SECONDS, and long for
  FAIR_KIND_MEMORY_SECONDS after any run of it took longer, or until QUICK_RUNS_TO_SHORT
  runs in a row end quickly again (a run stretched by a stalled machine must not slow its
  kind for ten minutes); twice as many each time a short verdict of the kind had to be
  taken back. A job of a kind not seen yet counts as long until one of its runs says
  otherwise.
- An owner may hold at most max(1, floor(share * slots)) long slots of a queue at once, where
  slots are the live workers consuming the queue and share is the owner's `slot_share`
  (OwnerShare), else FAIR_SLOT_SHARE. A worker that consumes several queues also keeps each
  queue's long jobs to that queue's `slot_share` (QUEUES) of the queue's workers.
- A job over its owner's share is deferred (PENDING, `slot_held_at`), without using an attempt,
  and the scheduler releases it when the owner's long slots drop below its share.

Short jobs are not limited: a lone owner's short jobs use every worker (the first run of a
new kind takes one slot; the rest follow as soon as it ended quickly). A lone owner's long
jobs use its share of the workers, and the rest stay free for whoever comes next: that is
the price of another owner's job starting within a second, set by FAIR_SLOT_SHARE (1 turns
it off). A known-short kind whose run turns out long holds a long slot from that moment.

State in Redis, shared by every worker (`<FAIR_SLOTS_PREFIX>:...`): per queue, its live
workers (each process that runs jobs, a solo worker or a prefork child, refreshes its own
entry every HEARTBEAT_SECONDS from a thread of its own) and the long slots taken (one entry
per process, refreshed with the job's lease, gone when it ends or its process dies); per kind,
"short" or "long". A take is one script, so two workers cannot both take an owner's last
slot. A worker keeps a kind's verdict for a second or two, so a stream of short jobs costs
no Redis round trip per job.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from django.conf import settings

from config import broker

logger = logging.getLogger("orchestration.worker")

K = TypeVar("K")
V = TypeVar("V")
SHORT, LONG = "short", "long"
KIND_CACHE_SECONDS = 2.0
CACHE_MOST = 10_000  # entries a process's caches keep before dropping the stale ones

# KEYS[1]: the queue's workers (worker → expiry), KEYS[2]: its long slots (worker → "owner|expiry")
# ARGV: now, worker, owner, owner share, expiry of this slot, queue share (0: no queue limit)
# Returns "ok" (the slot is this worker's), or which share is full: "owner" or "queue".
_TAKE = """
local now = tonumber(ARGV[1])
local slots = 0
local workers = redis.call('HGETALL', KEYS[1])
for i = 1, #workers, 2 do
  if tonumber(workers[i + 1]) > now then slots = slots + 1 else redis.call('HDEL', KEYS[1], workers[i]) end
end
if slots < 1 then slots = 1 end
local mine, all = 0, 0
local taken = redis.call('HGETALL', KEYS[2])
for i = 1, #taken, 2 do
  local owner, expiry = string.match(taken[i + 1], '^(%d+)|(.+)$')
  if tonumber(expiry) <= now then
    redis.call('HDEL', KEYS[2], taken[i])
  elseif taken[i] ~= ARGV[2] then
    all = all + 1
    if owner == ARGV[3] then mine = mine + 1 end
  end
end
if mine >= math.max(1, math.floor(tonumber(ARGV[4]) * slots + 1e-9)) then return 'owner' end
local queue_share = tonumber(ARGV[6])
if queue_share > 0 and all >= math.max(1, math.floor(queue_share * slots + 1e-9)) then return 'queue' end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3] .. '|' .. ARGV[5])
return 'ok'
"""


# A kind's verdict keys. KEYS[1]: the verdict, KEYS[2]: quick runs in a row since it was last
# called long, KEYS[3]: how often a short verdict was taken back (remembered as long as a
# verdict). ARGV[1]: how long they are kept.
#
# A quick run's word (ARGV[2]: the quick runs in a row that make a long kind short, doubled
# for each verdict taken back). Returns the verdict now.
_QUICK = """
local verdict = redis.call('GET', KEYS[1])
if not verdict then
  redis.call('SET', KEYS[1], 'short', 'EX', ARGV[1])
  return 'short'
end
if verdict == 'short' then return 'short' end
local quick = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
local taken_back = math.min(tonumber(redis.call('GET', KEYS[3]) or '0'), 10)
if quick < tonumber(ARGV[2]) * 2 ^ taken_back then return verdict end
redis.call('SET', KEYS[1], 'short', 'EX', ARGV[1])
redis.call('DEL', KEYS[2])
return 'short'
"""
# A long run's word: the kind is long, its quick runs start over, and a short verdict taken
# back is counted (an owner alternating quick and long runs of one type, to have its long
# ones run unregistered on every worker, needs twice the quick runs each time).
_LONG = """
local verdict = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], 'long', 'EX', ARGV[1])
redis.call('DEL', KEYS[2])
if verdict == 'short' then
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], ARGV[1])
end
return 'long'
"""
QUICK_RUNS_TO_SHORT = 3  # quick runs in a row that make a long kind short again (at first)


def _key(*parts: object) -> str:
    return ":".join([settings.FAIR_SLOTS_PREFIX, *map(str, parts)])


def workers_key(queue: str) -> str:
    return _key("workers", queue)


def taken_key(queue: str) -> str:
    return _key("held", queue)  # the key's name predates the word "taken": kept, so a rolling deploy agrees


def kind_key(owner: int, type_: str) -> str:
    return _key("kind", owner, type_)  # the owner (a number) first: no type can pass for another owner's


def verdict_keys(owner: int, type_: str) -> tuple[str, str, str]:
    """A kind's verdict, its quick runs in a row, its short verdicts taken back."""
    return kind_key(owner, type_), _key("quick", owner, type_), _key("flips", owner, type_)


def cap(share: float, slots: int) -> int:
    """The most long slots a share of `slots` workers allows: at least one."""
    return max(1, math.floor(share * max(slots, 1) + 1e-9))


@dataclass
class Slot:
    """The long slot a job took (or, for a known-short kind, took later if it ran long)."""

    queue: str
    owner: int
    type: str
    taken: bool  # an entry is in Redis for it
    ran_long: bool = False  # the monitor said so: whatever its end, not a quick run
    started: float = field(default_factory=time.monotonic)


class Recent(Generic[K, V]):
    """Values read lately, each good for `ttl` seconds. Stale ones go once there are
    CACHE_MOST entries (a worker meets every tenant's kinds over its life: it must not keep
    them all), at most once a `ttl`."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._values: dict[K, tuple[float, V]] = {}  # key → (read at, value)
        self._pruned_at = float("-inf")

    def get(self, key: K) -> tuple[bool, V | None]:
        """(fresh, the value): fresh False when it must be read again."""
        read_at, value = self._values.get(key, (float("-inf"), None))
        return time.monotonic() - read_at < self.ttl, value

    def put(self, key: K, value: V) -> None:
        now = time.monotonic()
        if len(self._values) >= CACHE_MOST and now - self._pruned_at >= self.ttl:
            self._pruned_at = now
            self._values = {k: v for k, v in self._values.items() if now - v[0] < self.ttl}
        self._values[key] = (now, value)

    def clear(self) -> None:
        self._values.clear()


class Slots:
    """One worker process's view: its id, its queues, the kinds it has heard about."""

    def __init__(self) -> None:
        self.worker = ""
        self.queues: list[str] = []
        self._kinds: Recent[tuple[int, str], str | None] = Recent(KIND_CACHE_SECONDS)  # kind → verdict
        self._beating: threading.Thread | None = None

    def configure(self, worker: str, queues: list[str]) -> None:
        self.worker, self.queues = worker, list(queues)

    def start_beating(self) -> None:
        """Beat from a daemon thread of this process until it ends (every HEARTBEAT_SECONDS;
        a beat that fails is logged and tried again)."""
        if self._beating is not None and self._beating.is_alive():
            return

        def run() -> None:
            while True:
                try:
                    self.beat()
                except Exception as exc:  # Redis away: the entry expires; the next beat puts it back
                    logger.warning("slots.beat_failed", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
                time.sleep(settings.HEARTBEAT_SECONDS)

        self._beating = threading.Thread(target=run, name="slots-beat", daemon=True)
        self._beating.start()

    # -- presence -----------------------------------------------------------------------

    def beat(self) -> None:
        """This worker is alive and consumes its queues (from its heartbeat thread)."""
        if not self.worker:
            return
        expiry = time.time() + 3 * settings.HEARTBEAT_SECONDS
        pipe = broker.client().pipeline(transaction=False)
        for queue in self.queues:
            pipe.hset(workers_key(queue), self.worker, expiry)
        pipe.execute()

    def leave(self) -> None:
        if not self.worker:
            return
        pipe = broker.client().pipeline(transaction=False)
        for queue in self.queues:
            pipe.hdel(workers_key(queue), self.worker)
            pipe.hdel(taken_key(queue), self.worker)
        pipe.execute()

    # -- a job's slot ---------------------------------------------------------------------

    def kind(self, owner: int, type_: str) -> str | None:
        """SHORT, LONG or None (not known), at most KIND_CACHE_SECONDS old."""
        fresh, verdict = self._kinds.get((owner, type_))
        if not fresh:
            raw = broker.client().get(kind_key(owner, type_))
            verdict = None if raw is None else broker.text(raw)
            self._kinds.put((owner, type_), verdict)
        return verdict

    def take(self, *, queue: str, owner: int, type_: str, share: float, queue_share: float) -> Slot | str:
        """The job's slot, or the share that is full ("owner" or "queue"): the job must wait.
        A known-short kind takes no long slot (it runs unregistered, like any short job)."""
        if self.kind(owner, type_) == SHORT:
            return Slot(queue, owner, type_, taken=False)
        answer = broker.client().eval(
            _TAKE, 2, workers_key(queue), taken_key(queue), time.time(), self.worker or "anonymous", owner, share,
            self._expiry(), queue_share if len(self.queues) > 1 else 0,
        )  # fmt: skip
        answer = broker.text(answer)
        return Slot(queue, owner, type_, taken=True) if answer == "ok" else answer

    def ran_long(self, slot: Slot) -> None:
        """The job has run FAIR_LONG_SECONDS (from the worker's monitor thread): its kind is
        long, and it holds a long slot from now on, whatever its owner's share says (it runs
        already); the owner's next jobs of the kind wait for their share."""
        slot.ran_long = True
        pipe = broker.client().pipeline(transaction=False)
        pipe.eval(_LONG, 3, *verdict_keys(slot.owner, slot.type), int(settings.FAIR_KIND_MEMORY_SECONDS))
        if not slot.taken:
            pipe.hset(taken_key(slot.queue), self.worker or "anonymous", f"{slot.owner}|{self._expiry()}")
        pipe.execute()
        slot.taken = True
        self._kinds.put((slot.owner, slot.type), LONG)

    def renew(self, slot: Slot) -> None:
        """Keep a long job's slot while it runs (with its lease)."""
        if slot.taken:
            broker.client().hset(taken_key(slot.queue), self.worker or "anonymous", f"{slot.owner}|{self._expiry()}")

    def done(self, slot: Slot) -> None:
        """The job ended: its slot goes back, and a quick run says the kind is short: at once
        for a kind not known yet, after QUICK_RUNS_TO_SHORT quick runs in a row for one a run
        called long (one slow run, a stalled machine say, must not slow the kind for good)."""
        quick = not slot.ran_long and time.monotonic() - slot.started < settings.FAIR_LONG_SECONDS
        if not slot.taken:
            return  # a known-short kind that stayed short: nothing to say
        client = broker.client()
        client.hdel(taken_key(slot.queue), self.worker or "anonymous")
        if not quick:
            return
        verdict = client.eval(
            _QUICK, 3, *verdict_keys(slot.owner, slot.type), int(settings.FAIR_KIND_MEMORY_SECONDS),
            QUICK_RUNS_TO_SHORT,
        )  # fmt: skip
        self._kinds.put((slot.owner, slot.type), broker.text(verdict))  # its next job need not ask

    @staticmethod
    def _expiry() -> float:
        return time.time() + settings.JOB_LEASE_SECONDS


SLOTS = Slots()
SHARE_CACHE_SECONDS = 10.0
_shares: Recent[int, float | None] = Recent(SHARE_CACHE_SECONDS)  # owner → its slot_share


def shares(owner: int, queue: str) -> tuple[float, float]:
    """(the owner's share of a queue's workers, the queue's share of its workers), each
    owner's read from OwnerShare at most every SHARE_CACHE_SECONDS; no limit (1, 1) while
    FAIR_DISPATCH is off."""
    from jobs.models import OwnerShare

    if not settings.FAIR_DISPATCH:
        return 1.0, 1.0
    fresh, own = _shares.get(owner)
    if not fresh:
        own = OwnerShare.objects.filter(owner_id=owner).values_list("slot_share", flat=True).first()
        _shares.put(owner, own)
    declared = settings.QUEUES.get(queue)
    return (own or settings.FAIR_SLOT_SHARE), (declared.slot_share if declared else settings.FAIR_SLOT_SHARE)


def taken_counts(queue: str) -> tuple[int, dict[int, int]]:
    """A queue's live workers, and the long slots each owner holds now (the scheduler's view)."""
    client = broker.client()
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(workers_key(queue))
    pipe.hgetall(taken_key(queue))
    workers, taken = pipe.execute()
    slots = sum(1 for expiry in workers.values() if float(expiry) > now)
    owners: dict[int, int] = {}
    for value in taken.values():
        owner, _, expiry = broker.text(value).partition("|")
        if float(expiry) > now:
            owners[int(owner)] = owners.get(int(owner), 0) + 1
    return slots, owners
