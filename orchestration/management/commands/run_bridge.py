"""`manage.py run_bridge`: the Kafka → Celery bridge role (see orchestration.consumers.bridge)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from orchestration.consumers import bridge
from orchestration.roles import run_role


class Command(BaseCommand):
    help = "Move dispatched jobs from Kafka into Celery queues, with backpressure."

    def handle(self, *args: Any, **opts: Any) -> None:
        run_role("bridge", bridge.run_forever)
