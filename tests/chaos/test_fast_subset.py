"""The fast subset of `make chaos` (a worker SIGKILLed mid-job, the bridge SIGKILLed, poison
messages in `jobs` and `logs`, outbox rows Kafka refuses, a queue nobody consumes filled by
another user), run as `make chaos` runs it: private engines, every role as a process, the
invariants checked over every job. The full set is `make chaos`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow
FAULTS = ("worker-kill", "bridge-kill", "poison", "poison-outbox", "queue-parked")


@pytest.mark.timeout(900)
def test_fast_chaos_subset_loses_nothing_and_runs_nothing_twice():
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_URL")}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "devtools.chaos", "--faults", ",".join(FAULTS), "--rate", "10"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=880,
    )  # fmt: skip
    print(result.stdout[-4000:], result.stderr[-4000:])
    assert result.returncode == 0, "chaos subset failed: see the table above"
    table = result.stdout[result.stdout.index("fault ") :]
    for fault in FAULTS:
        line = next(line for line in table.splitlines() if line.startswith(fault))
        assert line.rstrip().endswith("ok"), line
