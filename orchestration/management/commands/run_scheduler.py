"""`manage.py run_scheduler`: the scheduler role (see `orchestration.scheduler.leader` for
leadership and the tick, and a module per scan beside it). Run two for availability: one
leads, the other takes over when it dies."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from config.roles import run_role
from orchestration.scheduler import Scheduler


class Command(BaseCommand):
    help = "Release due retries and delayed jobs, reap lost workers, re-dispatch lost messages."

    def handle(self, *args: Any, **opts: Any) -> None:
        scheduler = Scheduler()
        run_role("scheduler", scheduler.run_forever, scheduler.details)
