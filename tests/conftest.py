"""Shared fixtures. The engines come from the environment (`make test` starts embedded ones
for any URL that is unset), so these tests always talk to real PostgreSQL and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import StaffFactory, UserFactory


@pytest.fixture(autouse=True)
def _isolated_throttle(settings):
    # Each test gets its own throttle keyspace and a rate high enough not to interfere;
    # throttling tests lower it themselves.
    settings.API_THROTTLE_PREFIX = f"throttle-{uuid.uuid4().hex}"
    settings.API_RATE_LIMIT = "100000/s"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast fixtures


# The queues the tests name (config.queues): declared for every test, as a deployment would.
# "parked", "typo" and "gone" stay undeclared on purpose.
TEST_QUEUES = ("default", "q", "q1", "q2", "fast:q", "short", "reports", "keep", "metrics-q", "bridge", "emails")


@pytest.fixture(autouse=True)
def _declared_queues(settings):
    from config.queues import Queue

    settings.QUEUES = {
        name: Queue(name, window=settings.QUEUE_WINDOW, slot_share=settings.FAIR_SLOT_SHARE) for name in TEST_QUEUES
    }


@pytest.fixture(autouse=True)
def _isolated_slots(settings):
    # The workers' fair share of slots lives in Redis: each test its own workers and kinds.
    from orchestration import fair_slots

    settings.FAIR_SLOTS_PREFIX = f"slots-{uuid.uuid4().hex}"
    fair_slots._shares.clear()


@pytest.fixture(autouse=True)
def _isolated_breakers(settings):
    # Circuit breakers live in Redis per job type: each test counts its own failures.
    from orchestration.breaker import BREAKERS

    settings.BREAKER_PREFIX = f"breaker-{uuid.uuid4().hex}"
    BREAKERS.__init__()  # type: ignore[misc]


@pytest.fixture(autouse=True)
def _isolated_rate_limits(settings):
    # Rate buckets (queues' and keys') live in Redis; declared limits are cached per process.
    from jobs import rate_limits

    settings.RATE_LIMIT_PREFIX = f"rate-{uuid.uuid4().hex}"
    rate_limits.forget_cached()


DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens there: connection refused


@pytest.fixture
def redis_down(settings):
    """Every Redis client of this process (`config.broker.client()`, django-redis' "default"
    cache) points at a dead Redis until the test ends. Changing CACHES drops Django's cache
    objects (its setting_changed handler); django-redis keeps one pool per URL, so the dead
    URL gets its own and the real one is there again afterwards. Kombu's own connections
    (CELERY_BROKER_URL) are not affected."""
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": DEAD_REDIS}}


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


@pytest.fixture
def staff(db):
    return StaffFactory()


def client_for(u) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=u)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(user) -> APIClient:
    return client_for(user)


@pytest.fixture
def other_api(other_user) -> APIClient:
    return client_for(other_user)


@pytest.fixture
def staff_api(staff) -> APIClient:
    return client_for(staff)


@pytest.fixture
def tasks_app(settings):
    """tests/tasks_app/tasks.py as a listed task module of this process: its tasks registered,
    enqueueable, and run by the worker code called in-process."""
    import importlib

    from jobs.task_backend.registry import load_task_modules
    from tests.tasks_app import TASK_MODULE

    settings.JOB_TASK_MODULES = [*settings.JOB_TASK_MODULES, TASK_MODULE]
    load_task_modules([TASK_MODULE])
    return importlib.import_module(TASK_MODULE)


@pytest.fixture
def traced() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process (`config.tracing.use`), its spans kept in memory; the global
    tracer provider is left alone, so other tests see tracing off as before."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased

    from config import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.DropOrphanSpans(ParentBased(ALWAYS_ON)))  # type: ignore[arg-type]
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.use(None)
    provider.shutdown()


@pytest.fixture
def archive_table(settings: Any) -> Iterator[str]:
    """An archive table of the test's own (ClickHouse), with retention at 30 days, a batch
    every scan."""
    from jobs import archive
    from logs import store

    name = f"jobs_archive_test_{uuid.uuid4().hex[:12]}"
    settings.CLICKHOUSE_JOBS_ARCHIVE_TABLE = name
    settings.JOB_RETENTION_DAYS = 30
    settings.JOB_RETENTION_DAYS_BY_QUEUE = {}
    settings.JOB_RETENTION_INTERVAL_SECONDS = 0  # a batch every call
    yield name
    store.connect().command(f"DROP TABLE IF EXISTS {name}")
    archive._migrated.discard(name)


@pytest.fixture
def epoch(settings: Any) -> int:
    """A scheduler epoch of the test's own lock (fencing)."""
    from orchestration.scheduler.fencing import next_epoch

    settings.SCHEDULER_LOCK_KEY = f"retention-test-{uuid.uuid4().hex[:8]}"
    return next_epoch(settings.SCHEDULER_LOCK_KEY)
