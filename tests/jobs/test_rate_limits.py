"""Declared rate limits per rate_limit_key: how a rate is written, the API (owners for their
own keys, staff for everyone's), and which limit holds for a key."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from config import key_rates
from jobs import rate_limits
from jobs.models import Job, RateLimit

pytestmark = pytest.mark.django_db
URL = "/api/v1/rate-limits/"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("100/s", (100, 1)), ("600/m", (600, 60)), ("1000/h", (1000, 3600)), ("20000/day", (20000, 86400))],
)
def test_rates_are_a_count_per_unit(text, expected):
    assert key_rates.parse_rate(text) == expected
    assert key_rates.parse_rate(key_rates.format_rate(*expected)) == expected


@pytest.mark.parametrize("text", ["", "0/s", "-1/s", "1.5/s", "10/w", "10 / s", "10/s/s", "9" * 12 + "/s", "1\x00/s"])
def test_bad_rates_are_refused_saying_what_a_rate_looks_like(text):
    with pytest.raises(key_rates.RateError, match="is not a rate like '100/s'"):
        key_rates.parse_rate(text)


def test_rates_past_what_a_slot_can_count_are_refused():
    assert key_rates.parse_rate("100000/s") == (100_000, 1)
    with pytest.raises(key_rates.RateError, match="more than 100,000/s"):
        key_rates.parse_rate("100001/s")
    with pytest.raises(key_rates.RateError, match="burst=N"):
        key_rates.parse("k 1/s burst=\u00b2")


def test_settings_declare_limits_for_every_owner():
    parsed = key_rates.parse("stripe-* 100/s burst=20; mail:* 1000/h")
    assert parsed == [key_rates.KeyRate("stripe-*", 100, 1, 20), key_rates.KeyRate("mail:*", 1000, 3600, 1)]
    for text, message in [
        ("a 1/s; a 2/s", "declared twice"),
        ("a", "expected a rate"),
        ("a 1/s burst=0", "burst=N"),
        ("a 1/s rate=2", "burst=N"),
    ]:
        with pytest.raises(key_rates.RateError, match=message):
            key_rates.parse(text)


def test_an_owner_declares_limits_for_its_own_keys(api, user):
    made = api.post(URL, {"pattern": "stripe-*", "rate": "100/s", "burst": 5}, format="json")
    assert made.status_code == 201, made.content
    assert made.json() | {"id": 0, "created_at": "", "updated_at": ""} == {
        "id": 0, "pattern": "stripe-*", "rate": "100/s", "burst": 5, "every_owner": False, "created_at": "",
        "updated_at": "",
    }  # fmt: skip
    assert RateLimit.objects.get().owner_id == user.pk
    changed = api.patch(f"{URL}{made.json()['id']}/", {"rate": "10/m"}, format="json")
    assert changed.json()["rate"] == "10/m"
    again = api.post(URL, {"pattern": "stripe-*", "rate": "1/s"}, format="json")
    assert again.status_code == 409
    assert "already declared" in again.json()["detail"]
    assert api.delete(f"{URL}{made.json()['id']}/").status_code == 204
    assert not RateLimit.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"pattern": "a", "rate": "fast"}, "rate"),
        ({"pattern": "a", "rate": "0/s"}, "rate"),
        ({"pattern": "a\x00b", "rate": "1/s"}, "pattern"),
        ({"pattern": "a b", "rate": "1/s"}, "pattern"),
        ({"pattern": "x" * 201, "rate": "1/s"}, "pattern"),
        ({"pattern": "a", "rate": "1/s", "burst": 0}, "burst"),
        ({"rate": "1/s"}, "pattern"),
        ({"pattern": "a", "rate": "1/s", "every_owner": True}, "every_owner"),  # staff only
    ],
)
def test_bad_limits_are_400_naming_the_field(api, body, field):
    response = api.post(URL, body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]
    assert not RateLimit.objects.exists()


def test_staff_declare_limits_for_everyone_that_owners_see_but_cannot_change(api, other_api, staff_api):
    made = staff_api.post(URL, {"pattern": "mail:*", "rate": "1000/h", "every_owner": True}, format="json")
    assert made.status_code == 201
    assert made.json()["every_owner"] is True
    limit_id = made.json()["id"]
    mine = api.post(URL, {"pattern": "mine", "rate": "1/s"}, format="json").json()["id"]
    assert [r["pattern"] for r in api.get(URL).json()["results"]] == ["mail:*", "mine"]
    assert [r["pattern"] for r in other_api.get(URL).json()["results"]] == ["mail:*"]  # not another owner's
    assert other_api.get(f"{URL}{mine}/").status_code == 404
    assert other_api.patch(f"{URL}{mine}/", {"rate": "100/s"}, format="json").status_code == 404
    refused = api.patch(f"{URL}{limit_id}/", {"rate": "100000/s"}, format="json")
    assert refused.status_code == 403
    assert "only staff" in refused.json()["detail"]
    assert api.delete(f"{URL}{limit_id}/").status_code == 403
    assert staff_api.patch(f"{URL}{limit_id}/", {"burst": 10}, format="json").json()["burst"] == 10
    assert {r["pattern"] for r in staff_api.get(URL).json()["results"]} == {"mail:*", "mine"}


def test_the_api_needs_a_signed_in_user(client):
    assert client.get(URL).status_code in (401, 403)


def test_the_slowest_matching_limit_holds_and_owners_are_apart(user, other_user, settings):
    settings.JOB_RATE_LIMITS = key_rates.parse("api-* 100/s")
    RateLimit.objects.create(owner=None, pattern="api-eu-*", limit=50, period_seconds=1)
    RateLimit.objects.create(owner=user, pattern="api-eu-slow", limit=1, period_seconds=1, burst=3)
    RateLimit.objects.create(owner=other_user, pattern="api-*", limit=1, period_seconds=3600)
    rate_limits.forget_cached()
    assert rate_limits.limit_for(user.pk, "api-us") == key_rates.KeyRate("api-*", 100, 1, 1)
    assert rate_limits.limit_for(user.pk, "api-eu-fast").limit == 50
    assert rate_limits.limit_for(user.pk, "api-eu-slow") == key_rates.KeyRate("api-eu-slow", 1, 1, 1)  # smallest burst
    assert rate_limits.limit_for(user.pk, "other") is None
    assert rate_limits.limit_for(other_user.pk, "api-us").period_seconds == 3600  # its own, not user's


def test_an_owner_cannot_loosen_a_staff_limit(user):
    RateLimit.objects.create(owner=None, pattern="*", limit=10, period_seconds=1)
    RateLimit.objects.create(owner=user, pattern="bulk", limit=1000, period_seconds=1)
    assert rate_limits.limit_for(user.pk, "bulk").limit == 10


def test_limits_are_read_again_after_the_cache_time(user, settings):
    settings.JOB_RATE_LIMIT_CACHE_SECONDS = 0.0
    assert rate_limits.limit_for(user.pk, "k") is None
    RateLimit.objects.create(owner=user, pattern="k", limit=3, period_seconds=1)
    assert rate_limits.limit_for(user.pk, "k").limit == 3


def test_a_job_carries_its_rate_limit_key(api):
    response = api.post("/api/v1/jobs/", {"type": "demo.noop", "rate_limit_key": "stripe-acct-1"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["rate_limit_key"], body["rate_slot_at"]) == ("stripe-acct-1", None)
    assert Job.objects.get(id=body["id"]).rate_limit_key == "stripe-acct-1"
    bad = api.post("/api/v1/jobs/", {"type": "demo.noop", "rate_limit_key": "x" * 201}, format="json")
    assert bad.status_code == 400
    assert "rate_limit_key" in bad.json()["errors"]


def test_the_cli_sets_lists_and_deletes_limits(user, capsys):
    call_command("jobs", "rate-limit", "set", "stripe-*", "100/s", "--burst", "10", "--owner", user.username)
    call_command("jobs", "rate-limit", "set", "mail:*", "1000/h")
    call_command("jobs", "rate-limit", "set", "stripe-*", "50/s", "--owner", user.username)  # changes it
    assert RateLimit.objects.get(owner=user).limit == 50
    call_command("jobs", "rate-limit", "list")
    out = capsys.readouterr().out
    assert "stripe-*: 50/1s" in out
    assert "mail:*: 1000/3600s burst 1 (every owner)" in out
    with pytest.raises(CommandError, match="is not a rate"):
        call_command("jobs", "rate-limit", "set", "x", "often")
    call_command("jobs", "rate-limit", "delete", "mail:*")
    with pytest.raises(CommandError, match="no rate limit"):
        call_command("jobs", "rate-limit", "delete", "mail:*")
    call_command("jobs", "submit", "demo.noop", "--rate-limit-key", "stripe-1", "--owner", user.username)
    assert Job.objects.get().rate_limit_key == "stripe-1"
