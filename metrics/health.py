"""Liveness and readiness probes.

`/health/live` says the process serves requests. `/health/ready` checks every engine this
deployment is configured with (PostgreSQL and its migrations, Redis, Kafka, ClickHouse)
and answers 503 with a JSON body naming what failed.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache

CHECK_TIMEOUT = 2.0  # seconds per engine: a probe must answer well within a load balancer's timeout
_probes: dict[str, redis.Redis] = {}  # a Redis client per URL, with CHECK_TIMEOUT for every call


def check_postgres() -> str | None:
    with transaction.atomic(), connection.cursor() as cur:
        # The connection's own statement_timeout is for work; a probe waits CHECK_TIMEOUT at most.
        cur.execute(f"SET LOCAL statement_timeout = {int(CHECK_TIMEOUT * 1000)}")
        cur.execute("SELECT 1")
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        return f"{len(plan)} migration(s) not applied"
    return None


def check_redis() -> str | None:
    # The Redis every call here uses (CACHES, looked up now: a test may point it elsewhere),
    # through a client of its own whose timeouts are CHECK_TIMEOUT, not the pool's
    # REDIS_SOCKET_TIMEOUT (5 s by default), which is for work.
    url = settings.CACHES["default"]["LOCATION"]
    if url not in _probes:
        _probes[url] = redis.Redis.from_url(url, socket_timeout=CHECK_TIMEOUT, socket_connect_timeout=CHECK_TIMEOUT)
    _probes[url].ping()
    return None


def check_kafka() -> str | None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "socket.timeout.ms": 2000})
    admin.list_topics(timeout=CHECK_TIMEOUT)
    return None


def check_clickhouse() -> str | None:
    parts = urlsplit(settings.CLICKHOUSE_URL)
    scheme = "https" if parts.scheme in ("https", "clickhouses") else "http"
    url = f"{scheme}://{parts.hostname}:{parts.port or 8123}/ping"
    with urllib.request.urlopen(url, timeout=CHECK_TIMEOUT) as r:  # noqa: S310 scheme is http(s) by construction
        if r.status != 200:
            return f"ping answered {r.status}"
    return None


def configured_checks() -> dict[str, Callable[[], str | None]]:
    checks: dict[str, Callable[[], str | None]] = {"postgres": check_postgres, "redis": check_redis}
    if settings.KAFKA_BOOTSTRAP_SERVERS:
        checks["kafka"] = check_kafka
    if settings.CLICKHOUSE_URL:
        checks["clickhouse"] = check_clickhouse
    return checks


def _roles() -> dict[str, Any]:
    """Each role's processes and the age of their last heartbeat (shown, not judged: the web
    is ready whatever the other roles do; alerts and `manage.py status` judge them)."""
    from metrics import heartbeat

    try:
        records = heartbeat.roles()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    out: dict[str, Any] = {}
    for r in records:
        out.setdefault(r["role"], []).append({"host": r["host"], "pid": r["pid"], "age_seconds": r["age"]})
    return out


@never_cache
def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
def ready(request: HttpRequest) -> JsonResponse:
    results: dict[str, Any] = {}
    healthy = True
    for name, check in configured_checks().items():
        started = time.monotonic()
        try:
            problem = check()
        except Exception as exc:  # any failure of a dependency makes us not ready
            problem = f"{type(exc).__name__}: {exc}"
        ms = round((time.monotonic() - started) * 1000, 1)
        results[name] = {"ok": problem is None, "ms": ms} | ({"error": problem} if problem else {})
        healthy = healthy and problem is None
    failed = [name for name, r in results.items() if not r["ok"]]
    # The roles' heartbeats are in Redis, read through the pool (its work timeouts): not when
    # the probe just found Redis not answering.
    roles = {"error": "Redis is not answering"} if "redis" in failed else _roles()
    body = {"status": "ok" if healthy else "unavailable", "failed": failed, "checks": results, "roles": roles}
    return JsonResponse(body, status=200 if healthy else 503)
