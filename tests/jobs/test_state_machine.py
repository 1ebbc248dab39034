"""Property test of the job state machine against real PostgreSQL rows.

Hypothesis fires random transitions at real jobs: relays, deliveries (including duplicate
and stale messages), successes and failures (including late results of attempts that lost
their job), worker crashes (lease lost), cancels, requeues and re-dispatches. After every
step the invariants must hold for every job:

- at most one RUNNING attempt, and one exactly when the job is RUNNING;
- a terminal job has `finished_at` and no running attempt;
- never more attempts in the current budget than `max_attempts`;
- history numbers are 1..attempt_seq with no gaps;
- nothing leaves a terminal state except an explicit retry;
- the counts by status kept by triggers (jobs.tallies) equal a count of the table.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from jobs import services, tallies, transitions
from jobs.errors import IllegalTransition
from jobs.models import TERMINAL_STATUSES, AttemptStatus, Job, JobAttempt, JobStatus, Outbox
from orchestration.policy import DeadLetter, decide
from tests.factories import UserFactory


@dataclass(frozen=True)
class Message:
    """A dispatch message as the worker would receive it (possibly duplicated or stale)."""

    job_id: uuid.UUID
    token: uuid.UUID


@dataclass(frozen=True)
class Owned:
    """An attempt a worker believes it holds (it may have lost the job since)."""

    job_id: uuid.UUID
    attempt: int


class JobMachine(RuleBasedStateMachine):
    messages = Bundle("messages")
    owned = Bundle("owned")  # attempts a worker owns (claimed, not ended)

    owner_id: int  # set by the test: one owner for every run keeps examples cheap

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[uuid.UUID] = []
        self.terminal_seen: dict[uuid.UUID, str] = {}

    def _job(self, index: int) -> uuid.UUID:
        return self.jobs[index % len(self.jobs)]

    @rule(max_attempts=st.integers(1, 4))
    def submit(self, max_attempts: int) -> None:
        spec = services.JobSpec(type="demo.noop", max_attempts=max_attempts)
        self.jobs.append(services.job_submit(owner_id=self.owner_id, spec=spec).job.id)

    @rule(target=messages, index=st.integers(0, 50), mark=st.booleans())
    def relay(self, index: int, mark: bool) -> Message:
        """Publish a job's outbox row; sometimes crash before marking QUEUED (row stays)."""
        if not self.jobs:
            return Message(uuid.uuid4(), uuid.uuid4())
        job_id = self._job(index)
        row = Outbox.objects.filter(job_id=job_id, topic="jobs").order_by("id").first()
        if row is None:
            return Message(job_id, uuid.uuid4())  # a message that never matched any dispatch
        token = uuid.UUID(row.envelope["dispatch_token"])
        if mark:
            with transaction.atomic():
                transitions.mark_queued_many([transitions.Relayed(str(job_id), str(token), 0, 0)])
                row.delete()
        return Message(job_id, token)

    @rule(target=owned, message=messages)
    def deliver(self, message: Message) -> Owned:
        """A worker receives a message (the same one may arrive again) and tries to claim."""
        with transaction.atomic():
            claim = transitions.mark_running(message.job_id, dispatch_token=message.token, worker="w", lease_seconds=60)
        return Owned(message.job_id, claim.attempt if claim else -1)

    @rule(owned=owned)
    def succeed(self, owned: Owned) -> None:
        with transaction.atomic():
            transitions.mark_succeeded(owned.job_id, attempt=owned.attempt, result={"ok": True})

    @rule(owned=owned, permanent=st.booleans(), lost=st.booleans())
    def fail(self, owned: Owned, permanent: bool, lost: bool) -> None:
        """A handler failure, or (lost) the worker died and the lease reaper fails it."""
        job = Job.objects.filter(id=owned.job_id).first()
        if job is None:
            return
        decision = decide(
            attempts=job.attempts, max_attempts=job.max_attempts, backoff=job.backoff, now=timezone.now(),
            permanent=permanent,
        )  # fmt: skip
        status = AttemptStatus.LOST if lost else AttemptStatus.FAILED
        with transaction.atomic():
            if isinstance(decision, DeadLetter):
                transitions.move_to_dead_letter(owned.job_id, attempt=owned.attempt, error="x", attempt_status=status)
            else:
                transitions.schedule_retry(
                    owned.job_id, attempt=owned.attempt, next_retry_at=decision.at, error="x", attempt_status=status
                )

    @rule(index=st.integers(0, 50), scan=st.sampled_from(["retries", "stale"]))
    def release(self, index: int, scan: str) -> None:
        """Scheduler: a retry (its backoff treated as over), or a QUEUED job whose message was
        lost, is dispatched anew with a fresh token, through the scheduler's own statement."""
        if not self.jobs:
            return
        job_id = self._job(index)
        later = timezone.now() + timedelta(days=1)
        with transaction.atomic():
            if scan == "retries":
                released = transitions.release_batch("retries", now=later, limit=1000)
            else:
                released = transitions.release_batch("stale", now=later, limit=1, stale_before=later, ids=[job_id])
            services.job_dispatch_released(released)

    @rule(index=st.integers(0, 50))
    def cancel(self, index: int) -> None:
        if not self.jobs:
            return
        job_id = self._job(index)
        try:
            services.job_cancel(job_id=job_id)
        except IllegalTransition as exc:
            if exc.current not in TERMINAL_STATUSES:
                raise

    @rule(owned=owned)
    def worker_honours_cancel(self, owned: Owned) -> None:
        if Job.objects.filter(id=owned.job_id, cancel_requested_at__isnull=False).exists():
            with transaction.atomic():
                transitions.mark_cancelled(owned.job_id, attempt=owned.attempt)

    @rule(index=st.integers(0, 50))
    def retry(self, index: int) -> None:
        if not self.jobs:
            return
        job_id = self._job(index)
        try:
            services.job_retry(job_id=job_id)
        except IllegalTransition as exc:
            if exc.current in (JobStatus.DEAD_LETTER, JobStatus.CANCELLED):
                raise
        else:
            self.terminal_seen.pop(job_id, None)

    @rule()
    def fold_tallies(self) -> None:
        """The scheduler folds the count deltas into the totals (any time, or never)."""
        tallies.fold(now=timezone.now())

    @invariant()
    def tallies_match_the_table(self) -> None:
        """The counts by status the stats read (totals + unfolded deltas) are the table's."""
        with connection.cursor() as cur:
            cur.execute("SELECT owner_id, status, count(*) FROM jobs_job GROUP BY 1, 2")
            actual = cur.fetchall()
        for owner in {row[0] for row in actual} | {self.owner_id}:
            expected = dict.fromkeys(JobStatus.values, 0) | {s: n for o, s, n in actual if o == owner}
            assert tallies.status_counts([owner]) == expected
        assert tallies.status_counts() == dict.fromkeys(JobStatus.values, 0) | {
            s: sum(n for _, s2, n in actual if s2 == s) for _, s, _ in actual
        }

    @invariant()
    def invariants_hold(self) -> None:
        for job in Job.objects.filter(id__in=self.jobs):
            running = JobAttempt.objects.filter(job=job, status=AttemptStatus.RUNNING).count()
            assert running <= 1
            assert (running == 1) == (job.status == JobStatus.RUNNING), (job.status, running)
            assert job.attempts <= job.max_attempts
            numbers = list(JobAttempt.objects.filter(job=job).order_by("attempt").values_list("attempt", flat=True))
            assert numbers == list(range(1, job.attempt_seq + 1))
            if job.status in TERMINAL_STATUSES:
                assert job.finished_at is not None
                previous = self.terminal_seen.setdefault(job.id, job.status)
                assert previous == job.status, f"{job.id} left terminal {previous} for {job.status}"
            else:
                assert job.id not in self.terminal_seen, f"{job.id} left terminal state without a retry"


@pytest.mark.django_db
def test_job_state_machine() -> None:
    JobMachine.owner_id = UserFactory().pk
    run_state_machine_as_test(
        JobMachine,
        settings=settings(
            max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
