"""The jobs REST API against real PostgreSQL and Redis: every contract path and error code."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.utils import timezone

from jobs import schedules
from jobs.models import Job, JobStatus, Outbox
from jobs.transitions import mark_running
from tests.conftest import client_for
from tests.factories import UserFactory, submit_job

pytestmark = pytest.mark.django_db

JOBS = "/api/v1/jobs/"


def job_url(job_id, action: str = "") -> str:
    return f"{JOBS}{job_id}/" + (f"{action}/" if action else "")


# --- authentication -------------------------------------------------------------------------

ENDPOINTS = [
    ("get", JOBS),
    ("post", JOBS),
    ("post", JOBS + "bulk/"),
    ("get", JOBS + "stats/"),
    ("get", job_url(uuid.uuid4())),
    ("post", job_url(uuid.uuid4(), "cancel")),
    ("post", job_url(uuid.uuid4(), "retry")),
]


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_every_endpoint_needs_a_token(client, method, url):
    response = getattr(client, method)(url, content_type="application/json")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_a_bad_token_is_401(client, method, url):
    response = getattr(client, method)(url, HTTP_AUTHORIZATION="Token not-a-real-token")
    assert response.status_code == 401


def test_token_endpoint(user, client):
    response = client.post(
        "/api/v1/auth/token/",
        {"username": user.username, "password": "correct horse battery staple"},
        content_type="application/json",
    )
    assert response.status_code == 200
    token = response.json()["token"]
    assert client.get(JOBS, HTTP_AUTHORIZATION=f"Token {token}").status_code == 200


def test_token_endpoint_wrong_password_is_400(user, client):
    response = client.post(
        "/api/v1/auth/token/", {"username": user.username, "password": "nope"}, content_type="application/json"
    )
    assert response.status_code == 400
    assert "detail" in response.json()


# --- submit ---------------------------------------------------------------------------------


def test_submit_creates_a_pending_job_with_its_outbox_row(api, user):
    response = api.post(JOBS, {"type": "demo.echo", "payload": {"x": 1}}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "PENDING"
    assert body["type"] == "demo.echo"
    assert body["payload"] == {"x": 1}
    assert body["queue"] == "default"
    assert body["priority"] == 5
    assert body["max_attempts"] == 4
    assert body["attempts"] == 0
    assert body["timeout_seconds"] == 300
    assert body["backoff"] == {"initial": 2.0, "factor": 2.0, "max": 3600, "jitter": 0.2}
    assert body["workflow"] is None
    job = Job.objects.get(id=body["id"])
    assert job.owner == user
    outbox = Outbox.objects.get(job=job)
    assert outbox.envelope["dispatch_token"] == str(job.dispatch_token)
    assert outbox.envelope["type"] == "demo.echo"
    assert outbox.envelope["v"] == 1


def test_submit_with_future_run_at_waits_without_outbox(api):
    run_at = (timezone.now() + timedelta(hours=1)).isoformat()
    response = api.post(JOBS, {"type": "demo.noop", "run_at": run_at}, format="json")
    assert response.status_code == 201
    assert response.json()["status"] == "PENDING"
    assert not Outbox.objects.filter(job_id=response.json()["id"]).exists()


def test_submit_partial_backoff_is_completed_with_defaults(api):
    response = api.post(JOBS, {"type": "demo.noop", "backoff": {"initial": 0.5}}, format="json")
    assert response.status_code == 201
    assert response.json()["backoff"] == {"initial": 0.5, "factor": 2.0, "max": 3600.0, "jitter": 0.2}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "no.such.handler"}, "type"),
        ({}, "type"),
        ({"type": "demo.noop", "payload": [1, 2]}, "payload"),
        ({"type": "demo.noop", "payload": "text"}, "payload"),
        ({"type": "demo.noop", "payload": {"s": "nul\u0000byte"}}, "payload"),
        ({"type": "demo.noop", "priority": 10}, "priority"),
        ({"type": "demo.noop", "priority": -1}, "priority"),
        ({"type": "demo.noop", "priority": "high"}, "priority"),
        ({"type": "demo.noop", "max_attempts": 0}, "max_attempts"),
        ({"type": "demo.noop", "max_attempts": 26}, "max_attempts"),
        ({"type": "demo.noop", "timeout_seconds": 0}, "timeout_seconds"),
        ({"type": "demo.noop", "run_at": "tomorrow-ish"}, "run_at"),
        ({"type": "demo.noop", "queue": "has space"}, "queue"),
        ({"type": "demo.noop", "backoff": {"jitter": 2}}, "backoff"),
        ({"type": "demo.noop", "backoff": "fast"}, "backoff"),
        ({"type": "demo.noop", "idempotency_key": "k" * 201}, "idempotency_key"),
    ],
)
def test_bad_input_is_400_with_field_errors(api, body, field):
    response = api.post(JOBS, body, format="json")
    assert response.status_code == 400, response.content
    data = response.json()
    assert data["code"] == "invalid"
    assert field in data["errors"]
    assert field in data["detail"]
    assert Job.objects.count() == 0


def test_unknown_type_message_names_the_type(api):
    response = api.post(JOBS, {"type": "billing.nope"}, format="json")
    assert "billing.nope" in response.json()["errors"]["type"][0]


def test_malformed_json_is_400(api):
    response = api.generic("POST", JOBS, b'{"type": "demo.noop",', content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


def test_a_json_array_body_is_400(api):
    response = api.post(JOBS, [1, 2], format="json")
    assert response.status_code == 400


def test_deeply_nested_json_is_400_not_500(api):
    body = b'{"type": "demo.noop", "payload": ' + b'{"a": ' * 2000 + b"1" + b"}" * 2000 + b"}"
    response = api.generic("POST", JOBS, body, content_type="application/json")
    assert response.status_code == 400


def test_oversized_body_is_413(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body = {"type": "demo.noop", "payload": {"blob": "x" * 20_000}}
    response = api.post(JOBS, body, format="json")
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"


# --- idempotency ----------------------------------------------------------------------------


def test_same_key_same_body_returns_the_first_job(api):
    body = {"type": "demo.echo", "payload": {"a": 1}, "idempotency_key": "order-1"}
    first = api.post(JOBS, body, format="json")
    second = api.post(JOBS, body, format="json")
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert Job.objects.count() == 1
    assert Outbox.objects.count() == 1


def test_same_key_other_body_is_409(api):
    api.post(JOBS, {"type": "demo.echo", "payload": {"a": 1}, "idempotency_key": "order-2"}, format="json")
    response = api.post(JOBS, {"type": "demo.echo", "payload": {"a": 2}, "idempotency_key": "order-2"}, format="json")
    assert response.status_code == 409
    assert "order-2" in response.json()["detail"]
    assert Job.objects.count() == 1


def test_idempotency_key_header(api):
    body = {"type": "demo.noop"}
    first = api.post(JOBS, body, format="json", HTTP_IDEMPOTENCY_KEY="hdr-1")
    second = api.post(JOBS, body, format="json", HTTP_IDEMPOTENCY_KEY="hdr-1")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["idempotency_key"] == "hdr-1"


def test_idempotency_keys_are_per_user(api, other_api):
    body = {"type": "demo.noop", "idempotency_key": "shared"}
    mine = api.post(JOBS, body, format="json")
    theirs = other_api.post(JOBS, body, format="json")
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]


def test_a_key_the_scheduler_uses_cannot_be_taken(api, user):
    # A schedule's slot is submitted as its owner with the key `schedule:<id>:<slot>`: a user
    # who took it first made that slot's submit conflict (and the scheduler crash-loop).
    schedule = schedules.schedule_save(
        owner_id=user.pk, data={"name": "every minute", "cron": "* * * * *", "type": "demo.noop"}
    )
    key = f"schedule:{schedule.id}:{schedule.next_fire_at.isoformat()}"
    responses = [
        api.post(JOBS, {"type": "demo.noop", "idempotency_key": key}, format="json"),
        api.post(JOBS, {"type": "demo.noop"}, format="json", HTTP_IDEMPOTENCY_KEY=key),
        api.post(JOBS + "bulk/", {"jobs": [{"type": "demo.noop"}, {"type": "demo.noop", "idempotency_key": key}]},
                 format="json"),
    ]  # fmt: skip
    for response in responses:
        assert response.status_code == 400, response.content[:300]
        assert "reserved for the platform" in response.json()["detail"]
    assert "idempotency_key" in responses[0].json()["errors"]
    assert "idempotency_key" in responses[2].json()["errors"]["jobs"]["1"]
    assert not Job.objects.exists()
    assert api.post(JOBS, {"type": "demo.noop", "idempotency_key": "my-schedule:1"}, format="json").status_code == 201


# --- bulk -----------------------------------------------------------------------------------


def test_bulk_creates_all_in_order(api):
    jobs = [{"type": "demo.echo", "payload": {"i": i}} for i in range(300)]
    response = api.post(JOBS + "bulk/", {"jobs": jobs}, format="json")
    assert response.status_code == 201
    created = response.json()["jobs"]
    assert [j["payload"]["i"] for j in created] == list(range(300))
    assert Job.objects.count() == 300
    assert Outbox.objects.count() == 300


def test_bulk_of_1000_in_a_handful_of_statements(api, django_assert_max_num_queries):
    jobs = [{"type": "demo.noop"} for _ in range(1000)]
    # auth token lookup + savepoint handling + 2 inserts: never one statement per job
    with django_assert_max_num_queries(8):
        response = api.post(JOBS + "bulk/", {"jobs": jobs}, format="json")
    assert response.status_code == 201
    assert len(response.json()["jobs"]) == 1000


def test_bulk_is_all_or_nothing_with_errors_by_position(api):
    jobs = [{"type": "demo.noop"}, {"type": "demo.noop"}, {"type": "nope"}, {"type": "demo.noop", "priority": 99}]
    response = api.post(JOBS + "bulk/", {"jobs": jobs}, format="json")
    assert response.status_code == 400
    errors = response.json()["errors"]["jobs"]
    assert set(errors) == {"2", "3"}  # by position; the valid ones have no entry
    assert "type" in errors["2"]
    assert "priority" in errors["3"]
    assert "jobs.2.type" in response.json()["detail"]
    assert Job.objects.count() == 0


@pytest.mark.parametrize("jobs", [[], "x", None])
def test_bulk_rejects_empty_or_non_list(api, jobs):
    response = api.post(JOBS + "bulk/", {"jobs": jobs}, format="json")
    assert response.status_code == 400
    assert "jobs" in response.json()["errors"]


def test_bulk_over_the_limit_is_400(api):
    response = api.post(JOBS + "bulk/", {"jobs": [{"type": "demo.noop"}] * 1001}, format="json")
    assert response.status_code == 400
    assert Job.objects.count() == 0


def test_bulk_duplicate_keys_in_one_request_are_400(api):
    jobs = [{"type": "demo.noop", "idempotency_key": "k"}, {"type": "demo.noop", "idempotency_key": "k"}]
    response = api.post(JOBS + "bulk/", {"jobs": jobs}, format="json")
    assert response.status_code == 400
    assert "idempotency_key" in response.json()["errors"]["jobs"]["1"]


def test_bulk_idempotent_replay_and_conflict(api):
    jobs = [{"type": "demo.noop", "idempotency_key": f"b{i}"} for i in range(3)]
    first = api.post(JOBS + "bulk/", {"jobs": jobs}, format="json").json()["jobs"]
    mixed = [*jobs, {"type": "demo.noop", "idempotency_key": "b-new"}]
    second = api.post(JOBS + "bulk/", {"jobs": mixed}, format="json")
    assert second.status_code == 201
    assert [j["id"] for j in second.json()["jobs"][:3]] == [j["id"] for j in first]
    assert Job.objects.count() == 4
    conflict = [{"type": "demo.echo", "idempotency_key": "b0"}, {"type": "demo.noop", "idempotency_key": "b-other"}]
    response = api.post(JOBS + "bulk/", {"jobs": conflict}, format="json")
    assert response.status_code == 409
    assert Job.objects.count() == 4  # b-other was rolled back with the conflict


# --- reading --------------------------------------------------------------------------------


def test_list_shows_only_own_jobs_and_staff_sees_all(api, user, other_user, staff_api):
    mine = submit_job(user)
    submit_job(other_user)
    ids = [j["id"] for j in api.get(JOBS).json()["results"]]
    assert ids == [str(mine.id)]
    assert len(staff_api.get(JOBS).json()["results"]) == 2


def test_list_is_newest_first_and_pages_with_a_cursor(api, user):
    jobs = [submit_job(user, payload={"i": i}) for i in range(7)]
    seen = []
    url = JOBS + "?page_size=3"
    while url:
        page = api.get(url).json()
        seen += [j["id"] for j in page["results"]]
        url = page["next"]
    assert seen == [str(j.id) for j in reversed(jobs)]


def test_cursor_paging_with_identical_timestamps(api):
    api.post(JOBS + "bulk/", {"jobs": [{"type": "demo.noop"}] * 25}, format="json")
    seen, url = [], JOBS + "?page_size=10"
    while url:
        page = api.get(url).json()
        seen += [j["id"] for j in page["results"]]
        url = page["next"]
    assert len(seen) == len(set(seen)) == 25


def test_list_default_page_is_50(api):
    api.post(JOBS + "bulk/", {"jobs": [{"type": "demo.noop"}] * 60}, format="json")
    page = api.get(JOBS).json()
    assert len(page["results"]) == 50
    assert page["next"]


def cursor_for(created_at, pk) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{pk}".encode()).decode()


def test_a_cursor_with_any_offset_python_accepts_pages_in_utc(api, user):
    # PostgreSQL rejects an offset beyond ±15:59 as a parameter: the cursor's time is
    # normalised to UTC like the time filters, so this is the same position as ever.
    jobs = [submit_job(user) for _ in range(3)]
    far_east = dt_timezone(timedelta(hours=23, minutes=59))
    cursor = cursor_for(jobs[2].created_at.astimezone(far_east), jobs[2].id)
    for url in (JOBS, "/api/v1/workflows/"):
        response = api.get(url, {"cursor": cursor})
        assert response.status_code == 200, (url, response.content[:200])
    assert [j["id"] for j in api.get(JOBS, {"cursor": cursor}).json()["results"]] == [str(jobs[1].id), str(jobs[0].id)]


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"])
def test_a_cursor_or_time_filter_out_of_range_in_utc_is_400(api, when):
    for url in (JOBS, "/api/v1/workflows/"):
        assert api.get(url, {"cursor": cursor_for(datetime.fromisoformat(when), uuid.uuid4())}).status_code == 400
        for param in ("created_after", "created_before"):
            response = api.get(url, {param: when})
            assert response.status_code == 400, (url, param, response.content[:200])
            assert param in response.json()["errors"]


@pytest.mark.parametrize("query", ["page_size=0", "page_size=1001", "page_size=x", "cursor=%%%", "cursor=YWJj"])
def test_bad_paging_is_400(api, query):
    assert api.get(f"{JOBS}?{query}").status_code == 400


def test_list_filters(api, user):
    a = submit_job(user, type="demo.echo", queue="q1")
    b = submit_job(user, type="demo.noop", queue="q2")
    api.post(job_url(b.id, "cancel"))

    def ids(query: str) -> set[str]:
        response = api.get(f"{JOBS}?{query}")
        assert response.status_code == 200, response.content
        return {j["id"] for j in response.json()["results"]}

    assert ids("type=demo.echo") == {str(a.id)}
    assert ids("queue=q2") == {str(b.id)}
    assert ids("status=CANCELLED") == {str(b.id)}
    assert ids("status=PENDING,CANCELLED") == {str(a.id), str(b.id)}
    future = (timezone.now() + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert ids(f"created_before={future}") == {str(a.id), str(b.id)}
    assert ids(f"created_after={future}") == set()


@pytest.mark.parametrize("query", ["status=NOPE", "created_after=yesterday"])
def test_bad_filters_are_400(api, query):
    response = api.get(f"{JOBS}?{query}")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"


def test_detail_with_history(api, user):
    job = submit_job(user, type="demo.echo")
    mark_running(job.id, dispatch_token=job.dispatch_token, worker="w1", lease_seconds=30)
    body = api.get(job_url(job.id)).json()
    assert body["status"] == "RUNNING"
    assert body["history"] == [
        {
            "attempt": 1,
            "status": "RUNNING",
            "started_at": body["history"][0]["started_at"],
            "finished_at": None,
            "error": "",
            "worker": "w1",
            "traceback": "",
        }
    ]


def test_other_users_job_is_404_everywhere(api, other_user, staff_api):
    theirs = submit_job(other_user)
    assert api.get(job_url(theirs.id)).status_code == 404
    assert api.post(job_url(theirs.id, "cancel")).status_code == 404
    assert api.post(job_url(theirs.id, "retry")).status_code == 404
    assert staff_api.get(job_url(theirs.id)).status_code == 200
    assert Job.objects.get(id=theirs.id).status == JobStatus.PENDING


def test_unknown_job_and_unknown_route_are_json_404(api):
    response = api.get(job_url(uuid.uuid4()))
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert api.get("/api/v1/jobs/not-a-uuid/").status_code == 404


# --- cancel and retry -----------------------------------------------------------------------


def test_cancel_a_pending_job(api, user):
    job = submit_job(user)
    response = api.post(job_url(job.id, "cancel"))
    assert response.status_code == 200
    assert response.json()["status"] == "CANCELLED"
    assert not Outbox.objects.filter(job=job).exists()


def test_cancel_twice_is_409_naming_the_state(api, user):
    job = submit_job(user)
    api.post(job_url(job.id, "cancel"))
    response = api.post(job_url(job.id, "cancel"))
    assert response.status_code == 409
    assert "CANCELLED" in response.json()["detail"]
    assert str(job.id) in response.json()["detail"]


def test_cancel_a_running_job_records_the_request(api, user):
    job = submit_job(user)
    mark_running(job.id, dispatch_token=job.dispatch_token, worker="w", lease_seconds=30)
    response = api.post(job_url(job.id, "cancel"))
    assert response.status_code == 200
    assert response.json()["status"] == "RUNNING"
    assert response.json()["cancel_requested_at"] is not None


def test_retry_only_from_dead_letter_or_cancelled(api, user):
    job = submit_job(user)
    response = api.post(job_url(job.id, "retry"))
    assert response.status_code == 409
    assert "PENDING" in response.json()["detail"]
    api.post(job_url(job.id, "cancel"))
    response = api.post(job_url(job.id, "retry"))
    assert response.status_code == 200
    assert response.json()["status"] == "PENDING"
    assert response.json()["attempts"] == 0
    assert Outbox.objects.filter(job=job).count() == 1


# --- stats, throttling, docs, health --------------------------------------------------------


def test_stats_counts_own_jobs(api, user, other_user, staff_api):
    submit_job(user)
    api.post(job_url(submit_job(user).id, "cancel"))
    submit_job(other_user)
    body = api.get(JOBS + "stats/").json()
    assert body["total"] == 2
    assert body["by_status"]["PENDING"] == 1
    assert body["by_status"]["CANCELLED"] == 1
    assert set(body["by_status"]) == set(JobStatus.values)
    assert "throughput" in body
    assert "latency_seconds" in body
    assert staff_api.get(JOBS + "stats/").json()["total"] == 3


def test_throttling_is_per_user_with_retry_after(settings, db):
    settings.API_RATE_LIMIT = "5/m"
    first, second = client_for(UserFactory()), client_for(UserFactory())
    codes = [first.get(JOBS).status_code for _ in range(7)]
    assert codes[:5] == [200] * 5
    assert codes[5:] == [429, 429]
    response = first.get(JOBS)
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 60
    assert response.json()["code"] == "throttled"
    assert second.get(JOBS).status_code == 200


def test_schema_and_docs(client):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/jobs/bulk/" in schema.content
    assert client.get("/api/docs/").status_code == 200


def test_health(client):
    assert client.get("/health/live").status_code == 200
    response = client.get("/health/ready")
    assert response.status_code == 200, response.content
    assert response.json()["checks"]["postgres"]["ok"]
    assert response.json()["checks"]["redis"]["ok"]


def test_health_ready_names_a_broken_engine(client, redis_down):
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["failed"] == ["redis"]


def test_health_ready_gives_up_on_a_silent_engine_within_its_check_timeout(client, settings):
    """A Redis that accepts connections and never answers (a hung host, a full backlog): the
    probe names it within CHECK_TIMEOUT, not the pool's REDIS_SOCKET_TIMEOUT (5 s)."""
    import socket
    import time

    from metrics.health import CHECK_TIMEOUT

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nobody ever reads or writes
    try:
        port = silent.getsockname()[1]
        settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"],
                                                          "LOCATION": f"redis://127.0.0.1:{port}/0"}}  # fmt: skip
        started = time.monotonic()
        response = client.get("/health/ready")
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert response.status_code == 503
    assert response.json()["failed"] == ["redis"]
    assert "Timeout" in response.json()["checks"]["redis"]["error"]
    assert elapsed < CHECK_TIMEOUT + 1.5, elapsed
