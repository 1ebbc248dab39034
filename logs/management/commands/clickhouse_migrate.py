"""`manage.py clickhouse_migrate`: create or update the ClickHouse logs table (idempotent)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from logs import store


class Command(BaseCommand):
    help = "Create the ClickHouse logs table if missing and apply LOG_RETENTION_DAYS. Safe to run again."

    def handle(self, *args: Any, **opts: Any) -> None:
        store.migrate()
        self.stdout.write(f"ClickHouse table {store.table()} is up to date")
