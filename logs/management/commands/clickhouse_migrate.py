"""`manage.py clickhouse_migrate`: create or update the ClickHouse tables (idempotent): the logs
table, and the jobs archive that retention writes to."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from jobs import archive
from logs import store


class Command(BaseCommand):
    help = "Create the ClickHouse logs and jobs archive tables if missing, apply LOG_RETENTION_DAYS. Idempotent."

    def handle(self, *args: Any, **opts: Any) -> None:
        store.migrate()
        archive.migrate()
        self.stdout.write(f"ClickHouse tables {store.table()} and {archive.table()} are up to date")
