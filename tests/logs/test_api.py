"""The logs API against real ClickHouse: every filter, paging, the ownership rule, stats,
`log_contains` on the job list and the last lines of failed attempts in a job's detail."""

from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.utils import timezone

from jobs import transitions
from jobs.models import AttemptStatus
from tests.factories import submit_job
from tests.logs.conftest import record, store_records

pytestmark = pytest.mark.clickhouse


@pytest.fixture
def mine(user, ch_table):
    """A job of `user` with five records, and one of `other_user` with two."""
    return submit_job(user)


def messages(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [r["message"] for r in response.json()["results"]]


def test_a_jobs_logs_come_back_newest_first_with_every_field(api, user, mine):
    t0 = timezone.now() - timedelta(minutes=5)
    store_records(
        *(
            record(f"line {i}", when=t0 + timedelta(seconds=i), job_id=mine.id, attempt=1, owner_id=user.pk,
                   type="demo.noop", queue="default", extra={"i": i})
            for i in range(5)
        )
    )  # fmt: skip
    body = api.get(f"/api/v1/jobs/{mine.id}/logs/").json()
    assert [r["message"] for r in body["results"]] == [f"line {i}" for i in reversed(range(5))]
    first = body["results"][0]
    assert first["job_id"] == str(mine.id)
    assert first["attempt"] == 1
    assert first["extra"] == {"i": 4}
    assert first["level"] == "INFO"
    assert first["service"] == "worker"
    assert first["host"] == "test-host"
    assert first["workflow_id"] is None
    assert first["exception"] is None
    assert first["timestamp"].startswith((t0 + timedelta(seconds=4)).strftime("%Y-%m-%dT%H:%M:%S."))
    assert body["next"] is None
    asc = api.get(f"/api/v1/jobs/{mine.id}/logs/?order=asc").json()
    assert [r["message"] for r in asc["results"]] == [f"line {i}" for i in range(5)]


def test_paging_with_a_cursor_visits_every_record_once(api, user, mine):
    t0 = timezone.now() - timedelta(minutes=5)
    # Pairs share a timestamp: the cursor must break ties by record id.
    store_records(*(record(f"r{i}", when=t0 + timedelta(seconds=i // 2), job_id=mine.id) for i in range(9)))
    seen: list[str] = []
    url = f"/api/v1/jobs/{mine.id}/logs/?limit=2"
    pages = 0
    while url:
        body = api.get(url).json()
        seen += [r["message"] for r in body["results"]]
        url = body["next"]
        pages += 1
    assert sorted(seen) == sorted(f"r{i}" for i in range(9))
    assert len(seen) == 9
    assert pages == 5


def test_every_filter(staff_api, ch_table):
    job, wf = uuid.uuid4(), uuid.uuid4()
    day = (timezone.now() - timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    at = lambda hour: day + timedelta(hours=hour)  # noqa: E731
    store_records(
        record("debug noise", level="DEBUG", when=at(10)),
        record("Connection TIMEOUT to db", level="ERROR", service="worker", job_id=job, when=at(11)),
        record("retrying after timeout", level="WARNING", service="bridge", when=at(12)),
        record("workflow step", level="INFO", service="scheduler", workflow_id=wf, when=at(13)),
        record("100% done_ok", level="CRITICAL", service="relay", when=at(14)),
    )

    def search(query: str) -> list[str]:
        return sorted(messages(staff_api.get(f"/api/v1/logs/?{query}")))

    assert search(f"job_id={job}") == ["Connection TIMEOUT to db"]
    assert search(f"workflow_id={wf}") == ["workflow step"]
    assert search("level=warning") == ["100% done_ok", "Connection TIMEOUT to db", "retrying after timeout"]
    assert search("level=ERROR") == ["100% done_ok", "Connection TIMEOUT to db"]
    assert search("service=bridge") == ["retrying after timeout"]
    assert search("q=timeout") == ["Connection TIMEOUT to db", "retrying after timeout"]
    # LIKE wildcards in the text are literal characters
    assert search("q=%25") == ["100% done_ok"]
    assert search("q=d_ne") == []  # `_` would match the o of "done" as a wildcard
    assert search("q=done_") == ["100% done_ok"]
    window = urlencode({"since": at(11).isoformat(), "until": at(13).isoformat()})
    assert search(window) == [
        "Connection TIMEOUT to db",
        "retrying after timeout",
    ]
    assert search("q=timeout&level=ERROR&service=worker") == ["Connection TIMEOUT to db"]
    assert len(messages(staff_api.get("/api/v1/logs/?limit=2"))) == 2


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("level=LOUD", "level"),
        ("job_id=nope", "job_id"),
        ("since=yesterday", "since"),
        ("since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", "until"),
        ("cursor=%21%21", "cursor"),
        ("q=" + "x" * 201, "q"),
        ("trace_id=abc", "trace_id"),
        ("trace_id=" + "g" * 32, "trace_id"),
    ],
)
def test_bad_search_parameters_are_400_naming_the_field(staff_api, ch_table, query, field):
    response = staff_api.get(f"/api/v1/logs/?{query}")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]


def test_the_lines_of_one_trace(api, staff_api, user, mine):
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    store_records(
        record("in the trace", job_id=mine.id, owner_id=user.pk, trace_id=trace_id, span_id=span_id),
        record("another trace", job_id=mine.id, owner_id=user.pk, trace_id="1" * 32, span_id="2" * 16),
        record("no trace", job_id=mine.id, owner_id=user.pk),
    )
    (found,) = api.get(f"/api/v1/logs/?trace_id={trace_id}").json()["results"]
    assert (found["message"], found["trace_id"], found["span_id"]) == ("in the trace", trace_id, span_id)
    assert messages(staff_api.get(f"/api/v1/logs/?trace_id={trace_id.upper()}")) == ["in the trace"]
    untraced = api.get(f"/api/v1/jobs/{mine.id}/logs/?q=no+trace").json()["results"]
    assert (untraced[0]["trace_id"], untraced[0]["span_id"]) == ("", "")
    assert messages(staff_api.get(f"/api/v1/logs/?trace_id={'3' * 32}")) == []


def test_users_see_only_the_logs_of_their_own_jobs(api, other_api, staff_api, user, other_user, ch_table):
    theirs = submit_job(other_user)
    mine = submit_job(user)
    store_records(
        record("mine", job_id=mine.id, owner_id=user.pk),
        record("theirs", job_id=theirs.id, owner_id=other_user.pk),
        record("no job: staff only"),
    )
    assert messages(api.get("/api/v1/logs/")) == ["mine"]
    assert messages(other_api.get("/api/v1/logs/")) == ["theirs"]
    assert sorted(messages(staff_api.get("/api/v1/logs/"))) == ["mine", "no job: staff only", "theirs"]
    # Another user's job: 404 on its logs, nothing through the search filter.
    assert api.get(f"/api/v1/jobs/{theirs.id}/logs/").status_code == 404
    assert messages(api.get(f"/api/v1/logs/?job_id={theirs.id}")) == []
    assert messages(staff_api.get(f"/api/v1/jobs/{theirs.id}/logs/")) == ["theirs"]
    assert api.get(f"/api/v1/logs/stats/?job_id={theirs.id}").json()["by_service"] == {}


def test_a_jobs_logs_include_lines_written_about_it_outside_an_attempt(api, user, ch_table):
    job = submit_job(user)
    store_records(record("job.claim_lost", job_id=job.id))  # no owner stamped: written by the worker before a claim
    assert messages(api.get(f"/api/v1/jobs/{job.id}/logs/")) == ["job.claim_lost"]


def test_every_endpoint_needs_a_token(client, ch_table):
    for url in ("/api/v1/logs/", "/api/v1/logs/stats/", f"/api/v1/jobs/{uuid.uuid4()}/logs/"):
        assert client.get(url).status_code == 401
    assert client.post("/api/v1/logs/", {"records": []}, content_type="application/json").status_code == 401


def test_stats_count_by_level_and_service_over_a_window(api, staff_api, user, ch_table):
    job = submit_job(user)
    now = timezone.now()
    store_records(
        record("a", level="ERROR", service="worker", job_id=job.id, owner_id=user.pk, when=now - timedelta(minutes=1)),
        record("b", level="INFO", service="worker", job_id=job.id, owner_id=user.pk, when=now - timedelta(minutes=2)),
        record("c", level="INFO", service="relay", when=now - timedelta(minutes=3)),
        record("old", level="INFO", service="relay", when=now - timedelta(days=3)),
    )
    body = staff_api.get("/api/v1/logs/stats/").json()
    assert body["by_level"] == {"DEBUG": 0, "INFO": 2, "WARNING": 0, "ERROR": 1, "CRITICAL": 0}
    assert body["by_service"] == {"relay": 1, "worker": 2}
    wider = staff_api.get("/api/v1/logs/stats/", {"since": (now - timedelta(days=4)).isoformat()}).json()
    assert wider["by_service"] == {"relay": 2, "worker": 2}
    assert api.get("/api/v1/logs/stats/").json()["by_service"] == {"worker": 2}


def test_job_list_filters_by_text_in_logs_combined_with_other_filters(api, user, other_user, ch_table):
    timed_out = submit_job(user, type="demo.fail")
    other_type = submit_job(user, type="demo.noop")
    quiet = submit_job(user, type="demo.fail")
    theirs = submit_job(other_user, type="demo.fail")
    store_records(
        record("upstream Timeout after 30s", job_id=timed_out.id, owner_id=user.pk),
        record("upstream timeout after 30s", job_id=other_type.id, owner_id=user.pk),
        record("all good", job_id=quiet.id, owner_id=user.pk),
        record("timeout", job_id=theirs.id, owner_id=other_user.pk),
    )
    ids = lambda r: sorted(j["id"] for j in r.json()["results"])  # noqa: E731
    assert ids(api.get("/api/v1/jobs/?log_contains=timeout")) == sorted([str(timed_out.id), str(other_type.id)])
    assert ids(api.get("/api/v1/jobs/?log_contains=TIMEOUT&type=demo.fail")) == [str(timed_out.id)]
    assert ids(api.get("/api/v1/jobs/?log_contains=nothing-like-this")) == []
    since = (timezone.now() + timedelta(hours=1)).isoformat()
    assert ids(api.get("/api/v1/jobs/", {"log_contains": "timeout", "created_after": since})) == []


def test_log_contains_matching_too_many_jobs_asks_for_a_narrower_filter(api, user, ch_table, settings):
    settings.JOBS_LOG_CONTAINS_MAX = 2
    jobs = [submit_job(user) for _ in range(3)]
    store_records(*(record("same words", job_id=j.id, owner_id=user.pk) for j in jobs))
    response = api.get("/api/v1/jobs/?log_contains=same")
    assert response.status_code == 400
    assert "more than 2 jobs" in response.json()["errors"]["log_contains"][0]


def test_failed_attempts_show_their_last_log_lines(api, user, ch_table, settings):
    settings.JOB_FAILED_LOG_LINES = 3
    job = submit_job(user, type="demo.fail", max_attempts=3)
    claim = transitions.mark_running(job.id, dispatch_token=job.dispatch_token, worker="w", lease_seconds=30)
    assert claim is not None
    t0 = timezone.now() - timedelta(minutes=1)
    store_records(
        *(record(f"attempt 1 line {i}", job_id=job.id, attempt=1, owner_id=user.pk, when=t0 + timedelta(seconds=i))
          for i in range(5)),
        record("attempt 2 line", job_id=job.id, attempt=2, owner_id=user.pk, when=t0 + timedelta(seconds=10)),
    )  # fmt: skip
    transitions.schedule_retry(
        job.id,
        attempt=1,
        next_retry_at=timezone.now(),
        error="DemoFailure: boom",
        tb="",
        attempt_status=AttemptStatus.FAILED,
    )
    body = api.get(f"/api/v1/jobs/{job.id}/").json()
    (first,) = body["history"]
    assert first["status"] == "FAILED"
    assert [line["message"] for line in first["last_log_lines"]] == [f"attempt 1 line {i}" for i in (2, 3, 4)]


def test_the_log_store_being_away_is_503_for_searches_but_not_for_a_job(api, user, ch_table, settings):
    job = submit_job(user)
    settings.CLICKHOUSE_URL = "http://default:@127.0.0.1:9/default"  # nothing listens there
    settings.CLICKHOUSE_CONNECT_TIMEOUT = 1
    response = api.get("/api/v1/logs/")
    assert response.status_code == 503
    assert response.json()["code"] == "log_store_unavailable"
    assert api.get(f"/api/v1/jobs/{job.id}/logs/").status_code == 503
    assert api.get("/api/v1/jobs/?log_contains=x").status_code == 503
    for dry_run in (True, False):  # a bulk action by log text: the same filter, the same answer
        body = {"action": "cancel", "filter": {"log_contains": "x"}, "dry_run": dry_run}
        assert api.post("/api/v1/jobs/bulk-actions/", body, format="json").status_code == 503
    assert api.get(f"/api/v1/jobs/{job.id}/").status_code == 200


def test_a_newest_first_search_spanning_days_pages_through_every_record_in_order(staff_api, ch_table):
    """Searches read in growing time windows back from now; pages must still be exact."""
    now = timezone.now()
    ages = [timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=3), timedelta(hours=12),
            timedelta(days=2), timedelta(days=6), timedelta(days=20)]  # fmt: skip
    store_records(*(record(f"match {i}", when=now - age) for i, age in enumerate(ages)), record("other"))
    seen, url = [], "/api/v1/logs/?q=match&limit=2"
    while url:
        body = staff_api.get(url).json()
        seen += [r["message"] for r in body["results"]]
        url = body["next"]
    assert seen == [f"match {i}" for i in range(len(ages))]
    since = (now - timedelta(days=3)).isoformat()
    assert messages(staff_api.get("/api/v1/logs/", {"q": "match", "since": since, "limit": 10})) == [
        f"match {i}" for i in range(5)
    ]
