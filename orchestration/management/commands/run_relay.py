"""`manage.py run_relay`: the outbox relay role (see orchestration.relay)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from config.roles import run_role
from orchestration.relay import Relay


class Command(BaseCommand):
    help = "Relay outbox rows from PostgreSQL to Kafka."

    def handle(self, *args: Any, **opts: Any) -> None:
        relay = Relay()
        run_role("relay", relay.run_forever, relay.report_backlog)
