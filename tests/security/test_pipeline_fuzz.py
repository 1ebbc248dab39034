"""Fuzzing the whole pipeline, not only the API (issue 16): generated payloads, results,
errors and log records (up to and past the limits, NUL, lone surrogates, deep nesting, huge
numbers) go through the real roles (relay, bridge, worker, scheduler, log sink as processes)
and every example checks that each hostile job ends in a terminal state, that another
user's job submitted after them starts within SENTINEL_START_SECONDS (two tenants: the
hostile one's jobs may take its share of the two workers, never the other's latency), and
that no role died.

`make test` runs a fixed-seed subset; `make fuzz` explores (FUZZ_EXAMPLES)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from jobs.models import TERMINAL_STATUSES, Job, JobStatus
from tests.orchestration.conftest import Stack, log_shipping_env, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.slow, pytest.mark.fuzz]

# Each example runs jobs through every role (a few seconds): a quarter of `make fuzz`'s count.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) // 4
ROLES = ("log-sink", "relay", "bridge", "worker", "scheduler")
SENTINEL_START_SECONDS = 2.0  # submit → start of the other tenant's job; idle, about 20 ms

# Text with the characters that broke things: NUL and lone surrogates as tokens the handler
# expands (an API request cannot carry them), plus odd but legal Unicode.
FRAGMENTS = st.sampled_from(["{NUL}", "{SURR}", "é", "\u2028", "💥", "'", '"', "\\", "%s", "{}", "x", " "])
TEXT = st.lists(FRAGMENTS, min_size=1, max_size=8).map("".join)
HOSTILE_JOB = st.fixed_dictionaries(
    {
        "op": st.sampled_from(["echo", "fail", "permanent", "exit", "log"]),
        "text": TEXT,
        # up to a few MB: past the result, error and log-message limits, and Kafka's message size
        "repeat": st.sampled_from([1, 100, 20_000, 400_000]),
        "depth": st.sampled_from([0, 3, 100, 300]),  # past orjson's nesting limit of 254
        "big": st.sampled_from([0, 2**63 - 1, 2**64]),  # past 64 bits: not JSON to orjson
    }
)
# Payloads the API itself must refuse cleanly (400/413) or accept, never a 500.
JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False),
    st.text(max_size=20),
)  # fmt: skip
API_PAYLOAD = st.recursive(
    JSON_LEAF,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=12,
)


@pytest.fixture
def fuzz_stack(topics, log_topics, ch_table, queue, tmp_path, transactional_db):
    stack = Stack(
        topics, queue, tmp_path,
        **log_shipping_env(log_topics, ch_table),
        JOB_HANDLER_MODULES="tests.security.fuzz_handlers",
        SCHEDULER_TICK_SECONDS="0.2",
        # Failing on purpose would open fuzz.hostile's circuit breaker and hold the rest of
        # its jobs for the open period: the breaker is tested on its own.
        BREAKER_ENABLED="false",
    )  # fmt: skip
    for role in ROLES:
        stack.start(role)
    stack.start("worker", "worker2")  # two slots: the hostile owner's long jobs may hold one
    # Ready before the first example: groups joined, both workers counted (a first job's
    # latency would otherwise be the bridge's group join, not anything a tenant did).
    from jobs.services import JobSpec, job_submit_bulk
    from orchestration import fair_slots
    from tests.factories import UserFactory

    warm = job_submit_bulk(owner_id=UserFactory().pk, specs=[JobSpec(type="demo.noop", queue=queue)] * 2)
    wait_for(lambda: Job.objects.filter(id__in=[w.job.id for w in warm], status=JobStatus.SUCCEEDED).count() == 2,
             timeout=90, message="the stack ready")  # fmt: skip
    wait_for(lambda: fair_slots.taken_counts(queue)[0] == 2, timeout=30, message="both workers counted")
    yield stack
    stack.close()


def _terminal(ids: list[str]) -> bool:
    return Job.objects.filter(id__in=ids, status__in=TERMINAL_STATUSES).count() == len(ids)


@pytest.mark.timeout(1800)
def test_hostile_output_ends_terminal_and_everyone_else_keeps_flowing(fuzz_stack, api, other_api, queue):
    import tests.security.fuzz_handlers  # noqa: F401 (the web side must know the type too)

    fast = {"initial": 0.1, "factor": 1.0, "max": 0.1, "jitter": 0.0}

    @hsettings(
        max_examples=EXAMPLES or 6,
        derandomize=not EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(jobs=st.lists(HOSTILE_JOB, min_size=1, max_size=4), raw=API_PAYLOAD)
    def example(jobs: list[dict[str, Any]], raw: Any) -> None:
        specs = [{"type": "fuzz.hostile", "payload": p, "queue": queue, "max_attempts": 2, "backoff": fast,
                  "timeout_seconds": 30} for p in jobs]  # fmt: skip
        created = api.post("/api/v1/jobs/bulk/", {"jobs": specs}, format="json")
        assert created.status_code == 201, created.content[:500]
        ids = [j["id"] for j in created.json()["jobs"]]
        odd = api.post("/api/v1/jobs/", {"type": "demo.echo", "payload": raw, "queue": queue}, format="json")
        assert odd.status_code in (201, 400, 413), (odd.status_code, odd.content[:500])
        if odd.status_code == 201:
            ids.append(odd.json()["id"])
        # Another user's job, submitted right after: it must not wait on the hostile ones.
        sentinel = other_api.post("/api/v1/jobs/", {"type": "demo.log", "payload": {"lines": 1}, "queue": queue},
                                  format="json").json()["id"]  # fmt: skip
        started = time.monotonic()
        wait_for(lambda: Job.objects.get(id=sentinel).status == JobStatus.SUCCEEDED, timeout=60,
                 message="another user's job succeeded")  # fmt: skip
        sentinel_seconds = time.monotonic() - started
        wait_for(lambda: _terminal(ids), timeout=90, message="every hostile job reached a terminal state")
        assert sentinel_seconds < 30
        waited = Job.objects.get(id=sentinel)
        start_wait = (waited.started_at - waited.created_at).total_seconds()
        assert start_wait < SENTINEL_START_SECONDS, f"the other tenant's job waited {start_wait:.2f} s to start"
        for role, proc in fuzz_stack.procs.items():
            assert proc.poll() is None, f"{role} died:\n{fuzz_stack.logs()}"
        # The sentinel's log line still reaches ClickHouse after the hostile records.
        wait_for(
            lambda: any("demo.log line" in r["message"] for r in
                        other_api.get(f"/api/v1/jobs/{sentinel}/logs/").json()["results"]),
            timeout=60, message="the sentinel's log line searchable",
        )  # fmt: skip

    try:
        example()
    except BaseException:
        print(fuzz_stack.logs())
        raise
