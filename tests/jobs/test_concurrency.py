"""Races settled by PostgreSQL: concurrent idempotent submits and concurrent claims.

These use real transactions on separate connections (one per thread), so the unique
index and the conditional UPDATE do the deciding, not test-local state.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, transaction

from jobs import transitions
from jobs.models import Job, JobAttempt, Outbox
from tests.conftest import client_for
from tests.factories import submit_job
from tests.orchestration.conftest import topics  # noqa: F401 (a fixture: a fresh Kafka topic per test)
from tests.threads import in_thread

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 8


def run_together(fn: Callable[[int], Any], n: int = THREADS) -> list[Any]:
    """Run fn(i) in n threads released at the same instant; each thread has its own connection."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except Exception as exc:
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_identical_submits_create_one_job(user):
    clients = [client_for(user) for _ in range(THREADS)]
    body = {"type": "demo.echo", "payload": {"n": 1}, "idempotency_key": "race-1"}
    responses = run_together(lambda i: clients[i].post("/api/v1/jobs/", body, format="json"))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * (THREADS - 1) + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert Job.objects.filter(idempotency_key="race-1").count() == 1
    assert Outbox.objects.count() == 1


def test_concurrent_conflicting_submits_one_wins_others_409(user):
    clients = [client_for(user) for _ in range(THREADS)]
    responses = run_together(
        lambda i: clients[i].post(
            "/api/v1/jobs/", {"type": "demo.echo", "payload": {"n": i}, "idempotency_key": "race-2"}, format="json"
        )
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * (THREADS - 1)
    assert Job.objects.filter(idempotency_key="race-2").count() == 1


def test_duplicate_deliveries_claim_once(user):
    job = submit_job(user)

    def claim(i: int) -> Any:
        with transaction.atomic():
            return transitions.mark_running(job.id, dispatch_token=job.dispatch_token, worker=f"w{i}", lease_seconds=30)

    claims = run_together(claim)
    won = [c for c in claims if c is not None]
    assert len(won) == 1, claims
    assert not any(isinstance(c, Exception) for c in claims)
    assert JobAttempt.objects.filter(job=job).count() == 1


def test_concurrent_success_and_cancel_end_in_one_terminal_state(user):
    for _ in range(10):
        job = submit_job(user)
        with transaction.atomic():
            claim = transitions.mark_running(job.id, dispatch_token=job.dispatch_token, worker="w", lease_seconds=30)
        assert claim is not None

        def act(i: int, job_id=job.id, attempt=claim.attempt) -> bool:
            with transaction.atomic():
                if i == 0:
                    return transitions.mark_succeeded(job_id, attempt=attempt, result={})
                return transitions.mark_cancelled(job_id, attempt=attempt)

        results = run_together(act, n=2)
        assert sum(bool(r) for r in results) == 1
        job.refresh_from_db()
        assert job.status in ("SUCCEEDED", "CANCELLED")
        assert JobAttempt.objects.get(job=job).status == job.status


# -- the relay against a cancel: lock order -------------------------------------------------


class _PausedRelay:
    """The real relay, stopped between producing its batch and marking the jobs QUEUED (the
    window that waits for Kafka's acknowledgements): its outbox rows stay locked meanwhile."""

    def __init__(self) -> None:
        from orchestration.relay import Relay

        pause = self

        class Paused(Relay):
            def _produce(self, rows):  # type: ignore[no-untyped-def]
                delivered = super()._produce(rows)
                pause.produced.set()
                pause.go.wait(20)
                return delivered

        self.produced, self.go = threading.Event(), threading.Event()
        self.relay = Paused()


def _waiting_for_a_lock(query_part: str) -> bool:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE %s",
            [f"%{query_part}%"],
        )
        return cur.fetchone()[0] > 0


def _interleave_with_relay(act: Callable[[], Any], waits_on: str) -> tuple[Any, Any]:
    """Run the relay's transaction up to its produce, then `act` on another connection, and
    let the relay go on once `act` finished or blocks on a lock. Returns what each raised."""
    import time

    paused = _PausedRelay()
    outcome: dict[str, Any] = {}
    relay = in_thread(outcome, "relay", paused.relay.run_once)
    assert paused.produced.wait(20), "the relay did not produce"
    actor = in_thread(outcome, "act", act)
    deadline = time.monotonic() + 10
    while actor.is_alive() and not _waiting_for_a_lock(waits_on) and time.monotonic() < deadline:
        time.sleep(0.02)
    paused.go.set()
    relay.join(30)
    actor.join(30)
    assert not relay.is_alive()
    assert not actor.is_alive()
    relay_raised, act_raised = (outcome.get(name) for name in ("relay", "act"))
    return (
        relay_raised if isinstance(relay_raised, Exception) else None,
        act_raised if isinstance(act_raised, Exception) else None,
    )


def test_cancel_while_the_relay_holds_the_outbox_row_does_not_deadlock(user, topics):  # noqa: F811
    from jobs import services

    job = submit_job(user)
    relay_error, cancel_error = _interleave_with_relay(
        lambda: services.job_cancel(job_id=job.id), waits_on="jobs_outbox"
    )
    assert (relay_error, cancel_error) == (None, None)
    job.refresh_from_db()
    assert (job.status, job.dispatch_token) == ("CANCELLED", None)
    assert not Outbox.objects.filter(job=job).exists()


def test_workflow_cancel_while_the_relay_holds_a_task_outbox_row(user, topics):  # noqa: F811
    from workflows import services as workflow_services
    from workflows.serializers import WorkflowInputSerializer

    s = WorkflowInputSerializer(data={"name": "wf", "tasks": [{"id": "a", "type": "demo.noop"}]})
    s.is_valid(raise_exception=True)
    workflow, _ = workflow_services.workflow_submit(owner_id=user.pk, spec=s.to_spec(s.validated_data), max_tasks=10)
    job = Job.objects.get(workflow=workflow)
    relay_error, cancel_error = _interleave_with_relay(
        lambda: workflow_services.workflow_cancel(workflow_id=workflow.id), waits_on="jobs_outbox"
    )
    assert (relay_error, cancel_error) == (None, None)
    job.refresh_from_db()
    assert job.status == "CANCELLED"


def test_a_claim_racing_the_relays_bookkeeping_does_not_deadlock(user):
    """The bridge is quick: a worker can claim jobs while the relay's transaction is still
    marking them QUEUED. Both lock rows in id order, whatever order their batches list them
    in, so they queue instead of deadlocking. Here a third session holds the first row, the
    claim queues for it first, then the relay (its batch in the other order) queues too:
    locking in batch order, the relay would hold the second row the claim needs next."""
    import time

    # The relay's batch lists `second` first, and it is the newest (the old statement's plan
    # walked the PENDING rows newest first): either way the relay would lock it first.
    first = submit_job(user)
    second = submit_job(user)
    while str(second.id) < str(first.id):
        second = submit_job(user)
    outcome: dict[str, Any] = {}
    start = functools.partial(in_thread, outcome)

    def lock_waiters() -> int:
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            return cur.fetchone()[0]

    def wait_for_waiters(n: int) -> None:
        deadline = time.monotonic() + 10
        while lock_waiters() < n:
            assert time.monotonic() < deadline, f"expected {n} sessions waiting on a lock"
            time.sleep(0.02)

    holder_ready, release = threading.Event(), threading.Event()

    def hold_first_row() -> None:
        with transaction.atomic():
            Job.objects.select_for_update().filter(id=first.id).first()
            holder_ready.set()
            release.wait(20)

    holder = start("holder", hold_first_row)
    assert holder_ready.wait(10)
    claim = start(
        "claim",
        lambda: transitions.mark_running_many(
            [(str(j.id), str(j.dispatch_token)) for j in (first, second)], worker="w", lease_seconds=30
        ),
    )
    wait_for_waiters(1)
    relay = start(
        "relay",
        lambda: transitions.mark_queued_many(
            [transitions.Relayed(str(j.id), str(j.dispatch_token), 0, n) for n, j in enumerate((second, first))]
        ),
    )
    wait_for_waiters(2)
    release.set()
    for thread in (holder, claim, relay):
        thread.join(30)
    assert not isinstance(outcome["claim"], Exception), outcome["claim"]
    assert not isinstance(outcome["relay"], Exception), outcome["relay"]
    assert {c.job_id for c in outcome["claim"]} == {first.id, second.id}
    assert outcome["relay"] == set()  # the claim went first: nothing left PENDING to mark
    assert set(Job.objects.filter(id__in=[first.id, second.id]).values_list("status", flat=True)) == {"RUNNING"}
