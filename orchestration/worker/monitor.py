"""The thread that watches what a worker process runs: leases, cancel requests, interrupts.

Interrupting a handler (timeout, or a cancel it did not notice within the grace period) uses
SIGALRM in the process's main thread, which is where prefork and solo pools run tasks.
"""

from __future__ import annotations

import _signal
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings

from jobs import transitions
from jobs.models import Job

logger = logging.getLogger("orchestration.worker")


class Ticking(Protocol):
    """The batch a process works through, as the monitor sees it (`batch.BatchRun`): the
    monitor only ticks it, so it need not know what a batch is."""

    def tick(self, *, running_for: float) -> None: ...


class LongRun(Protocol):
    """What the running job's slot hears from the monitor (`running`'s, over
    `orchestration.fair_slots`): it has run FAIR_LONG_SECONDS, and its lease was renewed."""

    def ran_long(self) -> None: ...
    def renew(self) -> None: ...


class Flushing(Protocol):
    """A running job's progress reports (`jobs.progress.Reporter`): the latest one still
    pending is written on the monitor's tick."""

    def flush(self) -> None: ...


class Interrupted(BaseException):  # BaseException: a handler's `except Exception` cannot swallow it
    """Raised inside a handler by SIGALRM: its timeout passed, or its cancel grace ran out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Watch:
    job_id: uuid.UUID
    attempt: int
    started: float
    cancel_requested_at: float | None = None
    interrupt_reason: str | None = None
    long_run: LongRun | None = None
    long_told: bool = False
    progress: Flushing | None = None


class Monitor:
    """One thread per worker process that watches the job the process is running: renews its
    lease every third of it, checks for a cancel request every second once the job has run
    for a second (no-op jobs never cost a query), and interrupts a handler that ignores a
    cancel for longer than the grace period."""

    TICK = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watch: _Watch | None = None
        self._batch: Ticking | None = None  # the batch this process is working through
        self._main_thread = threading.main_thread().ident
        self._thread: threading.Thread | None = None
        self._pid = 0

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():  # forked child
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="job-monitor", daemon=True)
            self._thread.start()

    def watch(
        self, job_id: uuid.UUID, attempt: int, long_run: LongRun | None = None, progress: Flushing | None = None
    ) -> _Watch:
        self._ensure_thread()
        with self._lock:
            self._watch = _Watch(job_id, attempt, time.monotonic(), long_run=long_run, progress=progress)
            return self._watch

    def clear(self) -> None:
        with self._lock:
            self._watch = None

    def hold(self, batch: Ticking) -> None:
        """Until `release`, tick the batch this process works through: it keeps its jobs'
        leases alive and acts while a long job of it runs (`BatchRun.tick`)."""
        self._ensure_thread()
        with self._lock:
            self._batch = batch

    def release(self) -> None:
        with self._lock:
            self._batch = None

    def cancel_requested(self) -> bool:
        watch = self._watch
        return watch is not None and watch.cancel_requested_at is not None

    def _run(self) -> None:
        from django.db import connection

        last_renew = last_check = 0.0
        while True:
            time.sleep(self.TICK)
            lease = settings.JOB_LEASE_SECONDS
            batch, watch = self._batch, self._watch
            if batch is not None:
                try:
                    batch.tick(running_for=time.monotonic() - watch.started if watch is not None else 0.0)
                except Exception:  # the database may be briefly away; the lease has slack
                    logger.exception("job.monitor_failed")
                    connection.close()
                # The tick may have taken seconds (a log flush while Kafka is away): the job
                # watched before it may have ended meanwhile, and another begun.
                watch = self._watch
            if watch is None:
                if batch is None and connection.connection is not None:
                    connection.close()  # only long jobs and batches need this thread's connection
                continue
            now = time.monotonic()
            try:
                if watch.progress is not None:
                    watch.progress.flush()  # a report the handler's throttle kept back
                if (
                    watch.long_run is not None
                    and not watch.long_told
                    and now - watch.started >= settings.FAIR_LONG_SECONDS
                    and self._watch is watch  # still running at `now`: it did run that long
                ):
                    watch.long_told = True
                    watch.long_run.ran_long()
                if now - watch.started >= 1.0 and now - last_check >= 1.0:
                    last_check = now
                    if (
                        watch.cancel_requested_at is None
                        and Job.objects.filter(id=watch.job_id, cancel_requested_at__isnull=False).exists()
                    ):
                        watch.cancel_requested_at = now
                if now - watch.started >= lease / 3 and now - last_renew >= lease / 3:
                    last_renew = now
                    if not transitions.renew_lease(watch.job_id, attempt=watch.attempt, lease_seconds=lease):
                        logger.warning("job.lease_lost", extra={"job_id": str(watch.job_id), "attempt": watch.attempt})
                    if watch.long_run is not None:
                        watch.long_run.renew()
            except Exception:  # the database may be briefly away; the lease has slack
                logger.exception("job.monitor_failed")
                connection.close()
            if (
                watch.cancel_requested_at is not None
                and watch.interrupt_reason is None
                and now - watch.cancel_requested_at >= settings.JOB_CANCEL_GRACE_SECONDS
            ):
                self.interrupt(watch, "cancelled")

    def interrupt(self, watch: _Watch, reason: str) -> None:
        with self._lock:
            if _armed is watch and watch.interrupt_reason is None and self._main_thread is not None:
                watch.interrupt_reason = reason
                signal.pthread_kill(self._main_thread, signal.SIGALRM)


MONITOR = Monitor()


_armed: _Watch | None = None  # the watch whose handler SIGALRM may interrupt right now


def _on_alarm(signum: int, frame: Any) -> None:
    watch = _armed
    if watch is None:
        return  # a late alarm after the handler finished: ignore it, never die of SIGALRM
    if watch.interrupt_reason is None:
        watch.interrupt_reason = "timed out"
    raise Interrupted(watch.interrupt_reason)


@contextmanager
def handler_running(
    job_id: uuid.UUID, attempt: int, timeout: float, long_run: LongRun | None = None, progress: Flushing | None = None
) -> Iterator[None]:
    """While the body runs the handler: the monitor watches the job (and tells `long_run` when
    it has run long), and SIGALRM is armed for `timeout` (the alarm, or the monitor after an
    ignored cancel, raises Interrupted inside it). Outside the main thread only the
    cooperative checks apply."""
    global _armed
    watch = MONITOR.watch(job_id, attempt, long_run, progress)
    armed = threading.current_thread() is threading.main_thread()
    if armed:
        # _signal's getsignal, not signal's: that one maps the answer to an enum (6.5 µs a job).
        if _signal.getsignal(signal.SIGALRM) is not _on_alarm:
            signal.signal(signal.SIGALRM, _on_alarm)
        _armed = watch
        signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.001))
    try:
        yield
    finally:
        if armed:
            _armed = None
            signal.setitimer(signal.ITIMER_REAL, 0)
        MONITOR.clear()
