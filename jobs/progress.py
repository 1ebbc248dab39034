"""How far a running job is: `ctx.progress(fraction, message)` from inside a handler.

A handler may call it in a tight loop: the reporter writes to PostgreSQL at most once every
JOB_PROGRESS_INTERVAL_SECONDS per job (the first call at once), keeps the latest value in
between, and the worker's monitor thread writes a value still pending on its next tick, so
the last word is never lost for long and a loop of a million calls costs a handful of
statements. The write is a conditional UPDATE that names the attempt: a late report from an
attempt that lost its job changes nothing.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.utils import timezone

from config.text import bounded_text

MESSAGE_MAX_CHARS = 200

_WRITE_SQL = """
UPDATE jobs_job SET progress = %s, progress_message = %s, progress_at = %s
 WHERE id = %s AND status = 'RUNNING' AND attempt_seq = %s
"""


def checked(fraction: float, message: str) -> tuple[float, str]:
    """The report as stored, or ValueError saying what is wrong with it."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise ValueError(f"progress fraction must be a number from 0 to 1, not {type(fraction).__name__}")
    if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"progress fraction must be from 0 to 1, got {fraction!r}")
    if not isinstance(message, str):
        raise ValueError(f"progress message must be text, not {type(message).__name__}")
    return float(fraction), bounded_text(message, MESSAGE_MAX_CHARS)  # NUL and lone surrogates made storable


class Reporter:
    """One attempt's progress: throttled writes, and the latest value kept until written."""

    def __init__(self, job_id: uuid.UUID, attempt: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.job_id, self.attempt, self.clock = job_id, attempt, clock
        self._lock = threading.Lock()
        self._pending: tuple[float, str] | None = None
        self._written_at: float | None = None
        self.writes = 0

    def report(self, fraction: float, message: str = "") -> None:
        value = checked(fraction, message)
        with self._lock:
            self._pending = value
            due = self._written_at is None or self.clock() - self._written_at >= settings.JOB_PROGRESS_INTERVAL_SECONDS
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the pending value, if any (the monitor thread calls this every tick)."""
        # Under the lock through the write: the handler's thread and the monitor's write on
        # connections of their own, and an older value must not land after a newer one.
        with self._lock:
            value, self._pending = self._pending, None
            if value is None:
                return
            self._written_at = self.clock()
            self.writes += 1
            with connection.cursor() as cur:
                cur.execute(_WRITE_SQL, [value[0], value[1], timezone.now(), str(self.job_id), self.attempt])
