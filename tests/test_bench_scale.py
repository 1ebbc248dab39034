"""`bench scale` must not race the stack it measures: its fill is dated inside every
retention window, so the stack's retention archives none of it while the fill runs."""

from __future__ import annotations

from datetime import timedelta

import pytest

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
