"""The dev stack's processes by role, read off their command lines, for the benchmarks that
sample memory (`bench soak`) or account CPU time per job (`bench pipeline`)."""

from __future__ import annotations

import contextlib
import os
import time

import psutil
from django.conf import settings

# First match wins. Engines count with their child processes (PostgreSQL's backends).
ROLES = (
    ("raw_dramatiq", "Dramatiq workers"), ("raw_huey", "Huey workers"), ("raw_celery", "Celery workers (raw)"),
    ("raw_pgqueuer", "PgQueuer workers"),
    ("run_relay", "relay"), ("run_bridge", "bridge"), ("run_scheduler", "scheduler"), ("run_log_sink", "log-sink"),
    ("gunicorn", "web"), ("celery -A config worker", "worker"), ("flower", "flower"),
    ("chdb_http", "clickhouse (chDB)"), ("bin/postgres", "postgresql"), ("redis-server", "redis"),
    ("tansu", "kafka (Tansu)"), ("devtools.devstack", "make run (circus, role output)"),
)  # fmt: skip
ROLE_NAMES = frozenset({"relay", "bridge", "scheduler", "log-sink", "web", "worker", "flower"})


def _of_this_checkout(info: dict, root: str) -> bool:
    """Whether a process belongs to this checkout's stack: it runs in it (roles, the engines'
    data directories) or names a path in it. Another checkout's test roles, with the same
    command lines, are not ours (they once put spikes in a soak's memory chart)."""
    return (info["cwd"] or "").startswith(root) or any(root in arg for arg in info["cmdline"] or [])


def role_processes(*, engines: bool = False) -> dict[int, str]:
    """pid → role of every running role process of this checkout's stack (and, with
    `engines`, the engines' and the dev stack's own). A process its command line does not
    name takes its nearest named ancestor's role (PostgreSQL's backends, gunicorn's and
    circus' children)."""
    root = str(settings.BASE_DIR)
    named: dict[int, str] = {}
    parents: dict[int, int] = {}
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "cwd"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        parents[proc.info["pid"]] = proc.info["ppid"]
        if " bench " in f"{cmd} " or not _of_this_checkout(proc.info, root):
            continue
        role = next((role for marker, role in ROLES if marker in cmd), None)
        if role is not None:
            named[proc.info["pid"]] = role
    found: dict[int, str] = {}
    for pid in parents:
        ancestor, hops = pid, 0
        while ancestor not in named and ancestor in parents and hops < 8:
            ancestor, hops = parents[ancestor], hops + 1
        role = named.get(ancestor)
        if role is not None and (engines or role in ROLE_NAMES):
            found[pid] = role
    return found


class CpuMeter:
    """CPU seconds (user + system) each role used between `start` and `stop`, engines and
    this process included: where a benchmark's time went."""

    def __init__(self) -> None:
        self.before: dict[int, tuple[str, float]] = {}
        self.wall = 0.0

    @staticmethod
    def _sample() -> dict[int, tuple[str, float]]:
        pids = role_processes(engines=True) | {os.getpid(): "bench client (this command)"}
        out = {}
        for pid, role in pids.items():
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                out[pid] = (role, t.user + t.system)
        return out

    def start(self) -> None:
        self.before, self.wall = self._sample(), time.perf_counter()

    def stop(self) -> tuple[dict[str, float], float, tuple[str, float]]:
        """(role → CPU seconds, wall seconds, (role, CPU seconds) of the busiest single
        process). Processes born meanwhile count from zero."""
        after, wall = self._sample(), time.perf_counter() - self.wall
        by_role: dict[str, float] = {}
        busiest = ("none", 0.0)
        for pid, (role, cpu) in after.items():
            used = cpu - self.before.get(pid, (role, 0.0))[1]
            by_role[role] = by_role.get(role, 0.0) + used
            busiest = max(busiest, (role, used), key=lambda b: b[1])
        return by_role, wall, busiest
