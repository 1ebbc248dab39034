"""Limits at the API boundary: input over a size limit, too deep, or holding text no store can
carry (NUL, lone surrogates) is a 400 or 413 that names the field and the limit, never a 500."""

from __future__ import annotations

import io
import re

import pytest

from config.rest import LimitedFormParser, ORJSONParser, PayloadTooLarge
from jobs.models import Job, Schedule
from workflows.models import Workflow

pytestmark = pytest.mark.django_db

JOBS, BULK, SCHEDULES, WORKFLOWS, LOGS = (
    "/api/v1/jobs/", "/api/v1/jobs/bulk/", "/api/v1/schedules/", "/api/v1/workflows/", "/api/v1/logs/",
)  # fmt: skip
SCHEDULE = {"name": "s", "cron": "* * * * *", "type": "demo.noop"}


def post_raw(api, url: str, body: str):
    """`body` is JSON text as a client sends it: escapes like \\u0000 or \\ud800 stay escapes."""
    return api.generic("POST", url, body.encode(), content_type="application/json")


def error_at(response, *path: str | int):
    errors = response.json()["errors"]
    for key in path:
        errors = errors[str(key)] if isinstance(errors, dict) else errors[key]
    return " ".join(errors) if isinstance(errors, list) else str(errors)


# --- payload size ---------------------------------------------------------------------------


def test_a_payload_over_job_payload_max_bytes_is_400_with_its_size_and_the_limit(api):
    accepted = api.post(JOBS, {"type": "demo.noop", "payload": {"blob": "x" * 1_100_000}}, format="json")
    assert accepted.status_code == 201
    response = api.post(JOBS, {"type": "demo.noop", "payload": {"blob": "x" * 2_500_000}}, format="json")
    assert response.status_code == 400
    assert error_at(response, "payload") == (
        "payload is 2,500,011 bytes as JSON; the limit is 2,097,152 (JOB_PAYLOAD_MAX_BYTES)."
    )
    assert Job.objects.count() == 1


def test_every_payload_has_the_same_limit(api, settings):
    settings.JOB_PAYLOAD_MAX_BYTES = 100
    big = {"blob": "x" * 200}
    response = api.post(BULK, {"jobs": [{"type": "demo.noop"}, {"type": "demo.noop", "payload": big}]}, format="json")
    assert "JOB_PAYLOAD_MAX_BYTES" in error_at(response, "jobs", 1, "payload")
    response = api.post(SCHEDULES, {**SCHEDULE, "payload": big}, format="json")
    assert "JOB_PAYLOAD_MAX_BYTES" in error_at(response, "payload")
    tasks = [{"id": "a", "type": "demo.noop", "payload": big}]
    assert "JOB_PAYLOAD_MAX_BYTES" in error_at(
        api.post(WORKFLOWS, {"tasks": tasks}, format="json"), "tasks", 0, "payload"
    )
    tasks = [{"id": "a", "type": "demo.noop", "compensation": {"type": "demo.noop", "payload": big}}]
    response = api.post(WORKFLOWS, {"tasks": tasks}, format="json")
    assert "JOB_PAYLOAD_MAX_BYTES" in error_at(response, "tasks", 0, "compensation", "payload")
    assert not Job.objects.exists()
    assert not Schedule.objects.exists()
    assert not Workflow.objects.exists()


# --- text no store can carry ------------------------------------------------------------------

TASK = '{"id": "a", "type": "demo.noop"}'
RECORD = '"level": "INFO", "service": "s"'
BAD_TEXT = [
    # (url, JSON body, where the error is, the path the message names)
    (JOBS, '{"type": "demo.noop", "payload": {"a": [1, {"b": "x\\u0000"}]}}', ["payload"], "payload.a[1].b"),
    (JOBS, '{"type": "demo.noop", "payload": {"a": {"k\\u0000": 1}}}', ["payload"], "payload.a"),
    (JOBS, '{"type": "demo.noop", "payload": {"a": ["\\ud800"]}}', ["payload"], "payload.a[0]"),
    (JOBS, '{"type": "demo.noop", "payload": {"\\udc00": 1}}', ["payload"], "payload"),
    (JOBS, '{"type": "demo.noop", "idempotency_key": "k\\u0000"}', ["idempotency_key"], "idempotency_key"),
    (JOBS, '{"type": "demo.noop", "idempotency_key": "k\\ud800"}', ["idempotency_key"], "idempotency_key"),
    (JOBS, '{"type": "demo.noop", "concurrency_key": "k\\udfff"}', ["concurrency_key"], "concurrency_key"),
    (BULK, '{"jobs": [{"type": "demo.noop"}, {"type": "demo.noop", "payload": {"x": "\\u0000"}}]}',
     ["jobs", 1, "payload"], "payload.x"),
    (BULK, '{"jobs": [{"type": "demo.noop", "payload": {"x": "\\ud800"}}]}', ["jobs"], "jobs[0].payload.x"),
    (SCHEDULES, '{"name": "s", "cron": "* * * * *", "type": "demo.noop", "payload": {"x": {"\\u0000": 1}}}',
     ["payload"], "payload.x"),
    (SCHEDULES, '{"name": "s\\ud800", "cron": "* * * * *", "type": "demo.noop"}', ["name"], "name"),
    (WORKFLOWS, '{"name": "w\\u0000", "tasks": [' + TASK + "]}", ["name"], "name"),
    (WORKFLOWS, '{"name": "w\\ud800", "tasks": [' + TASK + "]}", ["name"], "name"),
    (WORKFLOWS, '{"tasks": [{"id": "a", "type": "demo.noop", "payload": {"x": "\\u0000"}}]}',
     ["tasks", 0, "payload"], "payload.x"),
    (WORKFLOWS, '{"tasks": [{"id": "a", "type": "demo.noop", "compensation": {"type": "demo.noop", '
     '"payload": {"x": "\\ud800"}}}]}', ["tasks"], "tasks[0].compensation.payload.x"),
    (WORKFLOWS, '{"idempotency_key": "\\u0000", "tasks": [' + TASK + "]}", ["idempotency_key"], "idempotency_key"),
    (LOGS, '{"records": [{"message": "m\\u0000", ' + RECORD + "}]}", ["records", 0, "message"], "message"),
    (LOGS, '{"records": [{"message": "m\\ud800", ' + RECORD + "}]}", ["records"], "records[0].message"),
    (LOGS, '{"records": [{"message": "m", "extra": {"a": {"\\u0000": 1}}, ' + RECORD + "}]}",
     ["records", 0, "extra"], "extra.a"),
    (LOGS, '{"records": [{"message": "m", "extra": {"a": ["\\u0000"]}, ' + RECORD + "}]}",
     ["records", 0, "extra"], "extra.a[0]"),
]  # fmt: skip


@pytest.mark.parametrize(("url", "body", "where", "path"), BAD_TEXT)
def test_nul_or_a_lone_surrogate_anywhere_is_400_naming_the_field(api, url, body, where, path):
    response = post_raw(api, url, body)
    assert response.status_code == 400, response.content[:300]
    message = error_at(response, *where)
    assert re.search("NUL|Null characters|surrogate", message, re.IGNORECASE), message
    assert path in response.json()["detail"]  # "payload: payload.a[1].b contains NUL ...", "name: Null ..."
    assert not Job.objects.exists()
    assert not Schedule.objects.exists()
    assert not Workflow.objects.exists()


def test_a_backslash_u0000_that_is_text_is_not_a_nul(api):
    response = post_raw(api, JOBS, '{"type": "demo.noop", "payload": {"windows": "C:\\\\u0000"}}')
    assert response.status_code == 201, response.content[:300]
    assert response.json()["payload"] == {"windows": "C:\\u0000"}


# --- nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [70, 300, 1000])
def test_json_nested_deeper_than_api_json_max_depth_is_400(api, depth):
    # 300 levels once went through and could not be encoded again (orjson stops at 255);
    # 1,000 overflowed Python's stack in DRF's JSONField.
    body = '{"type": "demo.noop", "payload": {"a": ' + "[" * depth + "]" * depth + "}}"
    response = post_raw(api, JOBS, body)
    assert response.status_code == 400, response.content[:300]
    assert "API_JSON_MAX_DEPTH" in response.json()["detail"]


def test_json_nested_within_the_limit_is_fine(api):
    assert (
        post_raw(api, JOBS, '{"type": "demo.noop", "payload": {"a": ' + "[" * 50 + "]" * 50 + "}}").status_code == 201
    )


# --- strings over their column's length -----------------------------------------------------

LONG = "x" * 1000
TOO_LONG = [
    (JOBS, {"type": LONG}, ["type"]),
    (JOBS, {"type": "demo.noop", "queue": LONG}, ["queue"]),
    (JOBS, {"type": "demo.noop", "idempotency_key": LONG}, ["idempotency_key"]),
    (JOBS, {"type": "demo.noop", "concurrency_key": LONG}, ["concurrency_key"]),
    (SCHEDULES, {**SCHEDULE, "name": LONG}, ["name"]),
    (SCHEDULES, {**SCHEDULE, "cron": LONG}, ["cron"]),
    (SCHEDULES, {**SCHEDULE, "timezone": LONG}, ["timezone"]),
    (WORKFLOWS, {"name": LONG, "tasks": [{"id": "a", "type": "demo.noop"}]}, ["name"]),
    (WORKFLOWS, {"tasks": [{"id": LONG, "type": "demo.noop"}]}, ["tasks", 0, "id"]),
    (WORKFLOWS, {"tasks": [{"id": "a", "type": "demo.noop", "depends_on": [LONG]}]}, ["tasks", 0, "depends_on"]),
    (WORKFLOWS, {"tasks": [{"id": "a", "type": "demo.noop", "compensation": {"type": LONG}}]},
     ["tasks", 0, "compensation", "type"]),
    (LOGS, {"records": [{"message": "m", "level": "INFO", "service": LONG}]}, ["records", 0, "service"]),
    (LOGS, {"records": [{"message": "m", "level": "INFO", "service": "s", "logger": LONG}]}, ["records", 0, "logger"]),
]  # fmt: skip


@pytest.mark.parametrize(("url", "body", "where"), TOO_LONG)
def test_a_string_over_its_columns_length_is_400_naming_the_field(api, url, body, where):
    response = api.post(url, body, format="json")
    assert response.status_code == 400, response.content[:300]
    assert error_at(response, *where)


def test_queue_names_say_what_they_may_be(api):
    response = api.post(JOBS, {"type": "demo.noop", "queue": LONG}, format="json")
    assert "1-100" in error_at(response, "queue")


# --- log records ----------------------------------------------------------------------------


def test_log_records_over_their_limits_are_400_naming_field_and_setting(api, settings):
    settings.LOG_MESSAGE_MAX_CHARS = 100
    settings.LOG_EXTRA_MAX_BYTES = 50
    record = {"message": "m", "level": "INFO", "service": "s"}
    cases = [
        ({"message": "x" * 101}, "message", "message is 101 characters; the limit is 100 (LOG_MESSAGE_MAX_CHARS)."),
        (
            {"exception": "x" * 150},
            "exception",
            "exception is 150 characters; the limit is 100 (LOG_MESSAGE_MAX_CHARS).",
        ),
        ({"extra": {"k": "x" * 60}}, "extra", "extra is 68 bytes as JSON; the limit is 50 (LOG_EXTRA_MAX_BYTES)."),
    ]
    for change, field, message in cases:
        response = api.post(LOGS, {"records": [record, {**record, **change}]}, format="json")
        assert response.status_code == 400
        assert error_at(response, "records", 1, field) == message


def test_the_default_log_message_limit_is_64_kib(api):
    record = {"message": "x" * 65_537, "level": "INFO", "service": "s"}
    response = api.post(LOGS, {"records": [record]}, format="json")
    assert "the limit is 65,536 (LOG_MESSAGE_MAX_CHARS)" in error_at(response, "records", 0, "message")


# --- whole bodies ---------------------------------------------------------------------------


def test_a_body_over_api_max_body_bytes_is_413_naming_the_limit(api, client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    expected = "Request body is larger than 10,000 bytes (API_MAX_BODY_BYTES)."
    big = "x" * 20_000
    responses = [
        api.post(JOBS, {"type": "demo.noop", "payload": {"blob": big}}, format="json"),
        client.post("/api/v1/auth/token/", {"username": big, "password": "x"}),  # multipart
        client.post(
            "/api/v1/auth/token/", f"username={big}&password=x", content_type="application/x-www-form-urlencoded"
        ),
        api.post(LOGS, {"records": [{"message": big, "level": "INFO", "service": "s"}]}, format="json"),
    ]
    for response in responses:
        assert response.status_code == 413
        assert response.json() == {"detail": expected, "code": "too_large"}


def test_the_parser_stops_reading_at_the_limit_whatever_content_length_says(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000
    for parser, body in (
        (ORJSONParser(), b'{"a": "' + b"x" * 5_000 + b'"}'),
        (LimitedFormParser(), b"a=" + b"x" * 5_000),
    ):
        with pytest.raises(PayloadTooLarge, match=re.escape("larger than 1,000 bytes (API_MAX_BODY_BYTES)")):
            parser.parse(io.BytesIO(body))
    assert LimitedFormParser().parse(io.BytesIO(b"username=a&password=b"))["username"] == "a"


# --- the schema -----------------------------------------------------------------------------


def test_the_schema_states_every_limit(client):
    schema = client.get("/api/schema/?format=json").content.decode()
    for setting in (
        "JOB_PAYLOAD_MAX_BYTES", "API_MAX_BODY_BYTES", "API_JSON_MAX_DEPTH", "LOG_MESSAGE_MAX_CHARS",
        "LOG_EXTRA_MAX_BYTES", "JOBS_BULK_MAX", "WORKFLOW_MAX_TASKS", "LOGS_INGEST_MAX",
    ):  # fmt: skip
        assert setting in schema, setting
    assert "2,097,152" in schema
    assert "reserved for the platform" in schema


def test_numbers_json_allows_but_no_double_holds_are_not_a_500(api):
    huge = post_raw(api, JOBS, '{"type": "demo.noop", "payload": {"n": 123456789012345678901234567890}}')
    assert huge.status_code == 201  # read as a double, as JavaScript would
    assert post_raw(api, JOBS, '{"type": "demo.noop", "payload": {"n": 1e400}}').status_code == 400
