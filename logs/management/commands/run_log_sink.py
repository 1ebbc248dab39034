"""`manage.py run_log_sink`: the Kafka `logs` → ClickHouse role (see logs.sink)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from config.roles import run_role
from logs import sink, store


class Command(BaseCommand):
    help = "Move log records from Kafka into ClickHouse in batches."

    def handle(self, *args: Any, **opts: Any) -> None:
        store.migrate()  # idempotent; a sink never writes into a missing table
        log_sink = sink.LogSink()
        run_role("log-sink", log_sink.run, log_sink.details)
