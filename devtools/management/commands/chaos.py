"""`manage.py chaos`: run the chaos harness (devtools/chaos/harness.py) against the
engines in the environment. Use `make chaos` (python -m devtools.chaos), which gives it
private engines it may restart."""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Inject one fault at a time into the full stack and check that no job is lost or run twice."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--faults", default="all", help="comma-separated names, 'fast' or 'all'")
        parser.add_argument("--rate", type=float, default=15.0)

    def handle(self, *args: Any, **opts: Any) -> None:
        from devtools.chaos import harness
        from devtools.chaos.__main__ import free_port

        if opts["faults"] == "all":
            names = list(harness.FAULTS)
        elif opts["faults"] == "fast":
            names = list(harness.FAST_SUBSET)
        else:
            names = [n.strip() for n in opts["faults"].split(",") if n.strip()]
        unknown = [n for n in names if n not in harness.FAULTS]
        if unknown:
            raise CommandError(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(harness.FAULTS)}")
        # SIGTERM ends the run like Ctrl-C, so the harness stops every role it started.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        log_dir = Path(tempfile.mkdtemp(prefix="chaos-logs-"))
        results = harness.run(names, rate=opts["rate"], log_dir=log_dir, web_port=free_port(), out=self.stdout)
        if not all(r.ok for r in results):
            raise CommandError("some faults broke an invariant (see the table)")
