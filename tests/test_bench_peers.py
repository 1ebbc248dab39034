"""The peers of `bench pipeline` run for real and count every task once (`Peer.run` fails on
any other count): a peer that lost or miscounted tasks would make the ratios in
docs/benchmarks.md lie. PgQueuer (new in issue 33) keeps a database of its own on our
PostgreSQL server, made on first use, and leaves nothing in ours."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection

from devtools.bench import pipeline


@pytest.mark.parametrize("mode", [pipeline.E2E, pipeline.DRAIN])
def test_pgqueuer_runs_every_task_once_in_its_own_database(mode, db):
    peer = next(p for p in pipeline.PEERS if p.name == "PgQueuer")
    run = peer.run(mode, 2_500, workers=2, threads=2)
    assert run.rate > 0
    assert run.cpu.get("PgQueuer workers", 0) > 0
    raw = peer._module()
    with psycopg.connect(raw.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (raw.DATABASE,)
        assert conn.execute("SELECT to_regclass('pgqueuer') IS NOT NULL").fetchone() == (True,)
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('pgqueuer') IS NULL")
        assert cursor.fetchone() == (True,)


@pytest.mark.parametrize("name", ["Dramatiq", "Huey"])
def test_the_redis_peers_count_every_task_once(name):
    peer = next(p for p in pipeline.PEERS if p.name == name)
    assert peer.run(pipeline.DRAIN, 2_000, workers=2, threads=2).rate > 0
