"""Which outbox rows a relay round sends: the fair pick.

The outbox is the backlog. Each queue (config.queues) has a window, the most of its jobs
dispatched and not yet started (QUEUED: in Kafka, in Redis, in a worker's prefetch); a
round sends, per queue, at most the room left in its window and what its rate allows, and
shares that among the owners with dispatches waiting by weighted fair queueing
(`fairness.FairShare`): each owner's highest-priority, oldest dispatches first. So:

- a queue whose workers are slow, stopped or missing (a typo, "parked") fills its own window
  and holds back nothing else: the bridge never has to stop for it;
- one owner's backlog of a million jobs delays another owner's next job by about one round
  and whatever that owner's express lane has ahead of it, not by the million;
- a rate-limited queue's jobs wait here, holding no worker and polling nothing but this.

Rows without a queue (dead-letter notices; dispatches written by code from before rows
carried their queue) go first, oldest first, as they always did. A queue is worked by one
relay at a time (a transaction-scoped advisory lock: the room it counts is exact); another
relay takes the other queues meanwhile. What a round reads is bounded: the queues with rows
waiting (a skip scan), for each at most `owners_per_round` owners from a rotating cursor
(a skip scan), and the rows it sends.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection

from config.queues import Queue
from jobs import selectors
from metrics import prom
from orchestration import ratelimit
from orchestration.fairness import FairShare, express_jobs

_UNROUTED_SQL = """
SELECT id, job_id, topic, envelope, envelope ->> 'dispatch_token' FROM jobs_outbox
 WHERE queue IS NULL ORDER BY id LIMIT %s
   FOR UPDATE SKIP LOCKED
"""

# Queues with dispatches waiting: a skip scan of outbox_fair, one probe per queue.
_QUEUES_SQL = """
WITH RECURSIVE q(queue) AS (
    (SELECT queue FROM jobs_outbox WHERE topic = 'jobs' AND queue IS NOT NULL ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT o.queue FROM jobs_outbox o
             WHERE o.topic = 'jobs' AND o.queue IS NOT NULL AND o.queue > q.queue ORDER BY o.queue LIMIT 1)
      FROM q WHERE q.queue IS NOT NULL
)
SELECT queue FROM q WHERE queue IS NOT NULL
"""

# The owners with dispatches waiting in a queue after a cursor: a skip scan, one probe each.
_OWNERS_SQL = """
WITH RECURSIVE w(owner_id) AS (
    (SELECT owner_id FROM jobs_outbox
      WHERE topic = 'jobs' AND queue = %(queue)s AND owner_id > %(after)s ORDER BY owner_id LIMIT 1)
    UNION ALL
    SELECT (SELECT o.owner_id FROM jobs_outbox o
             WHERE o.topic = 'jobs' AND o.queue = %(queue)s AND o.owner_id > w.owner_id ORDER BY o.owner_id LIMIT 1)
      FROM w WHERE w.owner_id IS NOT NULL
)
SELECT owner_id FROM w WHERE owner_id IS NOT NULL LIMIT %(limit)s
"""

PASSES = 3  # a round's passes over a queue's owners, each giving out what the last left

_LOCK_SQL = "SELECT pg_try_advisory_xact_lock(%(space)s, hashtext(%(queue)s))"
LOCK_SPACE = 0x72656C61  # "rela": the relays' advisory locks, one per queue

_IN_FLIGHT_SQL = "SELECT owner_id, count(*) FROM jobs_job WHERE status = 'QUEUED' AND queue = %s GROUP BY owner_id"

# Each owner's share of the round: its next dispatches by priority, then age.
_PICK_SQL = """
SELECT o.id, o.job_id, o.topic, o.envelope, o.envelope ->> 'dispatch_token', o.owner_id
  FROM unnest(%(owners)s::int[], %(quotas)s::int[]) AS w(owner_id, n)
 CROSS JOIN LATERAL (
       SELECT id, job_id, topic, envelope, owner_id FROM jobs_outbox
        WHERE topic = 'jobs' AND queue = %(queue)s AND owner_id = w.owner_id AND id <> ALL(%(taken)s::bigint[])
        ORDER BY priority DESC, id LIMIT w.n
          FOR UPDATE SKIP LOCKED) o
"""


_FIRST_COME_SQL = """
SELECT id, job_id, topic, envelope, envelope ->> 'dispatch_token' FROM jobs_outbox
 WHERE topic = 'jobs' AND queue = %(queue)s ORDER BY id LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED
"""


@dataclass
class Round:
    """What a pick took: outbox rows (id, job id, topic, envelope, token), the ids of those on
    the express lane, and whether dispatches were left waiting for room or rate (the relay
    then looks again soon, rather than waiting for a new row's notification)."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    express: set[int] = field(default_factory=set)
    waiting: bool = False
    again: bool = False  # a queue took all of its share of the round: the next round at once


def queue_config(name: str) -> Queue:
    """A queue's declaration; one no longer declared (rows written before it was removed) gets
    the defaults, so its jobs still go."""
    declared = settings.QUEUES.get(name)
    return declared or Queue(name, window=settings.QUEUE_WINDOW, slot_share=settings.FAIR_SLOT_SHARE)


class FairPick:
    def __init__(self, owners_per_round: int = 1000) -> None:
        self.owners_per_round = owners_per_round
        self.share = FairShare()
        self.cursors: dict[str, int] = {}  # queue → the last owner looked at (0: from the start)
        self.turn = 0  # which queue goes first this round (rotates)

    def __call__(self, budget: int) -> Round:
        """Lock and return up to `budget` rows to send, in the caller's transaction."""
        picked = Round()
        with connection.cursor() as cur:
            cur.execute(_UNROUTED_SQL, [budget])
            picked.rows = [(*row,) for row in cur.fetchall()]
            budget -= len(picked.rows)
            cur.execute(_QUEUES_SQL)
            queues = [queue_config(row[0]) for row in cur.fetchall()]
            self.turn = (self.turn + 1) % max(1, len(queues))
            # Each queue's share of the round is by its weight, and what one leaves goes to
            # the ones after it: a queue may take its running total's share less what the
            # queues before it took. The order rotates, so no queue is always first or last;
            # a queue that took its whole share says so (`waiting`) and the relay goes again.
            if budget <= 0 and queues:
                picked.waiting = True  # the round went to rows without a queue
            total, given, sent = sum(q.weight for q in queues), 0.0, 0
            for queue in queues[self.turn :] + queues[: self.turn]:
                given += queue.weight
                quota = min(math.ceil(budget * given / total) - sent, budget - sent)
                if quota > 0:
                    took = self._queue(cur, queue, quota, picked)
                    sent += took
                    picked.again = picked.again or took == quota  # it may have more: no pause
        return picked

    def _queue(self, cur: Any, queue: Queue, budget: int, picked: Round) -> int:
        """One queue's share of the round (at most `budget`); how many rows it took."""
        cur.execute(_LOCK_SQL, {"space": LOCK_SPACE, "queue": queue.name})
        if not cur.fetchone()[0]:
            picked.waiting = True  # another relay is sending this queue's dispatches right now
            return 0
        cur.execute(_IN_FLIGHT_SQL, [queue.name])
        in_flight = dict(cur.fetchall())
        flying = sum(in_flight.values())
        room = min(budget, queue.window - flying)
        granted = ratelimit.take(queue, room) if room > 0 else 0
        prom.QUEUE_IN_FLIGHT.labels(queue.name).set(flying)
        prom.QUEUE_HELD.labels(queue.name, "window").set(int(flying >= queue.window))
        prom.QUEUE_HELD.labels(queue.name, "rate").set(int(room > 0 and granted <= 0))
        if granted <= 0:
            picked.waiting = True
            return 0
        if not settings.FAIR_DISPATCH:
            return self._first_come(cur, queue, granted, picked)
        owners, complete = self._owners(cur, queue.name)
        weights = selectors.owner_weights(owners)
        rows: list[tuple[Any, ...]] = []
        active, left = dict(weights), granted
        for _ in range(PASSES):
            # Room an owner could not use (it had fewer waiting than its share) goes to the
            # others at once, not a round later.
            quotas = self.share.quotas(queue.name, active, left)
            got = self._fetch(cur, queue.name, quotas, taken=[row[0] for row in rows])
            sent = Counter(row[5] for row in got)
            self.share.served(queue.name, sent, weights)
            rows.extend(got)
            left = granted - len(rows)
            active = {o: w for o, w in active.items() if sent[o] >= quotas.get(o, 0)}
            if left <= 0 or not active:
                break
        if complete:
            self.share.forget_idle(queue.name, weights)
        ratelimit.give_back(queue, granted - len(rows))
        express, seen = express_jobs(queue.window), Counter[int]()
        for row in rows:  # each owner's first ones, in its pick order, while it has few in flight
            owner = row[5]
            if in_flight.get(owner, 0) + seen[owner] < express:
                picked.express.add(row[0])
            seen[owner] += 1
        picked.rows.extend(row[:5] for row in rows)
        if len(rows) == granted:
            picked.waiting = True  # there may be more behind them
        return len(rows)

    @staticmethod
    def _first_come(cur: Any, queue: Queue, granted: int, picked: Round) -> int:
        """FAIR_DISPATCH off: the queue's room in the order dispatches were written, whoever's."""
        cur.execute(_FIRST_COME_SQL, {"queue": queue.name, "limit": granted})
        rows = cur.fetchall()
        ratelimit.give_back(queue, granted - len(rows))
        picked.rows.extend(rows)
        if len(rows) == granted:
            picked.waiting = True
        return len(rows)

    def _owners(self, cur: Any, queue: str) -> tuple[list[int], bool]:
        """Owners with dispatches waiting in the queue, from its cursor: up to
        `owners_per_round`, and whether that is all of them (the walk started at the
        beginning and reached the end)."""
        after = self.cursors.get(queue, 0)
        cur.execute(_OWNERS_SQL, {"queue": queue, "after": after, "limit": self.owners_per_round})
        owners = [row[0] for row in cur.fetchall()]
        if len(owners) == self.owners_per_round:
            self.cursors[queue] = owners[-1]
            return owners, False
        self.cursors[queue] = 0
        if after and len(owners) < self.owners_per_round:
            # The end: the owners before the cursor come first next round.
            cur.execute(_OWNERS_SQL, {"queue": queue, "after": 0, "limit": self.owners_per_round - len(owners)})
            owners = [*owners, *(row[0] for row in cur.fetchall() if row[0] <= after)]
        return owners, after == 0

    @staticmethod
    def _fetch(cur: Any, queue: str, quotas: dict[int, int], *, taken: list[int]) -> Sequence[tuple[Any, ...]]:
        if not quotas:
            return []
        owners = list(quotas)
        cur.execute(
            _PICK_SQL,
            {"queue": queue, "owners": owners, "quotas": [quotas[o] for o in owners], "taken": taken},
        )
        return cur.fetchall()
