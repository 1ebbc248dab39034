"""`manage.py run_bridge`: the Kafka → Celery bridge role (see orchestration.consumers.bridge)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from config.roles import run_role
from orchestration.consumers import bridge


class Command(BaseCommand):
    help = "Move dispatched jobs from Kafka into Celery queues, in batches."

    def handle(self, *args: Any, **opts: Any) -> None:
        factory = bridge.BridgeStrategyFactory()
        run_role("bridge", lambda stop: bridge.run_forever(stop, factory), factory.details)
