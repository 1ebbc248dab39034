"""The chaos harness (`make chaos`): the full stack as processes on private embedded engines,
a steady mix of jobs and workflows, one fault at a time, then the invariants over every job.

Per fault: load starts, the fault hits a few seconds in, load goes on for a while, then the
harness waits (bounded) for every job to finish and checks:
- lost: jobs not in a terminal state within the bound;
- overlapping: two attempts of one job whose running intervals overlap;
- duplicated: a job with more than one successful attempt, or a SUCCEEDED job without one,
  or (web fault) an idempotency key that made two jobs;
- workflows: every workflow finished and consistent with its tasks;
- logs: every successful `demo.log` job has its lines in ClickHouse;
- batches: a fault's batch made each of its callbacks exactly once, and each ran to success once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import requests
from django.contrib.auth import get_user_model
from django.db import OperationalError, close_old_connections, connection, models, transaction

from devtools import engines
from jobs import services
from jobs.models import TERMINAL_STATUSES, Job
from jobs.services import JobSpec

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
FAST = {"initial": 0.2, "factor": 2.0, "max": 1.0, "jitter": 0.1}
ROLE_ENV = {
    "JOB_LEASE_SECONDS": "4", "DISPATCH_STALE_SECONDS": "4", "SCHEDULER_TICK_SECONDS": "0.3",
    "SCHEDULER_LOCK_TTL_SECONDS": "3", "LOG_SHIPPING": "true", "HEARTBEAT_SECONDS": "1", "BREAKER_ENABLED": "false",
    "BRIDGE_COMMIT_SECONDS": "0.5", "PYTHONUNBUFFERED": "1",
    # "parked": a queue no worker consumes until the queue-parked fault starts one for it.
    "QUEUES": "default; parked window=200", "WORKER_QUEUES": "default",
}  # fmt: skip


def role_commands(web_port: int) -> dict[str, list[str]]:
    worker = [PY, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--without-mingle", "--without-gossip",
              "--loglevel", "INFO", "--hostname"]  # fmt: skip
    web = [
        PY, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{web_port}", "--workers", "2",
        "--threads", "4", "--worker-class", "gthread", "--graceful-timeout", "2",
    ]  # fmt: skip
    return {
        "web": web,
        "worker1": [*worker, "chaos1@%h", "--queues", "default"],
        "worker2": [*worker, "chaos2@%h", "--queues", "default"],
        "relay": [PY, "manage.py", "run_relay"],
        "bridge": [PY, "manage.py", "run_bridge"],
        "scheduler1": [PY, "manage.py", "run_scheduler"],
        "scheduler2": [PY, "manage.py", "run_scheduler"],
        "log-sink": [PY, "manage.py", "run_log_sink"],
    }


# Roles a fault starts when it needs them (the supervisor restarts them too from then on).
ON_DEMAND = {
    "worker-parked": [PY, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--without-mingle",
                      "--without-gossip", "--loglevel", "INFO", "--hostname", "chaos-parked@%h", "--queues", "parked"],
}  # fmt: skip


class Supervisor:
    """Runs every role and restarts one that died within half a second, like circus does."""

    def __init__(self, log_dir: Path, web_port: int) -> None:
        self.commands = {**role_commands(web_port), **ON_DEMAND}
        self.env = {**os.environ, **ROLE_ENV}
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.paused = False
        self.stop_event = threading.Event()
        self.restarts = 0

    def start(self, name: str) -> None:
        with (self.log_dir / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(self.commands[name], cwd=REPO, env=self.env, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def run(self) -> None:
        for name in self.commands:
            if name not in ON_DEMAND:
                self.start(name)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self.stop_event.wait(0.5):
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.paused:
                    self.restarts += 1
                    self.start(name)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[name].pid, sig)  # the role and its children (gunicorn's workers)

    def close(self) -> None:
        self.stop_event.set()
        for name in self.procs:
            self.kill(name, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()


@dataclass
class Result:
    fault: str
    submitted: int = 0
    finished: int = 0
    lost: int = 0
    duplicated: int = 0
    overlapping: int = 0
    workflows_bad: int = 0
    logs_missing: int = 0
    batches_bad: int = 0
    max_latency: float = 0.0
    slow_starts: int = 0  # the load's jobs that waited past the fault's bound to start (if it sets one)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.duplicated or self.overlapping or self.workflows_bad or self.logs_missing
            or self.slow_starts or self.batches_bad
        )  # fmt: skip


# A diamond with a flaky branch and a compensation on its root, in the load every 40 submits.
DIAMOND = [
    {"id": "a", "type": "demo.noop", "compensation": {"type": "demo.echo", "payload": {"undo": True}, "backoff": FAST}},
    {"id": "b", "type": "demo.sleep", "payload": {"seconds": 0.2}, "depends_on": ["a"], "backoff": FAST},
    {"id": "c", "type": "demo.flaky", "payload": {"failures": 1}, "depends_on": ["a"], "backoff": FAST},
    {"id": "d", "type": "demo.log", "payload": {"lines": 2}, "depends_on": ["b", "c"]},
]

# Every step kind, in the load every 40 submits (after each diamond): a map of 20 children, a
# durable sleep, an approval (the load's owner approves it: see `approve_waiting`) and a
# sub-workflow. A kill of any role lands on one of them somewhere in its life.
GROWING = [
    {"id": "split", "type": "demo.echo", "payload": {"items": list(range(20))}},
    {"id": "fan", "map": {"over": "split", "path": "items",
                          "task": {"type": "demo.sleep", "payload": {"seconds": 0.05}, "backoff": FAST}}},
    {"id": "nap", "wait": {"sleep_seconds": 1}, "depends_on": ["fan"]},
    {"id": "ok", "approval": {"allow_self": True}, "depends_on": ["nap"]},
    {"id": "child", "workflow": {"tasks": [{"id": "x", "type": "demo.sleep", "payload": {"seconds": 0.2},
                                            "backoff": FAST}]}, "depends_on": ["ok"]},
    {"id": "done", "type": "demo.noop", "depends_on": ["child"]},
]  # fmt: skip


def approve_waiting(owner_id: int) -> None:
    """The owner approves every approval step of theirs that waits (as an operator would)."""
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from config.errors import StateConflict
    from workflows import steps
    from workflows.models import StepKind, StepState, WorkflowTask

    owner = get_user_model().objects.get(pk=owner_id)
    waiting = WorkflowTask.objects.filter(workflow__owner_id=owner_id, kind=StepKind.APPROVAL, state=StepState.WAITING)
    for workflow_id, task_id in waiting.values_list("workflow_id", "task_id"):
        try:
            with transaction.atomic():
                steps.decide(workflow_id=workflow_id, task_id=task_id, user=owner, decision="approve")
        except StateConflict:
            pass  # decided meanwhile, or its workflow ended


class Load:
    """Submits a steady mix of jobs (and a workflow now and then) for one owner, through the
    services, riding out a database restart. Every two seconds a burst of the same mix goes
    in as one bulk submit, so the bridge packs batches and every fault also hits workers in
    the middle of one."""

    BURST = 40

    MIX: tuple[tuple[str, dict[str, Any]], ...] = (
        ("demo.noop", {}), ("demo.sleep", {"seconds": 0.3}), ("demo.log", {"lines": 3}), ("demo.noop", {}),
        ("demo.flaky", {"failures": 1}), ("demo.log", {"lines": 3}), ("demo.sleep", {"seconds": 0.3}),
        ("demo.fail", {"retryable": False}), ("demo.noop", {}), ("demo.echo", {"x": 1}),
    )  # fmt: skip

    def __init__(self, owner_id: int, rate: float, burst: int = BURST) -> None:
        self.owner_id, self.rate, self.burst = owner_id, rate, burst
        self.stop = threading.Event()
        self.errors = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from workflows.serializers import WorkflowInputSerializer
        from workflows.services import workflow_submit

        i = 0
        while not self.stop.is_set():
            type_, payload = self.MIX[i % len(self.MIX)]
            try:
                if i % max(1, int(2 * self.rate)) == 0:
                    services.job_submit_bulk(owner_id=self.owner_id, specs=[
                        JobSpec(type=t, payload=p, backoff=FAST, max_attempts=4, timeout_seconds=30)
                        for t, p in (self.MIX * (self.burst // len(self.MIX) + 1))[: self.burst]
                    ])  # fmt: skip
                if i % 40 == 39:
                    body = {"tasks": DIAMOND} if i % 80 == 39 else {"name": "growing", "tasks": GROWING}
                    s = WorkflowInputSerializer(data=body)
                    s.is_valid(raise_exception=True)
                    workflow_submit(owner_id=self.owner_id, spec=s.to_spec(s.validated_data), max_tasks=100)
                else:
                    spec = JobSpec(type=type_, payload=payload, backoff=FAST, max_attempts=4, timeout_seconds=30)
                    services.job_submit(owner_id=self.owner_id, spec=spec)
                if i % 10 == 0:
                    approve_waiting(self.owner_id)
                i += 1
            except OperationalError:
                self.errors += 1
                connection.close()  # PostgreSQL restarting: reconnect on the next submit
                time.sleep(0.5)
            self.stop.wait(1.0 / self.rate)
        connection.close()


class Harness:
    def __init__(self, *, rate: float, log_dir: Path, web_port: int) -> None:
        self.rate = rate
        self.log_dir = log_dir
        self.web_port = web_port
        self.supervisor = Supervisor(log_dir, web_port)
        self.data_dir = Path(os.environ["DATA_DIR"])
        self.notes: list[str] = []
        self.hostile_owners: list[int] = []  # a fault's odd users: their jobs must end terminal too
        # A fault's bound on how long the load's jobs may wait to start meanwhile (seconds), and
        # what it does once the load stopped (before the drain).
        self.start_bound: float | None = None
        self.after_load: Callable[[], None] | None = None
        self.batches: list[uuid.UUID] = []  # a fault's batches: checked after the drain

    # -- engines ----------------------------------------------------------------------------

    def restart_engine(self, name: str, down_for: float = 0.0) -> None:
        engines.stop([name], data_dir=self.data_dir)
        time.sleep(down_for)
        engines.ensure([name], data_dir=self.data_dir, environ={k: v for k, v in os.environ.items()
                                                                 if k != engines.ENV_VARS[name]})  # fmt: skip

    # -- one fault ---------------------------------------------------------------------------

    def run_fault(self, name: str, inject: Callable[[Harness], None], *, load_seconds: float = 15.0,
                  drain_bound: float = 150.0) -> Result:  # fmt: skip
        close_old_connections()
        user = get_user_model().objects.create(username=f"chaos-{name}-{uuid.uuid4().hex[:6]}")
        result = Result(name)
        # A fault that bounds the load's start waits runs a lighter load: at full rate the
        # load keeps two workers busy on its own (its 0.3 s sleeps alone ask two worker-seconds
        # a second), and the bound would measure the workers, not the fault.
        load = Load(user.pk, self.rate / 3, Load.BURST // 4) if name in LIGHT_LOAD else Load(user.pk, self.rate)
        load.thread.start()
        time.sleep(4.0)
        started = time.monotonic()
        try:
            inject(self)
        except Exception as exc:  # the fault itself failed to apply: say so, still check
            result.notes.append(f"injection failed: {type(exc).__name__}: {exc}")
        remaining = load_seconds - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
        load.stop.set()
        load.thread.join(30)
        if self.after_load is not None:
            self.after_load()
            self.after_load = None
        self._drain(user.pk, drain_bound)
        self._check(user.pk, result, since=started)
        if load.errors:
            result.notes.append(f"{load.errors} submits retried during the fault")
        return result

    def _drain(self, owner_id: int, bound: float) -> None:
        """Wait (bounded) until the load's jobs and workflows, and the fault's odd users' jobs,
        have all finished."""
        from workflows.models import WORKFLOW_TERMINAL, Workflow

        owners = [owner_id, *self.hostile_owners]
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            try:
                close_old_connections()
                open_jobs = Job.objects.filter(owner_id__in=owners).exclude(status__in=TERMINAL_STATUSES).count()
                open_flows = Workflow.objects.filter(owner_id=owner_id).exclude(status__in=WORKFLOW_TERMINAL).count()
                if not open_jobs and not open_flows:
                    return
                approve_waiting(owner_id)
            except OperationalError:
                connection.close()
            time.sleep(1.0)

    def _check(self, owner_id: int, result: Result, since: float) -> None:
        from workflows.models import WORKFLOW_TERMINAL, Workflow

        jobs = Job.objects.filter(owner_id=owner_id)
        if self.start_bound is not None:
            self._slow_starts(jobs, result, since)
        result.submitted = jobs.count()  # jobs, workflow tasks and compensations included
        result.finished = jobs.filter(status__in=TERMINAL_STATUSES).count()
        result.lost = jobs.exclude(status__in=TERMINAL_STATUSES).count()
        odd = Job.objects.filter(owner_id__in=self.hostile_owners)
        result.lost += odd.exclude(status__in=TERMINAL_STATUSES).count()
        if self.hostile_owners:
            ends = dict(odd.order_by().values_list("status").annotate(n=models.Count("id")))
            self.notes.append("odd jobs ended " + ", ".join(f"{n} {status}" for status, n in sorted(ends.items())))
            self.hostile_owners.clear()
        with connection.cursor() as cur:
            cur.execute(_OVERLAP_SQL, [owner_id])
            result.overlapping = cur.fetchone()[0]
            cur.execute(_DUPLICATE_SQL, [owner_id])
            result.duplicated = cur.fetchone()[0]
            cur.execute(
                "SELECT coalesce(max(extract(epoch FROM finished_at - created_at)), 0) FROM jobs_job "
                "WHERE owner_id = %s AND status = 'SUCCEEDED' AND workflow_id IS NULL AND type <> 'demo.flaky'",
                [owner_id],
            )
            result.max_latency = round(float(cur.fetchone()[0]), 1)
        flows = Workflow.objects.filter(owner_id=owner_id)
        result.workflows_bad = flows.exclude(status__in=WORKFLOW_TERMINAL).count()
        result.workflows_bad += sum(1 for w in flows.filter(status="SUCCEEDED") if w.tasks_succeeded != w.tasks_total)
        grown = dict(flows.filter(name="growing").order_by().values_list("status").annotate(n=models.Count("id")))
        if grown:
            result.notes.append(
                "workflows with every step kind: " + ", ".join(f"{n} {s}" for s, n in sorted(grown.items()))
            )
        result.logs_missing = self._missing_logs(owner_id)
        result.batches_bad = self._bad_batches()
        result.notes += self.notes
        self.notes.clear()

    def _bad_batches(self) -> int:
        """A fault's batches: each callback made once (its reserved key names one job), that job
        SUCCEEDED with exactly one successful attempt, and the batch complete."""
        from jobs.models import Batch

        bad = 0
        deadline = time.monotonic() + 30  # the last tick's callbacks may still be running
        for batch_id in self.batches:
            while True:
                close_old_connections()
                batch = Batch.objects.get(id=batch_id)
                made = {name: list(Job.objects.filter(idempotency_key=f"batch:{batch_id}:{name}"))
                        for name in ("on_success", "on_complete")}  # fmt: skip
                done = all(len(jobs) == 1 and jobs[0].status == "SUCCEEDED" for jobs in made.values())
                if done or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            runs = {name: [j.history.filter(status="SUCCEEDED").count() for j in jobs] for name, jobs in made.items()}
            problem = [f"{name}: {len(made[name])} jobs, successful runs {runs[name]}" for name in made
                       if runs[name] != [1]] + (["not complete"] if batch.completed_at is None else [])  # fmt: skip
            attempts = {name: [j.attempt_seq for j in jobs] for name, jobs in made.items()}
            self.notes.append(f"batch {str(batch_id)[:8]}: callbacks' attempts {attempts}"
                              + (f"; {', '.join(problem)}" if problem else ""))  # fmt: skip
            bad += bool(problem)
        self.batches.clear()
        return bad

    def _slow_starts(self, jobs: Any, result: Result, since: float) -> None:
        """The load's plain jobs submitted once the fault hit, and whose first attempt waited
        longer than the fault's bound to start."""
        from datetime import timedelta

        from django.db.models import Min
        from django.utils import timezone

        bound, self.start_bound = self.start_bound, None
        assert bound is not None
        hit = timezone.now() - timedelta(seconds=time.monotonic() - since)
        waits = [
            (first - created).total_seconds()
            for created, first in jobs.filter(created_at__gte=hit, workflow__isnull=True)
            .annotate(first=Min("history__started_at")).values_list("created_at", "first")
            if first is not None
        ]  # fmt: skip
        result.slow_starts = sum(1 for w in waits if w > bound)
        if waits:
            waits.sort()
            p99 = waits[max(0, round(0.99 * len(waits)) - 1)]
            result.notes.append(
                f"the load's start waits meanwhile: p99 {p99:.2f} s, max {waits[-1]:.2f} s (bound {bound:g} s)"
            )

    def _missing_logs(self, owner_id: int, wait: float = 90.0) -> int:
        from logs import store

        done = Job.objects.filter(owner_id=owner_id, type="demo.log", status="SUCCEEDED", workflow__isnull=True)
        expected = {str(j): 3 for j in done.values_list("id", flat=True)}
        if not expected:
            return 0
        deadline = time.monotonic() + wait
        missing = len(expected)
        last_error = ""
        while time.monotonic() < deadline:
            try:
                rows = (
                    store.client()
                    .query(
                        f"SELECT job_id, count() FROM {store.table()} WHERE job_id IN {{ids:Array(UUID)}} "  # noqa: S608
                        "AND message LIKE 'demo.log line %' GROUP BY job_id",
                        parameters={"ids": list(expected)},
                    )
                    .result_rows
                )
                have = {str(r[0]): r[1] for r in rows}
                missing = sum(1 for j, n in expected.items() if have.get(j, 0) < n)
                if not missing:
                    return 0
            except Exception as exc:  # ClickHouse coming back: ask again
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(2.0)
        if last_error:
            self.notes.append(f"log check: {last_error[:120]}")
        return missing


# Two attempts of one job whose running intervals overlap (an attempt still RUNNING counts as
# running until now).
_OVERLAP_SQL = """
SELECT count(*) FROM jobs_jobattempt a JOIN jobs_jobattempt b ON a.job_id = b.job_id AND a.attempt < b.attempt
  JOIN jobs_job j ON j.id = a.job_id
 WHERE j.owner_id = %s
   AND a.started_at < coalesce(b.finished_at, now()) AND b.started_at < coalesce(a.finished_at, now())
"""

# Jobs with more than one successful attempt, or SUCCEEDED without exactly one.
_DUPLICATE_SQL = """
SELECT count(*) FROM (
    SELECT j.id FROM jobs_job j LEFT JOIN jobs_jobattempt a ON a.job_id = j.id AND a.status = 'SUCCEEDED'
     WHERE j.owner_id = %s
     GROUP BY j.id, j.status
    HAVING count(a.id) > 1 OR (j.status = 'SUCCEEDED' AND count(a.id) <> 1)
) AS d
"""


# --- the faults ------------------------------------------------------------------------------


def _running_worker(h: Harness) -> str:
    """The worker role that is running a job right now (waits a little for one)."""
    pids = {h.supervisor.pid(n): n for n in ("worker1", "worker2")}
    for _ in range(50):
        close_old_connections()
        for worker in Job.objects.filter(status="RUNNING").values_list("worker", flat=True):
            pid = int(worker.rsplit(":", 1)[-1]) if ":" in worker else 0
            if pid in pids:
                return pids[pid]
        time.sleep(0.1)
    return "worker1"


def kill_worker(h: Harness) -> None:
    h.supervisor.kill(_running_worker(h))


def kill_role(role: str) -> Callable[[Harness], None]:
    def inject(h: Harness) -> None:
        h.supervisor.kill(role)

    return inject


def kill_scheduler_leader(h: Harness) -> None:
    from metrics import heartbeat

    leader = next((r for r in heartbeat.roles() if r["role"] == "scheduler" and r.get("leading")), None)
    names = {h.supervisor.pid(n): n for n in ("scheduler1", "scheduler2")}
    h.supervisor.kill(names.get(leader["pid"], "scheduler1") if leader else "scheduler1")


def kill_web_during_bulk(h: Harness) -> None:
    """Bulk submits over HTTP with an idempotency key per job, the web SIGKILLed in the middle;
    the client retries every batch until it is accepted. Every key must make exactly one job."""
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create(username=f"chaos-web-{uuid.uuid4().hex[:6]}")
    token = Token.objects.create(user=user).key
    session = requests.Session()
    session.headers.update({"Authorization": f"Token {token}", "Content-Type": "application/json"})
    batches = [[{"type": "demo.noop", "idempotency_key": f"b{b}-{i}"} for i in range(200)] for b in range(10)]
    killer = threading.Timer(0.3, lambda: h.supervisor.kill("web"))
    killer.start()
    for batch in batches:
        for _ in range(120):
            try:
                r = session.post(f"http://127.0.0.1:{h.web_port}/api/v1/jobs/bulk/", data=orjson.dumps({"jobs": batch}),
                                 timeout=10)  # fmt: skip
                if r.status_code in (200, 201):
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
    close_old_connections()
    made = Job.objects.filter(owner=user).count()
    h.web_extra = (user.pk, made)  # type: ignore[attr-defined]
    if made != 2000:
        raise RuntimeError(f"{made} jobs for 2000 idempotency keys")


def restart_engine(name: str, down_for: float = 0.0) -> Callable[[Harness], None]:
    def inject(h: Harness) -> None:
        h.restart_engine(name, down_for)

    return inject


def stall_worker(h: Harness) -> None:
    """SIGSTOP a worker in the middle of a job for twice its lease, then SIGCONT: the job is
    reaped and run again; the stalled attempt's late outcome changes nothing."""
    name = _running_worker(h)
    h.supervisor.kill(name, signal.SIGSTOP)
    time.sleep(10)
    h.supervisor.kill(name, signal.SIGCONT)


def poison(h: Harness) -> None:
    from confluent_kafka import Producer
    from django.conf import settings

    from config import kafka

    producer = Producer(kafka.producer_config())
    for value in (b"not json", b"{}", orjson.dumps({"v": 99, "job_id": "nope"}), b"\x00\xff" * 50):
        producer.produce(settings.KAFKA_JOBS_TOPIC, value)
        producer.produce(settings.KAFKA_LOGS_TOPIC, value)
    producer.flush(10)


def _odd_user(h: Harness, name: str) -> int:
    user = get_user_model().objects.create(username=f"chaos-{name}-{uuid.uuid4().hex[:6]}")
    h.hostile_owners.append(user.pk)
    return user.pk


def poison_outbox(h: Harness) -> None:
    """Outbox rows Kafka refuses: a dead letter whose error is 1.1 MB (its `jobs.dead`
    message once stopped the relay for everyone) and a dispatch padded past the broker's
    message size. The relay must set them aside (the job DEAD_LETTER with the reason) and
    keep relaying everyone else's jobs."""
    from jobs.models import Outbox

    owner = _odd_user(h, "poison-outbox")
    big = JobSpec(type="demo.fail", payload={"message": "x" * 1_100_000, "retryable": False}, max_attempts=1)
    services.job_submit(owner_id=owner, spec=big)
    with transaction.atomic():  # the relay only ever sees the padded row
        padded = services.job_submit(owner_id=owner, spec=JobSpec(type="demo.noop")).job
        row = Outbox.objects.get(job_id=padded.id, topic="jobs")
        row.envelope = {**row.envelope, "pad": "y" * 2_000_000}
        row.save(update_fields=["envelope"])


def slot_key_taken(h: Harness) -> None:
    """A schedule whose due slot's idempotency key (`schedule:<id>:<slot>`) its owner already
    used for another job: firing it once crash-looped the scheduler, and the scans after cron
    stopped. Jobs blocked by a concurrency key (released by a later scan) go in beside it."""
    from datetime import timedelta

    from django.utils import timezone

    from jobs import schedules
    from jobs.models import Schedule

    owner = _odd_user(h, "slot-key")
    schedule = Schedule.objects.create(owner_id=owner, name="taken", cron="* * * * *", type="demo.noop")
    now = timezone.now()
    for minute in (0, 1, 2):  # the slot due now, whichever minute the next tick falls in
        slot = schedules.latest_slot(schedule, now + timedelta(minutes=minute))
        spec = JobSpec(
            type="demo.echo", payload={"taken": True}, idempotency_key=f"schedule:{schedule.id}:{slot.isoformat()}"
        )
        services.job_submit(owner_id=owner, spec=spec)
    Schedule.objects.filter(id=schedule.id).update(next_fire_at=now)
    services.job_submit_bulk(owner_id=owner, specs=[
        JobSpec(type="demo.sleep", payload={"seconds": 0.2}, concurrency_key="chaos-held", concurrency_limit=1)
        for _ in range(10)
    ])  # fmt: skip


def queue_parked(h: Harness) -> None:
    """Another user fills a queue nobody consumes ("parked": a typo, a stopped deployment) with
    5,000 jobs, in bulks, while the load runs on `default`. The load must keep flowing: every
    job of it submitted meanwhile starts within 2 s (once, the parked queue held the bridge
    back for every queue). Afterwards a worker for "parked" starts, and its jobs must end too."""
    owner = _odd_user(h, "parked")
    for _ in range(5):
        services.job_submit_bulk(owner_id=owner, specs=[JobSpec(type="demo.noop", queue="parked")] * 1000)
    h.start_bound = 2.0
    h.after_load = lambda: h.supervisor.start("worker-parked")


def batch_callback_worker_kill(h: Harness) -> None:
    """A batch of 200 short jobs with both callbacks (each a 3 s job): once on_complete's job
    runs, the worker running it is SIGKILLed. The callback is reaped and run again: each
    callback must be made once and succeed once, however the kill and the retries fall."""
    from jobs import batches

    owner = _odd_user(h, "batch")
    callbacks = {name: {"type": "demo.sleep", "payload": {"seconds": 3}, "backoff": FAST} for name in batches.CALLBACKS}
    specs = [JobSpec(type="demo.sleep", payload={"seconds": 0.02}, backoff=FAST)] * 200
    batch, _ = batches.batch_create(owner_id=owner, specs=specs, callbacks=callbacks, description="chaos")
    h.batches.append(batch.id)
    key = f"batch:{batch.id}:on_complete"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        close_old_connections()
        callback = Job.objects.filter(idempotency_key=key, status="RUNNING").values_list("worker", flat=True).first()
        if callback:
            pids = {h.supervisor.pid(n): n for n in ("worker1", "worker2")}
            victim = pids.get(int(callback.rsplit(":", 1)[-1]) if ":" in callback else 0, "worker1")
            h.supervisor.kill(victim)
            h.notes.append(f"killed {victim} running batch {str(batch.id)[:8]}'s on_complete")
            return
        time.sleep(0.1)
    raise RuntimeError("the batch's on_complete never ran within 90 s")


FAULTS: dict[str, Callable[[Harness], None]] = {
    "worker-kill": kill_worker,
    "bridge-kill": kill_role("bridge"),
    "relay-kill": kill_role("relay"),
    "scheduler-leader-kill": kill_scheduler_leader,
    "log-sink-kill": kill_role("log-sink"),
    "web-kill-during-bulk": kill_web_during_bulk,
    "kafka-restart": restart_engine("kafka"),
    "redis-restart": restart_engine("redis"),
    "postgres-restart": restart_engine("postgres", down_for=2.0),
    "clickhouse-down": restart_engine("clickhouse", down_for=60.0),
    "worker-stall": stall_worker,
    "poison": poison,
    "poison-outbox": poison_outbox,
    "slot-key-taken": slot_key_taken,
    "queue-parked": queue_parked,
    "batch-callback-worker-kill": batch_callback_worker_kill,
}
LIGHT_LOAD = frozenset({"queue-parked"})
FAST_SUBSET = ("worker-kill", "bridge-kill", "poison", "poison-outbox", "queue-parked")


def table(results: list[Result]) -> str:
    head = ["fault", "submitted", "finished", "lost", "duplicated", "overlapping", "workflows bad", "logs missing",
            "slow starts", "batches bad", "max latency s", "result"]  # fmt: skip
    rows = [head] + [
        [r.fault, str(r.submitted), str(r.finished), str(r.lost), str(r.duplicated), str(r.overlapping),
         str(r.workflows_bad), str(r.logs_missing), str(r.slow_starts), str(r.batches_bad), f"{r.max_latency:.1f}",
         "ok" if r.ok else "FAILED"]
        for r in results
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]  # fmt: skip
    return "\n".join(lines)


def run(names: list[str], *, rate: float, log_dir: Path, web_port: int, out: Any) -> list[Result]:
    harness = Harness(rate=rate, log_dir=log_dir, web_port=web_port)
    results = []
    try:
        harness.supervisor.run()
        time.sleep(12)  # roles up, consumer groups joined
        for name in names:
            out.write(f"chaos: {name} ...\n")
            started = time.monotonic()
            result = harness.run_fault(name, FAULTS[name])
            out.write(f"chaos: {name}: {'ok' if result.ok else 'FAILED'} in {time.monotonic() - started:.0f} s"
                      f"{' (' + '; '.join(result.notes) + ')' if result.notes else ''}\n")  # fmt: skip
            results.append(result)
    finally:
        harness.supervisor.close()
    out.write("\n" + table(results) + "\n")
    out.write(f"\nrole restarts by the supervisor: {harness.supervisor.restarts}; role logs in {log_dir}\n")
    return results
