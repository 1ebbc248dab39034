"""Process-role plumbing shared by run_relay, run_bridge and the other long-running roles:
logging set-up and a stop event set by SIGTERM/SIGINT, so a role finishes its current batch
and exits cleanly when its supervisor stops it."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("config.roles")


def run_role(
    name: str, loop: Callable[[threading.Event], None], details: Callable[[], dict[str, Any]] | None = None
) -> None:
    """Run a role's loop until SIGTERM/SIGINT, with its heartbeat, (on METRICS_PORT) its
    own /metrics and (when the environment asks for it) tracing."""
    from config import tracing
    from logs.context import service_name
    from metrics.heartbeat import Heartbeat
    from metrics.prom import serve_role_metrics

    tracing.setup(service_name())
    stop = threading.Event()
    serve_role_metrics(name)
    Heartbeat(name, details).start()

    def request_stop(signum: int, frame: Any) -> None:
        logger.info("role.stopping", extra={"role": name, "signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    logger.info("role.started", extra={"role": name})
    try:
        loop(stop)
    finally:
        from metrics.prom import mark_dead

        mark_dead(os.getpid())
    logger.info("role.stopped", extra={"role": name})
