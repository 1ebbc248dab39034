"""Role liveness: every role process writes a heartbeat to Redis every few seconds (with a
few numbers about its work), which `/health/ready` and `manage.py status` read.

Key `<HEARTBEAT_PREFIX>:<role>:<host>:<pid>`, a JSON value, expiring after three missed beats:
a role that died disappears from the list on its own.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from django.conf import settings

from config import broker
from metrics import prom

logger = logging.getLogger("metrics.heartbeat")
Details = Callable[[], dict[str, Any]]


def _key(role: str) -> str:
    return f"{settings.HEARTBEAT_PREFIX}:{role}:{socket.gethostname()}:{os.getpid()}"


def beat(role: str, details: dict[str, Any] | None = None) -> None:
    now = time.time()
    record = {"role": role, "host": socket.gethostname(), "pid": os.getpid(), "at": now, **(details or {})}
    ttl = max(1, int(settings.HEARTBEAT_SECONDS * 3))
    broker.client().set(_key(role), orjson.dumps(record, default=str), ex=ttl)
    prom.ROLE_HEARTBEAT.labels(role).set(now)


class Heartbeat(threading.Thread):
    """Beats every HEARTBEAT_SECONDS until the process ends; `details` runs in this thread."""

    def __init__(self, role: str, details: Details | None = None) -> None:
        super().__init__(name=f"heartbeat-{role}", daemon=True)
        self.role, self.details = role, details
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                beat(self.role, self.details() if self.details else None)
            except Exception as exc:  # Redis or the database away: try again next beat
                logger.warning("heartbeat.failed", extra={"role": self.role, "error": f"{type(exc).__name__}: {exc}"})
            finally:
                from django.db import connection

                connection.close()  # a details() that read the database must not hold a connection
            self.stop.wait(settings.HEARTBEAT_SECONDS)


def roles() -> list[dict[str, Any]]:
    """Every live role process, oldest heartbeat first; `age` is seconds since its last beat."""
    client = broker.client()
    keys = list(client.scan_iter(match=f"{settings.HEARTBEAT_PREFIX}:*", count=1000))
    now = time.time()
    out = []
    for raw in client.mget(keys) if keys else []:
        if raw is None:
            continue
        record = orjson.loads(raw)
        record["age"] = round(now - record["at"], 1)
        out.append(record)
    return sorted(out, key=lambda r: (r["role"], r["host"], r["pid"]))


def consumers() -> dict[str, int]:
    """Live worker processes per queue they consume (from their heartbeats)."""
    counts: dict[str, int] = {}
    for record in roles():
        if record["role"] == "worker":
            for queue in record.get("queues") or []:
                counts[queue] = counts.get(queue, 0) + 1
    return counts
