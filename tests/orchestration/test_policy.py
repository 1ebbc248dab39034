"""The retry policy: pure functions, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestration.policy import DeadLetter, Retry, backoff_delay, decide

CONTRACT = {"initial": 2.0, "factor": 2.0, "max": 3600, "jitter": 0.2}
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("attempts", "backoff", "expected"),
    [
        (1, CONTRACT, 2.0),  # initial · factor^0
        (2, CONTRACT, 4.0),
        (3, CONTRACT, 8.0),
        (12, CONTRACT, 3600.0),  # 4096 capped at max
        (1000, CONTRACT, 3600.0),  # the exponent is clamped, never overflows
        (3, {"initial": 0.5, "factor": 3.0, "max": 100, "jitter": 0}, 4.5),
        (5, {"initial": 1.0, "factor": 1.0, "max": 100, "jitter": 0}, 1.0),  # constant
    ],
)
def test_delay_without_jitter(attempts, backoff, expected):
    assert backoff_delay(attempts, {**backoff, "jitter": 0}) == pytest.approx(expected)


@pytest.mark.parametrize(("rand", "factor"), [(0.0, 0.8), (0.5, 1.0), (1.0, 1.2)])
def test_jitter_spans_plus_minus_its_share(rand, factor):
    assert backoff_delay(3, CONTRACT, rand=lambda: rand) == pytest.approx(8.0 * factor)


def test_jitter_stays_within_bounds_over_many_draws():
    delays = [backoff_delay(2, CONTRACT) for _ in range(2000)]
    assert min(delays) >= 4.0 * 0.8
    assert max(delays) <= 4.0 * 1.2
    assert max(delays) - min(delays) > 1.0  # it really varies


@pytest.mark.parametrize(
    ("attempts", "max_attempts", "permanent", "kind"),
    [
        (1, 4, False, Retry),
        (3, 4, False, Retry),
        (4, 4, False, DeadLetter),
        (1, 1, False, DeadLetter),
        (1, 4, True, DeadLetter),
    ],
)
def test_decide(attempts, max_attempts, permanent, kind):
    decision = decide(attempts=attempts, max_attempts=max_attempts, backoff=CONTRACT, now=NOW, permanent=permanent)
    assert isinstance(decision, kind)
    if isinstance(decision, Retry):
        assert decision.at == NOW + timedelta(seconds=decision.delay_seconds)


def test_dead_letter_says_why():
    assert decide(attempts=4, max_attempts=4, backoff=CONTRACT, now=NOW).reason == "out of attempts (4/4)"
    assert decide(attempts=1, max_attempts=4, backoff=CONTRACT, now=NOW, permanent=True).reason == "permanent error"
