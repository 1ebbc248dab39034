"""Helpers that drive workflows in-process: dispatch what the outbox holds through the real
worker code (`orchestration.worker.execute`), as relay + bridge + worker would."""

from __future__ import annotations

from typing import Any

import orjson
from django.test import TestCase

from jobs.dispatch import DispatchEnvelope
from jobs.models import Job, Outbox
from orchestration.worker import execute


def pending_dispatches() -> list[DispatchEnvelope]:
    rows = list(Outbox.objects.filter(topic="jobs").order_by("id"))
    Outbox.objects.filter(id__in=[r.id for r in rows]).delete()
    return [
        DispatchEnvelope.parse(r.envelope if isinstance(r.envelope, dict) else orjson.loads(r.envelope)) for r in rows
    ]


def run_all(max_rounds: int = 1000, *, after_commit: bool = True) -> list[str]:
    """Run dispatched jobs until none are left; returns the job types in the order they ran.
    What each job's commit schedules (a map's fan-out) runs after it, as in a worker: the
    test's own transaction never commits (`after_commit=False`: as if the process died then)."""
    ran: list[str] = []
    for _ in range(max_rounds):
        envelopes = pending_dispatches()
        if not envelopes:
            return ran
        for envelope in envelopes:
            if after_commit:
                with TestCase.captureOnCommitCallbacks(execute=True):
                    execute(envelope, worker="test")
            else:
                execute(envelope, worker="test")
            ran.append(Job.objects.get(id=envelope.job_id).payload.get("name", envelope.type))
    raise AssertionError("workflow did not settle")


def task(id: str, *deps: str, type: str = "demo.echo", **extra: Any) -> dict[str, Any]:
    return {"id": id, "type": type, "payload": {"name": id}, "depends_on": list(deps), **extra}


def undo(name: str, **extra: Any) -> dict[str, Any]:
    return {"type": "demo.echo", "payload": {"name": f"undo-{name}"}, **extra}


# The dispatch pipeline's fixtures, for the end-to-end test through the real roles.
from tests.orchestration.conftest import queue, stack, topics  # noqa: E402, F401
