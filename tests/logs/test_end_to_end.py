"""Every role as a real process: a job's log lines go worker → Kafka `logs` → log sink →
ClickHouse and come back from `jobs/{id}/logs/` within seconds."""

from __future__ import annotations

import time

import pytest

from jobs.models import Job, JobStatus
from tests.orchestration.conftest import Stack, log_shipping_env, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.slow]


def test_a_jobs_log_lines_are_searchable_within_seconds(
    api, topics, log_topics, ch_table, queue, tmp_path, transactional_db
):
    stack = Stack(topics, queue, tmp_path, **log_shipping_env(log_topics, ch_table))
    try:
        for role in ("log-sink", "relay", "bridge", "worker"):
            stack.start(role)
        created = api.post(
            "/api/v1/jobs/", {"type": "demo.log", "payload": {"lines": 5}, "queue": queue}, format="json"
        )
        assert created.status_code == 201, created.content
        job_id = created.json()["id"]
        wait_for(
            lambda: Job.objects.get(id=job_id).status == JobStatus.SUCCEEDED, timeout=90, message="the job succeeded"
        )
        succeeded = time.monotonic()

        def lines() -> list[str]:
            body = api.get(f"/api/v1/jobs/{job_id}/logs/?q=demo.log+line&order=asc").json()
            return [r["message"] for r in body["results"]]

        wait_for(lambda: len(lines()) == 5, timeout=30, interval=0.2, message="5 log lines searchable")
        assert time.monotonic() - succeeded < 5, "log lines took more than 5 s to become searchable"
        assert lines() == [f"demo.log line {i} of 5" for i in range(1, 6)]
        record = api.get(f"/api/v1/jobs/{job_id}/logs/?q=demo.log+line+1+").json()["results"][0]
        assert record["service"] == "worker"
        assert record["attempt"] == 1
        assert record["extra"] == {"line": 1}
        assert (record["trace_id"], record["span_id"]) == ("", "")  # tracing is off: no trace, nothing breaks
        # The worker's own record of the outcome is tagged with the job too. It is written after
        # the outcome commits, so it may reach ClickHouse a moment after the handler's lines.
        wait_for(
            lambda: api.get(f"/api/v1/jobs/{job_id}/logs/?q=job.finished").json()["results"],
            timeout=10, interval=0.2, message="the outcome's own record searchable",
        )  # fmt: skip
    except AssertionError:
        print(stack.logs())
        raise
    finally:
        stack.close()
