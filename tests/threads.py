"""Running a step on a thread of its own, with its own database connection."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection


def in_thread(outcome: dict[str, Any], name: str, fn: Callable[[], Any]) -> threading.Thread:
    """Run fn on a thread of its own (its own connection); outcome[name] gets what it
    returned or raised."""

    def run() -> None:
        try:
            outcome[name] = fn()
        except Exception as exc:
            outcome[name] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread
