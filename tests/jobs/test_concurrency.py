"""Races settled by PostgreSQL: concurrent idempotent submits and concurrent claims.

These use real transactions on separate connections (one per thread), so the unique
index and the conditional UPDATE do the deciding, not test-local state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, transaction

from jobs import transitions
from jobs.models import Job, JobAttempt, Outbox
from tests.conftest import client_for
from tests.factories import submit_job

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
