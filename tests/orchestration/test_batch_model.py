"""A model-based test of the worker's batch path (issue 16): Hypothesis drives real rows and
real worker code through deliveries (duplicated, stale, several in one batch), hand-backs,
lapsed leases and reaping, cancels, a second worker claiming, and handlers that succeed,
fail, fail permanently, time out, raise BaseException or return NUL, and checks after every
step what the platform promises:

- at most one running attempt per job: no handler starts while another run of its job is open;
- no attempt runs twice: each (job, attempt) reaches a handler at most once;
- exactly one terminal state: a job that reached one never leaves it;
- no success lost: a handler that returned while its attempt still held the job leaves it
  SUCCEEDED, and a finished batch leaves nothing it claimed RUNNING.

Time is modelled, not slept: "leases lapse" moves lease_expires_at into the past and tells
the batch that much time went by without its monitor. `make test` runs a fixed-seed subset;
`make fuzz` explores (FUZZ_EXAMPLES)."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from config import broker
from jobs import services, transitions
from jobs.dispatch import DispatchEnvelope
from jobs.errors import IllegalTransition
from jobs.handlers import PermanentError, handler
from jobs.models import TERMINAL_STATUSES, AttemptStatus, Job, JobAttempt, JobStatus
from jobs.services import JobSpec
from orchestration import worker
from orchestration.scheduler import Scheduler
from orchestration.worker import running
from orchestration.worker.batch import execute_batch
from tests.factories import dispatch_of

BEHAVIOURS = ("ok", "fail", "permanent", "exit", "nul", "timeout", "cancel_self", "hand_back", "lapse", "steal")


class World:
    """What the handler sees of the running model (one model runs at a time)."""

    machine: BatchModel | None = None


@handler("test.model")
def _model_handler(payload: dict[str, Any], ctx: Any) -> Any:
    machine = World.machine
    assert machine is not None
    return machine.run_handler(ctx)


def _batch() -> Any:
    return worker.MONITOR._batch  # the batch this process is working through, as the monitor sees it


class BatchModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        World.machine = self
        self.owner_id = self._owner()
        self.jobs: list[uuid.UUID] = []
        self.tokens: dict[uuid.UUID, set[str]] = {}  # every dispatch token a job ever had
        self.behaviour: dict[uuid.UUID, str] = {}
        self.ran: list[tuple[uuid.UUID, int]] = []  # (job, attempt) per handler start
        self.open: dict[uuid.UUID, int] = {}  # job → attempt of a run still going (w2's, or w1's now)
        self.succeeded: list[tuple[uuid.UUID, int]] = []  # handler returned normally
        self.terminal: dict[uuid.UUID, str] = {}
        self.violations: list[str] = []
        self.w2: list[transitions.Claim] = []  # claimed by the second worker, not finished yet
        self.scheduler = Scheduler(identity=f"model-{uuid.uuid4().hex[:6]}")
        self.queue = f"model-{uuid.uuid4().hex[:8]}"  # hand-backs publish here
        self.epoch = 1

    @staticmethod
    def _owner() -> int:
        from tests.factories import UserFactory

        return UserFactory().pk

    # -- the handler ---------------------------------------------------------------------

    def run_handler(self, ctx: Any) -> Any:
        # Broken promises are noted, not raised: the worker would take an exception raised
        # here for the handler's own failure. An invariant reports them.
        job, attempt = ctx.job_id, ctx.attempt
        if job in self.open:
            self.violations.append(f"job {job} started while attempt {self.open[job]} still runs")
        if (job, attempt) in self.ran:
            self.violations.append(f"attempt {attempt} of job {job} ran twice")
        self.ran.append((job, attempt))
        self.open[job] = attempt
        try:
            result = self._behave(self.behaviour.get(job, "ok"), job)
        finally:
            self.open.pop(job, None)
        self.succeeded.append((job, attempt))
        return result

    def _behave(self, behaviour: str, job: uuid.UUID) -> Any:
        if behaviour == "fail":
            raise RuntimeError("model failure")
        if behaviour == "permanent":
            raise PermanentError("model permanent failure")
        if behaviour == "exit":
            raise SystemExit(3)
        if behaviour == "timeout":
            time.sleep(3)  # timeout_seconds is 1: SIGALRM interrupts this
        if behaviour == "nul":
            return {"text": "a\x00b"}
        if behaviour == "cancel_self":
            services.job_cancel(job_id=job)
            raise RuntimeError("failed after its cancel was requested")
        batch = _batch()
        if behaviour == "hand_back" and batch is not None:
            batch.hand_back()
        if behaviour in ("lapse", "steal") and batch is not None:
            # The batch's monitor could not renew (a handler holding the GIL, a hung
            # connection): the leases of its waiting jobs lapse and the reaper takes them.
            self._lapse_leases(ids=[c.job_id for c in batch.waiting])
            batch.checked_at -= 3600
            batch.renewed_at -= 3600
            if behaviour == "steal":  # ...retried at once, and another worker claims them
                self._release_retries()
                self._second_worker_claims()
        return {"ok": True}

    # -- helpers -------------------------------------------------------------------------

    def _envelopes(self, picks: list[int], stale: bool) -> list[DispatchEnvelope]:
        rows = {
            j.id: j
            for j in Job.objects.filter(id__in=[self.jobs[i % len(self.jobs)] for i in picks]).only(
                "id", "type", "queue", "priority", "dispatch_token"
            )
        }
        out = []
        for i in picks:
            job = rows[self.jobs[i % len(self.jobs)]]
            tokens = sorted(self.tokens[job.id]) if stale else []
            token = tokens[i % len(tokens)] if tokens else job.dispatch_token
            if token is None:
                continue
            self.tokens[job.id].add(str(token))
            out.append(dispatch_of(job, token))
        return out

    def _lapse_leases(self, *, ids: list[uuid.UUID] | None = None, worker_name: str | None = None) -> None:
        running = Job.objects.filter(id__in=self.jobs if ids is None else ids, status=JobStatus.RUNNING)
        if worker_name:
            running = running.filter(worker=worker_name)
        running.update(lease_expires_at=timezone.now() - timedelta(seconds=1))
        self.scheduler._reap_expired_leases(self.epoch)

    def _release_retries(self) -> None:
        Job.objects.filter(id__in=self.jobs, status=JobStatus.RETRYING).update(
            next_retry_at=timezone.now() - timedelta(seconds=1)
        )
        self.scheduler._release("retries", self.epoch)
        for job_id, token in Job.objects.filter(id__in=self.jobs, dispatch_token__isnull=False).values_list(
            "id", "dispatch_token"
        ):
            self.tokens[job_id].add(str(token))

    def _second_worker_claims(self) -> None:
        waiting = Job.objects.filter(id__in=self.jobs, status__in=[JobStatus.PENDING, JobStatus.QUEUED]).exclude(
            dispatch_token=None
        )
        dispatches = [(str(i), str(t)) for i, t in waiting.values_list("id", "dispatch_token")]
        for claim in worker.claim_many(dispatches, worker="w2"):
            if claim.job_id in self.open:
                self.violations.append(f"w2 claimed job {claim.job_id} while attempt {self.open[claim.job_id]} runs")
            self.w2.append(claim)
            self.open[claim.job_id] = claim.attempt
            self.ran.append((claim.job_id, claim.attempt))

    # -- rules ---------------------------------------------------------------------------

    @rule(
        behaviours=st.lists(st.sampled_from(BEHAVIOURS), min_size=1, max_size=4),
        max_attempts=st.integers(1, 3),
    )
    def submit(self, behaviours: list[str], max_attempts: int) -> None:
        specs = [
            JobSpec(type="test.model", queue=self.queue, max_attempts=max_attempts, timeout_seconds=1,
                    backoff={"initial": 0.01, "factor": 1.0, "max": 0.01, "jitter": 0.0})
            for _ in behaviours
        ]  # fmt: skip
        for submitted, behaviour in zip(
            services.job_submit_bulk(owner_id=self.owner_id, specs=specs), behaviours, strict=True
        ):
            job = submitted.job
            self.jobs.append(job.id)
            self.tokens[job.id] = {str(job.dispatch_token)}
            self.behaviour[job.id] = behaviour

    @precondition(lambda self: self.jobs)
    @rule(picks=st.lists(st.integers(0, 50), min_size=1, max_size=6), stale=st.booleans())
    def deliver_batch(self, picks: list[int], stale: bool) -> None:
        envelopes = self._envelopes(picks, stale)
        if envelopes:
            execute_batch(envelopes, worker="w1")
        self._check_batch_left_nothing_running()

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(0, 50))
    def deliver_one(self, pick: int) -> None:
        envelopes = self._envelopes([pick], stale=False)
        if envelopes:
            worker.execute(envelopes[0], worker="w1")
        self._check_batch_left_nothing_running()

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(0, 50))
    def cancel(self, pick: int) -> None:
        with contextlib.suppress(IllegalTransition):  # finished already
            services.job_cancel(job_id=self.jobs[pick % len(self.jobs)])

    @precondition(lambda self: self.jobs)
    @rule()
    def second_worker_claims(self) -> None:
        self._second_worker_claims()

    @precondition(lambda self: self.w2)
    @rule(succeed=st.booleans())
    def second_worker_finishes(self, succeed: bool) -> None:
        claims, self.w2 = self.w2, []
        for claim in claims:
            self.open.pop(claim.job_id, None)
            if succeed:
                if transitions.mark_succeeded(claim.job_id, attempt=claim.attempt, result={"w2": True}):
                    self.succeeded.append((claim.job_id, claim.attempt))
            else:
                running._fail(claim, "RuntimeError: w2 failed", "", AttemptStatus.FAILED, permanent=False)

    @precondition(lambda self: self.w2)
    @rule()
    def second_worker_dies_and_is_reaped(self) -> None:
        for claim in self.w2:
            self.open.pop(claim.job_id, None)
        self.w2 = []
        self._lapse_leases(worker_name="w2")

    @precondition(lambda self: self.jobs)
    @rule()
    def retries_come_due(self) -> None:
        self._release_retries()

    # -- invariants ----------------------------------------------------------------------

    def _check_batch_left_nothing_running(self) -> None:
        left = JobAttempt.objects.filter(job_id__in=self.jobs, status=AttemptStatus.RUNNING, worker="w1")
        assert not left.exists(), f"a finished delivery left attempts RUNNING: {list(left.values('job', 'attempt'))}"

    @invariant()
    def nothing_ran_twice_or_at_once(self) -> None:
        assert not self.violations, self.violations

    @invariant()
    def one_terminal_state(self) -> None:
        for job_id, status in Job.objects.filter(id__in=self.jobs).values_list("id", "status"):
            if job_id in self.terminal:
                assert status == self.terminal[job_id], f"job {job_id} left {self.terminal[job_id]} for {status}"
            elif status in TERMINAL_STATUSES:
                self.terminal[job_id] = status

    @invariant()
    def at_most_one_running_attempt(self) -> None:
        with connection.cursor() as cur:
            cur.execute(
                "SELECT job_id, count(*) FROM jobs_jobattempt WHERE job_id = ANY(%s) AND status = 'RUNNING'"
                " GROUP BY job_id HAVING count(*) > 1",
                [self.jobs],
            )
            assert cur.fetchall() == []
        for job in Job.objects.filter(id__in=self.jobs).only("attempts", "max_attempts", "status"):
            assert job.attempts <= job.max_attempts

    @invariant()
    def no_success_lost(self) -> None:
        attempts = {
            (a.job_id, a.attempt): a.status
            for a in JobAttempt.objects.filter(job_id__in=self.jobs).only("job_id", "attempt", "status")
        }
        for job_id, attempt in self.succeeded:
            # Its attempt either recorded the success or had been taken away first (reaped,
            # cancelled): never left RUNNING for the reaper to fail as LOST.
            assert attempts.get((job_id, attempt)) in (
                AttemptStatus.SUCCEEDED, AttemptStatus.LOST, AttemptStatus.CANCELLED, AttemptStatus.FAILED,
                AttemptStatus.TIMED_OUT,
            ), f"success of attempt {attempt} of job {job_id} lost: {attempts.get((job_id, attempt))}"  # fmt: skip
            if attempts.get((job_id, attempt)) != AttemptStatus.SUCCEEDED:
                current = Job.objects.get(id=job_id)
                assert current.attempt_seq != attempt or current.status != JobStatus.RUNNING

    def teardown(self) -> None:
        World.machine = None
        names = broker.list_names(self.queue)
        broker.client().delete(*names)


EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))


@pytest.mark.slow
@pytest.mark.fuzz
@pytest.mark.django_db(transaction=True)
def test_the_batch_path_keeps_its_promises(settings_override: None) -> None:
    run_state_machine_as_test(
        BatchModel,
        settings=settings(
            max_examples=EXAMPLES or 12,
            stateful_step_count=12,
            derandomize=not EXAMPLES,  # make test: a fixed seed; make fuzz: explores
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


@pytest.fixture
def settings_override(settings: Any) -> None:
    settings.SCHEDULER_LOCK_KEY = f"test-model-{uuid.uuid4().hex}"
    settings.JOB_CANCEL_GRACE_SECONDS = 60
    settings.BATCH_HAND_BACK_SECONDS = 3600  # hand-backs come from the model, not the clock
