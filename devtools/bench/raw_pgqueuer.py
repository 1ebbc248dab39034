"""A peer in `bench pipeline`: PgQueuer, the fastest durable Python queue, with a no-op task.

PgQueuer keeps its queue in PostgreSQL as we keep our jobs: here on the same server as ours,
in a database of its own (`bench_pgqueuer`). As PgQueuer's own benchmark does, each worker
process runs what `pgq run` runs (`pgqueuer.run` on uvloop) with its defaults (batches of
10, asyncpg) and an async no-op entrypoint; the benchmark enqueues with its batch API
(`enqueue` with lists) in chunks of 1,000, as our bulk submit sends them.

Each task only counts itself (`raw_count`: added to a Redis key every 20 ms, not a round
trip a task) so the benchmark can tell when the queue drained, as for the other peers.

`python -m devtools.bench.raw_pgqueuer N` runs N worker processes (the benchmark ends them
all through the process group). Not `pgq run` itself: its CLI fails to parse its own default
log level with the typer we have ('str' object has no attribute 'name')."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import pgqueuer
import psycopg
import uvloop
from pgqueuer import Job, PgQueuer, Queries
from pgqueuer.adapters.drivers.asyncpg import AsyncpgDriver
from pgqueuer.adapters.drivers.psycopg import SyncPsycopgDriver
from pgqueuer.queries import SyncQueries

from devtools.bench.raw_count import Done

BROKER = os.environ.get("BENCH_RAW_BROKER", "redis://127.0.0.1:6379/0")
DATABASE = "bench_pgqueuer"
QUEUE = "bench-raw-pgqueuer"  # the entrypoint's name; no Redis keys but the counter
COUNTER = "bench:raw-pgqueuer:done"
_done = Done(BROKER, COUNTER)
_senders: list[psycopg.Connection] = []  # the benchmark threads' connections, closed by prepare()


def dsn(server: str | None = None) -> str:
    """PgQueuer's database on the server of `server` (a postgresql:// URL; default: ours,
    as `Peer` hands it down in BENCH_RAW_DATABASE)."""
    url = urlsplit(server or os.environ["BENCH_RAW_DATABASE"])
    return urlunsplit((url.scheme, url.netloc, f"/{DATABASE}", url.query, ""))


def prepare(server: str) -> None:
    """Create PgQueuer's database on `server` and install its schema, once; empty and vacuum
    its tables (and close the last run's senders)."""
    while _senders:
        _senders.pop().close()
    own = dsn(server)
    admin = urlunsplit(urlsplit(server)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone():
            conn.execute(f'CREATE DATABASE "{DATABASE}"')

    async def install() -> None:
        import asyncpg

        connection = await asyncpg.connect(own)
        try:
            queries = Queries(AsyncpgDriver(connection))
            if not await queries.schema_is_installed():
                await queries.install()
            await queries.clear_queue()
            await queries.clear_statistics_log()
            # As for our jobs between runs (`delete_bench_jobs`): no dead rows under the next run.
            await connection.execute("VACUUM")
        finally:
            await connection.close()

    asyncio.run(install())


def sender() -> Callable[[int], None]:
    """One connection per benchmark thread; each call enqueues k no-ops in one statement."""
    connection = psycopg.connect(dsn(), autocommit=True)
    _senders.append(connection)
    queries = SyncQueries(SyncPsycopgDriver(connection))

    def send(k: int) -> None:
        queries.enqueue([QUEUE] * k, [None] * k, [0] * k)

    return send


@asynccontextmanager
async def create() -> AsyncIterator[PgQueuer]:
    """The factory `pgq run` takes, in each worker process."""
    import asyncpg

    connection = await asyncpg.connect(dsn())
    pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint(QUEUE)
    async def noop(job: Job) -> None:
        _done.add()

    try:
        yield pgq
    finally:
        await connection.close()


def main(processes: int) -> None:
    """N worker processes (0: this process is the one worker); exits once they all have, with
    the highest exit code."""
    if processes == 0:
        uvloop.run(pgqueuer.run(create))
        return
    workers = [subprocess.Popen([sys.executable, "-m", __spec__.name, "0"]) for _ in range(processes)]
    sys.exit(max(w.wait() for w in workers))


if __name__ == "__main__":
    main(int(sys.argv[1]))
