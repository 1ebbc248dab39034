"""The Celery app shared by every role. Workers and the bridge import it; the tasks (one job,
or a batch) live in `orchestration.celery_tasks`."""

import contextlib
import os

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("orchestration")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Celery's Django fix-up closes the database connection before and after every task unless
# told otherwise: a new PostgreSQL connection per job. Reuse it: a connection that died
# meanwhile (a PostgreSQL restart) fails its first statement, and the worker reconnects and
# runs it once more (`orchestration.worker.outcomes.with_reconnect`, claims.claim_many).
app.conf["CELERY_DB_REUSE_MAX"] = 10_000
app.autodiscover_tasks(related_name="celery_tasks")  # not `tasks`: that name is for Django tasks


@worker_init.connect
def _refuse_without_task_modules(**kwargs: object) -> None:
    # A worker that could not import a module of JOB_TASK_MODULES would dead-letter every job
    # of its tasks as "no handler": it stops instead (the web reports it as orchestration.E101).
    from orchestration.worker import task_modules_problem

    if problem := task_modules_problem():
        raise RuntimeError(problem)


@worker_process_init.connect
def _start_process(**kwargs: object) -> None:
    # In the process that runs tasks (the solo pool's own, or each prefork child after the
    # fork): a tracer provider's export thread and connections must not be shared by a fork.
    from config import tracing
    from logs.context import service_name
    from orchestration.fair_slots import SLOTS
    from orchestration.worker.claims import worker_id

    tracing.setup(service_name())
    # This process is a slot of the queues it consumes (orchestration.fair_slots): each process
    # that runs jobs says so itself, every beat, from a thread of its own.
    SLOTS.configure(worker_id(), sorted(app.amqp.queues.consume_from or {}))
    SLOTS.start_beating()


@worker_process_shutdown.connect
def _flush_shipped_logs(**kwargs: object) -> None:
    # A prefork child leaves through os._exit, which skips atexit and so logging.shutdown:
    # send its last log records to Kafka (and its last spans) first.
    from config import tracing
    from logs.shipping import flush_all

    flush_all()
    tracing.flush()


@worker_ready.connect
def _start_worker_heartbeat(sender: object = None, **kwargs: object) -> None:
    # The worker role's liveness and, on METRICS_PORT, its own /metrics (production).
    from metrics.heartbeat import Heartbeat
    from metrics.prom import serve_role_metrics

    serve_role_metrics("worker")
    hostname = getattr(sender, "hostname", "")
    # The queues it consumes (`--queues`): `GET /api/v1/queues/` counts each one's consumers.
    queues = sorted(app.amqp.queues.consume_from or {})
    Heartbeat("worker", lambda: {"celery": hostname, "queues": queues}).start()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _leave_slots(**kwargs: object) -> None:
    # Its slots go at once, not when their entries expire: another worker's jobs may use them.
    from orchestration.fair_slots import SLOTS

    with contextlib.suppress(Exception):  # Redis away: the entries expire on their own
        SLOTS.leave()
