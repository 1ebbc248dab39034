"""Small helpers shared by the benchmarks: percentiles and progress lines."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, Protocol


class Out(Protocol):
    """Where a benchmark prints: a management command's stdout or any text stream."""

    def write(self, text: str) -> Any: ...


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of non-empty `values`."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


class Progress:
    """One status line every `every` seconds (a long benchmark should show it is alive)."""

    def __init__(self, label: str, total: int, every: float = 2.0) -> None:
        self.label, self.total, self.every = label, total, every
        self.started = self.last = time.monotonic()

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every:
            self.last = now
            rate = done / max(now - self.started, 1e-9)
            sys.stderr.write(
                f"  {self.label}: {done}/{self.total} ({done * 100 // max(self.total, 1)}%), {rate:,.0f}/s\n"
            )
            sys.stderr.flush()
