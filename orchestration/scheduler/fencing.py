"""The scheduler's fencing epoch, in PostgreSQL (`SchedulerFence`, table
`orchestration_schedulerfence`). Each new leader takes the next epoch there, beside the fence,
and every scheduler transaction first raises the epoch only if it is not behind: a leader
paused past its Redis lock's expiry finds a newer epoch there, writes nothing, and steps down.

Its own module so that the leader and every scan can import it (the leader imports the scans).
"""

from __future__ import annotations

from django.conf import settings
from django.db import connection


class Fenced(Exception):
    """A newer leader exists: this instance must not write."""


def next_epoch(name: str) -> int:
    """A new leader's epoch comes from PostgreSQL, next to the fence it guards. (It came from
    a Redis counter, which a Redis restart reset: every later leader then was behind the fence
    and no scheduler could write, found by `make chaos`.)"""
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO orchestration_schedulerfence (name, epoch) VALUES (%s, 1) "
            "ON CONFLICT (name) DO UPDATE SET epoch = orchestration_schedulerfence.epoch + 1 RETURNING epoch",
            [name],
        )
        return int(cur.fetchone()[0])


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
