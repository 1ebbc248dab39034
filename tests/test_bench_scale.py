"""`bench scale` must not race the stack it measures: its fill is dated inside every
retention window, so the stack's retention archives none of it while the fill runs."""

from __future__ import annotations

import io
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from devtools.bench.scale import fill_span


@pytest.mark.parametrize(
    ("days", "by_queue", "span"),
    [
        (0, {}, timedelta(days=30)),  # retention off: a month of traffic
        (30, {}, timedelta(days=29)),  # the default: a day inside it (the fill once began past it)
        (90, {}, timedelta(days=30)),
        (30, {"emails": 7}, timedelta(days=6)),  # a queue's shorter retention counts too
        (1, {}, timedelta(hours=12)),
    ],
)
def test_the_fill_is_dated_inside_every_retention_window(settings, days, by_queue, span):
    settings.JOB_RETENTION_DAYS, settings.JOB_RETENTION_DAYS_BY_QUEUE = days, by_queue
    assert fill_span() == span


@pytest.mark.django_db(transaction=True)
def test_a_fill_raced_by_the_stacks_retention_keeps_every_row(archive_table, epoch, monkeypatch):
    """The running stack's scheduler archives past retention while the fill runs (here a
    retention scan in a loop on a thread of its own, its batch every call): it takes none of
    the fill, and the workflow tasks inserted at the end find every job they name."""
    from django.db.models import Count

    from devtools.bench import scale
    from jobs.models import Job
    from orchestration.scheduler import retention
    from tests.threads import in_thread
    from workflows.models import WorkflowTask

    monkeypatch.setattr(scale, "CHUNK", 500)  # four commits, with scans in between
    filling = threading.Event()
    outcome: dict[str, Any] = {}

    def scans() -> int:
        archived = 0
        while filling.is_set():
            archived += retention.RetentionScan()(epoch, timezone.now)
        return archived

    filling.set()
    thread = in_thread(outcome, "archived", scans)
    try:
        scale.fill(0, 2_000, 2_000, io.StringIO())
    finally:
        filling.clear()
        thread.join()
    owners = scale.tenants()
    try:
        assert outcome["archived"] == 0
        assert Job.objects.filter(owner_id__in=owners).count() == 2_000
        tasks = WorkflowTask.objects.filter(workflow__owner_id__in=owners)
        assert tasks.exists()
        assert not tasks.filter(job__isnull=True).exists()
        assert not tasks.values("workflow").annotate(n=Count("id")).filter(n=0).exists()
    finally:
        scale.delete_filled(io.StringIO())
