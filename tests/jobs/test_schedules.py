"""Cron schedules: the API, the admin rules and firing each slot at most once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from jobs.models import Job, MisfirePolicy, Schedule, ScheduleFire
from jobs.schedules import fire_due, latest_slot, next_slot

pytestmark = pytest.mark.django_db

URL = "/api/v1/schedules/"
BODY = {"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Paris", "type": "demo.echo", "payload": {"a": 1}}


def test_create_list_get_patch_delete(api, user):
    created = api.post(URL, BODY, format="json")
    assert created.status_code == 201, created.content
    data = created.json()
    assert data["next_fire_at"] is not None
    assert data["misfire_policy"] == "fire_once"
    assert [s["id"] for s in api.get(URL).json()["results"]] == [data["id"]]
    assert api.get(f"{URL}{data['id']}/").json()["cron"] == "0 3 * * *"
    off = api.patch(f"{URL}{data['id']}/", {"enabled": False}, format="json")
    assert off.status_code == 200
    assert off.json()["next_fire_at"] is None
    assert api.delete(f"{URL}{data['id']}/").status_code == 204
    assert not Schedule.objects.exists()


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        ({"cron": "every day"}, "cron", "5 fields"),
        ({"cron": "61 * * * *"}, "cron", "not valid"),
        ({"timezone": "Mars/Olympus"}, "timezone", "unknown time zone"),
        ({"type": "no.such"}, "type", "Unknown job type"),
        ({"payload": [1]}, "payload", "JSON object"),
        ({"priority": 12}, "priority", ""),
    ],
)
def test_bad_schedules_are_400_naming_the_field(api, change, field, text):
    response = api.post(URL, {**BODY, **change}, format="json")
    assert response.status_code == 400
    assert text in str(response.json()["errors"][field])


def test_ownership(api, other_api, staff_api, client):
    schedule_id = api.post(URL, BODY, format="json").json()["id"]
    assert other_api.get(f"{URL}{schedule_id}/").status_code == 404
    assert other_api.delete(f"{URL}{schedule_id}/").status_code == 404
    assert other_api.get(URL).json()["results"] == []
    assert staff_api.get(f"{URL}{schedule_id}/").status_code == 200
    assert client.get(URL).status_code == 401


def make(user, cron: str = "* * * * *", **fields) -> Schedule:
    return Schedule.objects.create(owner=user, name=f"s-{cron}-{fields}", cron=cron, type="demo.noop", **fields)


def test_a_due_slot_fires_once(user):
    now = timezone.now().replace(second=30, microsecond=0)
    schedule = make(user, next_fire_at=now.replace(second=0))
    fired = fire_due(now=now)
    assert len(fired) == 1
    assert fired[0].slot == now.replace(second=0)
    job = Job.objects.get(id=fired[0].job_id)
    assert job.idempotency_key == f"schedule:{schedule.id}:{now.replace(second=0).isoformat()}"
    schedule.refresh_from_db()
    assert schedule.next_fire_at == now.replace(second=0) + timedelta(minutes=1)
    assert fire_due(now=now) == []
    # A second scheduler that still believes the slot is due (a paused old leader, say):
    Schedule.objects.filter(id=schedule.id).update(next_fire_at=now.replace(second=0))
    assert fire_due(now=now) == []
    assert ScheduleFire.objects.filter(schedule=schedule).count() == 1
    assert Job.objects.count() == 1


def test_missed_slots_fire_once_or_not_at_all(user):
    now = timezone.now().replace(second=10, microsecond=0)
    long_ago = now - timedelta(minutes=30)
    catch_up = make(user, next_fire_at=long_ago)
    skip = make(user, "*/1 * * * *", next_fire_at=long_ago, misfire_policy=MisfirePolicy.SKIP)
    fired = fire_due(now=now)
    assert [f.schedule_id for f in fired] == [str(catch_up.id)]  # 30 missed slots → 1 job
    assert fired[0].slot == now.replace(second=0)
    skip.refresh_from_db()
    assert skip.next_fire_at > now


def test_slots_follow_the_schedule_time_zone():
    schedule = Schedule(cron="0 9 * * *", timezone="Europe/Paris")
    winter = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    summer = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)
    assert next_slot(schedule, winter) == datetime(2026, 1, 16, 8, 0, tzinfo=UTC)
    assert next_slot(schedule, summer) == datetime(2026, 7, 16, 7, 0, tzinfo=UTC)
    assert latest_slot(schedule, winter) == datetime(2026, 1, 15, 8, 0, tzinfo=UTC)
    assert latest_slot(schedule, datetime(2026, 1, 15, 8, 0, tzinfo=UTC)) == datetime(2026, 1, 15, 8, 0, tzinfo=UTC)


def test_admin_edits_schedules_with_validation(client, staff, user):
    client.force_login(staff)
    form = {
        "owner": user.pk, "name": "from-admin", "enabled": "on", "cron": "bad", "timezone": "UTC",
        "misfire_policy": "fire_once", "type": "demo.noop", "payload": "{}", "queue": "default", "priority": 5,
        "max_attempts": 4, "backoff": '{"initial": 2, "factor": 2, "max": 60, "jitter": 0.1}', "timeout_seconds": 300,
    }  # fmt: skip
    response = client.post("/admin/orchestration_jobs/schedule/add/", form)
    assert response.status_code == 200
    assert "must have 5 fields" in response.content.decode()
    response = client.post("/admin/orchestration_jobs/schedule/add/", {**form, "cron": "*/5 * * * *"})
    assert response.status_code == 302
    assert Schedule.objects.get(name="from-admin").next_fire_at is not None


def test_a_taken_slot_key_skips_that_slot_only(user, caplog):
    from jobs.services import JobSpec, job_submit

    now = timezone.now().replace(second=30, microsecond=0)
    slot = now.replace(second=0)
    taken = make(user, next_fire_at=slot)
    other = make(user, "*/1 * * * *", next_fire_at=slot)
    squatter = job_submit(
        owner_id=user.pk,
        spec=JobSpec(type="demo.echo", payload={"x": 1}, idempotency_key=f"schedule:{taken.id}:{slot.isoformat()}"),
    ).job
    fired = fire_due(now=now)
    assert [f.schedule_id for f in fired] == [str(other.id)]
    taken.refresh_from_db()
    assert taken.next_fire_at == slot + timedelta(minutes=1)
    assert not ScheduleFire.objects.filter(schedule=taken).exists()
    record = next(r for r in caplog.records if r.getMessage() == "schedule.slot_taken")
    assert (record.schedule_id, record.slot, record.taken_by) == (str(taken.id), slot.isoformat(), str(squatter.id))
    assert record.levelname == "WARNING"


def test_a_schedule_that_cannot_fire_is_set_aside_and_the_others_fire(user, caplog):
    """Rows the validation never saw (written before it, or by hand): a cron with no date ever
    (31 February), an unknown time zone. Each used to stop the whole cron scan."""
    now = timezone.now().replace(second=30, microsecond=0)
    slot = now.replace(second=0)
    never = make(user, "0 0 31 2 *", next_fire_at=slot)
    lost = make(user, "*/2 * * * *", next_fire_at=slot, timezone="Mars/Olympus")
    good = make(user, "*/1 * * * *", next_fire_at=slot)
    fired = fire_due(now=now)
    assert [f.schedule_id for f in fired] == [str(good.id)]
    for schedule in (never, lost):
        schedule.refresh_from_db()
        assert (schedule.enabled, schedule.next_fire_at) == (False, None)  # not due on every tick
    failures = {r.schedule_id: r for r in caplog.records if r.getMessage() == "schedule.fire_failed"}
    assert set(failures) == {str(never.id), str(lost.id)}
    assert all(r.error for r in failures.values())
    assert fire_due(now=now + timedelta(minutes=1)) != []  # the good one goes on


def test_a_cron_without_any_date_is_400(api):
    response = api.post(URL, {**BODY, "cron": "0 0 31 2 *"}, format="json")
    assert response.status_code == 400
    assert "never" in str(response.json()["errors"]["cron"])


def test_a_second_schedule_of_the_same_name_is_a_conflict_not_a_500(api, other_api):
    assert api.post(URL, BODY, format="json").status_code == 201
    again = api.post(URL, BODY, format="json")
    assert again.status_code == 409, again.content
    assert again.json()["code"] == "name_taken"
    assert BODY["name"] in again.json()["detail"]
    renamed = api.post(URL, {**BODY, "name": "other"}, format="json").json()["id"]
    assert api.patch(f"{URL}{renamed}/", {"name": BODY["name"]}, format="json").status_code == 409
    assert other_api.post(URL, BODY, format="json").status_code == 201  # names are each owner's own
