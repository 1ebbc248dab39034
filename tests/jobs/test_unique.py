"""Unique jobs: at most one job of an owner's `unique_key` within `unique_for` seconds of the one
that took it, whatever races to submit; `unique_policy` says what a submit that meets a taken
key gets. Unlike `idempotency_key` (which replays a request), this governs runs."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone
from hypothesis import HealthCheck, note
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from jobs import services
from jobs.errors import UniqueConflict
from jobs.models import Job, JobStatus, UniqueLock
from jobs.services import JobSpec
from tests.factories import UserFactory
from tests.threads import in_thread

JOBS = "/api/v1/jobs/"


def submit(api: Any, **body: Any) -> Any:
    return api.post(JOBS, {"type": "demo.echo", **body}, format="json")


def expire(key: str) -> None:
    """The key's time is up (as `unique_for` seconds later)."""
    UniqueLock.objects.filter(key=key).update(expires_at=timezone.now() - timedelta(seconds=1))


@pytest.mark.django_db
def test_reject_answers_409_naming_the_job_that_holds_the_key(api):
    first = submit(api, payload={"n": 1}, unique_key="report:42", unique_for=600)
    assert first.status_code == 201
    again = submit(api, payload={"n": 2}, unique_key="report:42", unique_for=600)
    assert again.status_code == 409
    body = again.json()
    assert body["code"] == "unique_conflict"
    assert first.json()["id"] in body["detail"]
    assert body["job"] == first.json()["id"]
    assert Job.objects.filter(owner__jobs__isnull=False).distinct().count() == 1


@pytest.mark.django_db
def test_keep_existing_answers_with_the_job_that_holds_the_key(api):
    first = submit(api, unique_key="sync", unique_policy="keep_existing")
    again = submit(api, payload={"other": True}, unique_key="sync", unique_policy="keep_existing")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["payload"] == {}  # kept as it was
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_replace_gives_a_waiting_job_the_new_payload_and_is_refused_once_it_started(api):
    first = submit(api, payload={"v": 1}, unique_key="price", unique_policy="replace")
    again = submit(api, payload={"v": 2}, unique_key="price", unique_policy="replace")
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert Job.objects.get(id=first.json()["id"]).payload == {"v": 2}

    Job.objects.filter(id=first.json()["id"]).update(status=JobStatus.RUNNING)
    late = submit(api, payload={"v": 3}, unique_key="price", unique_policy="replace")
    assert late.status_code == 409
    assert "too late to replace" in late.json()["detail"]
    assert Job.objects.get(id=first.json()["id"]).payload == {"v": 2}


@pytest.mark.django_db
def test_once_its_time_is_up_the_key_is_taken_by_a_new_job(api):
    first = submit(api, unique_key="nightly", unique_for=3600)
    expire("nightly")
    second = submit(api, unique_key="nightly", unique_for=3600)
    assert second.status_code == 201
    assert second.json()["id"] != first.json()["id"]
    assert UniqueLock.objects.get(key="nightly").job_id == uuid.UUID(second.json()["id"])


@pytest.mark.django_db
def test_keys_are_each_owners_own(api, other_api):
    assert submit(api, unique_key="shared-name").status_code == 201
    assert submit(other_api, unique_key="shared-name").status_code == 201  # not another tenant's to block


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"unique_for": 60}, "unique_for", "needs a unique_key"),
        ({"unique_key": "k", "unique_for": 0}, "unique_for", "greater than or equal to 1"),
        ({"unique_key": "k", "unique_policy": "sometimes"}, "unique_policy", "is not a valid choice"),
        ({"unique_key": "x" * 201}, "unique_key", "no more than 200 characters"),
    ],
)
def test_bad_unique_fields_are_400_naming_them(api, body, field, message):
    response = submit(api, **body)
    assert response.status_code == 400
    assert message in str(response.json()["errors"][field])


@pytest.mark.django_db
def test_a_bulk_submit_meets_its_own_keys_in_order(api):
    jobs = [
        {"type": "demo.echo", "payload": {"n": 1}, "unique_key": "a", "unique_policy": "keep_existing"},
        {"type": "demo.echo", "payload": {"n": 2}, "unique_key": "a", "unique_policy": "keep_existing"},
        {"type": "demo.echo", "payload": {"n": 3}, "unique_key": "b", "unique_policy": "replace"},
        {"type": "demo.echo", "payload": {"n": 4}, "unique_key": "b", "unique_policy": "replace"},
    ]
    response = api.post(JOBS + "bulk/", {"jobs": jobs}, format="json")
    assert response.status_code == 201, response.content
    ids = [j["id"] for j in response.json()["jobs"]]
    assert ids[0] == ids[1] and ids[2] == ids[3]  # noqa: PT018 (two pairs)
    assert Job.objects.count() == 2
    assert Job.objects.get(id=ids[2]).payload == {"n": 4}  # the later submit's payload

    rejected = api.post(
        JOBS + "bulk/",
        {"jobs": [{"type": "demo.echo", "unique_key": "c"}, {"type": "demo.echo", "unique_key": "c"}]},
        format="json",
    )
    assert rejected.status_code == 409
    assert Job.objects.count() == 2  # all or nothing: neither was made
    assert not UniqueLock.objects.filter(key="c").exists()


# --- races ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_threads_racing_one_key_make_one_job():
    owner = UserFactory()
    spec = JobSpec(type="demo.noop", unique_key="race", unique_for=600, unique_policy="keep_existing")
    outcome: dict[str, Any] = {}
    threads = [in_thread(outcome, f"t{i}", lambda: services.job_submit(owner_id=owner.pk, spec=spec)) for i in range(8)]
    for t in threads:
        t.join()
    results = list(outcome.values())
    assert not [r for r in results if isinstance(r, Exception)]
    assert len({r.job.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert Job.objects.filter(owner=owner).count() == 1


SUBMITTER = """
import os, sys, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()
from jobs import services
from jobs.errors import UniqueConflict
from jobs.services import JobSpec
owner, policy = int(sys.argv[1]), sys.argv[2]
made = 0
for _ in range(20):
    try:
        made += services.job_submit(owner_id=owner, spec=JobSpec(
            type="demo.noop", unique_key="procs", unique_for=600, unique_policy=policy)).created
    except UniqueConflict:
        pass
print(made)
"""


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("policy", ["keep_existing", "reject"])
def test_processes_racing_one_key_make_one_job(policy):
    owner = UserFactory()
    db = settings.DATABASES["default"]
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, str(owner.pk), policy],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    made = [int(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(made) == 1  # 80 submits from 4 processes, one run
    assert Job.objects.filter(owner=owner).count() == 1


class UniqueMachine(RuleBasedStateMachine):
    """Submits of a few keys by two owners, keys expiring, in any order: the jobs made, and
    the answers, are what a model of "one holder per (owner, key) until it expires" says."""

    @initialize()
    def start(self) -> None:
        self.owners = [UserFactory().pk, UserFactory().pk]
        self.holder: dict[tuple[int, str], uuid.UUID] = {}
        self.payloads: dict[uuid.UUID, dict[str, Any]] = {}
        self.made = 0

    @rule(
        owner=st.integers(0, 1),
        key=st.sampled_from(["a", "b"]),
        policy=st.sampled_from(["reject", "keep_existing", "replace"]),
        n=st.integers(0, 9),
    )
    def submit(self, owner: int, key: str, policy: str, n: int) -> None:
        spec = JobSpec(type="demo.noop", payload={"n": n}, unique_key=key, unique_for=600, unique_policy=policy)
        held = self.holder.get((self.owners[owner], key))
        try:
            result = services.job_submit(owner_id=self.owners[owner], spec=spec)
        except UniqueConflict as exc:
            conflict: UniqueConflict | None = exc
        else:
            conflict = None
        if conflict is not None:
            note(f"conflict {conflict}")
            assert held is not None
            assert policy == "reject"
            assert conflict.job_id == held
            return
        if held is None:
            assert result.created
            self.holder[(self.owners[owner], key)] = result.job.id
            self.payloads[result.job.id] = {"n": n}
            self.made += 1
        else:
            assert not result.created
            assert result.job.id == held
            assert policy in ("keep_existing", "replace")
            if policy == "replace":
                self.payloads[held] = {"n": n}

    @rule(owner=st.integers(0, 1), key=st.sampled_from(["a", "b"]))
    def time_passes(self, owner: int, key: str) -> None:
        UniqueLock.objects.filter(owner_id=self.owners[owner], key=key).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
        self.holder.pop((self.owners[owner], key), None)

    @invariant()
    def jobs_are_what_the_model_says(self) -> None:
        if not hasattr(self, "owners"):
            return
        assert Job.objects.filter(owner_id__in=self.owners).count() == self.made
        for job_id, payload in self.payloads.items():
            assert Job.objects.get(id=job_id).payload == payload


@pytest.mark.django_db
def test_unique_submits_match_the_model():
    UniqueMachine.TestCase.settings = hyp_settings(
        max_examples=25, stateful_step_count=15, deadline=None, suppress_health_check=list(HealthCheck)
    )
    UniqueMachine.TestCase().runTest()


# --- debounce ---------------------------------------------------------------------------------


def debounced(api: Any, n: int, **extra: Any) -> Any:
    body = {"payload": {"n": n}, "unique_key": "search-index", "unique_policy": "debounce", "debounce_seconds": 30}
    return submit(api, **{**body, **extra})


@pytest.mark.django_db
def test_debounce_runs_once_after_the_last_submit_with_its_payload(api):
    first = debounced(api, 1)
    assert first.status_code == 201
    job = Job.objects.get(id=first.json()["id"])
    assert job.dispatch_token is None  # waits for its run_at, like any delayed job
    for n in (2, 3):
        again = debounced(api, n)
        assert again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
    job.refresh_from_db()
    assert Job.objects.count() == 1
    assert job.payload == {"n": 3}
    assert timezone.now() + timedelta(seconds=28) < job.run_at <= timezone.now() + timedelta(seconds=30)
    assert UniqueLock.objects.get(key="search-index").expires_at == job.run_at


@pytest.mark.django_db
def test_debounce_waits_at_most_debounce_max_seconds_after_the_first_submit(api):
    first = debounced(api, 1, debounce_max_seconds=120)
    Job.objects.filter(id=first.json()["id"]).update(created_at=timezone.now() - timedelta(seconds=100))
    debounced(api, 2, debounce_max_seconds=120)
    job = Job.objects.get(id=first.json()["id"])
    assert job.run_at <= job.created_at + timedelta(seconds=120)  # not now + 30
    assert job.run_at < timezone.now() + timedelta(seconds=21)


@pytest.mark.django_db
def test_a_debounced_job_on_its_way_is_left_alone_and_a_new_window_opens(api):
    first = debounced(api, 1)
    Job.objects.filter(id=first.json()["id"]).update(status=JobStatus.QUEUED, dispatch_token=uuid.uuid4())
    second = debounced(api, 2)
    assert second.status_code == 201
    assert second.json()["id"] != first.json()["id"]
    assert Job.objects.get(id=first.json()["id"]).payload == {"n": 1}  # it runs what it was released with


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"debounce_seconds": None}, "debounce_seconds"),
        ({"debounce_max_seconds": 10}, "debounce_max_seconds"),  # less than debounce_seconds
        ({"unique_for": 60}, "unique_for"),
        ({"run_at": "2030-01-01T00:00:00Z"}, "run_at"),
        ({"unique_policy": "reject"}, "debounce_seconds"),  # debounce fields need the debounce policy
    ],
)
def test_bad_debounce_fields_are_400_naming_them(api, extra, field):
    response = debounced(api, 1, **extra)
    assert response.status_code == 400
    assert field in response.json()["errors"]


@pytest.mark.django_db(transaction=True)
def test_racing_debounced_submits_make_one_job_that_runs_once():
    from jobs import transitions
    from orchestration.worker import execute
    from tests.workflows.conftest import pending_dispatches

    owner = UserFactory()
    outcome: dict[str, Any] = {}

    def burst(i: int) -> Any:
        spec = JobSpec(type="demo.echo", payload={"i": i}, unique_key="burst", unique_policy="debounce",
                       debounce_seconds=5)  # fmt: skip
        return services.job_submit(owner_id=owner.pk, spec=spec)

    threads = [in_thread(outcome, f"t{i}", lambda i=i: burst(i)) for i in range(8)]
    for t in threads:
        t.join()
    assert not [r for r in outcome.values() if isinstance(r, Exception)]
    assert len({r.job.id for r in outcome.values()}) == 1
    [job] = Job.objects.filter(owner=owner)
    released = transitions.release_batch("delayed", now=timezone.now() + timedelta(seconds=10), limit=100)
    services.job_dispatch_released(released)
    ran = [execute(envelope, worker="w") for envelope in pending_dispatches()]
    assert [o.status for o in ran] == ["SUCCEEDED"]
    job.refresh_from_db()
    assert job.result == job.payload  # the last payload a submit left, run once


@pytest.mark.django_db
@pytest.mark.parametrize("policy", ["debounce", "keep_existing"])
def test_a_replayed_request_answers_as_before_and_takes_no_key(api, policy):
    body = {"type": "demo.echo", "payload": {"n": 1}, "unique_key": "k", "unique_policy": policy}
    if policy == "debounce":
        body["debounce_seconds"] = 30
    first = api.post(JOBS, body, format="json", HTTP_IDEMPOTENCY_KEY="req-1")
    expire("k")  # the key's window is over; the replay must not take it again
    again = api.post(JOBS, body, format="json", HTTP_IDEMPOTENCY_KEY="req-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert UniqueLock.objects.get(key="k").job_id == uuid.UUID(first.json()["id"])  # not a job never made
    later = submit(api, unique_key="k", unique_policy="keep_existing")  # meets the key as its holder left it
    assert later.status_code == 201
    assert Job.objects.count() == 2
