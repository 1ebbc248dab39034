"""Every Prometheus metric of the platform, in one place (names as in the contract:
`orchestration_` prefix, labelled by `type` and `queue` where that makes sense), and which
roles write each (`WRITERS`).

Processes: in the dev stack every role writes into one multiprocess directory
(PROMETHEUS_MULTIPROC_DIR, set by `make run`), and `/metrics` on the web port shows all of
them. In production each role serves its own `/metrics` on METRICS_PORT (`serve_role_metrics`)
and the web serves its own at `/metrics`: each shows only its role's families. Gauges say how
they combine across processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

P = "orchestration_"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

# --- jobs ---------------------------------------------------------------------------------
JOBS_SUBMITTED = Counter(
    P + "jobs_submitted_total", "Jobs created (API, bulk, schedules, workflows).", ["type", "queue"]
)
JOBS_FINISHED = Counter(P + "jobs_finished_total", "Jobs that reached a terminal status.", ["status", "type", "queue"])
JOBS_RATE_LIMITED = Counter(
    P + "jobs_rate_limited_total",
    "Jobs that waited, without a worker, for a start slot of their rate_limit_key's rate.",
    ["queue"],
)
JOB_RETRIES = Counter(P + "job_retries_total", "Failed attempts that will be retried.", ["type", "queue"])
JOB_DURATION = Histogram(
    P + "job_duration_seconds", "Handler run time of an attempt.", ["type", "queue"], buckets=LATENCY_BUCKETS
)
JOB_QUEUE_WAIT = Histogram(
    P + "job_queue_wait_seconds",
    "From dispatch (or creation) to the start of the attempt.",
    ["type", "queue"],
    buckets=LATENCY_BUCKETS,
)
JOBS_IN_STATE = Gauge(
    P + "jobs_in_state", "Jobs in each status (counted by the scheduler leader).", ["status"],
    multiprocess_mode="mostrecent",
)  # fmt: skip
JOBS_PAUSED_BY_BREAKER = Gauge(
    P + "jobs_paused_by_breaker", "Jobs paused by their owners' open circuit breakers, per type.", ["type"],
    multiprocess_mode="mostrecent",
)  # fmt: skip

# --- dispatch -----------------------------------------------------------------------------
OUTBOX_PENDING = Gauge(P + "outbox_pending", "Outbox rows not yet relayed to Kafka.", multiprocess_mode="mostrecent")
OUTBOX_AGE = Gauge(
    P + "outbox_oldest_age_seconds", "Age of the oldest outbox row (0 when empty).", multiprocess_mode="mostrecent"
)
RELAY_BATCH = Histogram(
    P + "relay_batch_size", "Outbox rows per relay batch.", buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000)
)
RELAYED = Counter(P + "relayed_total", "Dispatch messages Kafka acknowledged.", ["topic"])
# Rows set aside.
RELAY_POISON = Counter(
    P + "relay_poison_total",
    "Outbox rows the relay set aside because Kafka can never take them (by logical topic and error).",
    ["topic", "reason"],
)
BRIDGE_LAG = Gauge(
    P + "bridge_lag", "Messages in Kafka `jobs` the bridge has not committed yet.", ["partition"],
    multiprocess_mode="mostrecent",
)  # fmt: skip
QUEUE_IN_FLIGHT = Gauge(
    P + "queue_in_flight", "Jobs of a queue dispatched and not yet started: what its window holds.", ["queue"],
    multiprocess_mode="mostrecent",
)  # fmt: skip
QUEUE_HELD = Gauge(
    P + "queue_held", "1 while a queue's dispatches wait in the outbox for room in its window (reason=window) "
    "or for its rate (reason=rate).", ["queue", "reason"], multiprocess_mode="max",
)  # fmt: skip
BRIDGE_ENQUEUED = Counter(P + "bridge_enqueued_total", "Jobs the bridge put on Celery queues.", ["queue"])
BRIDGE_BATCH_SIZE = Histogram(
    P + "bridge_batch_size", "Jobs per Celery message when the bridge packs a backlog.",
    buckets=(2, 4, 8, 16, 32, 64, 128, 256),
)  # fmt: skip
CELERY_QUEUE_DEPTH = Gauge(
    P + "celery_queue_depth", "Ready Celery messages per queue.", ["queue"], multiprocess_mode="mostrecent"
)

# --- scheduler ----------------------------------------------------------------------------
SCHEDULER_LEADER = Gauge(
    P + "scheduler_leader", "1 in the scheduler process that leads.", ["identity"], multiprocess_mode="liveall"
)
SCHEDULER_SCAN = Histogram(
    P + "scheduler_scan_seconds", "Duration of each scheduler scan.", ["scan"], buckets=LATENCY_BUCKETS
)
SCHEDULER_MOVED = Counter(P + "scheduler_moved_total", "Jobs each scan moved.", ["scan"])
# The scheduler goes on past a failing scan or schedule: these count what it set aside.
SCHEDULER_ERRORS = Counter(
    P + "scheduler_errors_total", "Scheduler scans that failed; the rest of the tick ran.", ["scan"]
)
SCHEDULE_FIRE_FAILED = Counter(
    P + "schedule_fire_failed_total",
    "Schedule slots that did not fire: slot_taken (its idempotency key belongs to another job) or error.",
    ["reason"],
)

# --- circuit breakers ----------------------------------------------------------------------
BREAKER_STATE = Gauge(
    P + "breaker_state", "Circuit breakers per job type, the most open of its owners' (each has its own): "
    "0 closed, 1 half open, 2 open.", ["type"],
    multiprocess_mode="mostrecent",
)  # fmt: skip
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

# --- workflows ----------------------------------------------------------------------------
WORKFLOWS_SUBMITTED = Counter(P + "workflows_submitted_total", "Workflows created.")
WORKFLOWS_FINISHED = Counter(P + "workflows_finished_total", "Workflows that reached a terminal status.", ["status"])

# --- logs ---------------------------------------------------------------------------------
LOGS_SHIPPED = Counter(P + "logs_shipped_total", "Log records handed to Kafka by the shipping handler.", ["service"])
LOGS_DROPPED = Counter(P + "logs_dropped_total", "Log records the shipping handler gave up on.", ["service"])
LOGS_QUEUED = Gauge(
    P + "logs_queued", "Log records waiting in the log shipper's queue.", ["service"], multiprocess_mode="livesum"
)
LOGS_INGESTED = Counter(P + "logs_ingested_total", "Log records the sink stored in ClickHouse.")
LOGS_MALFORMED = Counter(P + "logs_malformed_total", "Log records the sink sent to logs.dlq.")
LOGS_INSERT = Histogram(
    P + "logs_insert_seconds", "Duration of one ClickHouse insert of the sink.", buckets=LATENCY_BUCKETS
)
LOG_SINK_PAUSED = Gauge(P + "log_sink_paused", "1 while the sink waits for ClickHouse.", multiprocess_mode="max")

# --- roles ---------------------------------------------------------------------------------
ROLE_HEARTBEAT = Gauge(
    P + "role_heartbeat_timestamp_seconds", "Last heartbeat of each role process.", ["role"], multiprocess_mode="max"
)


# --- who writes what --------------------------------------------------------------------------
# The roles that write each metric. A role's /metrics (`registry(role)`) shows these families,
# their known series at 0 from the start, and none of the other roles': Prometheus gets each
# family only from the roles that write it. A family of several roles is counted where its
# event happens (a job ends in the worker, in the web when cancelled while it waits, in the
# scheduler when its lease expired: sum() over the roles is the total) or is each process's
# own (log shipping, heartbeat: labelled by service or role). A role that writes another's
# family on a rare path (the relay or the bridge dead-letters a job it can never dispatch:
# jobs_finished_total) shows it from that first count: nothing written is hidden.
ROLES = ("web", "worker", "relay", "bridge", "scheduler", "log-sink")
AnyMetric = Counter | Gauge | Histogram
LIFECYCLE = ("web", "worker", "scheduler")  # the API; workflows moving on; schedules, timers, expired leases
WRITERS: dict[AnyMetric, tuple[str, ...]] = {
    JOBS_SUBMITTED: LIFECYCLE,
    JOBS_FINISHED: LIFECYCLE,
    JOB_RETRIES: ("worker", "scheduler"),  # a failed attempt; a lost one
    WORKFLOWS_SUBMITTED: ("web", "worker"),  # the API; a sub-workflow step
    WORKFLOWS_FINISHED: LIFECYCLE,
    **dict.fromkeys((JOBS_RATE_LIMITED, JOB_DURATION, JOB_QUEUE_WAIT), ("worker",)),
    **dict.fromkeys((OUTBOX_PENDING, OUTBOX_AGE, RELAY_BATCH, RELAYED, RELAY_POISON), ("relay",)),
    **dict.fromkeys((QUEUE_IN_FLIGHT, QUEUE_HELD), ("relay",)),  # its fair pick measures each queue's window
    **dict.fromkeys((BRIDGE_ENQUEUED, BRIDGE_BATCH_SIZE, CELERY_QUEUE_DEPTH), ("bridge",)),
    # The scheduler's leader measures the whole platform (bridge_lag too: the bridges' commits).
    **dict.fromkeys((JOBS_IN_STATE, JOBS_PAUSED_BY_BREAKER, BREAKER_STATE, BRIDGE_LAG), ("scheduler",)),
    **dict.fromkeys((SCHEDULER_LEADER, SCHEDULER_SCAN, SCHEDULER_MOVED, SCHEDULER_ERRORS), ("scheduler",)),
    SCHEDULE_FIRE_FAILED: ("scheduler",),
    **dict.fromkeys((LOGS_INGESTED, LOGS_MALFORMED, LOGS_INSERT, LOG_SINK_PAUSED), ("log-sink",)),
    **dict.fromkeys((LOGS_SHIPPED, LOGS_DROPPED, LOGS_QUEUED), ROLES),  # every process ships its own records
    ROLE_HEARTBEAT: ROLES[1:],  # every role but the web (its liveness is /health/live)
}
_WRITERS_BY_NAME = {metric._name: roles for metric, roles in WRITERS.items()}
# django-prometheus' request metrics exist in every Django process (metrics.apps creates
# them), but only the web serves requests.
_WEB_ONLY_PREFIX = "django_http_"


def writers(family: str) -> tuple[str, ...] | None:
    """The roles that write a family; None for one of no role's (process, platform, database)."""
    return ("web",) if family.startswith(_WEB_ONLY_PREFIX) else _WRITERS_BY_NAME.get(family)


def _shown(family: Metric, role: str | None) -> bool:
    roles = writers(family.name)
    if role is None or roles is None or role in roles:
        return True
    # Another role's: only once this process wrote to it (`_created` is a timestamp, not a count).
    return any(s.value for s in family.samples if not s.name.endswith("_created"))


# --- known series ---------------------------------------------------------------------------
# The contract metrics are exposed from the start, at 0, for every label set known in advance
# (a dashboard or alert on `rate(...)` or `absent(...)` needs the series before the first
# event), by the roles that write them. Types and roles are the contract's built-in handlers
# and roles; user types appear with their first job.
BUILTIN_TYPES = ("demo.noop", "demo.echo", "demo.sleep", "demo.fail", "demo.flaky", "demo.log")
JOB_STATUSES = ("PENDING", "QUEUED", "RUNNING", "SUCCEEDED", "RETRYING", "DEAD_LETTER", "CANCELLED")
TERMINAL_STATUSES = ("SUCCEEDED", "DEAD_LETTER", "CANCELLED")


def known_series(role: str | None = None) -> dict[AnyMetric, list[tuple[str, ...]]]:
    """Each contract metric `role` writes (None: every role) and its label values known in
    advance (`()`: unlabelled)."""
    from django.conf import settings

    queues = sorted({"default", *settings.WORKER_QUEUES})
    by_type: list[tuple[str, ...]] = [(t, q) for t in BUILTIN_TYPES for q in queues]
    series: dict[AnyMetric, list[tuple[str, ...]]] = {
        JOBS_SUBMITTED: by_type,
        JOBS_FINISHED: [(s, t, q) for s in TERMINAL_STATUSES for t, q in by_type],
        JOB_DURATION: by_type,
        JOB_QUEUE_WAIT: by_type,
        JOBS_IN_STATE: [(s,) for s in JOB_STATUSES],
        OUTBOX_PENDING: [()],
        BRIDGE_LAG: [(str(p),) for p in range(settings.KAFKA_JOBS_PARTITIONS)],
        LOGS_DROPPED: [(r,) for r in ROLES if role in (None, r)],  # a role ships under its own name
    }
    return {metric: sets for metric, sets in series.items() if role is None or role in WRITERS[metric]}


_declared: set[str | None] = set()


def declare_known_series(role: str | None = None) -> None:
    """Create the known series of `role` (None: every role) at 0 in this process (once). In
    multiprocess mode that writes zeros to this process's files: counters and histograms add up
    across processes, so it changes no total; `mostrecent` gauges are filled in by
    `_KnownGauges` instead."""
    if role in _declared:
        return
    for metric, label_sets in known_series(role).items():
        if metric._labelnames:  # type: ignore[attr-defined]  # an unlabelled one always exists
            for values in label_sets:
                metric.labels(*values)
    _declared.add(role)


class _KnownGauges(Collector):
    """The multiprocess collector with the known series of `role`'s `mostrecent` gauges at 0
    where no process has set them yet. Such a gauge shows the value written last (by time), so a
    zero written by this process would hide the scheduler's real one: it is added at read time."""

    def __init__(self, role: str | None) -> None:
        self.inner = multiprocess.MultiProcessCollector(None)
        self.role = role

    def collect(self) -> Iterator[Metric]:
        missing: dict[str, tuple[Gauge, list[tuple[str, ...]]]] = {}
        for metric, label_sets in known_series(self.role).items():
            if isinstance(metric, Gauge) and metric._multiprocess_mode == "mostrecent":
                missing[metric._name] = (metric, label_sets)
        for family in self.inner.collect():
            if family.name in missing:
                _add_zeros(family, *missing.pop(family.name))
            yield family
        for metric, label_sets in missing.values():
            family = next(iter(metric.describe()))  # the family, without samples
            _add_zeros(family, metric, label_sets)
            yield family


def _add_zeros(family: Metric, metric: Gauge, label_sets: list[tuple[str, ...]]) -> None:
    names = metric._labelnames  # type: ignore[attr-defined]
    present = {tuple(s.labels.get(n, "") for n in names) for s in family.samples}
    for values in label_sets:
        if values not in present:
            family.add_sample(family.name, dict(zip(names, values, strict=True)), 0.0)


class _RoleView(Collector):
    """The families of `source` that `role` shows (`_shown`)."""

    def __init__(self, source: Collector, role: str) -> None:
        self.source, self.role = source, role

    def collect(self) -> Iterator[Metric]:
        return (family for family in self.source.collect() if _shown(family, self.role))


def registry(role: str | None = None) -> CollectorRegistry:
    """What `role` exposes (None: every role, as the dev stack's web does): every process's
    metrics in multiprocess mode, else this process's (with its CPU, memory and Python); only
    the families `role` writes, and the contract's known series of them at 0 until they move."""
    declare_known_series(role)
    multiprocess_mode = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    if role is None and not multiprocess_mode:
        return REGISTRY
    source: Collector = _KnownGauges(role) if multiprocess_mode else REGISTRY
    if role is not None:
        source = _RoleView(source, role)
    collected = CollectorRegistry()
    collected.register(source)
    return collected


def web_role() -> str | None:
    """Whose metrics the web's /metrics shows. Where the roles serve none of their own (no
    METRICS_PORT: the dev stack) every role's on the host, from the multiprocess directory they
    all write to; where each serves its own (production), only the web's, as any other role."""
    return "web" if os.environ.get("METRICS_PORT") else None


def serve_role_metrics(role: str) -> int | None:
    """`role`'s own /metrics on METRICS_PORT (production: one per container). Not in the dev
    stack, where the web's /metrics shows every role through the multiprocess directory."""
    port = os.environ.get("METRICS_PORT")
    if not port:
        return None
    start_http_server(int(port), addr=os.environ.get("METRICS_ADDRESS", "0.0.0.0"), registry=registry(role))  # noqa: S104 scraped by Prometheus over the container network
    return int(port)


def mark_dead(pid: int) -> None:
    """Forget a finished process's live gauges (gunicorn and circus children)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
