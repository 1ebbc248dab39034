"""The scheduler (`manage.py run_scheduler`): one active instance moves waiting jobs on.

Leadership: a Redis lock (SET NX PX) that the leader renews every tick; a standby takes over
within SCHEDULER_LOCK_TTL_SECONDS of the leader dying. Each new leader takes a fencing epoch
from PostgreSQL, beside the fence, and every scheduler transaction first raises the epoch
(`SchedulerFence`) only if it is not behind: a leader paused past its lock's expiry finds a
newer epoch there, writes nothing, and steps down (`fencing`).

Each tick, in batches, on partial indexes of live rows only, one module per scan:
- RETRYING jobs whose backoff is over, and PENDING jobs whose `run_at` came → outbox
  (`release`);
- RUNNING jobs whose lease expired (worker lost) → failed attempt (LOST) → retry policy
  (`reaper`);
- QUEUED jobs whose message was lost (nobody claimed them DISPATCH_STALE_SECONDS after the
  bridge caught up and their Celery queue is empty) → dispatched again with a new token
  (`stale`);
- cron schedules whose next slot came → a job per slot, at most once per slot (`cron`);
- jobs waiting without a dispatch, each kind its own word and scan (`jobs.models`): blocked
  by a concurrency key (as far as the key has room), paused by a breaker that lets them
  through again, or deferred for their owner's share of a queue's workers (as its long jobs
  end) → outbox (`blocked`, `breaker_paused`, `share_deferred`);
- finished jobs past their retention → the ClickHouse archive, and the audit log copied there
  beside them, each its own scan (`retention`);
- and, every SCHEDULER_STATS_SECONDS, metrics only the leader computes (`report_stats`).

Each scan runs in isolation: one that fails is logged and counted, and the others still run
(only a newer leader, or a lost connection, ends a tick). Within the cron scan each schedule
has its own savepoint (see `jobs.schedules`). No scan reads a fixed window that entries it
cannot act on could fill for good: the stale scan pages through its window across ticks, the
blocked scan visits keys from a cursor, the paused scan looks at every paused type.

Scans read jobs through `jobs.selectors` and change them through `jobs.transitions` and
`jobs.services`, each write in a transaction that starts with `fence`.
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
from datetime import datetime
from typing import Any

import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from config import broker
from jobs import selectors, tallies
from jobs.models import JobStatus
from metrics import prom
from orchestration import breaker
from orchestration.scheduler import (
    batch_callbacks,
    blocked,
    breaker_paused,
    cron,
    reaper,
    release,
    retention,
    share_deferred,
    stale,
    waits,
)
from orchestration.scheduler.fencing import Fenced, next_epoch

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
                self.epoch = next_epoch(self.name)  # from PostgreSQL, never Redis (see `fencing`)
            except Exception:
                self._release(keys=[self.key], args=[self.identity])  # let another try at once
                raise
            logger.info("scheduler.leading", extra={"identity": self.identity, "epoch": self.epoch})
            return True
        return False

    def release(self) -> None:
        if self.epoch is not None:
            self._release(keys=[self.key], args=[self.identity])
            self.epoch = None


@dataclass
class TickResult:
    retries: int = 0
    delayed: int = 0
    lost_workers: int = 0
    stale_dispatches: int = 0
    cron_fired: int = 0
    blocked_released: int = 0
    paused_released: int = 0
    deferred_released: int = 0
    archived: int = 0
    audit_archived: int = 0
    batch_callbacks: int = 0
    steps_woken: int = 0
    deadlines_passed: int = 0
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
        self.client = client or broker.client()  # the lock's key is raw: no cache KEY_PREFIX
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lock = LeaderLock(
            self.client, self.identity, settings.SCHEDULER_LOCK_TTL_SECONDS, settings.SCHEDULER_LOCK_KEY
        )
        self.clock = clock
        self.batch = settings.SCHEDULER_BATCH_SIZE
        self.pairs_per_tick = 1000
        self.stale_pages = 10  # pages of SCHEDULER_BATCH_SIZE QUEUED jobs the stale scan reads a tick
        self.release_batches = 10  # batches of due retries (and of delayed jobs) a tick releases
        self.positions = stale.BridgePositions()
        self.stale_scan = stale.StaleScan(self.positions)  # keeps where it goes on next tick
        self.retention = retention.RetentionScan()  # likewise
        self.audit_archive = retention.AuditArchiveScan()  # likewise
        self.blocked_scan = blocked.BlockedScan()  # likewise
        self.paused_scan = breaker_paused.BreakerPausedScan()  # likewise
        self.deferred_scan = share_deferred.ShareDeferredScan()  # likewise
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
        clock = self.clock
        # (name in metrics and logs, TickResult field, the scan)
        scans: list[tuple[str, str | None, Callable[[], int | None]]] = [
            ("retries", "retries", lambda: self._release("retries", epoch)),
            ("delayed", "delayed", lambda: self._release("delayed", epoch)),
            ("leases", "lost_workers", lambda: self._reap_expired_leases(epoch)),
            ("stale", "stale_dispatches",
             lambda: self.stale_scan(epoch, clock, batch=self.batch, pages=self.stale_pages, skipped=result.skipped)),
            ("cron", "cron_fired", lambda: cron.fire_schedules(epoch, clock)),
            ("blocked", "blocked_released", lambda: self.blocked_scan(epoch, clock, keys_per_tick=self.pairs_per_tick)),
            ("paused", "paused_released",
             lambda: self.paused_scan(epoch, clock, batch=self.batch, keys_per_tick=self.pairs_per_tick)),
            ("deferred", "deferred_released",
             lambda: self.deferred_scan(epoch, clock, batch=self.batch, keys_per_tick=self.pairs_per_tick)),
            ("tallies", None, lambda: tallies.fold(now=clock())),
            ("waits", "steps_woken", lambda: waits.wake_steps(epoch, clock, limit=self.batch)),
            ("deadlines", "deadlines_passed", lambda: waits.expire_deadlines(epoch, clock, limit=self.batch)),
            ("batches", "batch_callbacks",
             lambda: batch_callbacks.fire_batch_callbacks(epoch, clock, limit=self.pairs_per_tick)),
            ("retention", "archived", lambda: self.retention(epoch, clock)),
            ("audit", "audit_archived", lambda: self.audit_archive(epoch, clock)),
        ]  # fmt: skip
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

    # The two scans tests also drive on their own (tests/orchestration/test_batch_model.py).
    def _release(self, scan: str, epoch: int) -> int:
        return release.release_due(epoch, self.clock, scan=scan, batch=self.batch, batches=self.release_batches)

    def _reap_expired_leases(self, epoch: int) -> int:
        return reaper.reap_expired_leases(epoch, self.clock, batch=self.batch)

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
        breaker, jobs paused by breakers."""
        self._stats_at = time.monotonic()
        counts = selectors.job_counts_by_status()
        for status in JobStatus.values:
            prom.JOBS_IN_STATE.labels(status).set(counts.get(status, 0))
        positions = self.positions.read() or {}
        lag = {p: max(0, high - committed) for p, (committed, high) in positions.items()}
        for partition, behind in lag.items():
            prom.BRIDGE_LAG.labels(str(partition)).set(behind)
        # Per type, the most open of its owners' breakers (a label per owner would be one
        # series per tenant and type).
        worst: dict[str, int] = {}
        for owner, type_ in breaker.known():
            state = prom.BREAKER_STATES[breaker.state_of(owner, type_).state]
            worst[type_] = max(worst.get(type_, 0), state)
        for type_, state in worst.items():
            prom.BREAKER_STATE.labels(type_).set(state)
        paused_by_type = selectors.job_breaker_paused_counts()
        for type_, n in paused_by_type.items():
            prom.JOBS_PAUSED_BY_BREAKER.labels(type_).set(n)
        self.last = {
            "jobs_in_state": counts,
            "bridge_lag": sum(lag.values()),
            "breaker_paused": sum(paused_by_type.values()),
        }

    def details(self) -> dict[str, Any]:
        return {"leading": self.lock.epoch is not None, "identity": self.identity, **self.last}

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
        self.positions.close()
        connection.close()
