"""`manage.py status`: every role process with its last heartbeat and what it reports, then
the backlog at each stage (outbox, Kafka, Celery) and jobs per state, as tables."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection

from config import broker
from metrics import heartbeat

EXPECTED_ROLES = ("worker", "relay", "bridge", "scheduler", "log-sink")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _details(record: dict[str, Any]) -> str:
    skip = {"role", "host", "pid", "at", "age", "jobs_in_state"}
    return " ".join(f"{k}={v}" for k, v in record.items() if k not in skip)


class Command(BaseCommand):
    help = "Show every role (last heartbeat, lag, backlog) and the jobs per state."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queues", default=",".join(settings.WORKER_QUEUES), help="Celery queues to measure")

    def handle(self, *args: Any, **opts: Any) -> None:
        records = heartbeat.roles()
        rows = [["ROLE", "HOST", "PID", "LAST BEAT", "STATE", "DETAILS"]]
        stale_after = settings.HEARTBEAT_SECONDS * 2
        for r in records:
            state = "ok" if r["age"] <= stale_after else "late"
            rows.append([r["role"], r["host"], str(r["pid"]), f"{r['age']:.1f}s ago", state, _details(r)])
        seen = {r["role"] for r in records}
        for role in EXPECTED_ROLES:
            if role not in seen:
                rows.append([role, "-", "-", "never / gone", "MISSING", ""])
        self.stdout.write(_table(rows))

        with connection.cursor() as cur:
            cur.execute("SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM jobs_outbox")
            outbox, age = cur.fetchone()
        scheduler = next((r for r in records if r["role"] == "scheduler" and r.get("leading")), {})
        queues = [q.strip() for q in opts["queues"].split(",") if q.strip()]
        depths = broker.depths(queues)
        self.stdout.write("")
        self.stdout.write(
            _table([
                ["STAGE", "BACKLOG"],
                ["outbox (PostgreSQL)", f"{outbox} rows, oldest {float(age):.1f}s"],
                ["Kafka jobs (bridge lag)", str(scheduler.get("bridge_lag", "unknown (no leading scheduler)"))],
                *[[f"Celery queue {q}", str(n)] for q, n in depths.items()],
                ["paused by breakers", str(scheduler.get("breaker_paused", "unknown"))],
            ])
        )  # fmt: skip
        states = scheduler.get("jobs_in_state")
        if states:
            self.stdout.write("")
            self.stdout.write(_table([["STATUS", "JOBS"], *[[s, str(n)] for s, n in sorted(states.items())]]))
