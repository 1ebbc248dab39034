"""What a log record says about where it came from: the role (service) and, inside a job's
attempt, the job it belongs to.

The worker wraps each attempt in `job_log_context(...)`; every record written meanwhile, by
the handler or by any library it calls, is tagged with the job. contextvars (not a thread
local) so that asyncio code inside a handler keeps the tags too.
"""

from __future__ import annotations

import contextvars
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JobLogContext:
    job_id: str
    attempt: int
    type: str
    queue: str
    owner_id: int = 0  # kept with each record so a user's log search needs no join
    workflow_id: str | None = None


current_job: contextvars.ContextVar[JobLogContext | None] = contextvars.ContextVar("current_job", default=None)


@contextmanager
def job_log_context(ctx: JobLogContext) -> Iterator[None]:
    token = current_job.set(ctx)
    try:
        yield
    finally:
        current_job.reset(token)


# The role a process plays, from its command line: `manage.py run_relay` → relay, and so on.
_ROLE_COMMANDS = {
    "run_relay": "relay",
    "run_bridge": "bridge",
    "run_scheduler": "scheduler",
    "run_log_sink": "log-sink",
    "runserver": "web",
}


def service_name(argv: list[str] | None = None) -> str:
    """SERVICE_NAME if set, else the role read off the command line, else the program name."""
    if os.environ.get("SERVICE_NAME"):
        return os.environ["SERVICE_NAME"]
    args = sys.argv if argv is None else argv
    first = args[0] if args else "python"  # a path; `python -m celery` gives .../celery/__main__.py
    program = os.path.basename(first)
    if "gunicorn" in first:
        return "web"
    if "celery" in first:
        for role in ("worker", "flower", "beat"):
            if role in args:
                return role
        return "celery"
    if program == "manage.py" and len(args) > 1:
        return _ROLE_COMMANDS.get(args[1], f"manage.{args[1]}")
    if "pytest" in first:
        return "pytest"
    return program.removesuffix(".py")
