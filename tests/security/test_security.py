"""Targeted security tests: authentication on every route, other users' ids, hostile input
(huge, deep, NUL bytes, unicode, SQL and ClickHouse injection), and secrets kept out of logs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from tests.factories import submit_job
from tests.orchestration.conftest import REPO

pytestmark = pytest.mark.django_db

PUBLIC = {"api/schema/", "api/docs/", "api/v1/auth/token/", "health/live", "health/live/", "health/ready",
          "health/ready/", "login/", "metrics", "metrics/", "favicon.ico"}  # fmt: skip


def routes(resolver: URLResolver | None = None, prefix: str = "") -> list[str]:
    out = []
    for p in (resolver or get_resolver()).url_patterns:
        if isinstance(p, URLResolver):
            if str(p.pattern).startswith("admin/"):
                continue
            out += routes(p, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            out.append(prefix + str(p.pattern))
    return out


def concrete(route: str) -> str:
    for conv in ("<uuid:job_id>", "<uuid:workflow_id>", "<uuid:schedule_id>", "<uuid:batch_id>"):
        route = route.replace(conv, str(uuid.uuid4()))
    route = route.replace("<int:limit_id>", "1")
    route = route.replace("<str:name>", "approved")
    return "/" + route.replace("<str:job_type>", "demo.noop").replace("<str:action>", "cancel")


def test_every_route_but_the_public_ones_needs_authentication(client):
    checked = 0
    for route in routes():
        if route in PUBLIC or route.startswith("^") or route == "":
            continue
        url = concrete(route)
        for method in ("get", "post"):
            response = getattr(client, method)(url)
            if url.startswith("/api/"):
                assert response.status_code in (401, 405), (method, url, response.status_code)
            else:  # dashboard pages send a browser to the login page
                assert response.status_code in (302, 405), (method, url, response.status_code)
                if response.status_code == 302:
                    assert response["Location"].startswith("/login/")
        checked += 1
    assert checked >= 25
    assert client.get("/").status_code == 302


def test_another_users_ids_are_404_everywhere(api, other_user):
    job = submit_job(other_user)
    for url in (f"/api/v1/jobs/{job.id}/", f"/api/v1/jobs/{job.id}/logs/"):
        assert api.get(url).status_code == 404
    for url in (f"/api/v1/jobs/{job.id}/cancel/", f"/api/v1/jobs/{job.id}/retry/"):
        assert api.post(url).status_code == 404


def test_hostile_input_is_a_clear_400_never_a_500(api, settings):
    deep = '{"type": "demo.noop", "payload": ' + '{"x": ' * 2000 + "{}" + "}" * 2000 + "}"
    response = api.post("/api/v1/jobs/", deep, content_type="application/json")
    assert response.status_code == 400
    assert api.post("/api/v1/jobs/", b"\xff\xfe not json", content_type="application/json").status_code == 400
    for body in (
        {"type": "demo.noop", "payload": {"text": "nul \x00 byte"}},
        {"type": "demo.noop\x00", "payload": {}},
        {"type": "demo.noop", "queue": "q'; DROP TABLE jobs_job; --"},
        {"type": "ü" * 300},
    ):
        response = api.post("/api/v1/jobs/", body, format="json")
        assert response.status_code in (400, 201), response.status_code
        assert response.status_code != 500
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    assert (
        api.post("/api/v1/jobs/", {"type": "demo.noop", "payload": {"x": "a" * 5000}}, format="json").status_code == 413
    )


@pytest.mark.clickhouse
def test_injection_in_filters_and_log_search_is_just_text(api, staff_api, ch_table):
    for value in ("' OR 1=1 --", "x') UNION SELECT * FROM system.tables --", "%", "_", "\\", "日本語", "{q:String}"):
        assert api.get("/api/v1/jobs/", {"type": value, "queue": value}).json()["results"] == []
        assert staff_api.get("/api/v1/logs/", {"q": value, "service": value}).status_code == 200
        assert staff_api.get("/api/v1/jobs/", {"log_contains": value}).status_code == 200


def test_tokens_and_passwords_stay_out_of_the_logs(client, user, caplog):
    caplog.set_level(logging.DEBUG)
    response = client.post(
        "/api/v1/auth/token/", {"username": user.username, "password": "correct horse battery staple"}
    )
    token = response.json()["token"]
    client.get("/api/v1/jobs/", HTTP_AUTHORIZATION=f"Token {token}")
    client.get("/api/v1/jobs/", HTTP_AUTHORIZATION="Token wrong-token-value")
    client.post("/api/v1/auth/token/", {"username": user.username, "password": "wrong-password-value"})
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for secret in (token, "correct horse battery staple", "wrong-token-value", "wrong-password-value"):
        assert secret not in text


def test_the_admin_is_for_staff_only(client, user, staff):
    client.force_login(user)
    assert client.get("/admin/").status_code == 302
    client.force_login(staff)
    assert client.get("/admin/").status_code == 200


def test_a_time_with_any_offset_python_accepts_is_not_a_500(api):
    # Found by schemathesis: PostgreSQL rejects an offset beyond ±15:59 as a parameter.
    for url in ("/api/v1/jobs/", "/api/v1/workflows/"):
        for param in ("created_before", "created_after"):
            response = api.get(url, {param: "0019-11-14T19:19:19+23:12"})
            assert response.status_code == 200, (url, param, response.content[:200])
    response = api.post("/api/v1/jobs/", {"type": "demo.noop", "run_at": "2030-01-01T00:00:00+23:59"}, format="json")
    assert response.status_code in (201, 400)


def token_attempt(client, forwarded_for: str) -> int:
    body = {"username": "nobody", "password": "guess"}
    return client.post("/api/v1/auth/token/", body, HTTP_X_FORWARDED_FOR=forwarded_for).status_code


def test_rotating_x_forwarded_for_does_not_escape_the_login_throttle(client, settings):
    # With no proxy configured the header is the client's to write: it names nobody.
    settings.API_RATE_LIMIT = "3/h"
    codes = [token_attempt(client, f"10.0.{i}.1") for i in range(5)]
    assert codes == [400, 400, 400, 429, 429]


def test_behind_trusted_proxies_the_address_they_saw_is_the_client(client, settings):
    settings.API_RATE_LIMIT = "3/h"
    settings.API_TRUSTED_PROXIES = 1
    # What the client wrote comes first; our proxy appends the address it saw.
    codes = [token_attempt(client, f"10.0.{i}.1, 203.0.113.7") for i in range(5)]
    assert codes == [400, 400, 400, 429, 429]
    assert token_attempt(client, "203.0.113.8") == 400  # another client behind the same proxy


PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings", "DJANGO_ENV": "production", "DJANGO_SECRET_KEY": "x" * 50,
    "DJANGO_ALLOWED_HOSTS": "example.com", "METRICS_TOKEN": "t",
}  # fmt: skip


def load_settings(**env: str) -> subprocess.CompletedProcess[str]:
    code = "from django.conf import settings; print('DEBUG', settings.DEBUG)"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**os.environ, **PRODUCTION_ENV, **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_debug_in_production_fails_at_start_naming_the_variable():
    assert load_settings(DJANGO_DEBUG="false").stdout.strip() == "DEBUG False"
    result = load_settings(DJANGO_DEBUG="true")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "DJANGO_DEBUG" in result.stderr
