"""POST /api/v1/logs/: validated records go through Kafka and the sink into ClickHouse."""

from __future__ import annotations

import pytest

from tests.factories import submit_job
from tests.logs.conftest import RunningSink
from tests.orchestration.conftest import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]


def test_ingested_records_are_stored_and_tagged_with_the_callers_job(api, user, log_topics, ch_table):
    job = submit_job(user)
    records = [
        {"message": "from billing", "level": "warning", "service": "billing", "job_id": str(job.id), "attempt": 1,
         "extra": {"invoice": 12}, "trace_id": "4BF92F3577B34DA6A3CE929D0E0E4736", "span_id": "00f067aa0ba902b7"},
        {"message": "no job", "level": "INFO", "service": "billing", "timestamp": "2026-11-29T10:00:00.123456Z"},
    ]  # fmt: skip
    response = api.post("/api/v1/logs/", {"records": records}, format="json")
    assert response.status_code == 202, response.content
    assert response.json() == {"accepted": 2}
    sink = RunningSink()
    try:
        wait_for(lambda: sink.sink.stats.ingested == 2, timeout=60, message="records stored")
    finally:
        sink.close()
    (stored,) = api.get(f"/api/v1/jobs/{job.id}/logs/").json()["results"]
    assert stored["message"] == "from billing"
    assert stored["level"] == "WARNING"
    assert stored["extra"] == {"invoice": 12}
    assert (stored["trace_id"], stored["span_id"]) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    # Stamped with the job's owner, so it shows in the owner's own searches too.
    assert [r["message"] for r in api.get("/api/v1/logs/").json()["results"]] == ["from billing"]


@pytest.mark.parametrize(
    ("records", "where"),
    [
        ([{"level": "INFO", "service": "s"}], ["records", "0", "message"]),
        ([{"message": "m", "level": "LOUD", "service": "s"}], ["records", "0", "level"]),
        ([{"message": "m", "level": "INFO"}], ["records", "0", "service"]),
        ([{"message": "m", "level": "INFO", "service": "s", "timestamp": "yesterday"}], ["records", "0", "timestamp"]),
        ([{"message": "m", "level": "INFO", "service": "s", "extra": [1]}], ["records", "0", "extra"]),
        ([{"message": "m", "level": "INFO", "service": "s", "trace_id": "x" * 32}], ["records", "0", "trace_id"]),
        ([{"message": "m", "level": "INFO", "service": "s", "span_id": "abc"}], ["records", "0", "span_id"]),
        ([], ["records"]),
        ([{"message": "m", "level": "INFO", "service": "s"}] * 1001, ["records"]),
    ],
)
def test_bad_records_are_400_naming_the_record_and_field(api, log_topics, records, where):
    response = api.post("/api/v1/logs/", {"records": records}, format="json")
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    for key in where:
        errors = errors[key if isinstance(errors, dict) else int(key)]
    assert errors


def test_records_may_not_name_another_users_job(api, other_user, log_topics):
    theirs = submit_job(other_user)
    records = [
        {"message": "ok", "level": "INFO", "service": "s"},
        {"message": "spoof", "level": "INFO", "service": "s", "job_id": str(theirs.id)},
    ]
    response = api.post("/api/v1/logs/", {"records": records}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"]["records"]["1"]["job_id"] == [f"job {theirs.id} not found"]
