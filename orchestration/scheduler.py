"""The scheduler (`manage.py run_scheduler`): one active instance moves waiting jobs on.

Leadership: a Redis lock (SET NX PX) that the leader renews every tick; a standby takes over
within SCHEDULER_LOCK_TTL_SECONDS of the leader dying. Each new leader takes a fencing epoch
from PostgreSQL, beside the fence, and every scheduler transaction first raises the epoch
(`SchedulerFence`) only if it is not behind: a leader paused past its lock's expiry finds a
newer epoch there, writes nothing, and steps down.

Each tick, in batches, on partial indexes of live rows only:
- RETRYING jobs whose backoff is over, and PENDING jobs whose `run_at` came → outbox;
- RUNNING jobs whose lease expired (worker lost) → failed attempt (LOST) → retry policy;
- cron schedules whose next slot came → a job per slot, at most once per slot;
- QUEUED jobs whose message was lost (nobody claimed them DISPATCH_STALE_SECONDS after the
  bridge caught up and their Celery queue is empty) → dispatched again with a new token;
- jobs held by a concurrency key (as far as the key has room) or by a breaker that lets them
  through → outbox.

Each scan runs in isolation: one that fails is logged and counted, and the others still run
(only a newer leader, or a lost connection, ends a tick). Within the cron scan each schedule
has its own savepoint (see `jobs.schedules`). No scan reads a fixed window that entries it
cannot act on could fill for good: the stale scan pages through its window across ticks, the
held scan asks only for keys with room, the breaker scan looks at every held type.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from confluent_kafka import Consumer, TopicPartition
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from config import broker, kafka
from jobs import schedules, selectors, services, transitions
from jobs.models import AttemptStatus, JobStatus
from metrics import prom
from orchestration import breaker, policy

logger = logging.getLogger("orchestration.scheduler")


_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class Fenced(Exception):
    """A newer leader exists: this instance must not write."""


class LeaderLock:
    def __init__(self, client: redis.Redis, identity: str, ttl: float, name: str) -> None:
        self.client, self.identity, self.ttl_ms = client, identity, int(ttl * 1000)
        self.key, self.name = f"{name}:leader", name
        self.epoch: int | None = None
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire_or_renew(self) -> bool:
        """True while this instance leads. Never blocks."""
        if self.epoch is not None:
            if self._renew(keys=[self.key], args=[self.identity, self.ttl_ms]):
                return True
            logger.warning("scheduler.lost_leadership", extra={"identity": self.identity, "epoch": self.epoch})
            self.epoch = None
        if self.client.set(self.key, self.identity, nx=True, px=self.ttl_ms):
            try:
                self.epoch = self._next_epoch()
            except Exception:
                self._release(keys=[self.key], args=[self.identity])  # let another try at once
                raise
            logger.info("scheduler.leading", extra={"identity": self.identity, "epoch": self.epoch})
            return True
        return False

    def _next_epoch(self) -> int:
        """A new leader's epoch comes from PostgreSQL, next to the fence it guards. (It came
        from a Redis counter, which a Redis restart reset: every later leader then was behind
        the fence and no scheduler could write, found by `make chaos`.)"""
        with connection.cursor() as cur:
            cur.execute(
                "INSERT INTO orchestration_schedulerfence (name, epoch) VALUES (%s, 1) "
                "ON CONFLICT (name) DO UPDATE SET epoch = orchestration_schedulerfence.epoch + 1 RETURNING epoch",
                [self.name],
            )
            return int(cur.fetchone()[0])

    def release(self) -> None:
        if self.epoch is not None:
            self._release(keys=[self.key], args=[self.identity])
            self.epoch = None


def fence(epoch: int, name: str | None = None) -> None:
    """First statement of every scheduler transaction: claim the fence for `epoch`."""
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO orchestration_schedulerfence (name, epoch) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET epoch = EXCLUDED.epoch "
            "WHERE orchestration_schedulerfence.epoch <= EXCLUDED.epoch",
            [name or settings.SCHEDULER_LOCK_KEY, epoch],
        )
        if cur.rowcount == 0:
            raise Fenced(f"scheduler epoch {epoch} is behind the fence")


@dataclass
class TickResult:
    retries: int = 0
    delayed: int = 0
    lost_workers: int = 0
    stale_dispatches: int = 0
    cron_fired: int = 0
    held_released: int = 0
    breaker_released: int = 0
    skipped: list[str] = field(default_factory=list)

    def moved_anything(self) -> bool:
        return any(count for name, count in vars(self).items() if name != "skipped")


class Scheduler:
    def __init__(
        self,
        *,
        client: redis.Redis | None = None,
        identity: str | None = None,
        clock: Callable[[], datetime] = timezone.now,
    ) -> None:
        self.client = client or redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lock = LeaderLock(
            self.client, self.identity, settings.SCHEDULER_LOCK_TTL_SECONDS, settings.SCHEDULER_LOCK_KEY
        )
        self.clock = clock
        self.batch = settings.SCHEDULER_BATCH_SIZE
        self.held_keys_per_tick = 1000
        self.stale_pages = 10  # pages of SCHEDULER_BATCH_SIZE QUEUED jobs the stale scan reads a tick
        self._stale_after: tuple[datetime, uuid.UUID] | None = None  # where the stale scan goes on
        self._lag_consumer: Consumer | None = None
        self._stats_at = 0.0
        self.last: dict[str, Any] = {}  # what the heartbeat reports

    # -- one tick -------------------------------------------------------------------------

    def tick(self) -> TickResult | None:
        """Do one round if leading; None when a standby."""
        if not self.lock.acquire_or_renew():
            return None
        epoch = self.lock.epoch
        assert epoch is not None
        result = TickResult()
        scans: list[tuple[str, str | None, Callable[[], int | None]]] = [
            ("retries", "retries", lambda: self._release("retries", epoch)),
            ("delayed", "delayed", lambda: self._release("delayed", epoch)),
            ("leases", "lost_workers", lambda: self._reap_expired_leases(epoch)),
            ("stale", "stale_dispatches", lambda: self._redispatch_stale(epoch, result)),
            ("cron", "cron_fired", lambda: self._fire_schedules(epoch)),
            ("held", "held_released", lambda: self._release_held(epoch)),
            ("breaker", "breaker_released", lambda: self._release_breaker_held(epoch)),
        ]
        if time.monotonic() - self._stats_at >= settings.SCHEDULER_STATS_SECONDS:
            scans.append(("stats", None, self.report_stats))
        try:
            for scan, attr, run in scans:
                moved = self._timed(scan, run, result)
                if attr is not None:
                    setattr(result, attr, moved)
        except Fenced as exc:
            logger.warning("scheduler.fenced", extra={"identity": self.identity, "reason": str(exc)})
            self.lock.epoch = None
            return None
        return result

    def _timed(self, scan: str, run: Callable[[], int | None], result: TickResult) -> int:
        """Run one scan in isolation: its failure is logged and counted and the tick goes on.
        Only `Fenced` and a lost connection (PostgreSQL or Redis) end the tick."""
        started = time.perf_counter()
        try:
            moved = run() or 0
        except Fenced:
            raise
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except (OperationalError, InterfaceError):
            if connection.in_atomic_block or not connection.is_usable():
                raise
            moved = self._scan_failed(scan, result)  # e.g. a deadlock or a statement timeout
        except Exception:
            moved = self._scan_failed(scan, result)
        prom.SCHEDULER_SCAN.labels(scan).observe(time.perf_counter() - started)
        if moved:
            prom.SCHEDULER_MOVED.labels(scan).inc(moved)
        return moved

    @staticmethod
    def _scan_failed(scan: str, result: TickResult) -> int:
        logger.exception("scheduler.scan_failed", extra={"scan": scan})
        prom.SCHEDULER_ERRORS.labels(scan).inc()
        result.skipped.append(f"{scan} scan failed")
        return 0

    def report_stats(self) -> None:
        """Metrics only the leader computes: jobs per state, bridge lag per partition, every
        breaker, breaker-held jobs."""
        self._stats_at = time.monotonic()
        counts = selectors.job_counts_by_status()
        for status in JobStatus.values:
            prom.JOBS_IN_STATE.labels(status).set(counts.get(status, 0))
        positions = self.bridge_positions() or {}
        lag = {p: max(0, high - committed) for p, (committed, high) in positions.items()}
        for partition, behind in lag.items():
            prom.BRIDGE_LAG.labels(str(partition)).set(behind)
        for type_ in breaker.known_types():
            prom.BREAKER_STATE.labels(type_).set(prom.BREAKER_STATES[breaker.state_of(type_).state])
        held = selectors.job_breaker_held_counts()
        for type_, n in held.items():
            prom.JOBS_HELD.labels(type_).set(n)
        self.last = {"jobs_in_state": counts, "bridge_lag": sum(lag.values()), "breaker_held": sum(held.values())}

    def details(self) -> dict[str, Any]:
        return {"leading": self.lock.epoch is not None, "identity": self.identity, **self.last}

    def _release_fenced(
        self, epoch: int, scan: str, *, limit: int, key: str | None = None, owner: int | None = None
    ) -> int:
        """One fenced transaction: make up to `limit` jobs of a scan dispatchable and write
        their outbox rows."""
        with transaction.atomic():
            fence(epoch)
            released = transitions.release_batch(scan, now=self.clock(), limit=limit, key=key, owner=owner)
            services.job_dispatch_released(released)
        return len(released)

    def _release(self, scan: str, epoch: int) -> int:
        total = 0
        while True:
            released = self._release_fenced(epoch, scan, limit=self.batch)
            total += released
            if released < self.batch:
                return total

    def _release_held(self, epoch: int) -> int:
        """Jobs held by a concurrency key go out, oldest first, as far as the key has room
        (keys are each owner's own):
        limit - running - already dispatched. Up to `held_keys_per_tick` keys a tick, those
        of the oldest held jobs first; the rest come next tick."""
        keys = selectors.job_held_keys_with_room(now=self.clock(), limit=self.held_keys_per_tick)
        return sum(self._release_fenced(epoch, "held", limit=room, key=key, owner=owner) for owner, key, room in keys)

    def _release_breaker_held(self, epoch: int) -> int:
        """Jobs held by an open circuit breaker: all of them (in batches) once it closed; one,
        as the probe, once its open period is over and no probe runs. Every held type is
        looked at each tick (types are registered handlers: few)."""
        types = selectors.job_breaker_held_types()
        total = 0
        for type_ in types:
            state = breaker.state_of(type_)
            if state.state == "closed":
                limit = self.batch
            elif state.state == "half_open" and not state.probe_running:
                limit = 1
            else:
                continue
            total += self._release_fenced(epoch, "breaker", limit=limit, key=type_)
        return total

    def _fire_schedules(self, epoch: int) -> int:
        with transaction.atomic():
            fence(epoch)
            fired = schedules.fire_due(now=self.clock())
        for f in fired:
            logger.info(
                "schedule.fired", extra={"schedule_id": f.schedule_id, "slot": f.slot.isoformat(), "job_id": f.job_id}
            )
        return len(fired)

    def _reap_expired_leases(self, epoch: int) -> int:
        now = self.clock()
        expired = selectors.job_expired_leases(now=now, limit=self.batch)
        reaped = 0
        for job in expired:
            error = f"worker lost: lease expired (worker {job.worker or 'unknown'})"
            decision = policy.decide(attempts=job.attempts, max_attempts=job.max_attempts, backoff=job.backoff, now=now)
            with transaction.atomic():
                fence(epoch)
                if job.cancel_requested_at is not None:  # a cancel outlives its worker
                    won = transitions.mark_cancelled(
                        job.id, attempt=job.attempt_seq, reason="cancelled (worker lost)",
                        lease_expired_before=now,
                    )  # fmt: skip
                elif isinstance(decision, policy.Retry):
                    won = transitions.schedule_retry(
                        job.id, attempt=job.attempt_seq, next_retry_at=decision.at, error=error,
                        attempt_status=AttemptStatus.LOST, lease_expired_before=now,
                    )  # fmt: skip
                else:
                    won = transitions.move_to_dead_letter(
                        job.id, attempt=job.attempt_seq, error=error, attempt_status=AttemptStatus.LOST,
                        lease_expired_before=now,
                    )  # fmt: skip
            if won:
                reaped += 1
                logger.warning("job.worker_lost", extra={"job_id": str(job.id), "attempt": job.attempt_seq})
        return reaped

    def _redispatch_stale(self, epoch: int, result: TickResult) -> int:
        """QUEUED jobs whose message is gone: consumed by the bridge (its committed offset is
        past the message) yet unclaimed long after, with their Celery queue empty (lost in
        Redis), or beyond the end of the partition (the broker lost its data). Messages still
        in the Kafka backlog are left alone, however old.

        The window (QUEUED before the stale time) is read in pages on (queued_at, id), up to
        `stale_pages` a tick; the next tick goes on after the last job looked at, and starts
        over once the window is exhausted. So a page full of jobs legitimately waiting in the
        backlog cannot hide lost ones behind it."""
        stale_before = self.clock() - timedelta(seconds=settings.DISPATCH_STALE_SECONDS)
        positions: dict[int, tuple[int, int]] | None = None
        total = 0
        for _ in range(self.stale_pages):
            page = selectors.job_queued_before(stale_before, after=self._stale_after, limit=self.batch)
            if page and positions is None:
                positions = self.bridge_positions()
                if positions is None:
                    result.skipped.append("stale scan: Kafka positions unknown")
                    break
            if page:
                total += self._redispatch_lost(epoch, stale_before, page, positions or {})
            if len(page) < self.batch:
                self._stale_after = None  # the window is exhausted: the next tick starts over
                break
            self._stale_after = (page[-1][4], page[-1][0])
        if total:
            logger.warning("scheduler.redispatched_lost", extra={"jobs": total})
        return total

    def _redispatch_lost(
        self,
        epoch: int,
        stale_before: datetime,
        page: list[selectors.QueuedDispatch],
        positions: dict[int, tuple[int, int]],
    ) -> int:
        depths = broker.depths({queue for _, queue, _, _, _ in page})
        lost = []
        for job_id, queue, partition, offset, _ in page:
            committed, high = positions.get(partition, (0, 0)) if partition is not None else (0, 0)
            consumed = offset is None or offset < committed
            vanished = offset is not None and offset >= high
            if vanished or (consumed and depths[queue] == 0):
                lost.append(job_id)
        if not lost:
            return 0
        with transaction.atomic():
            fence(epoch)
            released = transitions.release_batch(
                "stale", now=self.clock(), limit=len(lost), stale_before=stale_before, ids=lost
            )
            services.job_dispatch_released(released)
        return len(released)

    def bridge_positions(self) -> dict[int, tuple[int, int]] | None:
        """Per partition of `jobs`: (the bridge's committed offset, the high watermark).
        None when Kafka cannot be asked (then nothing is declared lost)."""
        try:
            if self._lag_consumer is None:
                self._lag_consumer = Consumer(
                    kafka.consumer_config(settings.KAFKA_BRIDGE_GROUP, **{"enable.auto.commit": False})
                )
            topic = settings.KAFKA_JOBS_TOPIC
            metadata = self._lag_consumer.list_topics(topic, timeout=5).topics.get(topic)
            if metadata is None or metadata.error is not None:
                return {}  # no topic: the broker lost it, and every message with it
            committed = self._lag_consumer.committed([TopicPartition(topic, p) for p in metadata.partitions], timeout=5)
            positions = {}
            for tp in committed:
                low, high = self._lag_consumer.get_watermark_offsets(tp, timeout=5)
                positions[tp.partition] = (tp.offset if tp.offset >= 0 else low, high)
            return positions
        except Exception as exc:  # Kafka unreachable: do not guess
            logger.warning("scheduler.kafka_positions_unknown", extra={"error": str(exc)})
            return None

    # -- the loop -------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        tick = settings.SCHEDULER_TICK_SECONDS
        leading = False
        while not stop.is_set():
            started = time.monotonic()
            try:
                result = self.tick()
            except (OperationalError, InterfaceError, redis.RedisError) as exc:
                logger.warning("scheduler.tick_failed", extra={"error": str(exc)})
                connection.close()
                result = None
            except Exception:  # a role never dies on one bad row: log, count, tick again
                logger.exception("scheduler.tick_failed")
                prom.SCHEDULER_ERRORS.labels("tick").inc()
                result = None
            if (result is not None) != leading:
                leading = result is not None
                prom.SCHEDULER_LEADER.labels(self.identity).set(int(leading))
                logger.info("scheduler.role", extra={"leading": leading, "identity": self.identity})
            if result and result.moved_anything():
                logger.info("scheduler.tick", extra=vars(result))
            stop.wait(max(0.0, tick - (time.monotonic() - started)))
        self.lock.release()
        if self._lag_consumer is not None:
            self._lag_consumer.close()
        connection.close()
