"""`manage.py bench api|pipeline|tracing|logs|workflows|steps|flow|dashboard|scale`: measured numbers next to a
same-run baseline."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


def _positive(cast: type[int] | type[float]) -> Any:
    """An argparse type: a number above zero (a rate of 0 or no rounds measures nothing)."""

    def parse(text: str) -> int | float:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value

    parse.__name__ = cast.__name__  # argparse names the type in its messages
    return parse


COUNT, AMOUNT = _positive(int), _positive(float)


class Command(BaseCommand):
    help = "Run a benchmark against the running dev stack and print numbers with a baseline."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="which", required=True)
        api = sub.add_parser("api", help="single and bulk submits over HTTP vs raw psycopg inserts")
        api.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
        api.add_argument("--singles", type=COUNT, default=1000, help="single submits, one at a time")
        api.add_argument("--batches", type=COUNT, default=20, help="bulk requests")
        api.add_argument("--size", type=COUNT, default=1000, help="jobs per bulk request")
        api.add_argument("--keep", action="store_true", help="keep the submitted jobs (default: delete them)")
        pipe = sub.add_parser(
            "pipeline", help="end to end and drain vs Dramatiq, Huey, PgQueuer, Celery; latency; batch sizes"
        )
        pipe.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
        pipe.add_argument("--jobs", type=COUNT, default=20000, help="no-op jobs for the throughput runs")
        pipe.add_argument("--concurrency", type=COUNT, default=int(os.environ.get("WORKER_CONCURRENCY", "2")))
        pipe.add_argument(
            "--threads", type=COUNT, default=4, help="client threads that submit (ours) or enqueue (peers)"
        )
        pipe.add_argument("--rounds", type=COUNT, default=3, help="interleaved runs of every system (median, spread)")
        pipe.add_argument(
            "--peers", default="Dramatiq,Huey,PgQueuer,Celery", help="peers to compare with (empty: none)"
        )
        pipe.add_argument("--rate", type=AMOUNT, default=20.0, help="jobs/s for the latency run")
        pipe.add_argument("--seconds", type=AMOUNT, default=15.0, help="length of the latency run")
        pipe.add_argument("--keep", action="store_true", help="keep the submitted jobs (default: delete them)")
        pipe.add_argument(
            "--batch-sizes",
            default="1,4,16,32,64,128",
            help="fixed batch sizes to sweep (restarts make run's bridge); empty: no sweep",
        )
        pipe.add_argument("--sweep-jobs", type=COUNT, default=10_000, help="jobs per batch size")
        pipe.add_argument("--loads", default="20,100,300,1000,2000", help="offered jobs/s for the latency curve")
        pipe.add_argument("--load-seconds", type=AMOUNT, default=5.0, help="length of each offered-load run")
        pipe.add_argument("--chart", default="docs/pipeline-batching.png", help="PNG of both curves (empty: none)")
        fair = sub.add_parser("fairness", help="two tenants: one floods (or runs long jobs), the other's start wait")
        fair.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
        fair.add_argument("--jobs", type=COUNT, default=200_000, help="tenant A's no-op jobs in the flood")
        fair.add_argument("--threads", type=COUNT, default=4, help="A's submitting threads")
        fair.add_argument("--rate", type=AMOUNT, default=5.0, help="tenant B's jobs/s (single submits)")
        fair.add_argument("--rounds", type=COUNT, default=3, help="interleaved floods with fairness on and off")
        fair.add_argument("--long-seconds", type=float, default=60.0, help="A's sleeps in the long-jobs run (0: none)")
        fair.add_argument("--long-duration", type=AMOUNT, default=30.0, help="how long B submits meanwhile")
        fair.add_argument("--chart", default="docs/fairness.png", help="PNG of B's waits (empty: none)")
        flows = sub.add_parser("workflows", help="per-task cost of workflows vs plain jobs (wide and chain)")
        flows.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
        flows.add_argument("--wide", type=COUNT, default=1000, help="independent tasks")
        flows.add_argument("--chain", type=COUNT, default=200, help="tasks in the chain")
        flows.add_argument("--keep", action="store_true", help="keep what was submitted (default: delete it)")
        flows.add_argument("--signals", type=int, default=200, help="workflows waiting on a signal (0: none)")
        flows.add_argument("--signal-rate", type=AMOUNT, default=20.0, help="signals a second")
        grow = sub.add_parser("steps", help="workflows that wait and grow: 100,000 waiting, a map vs plain jobs")
        grow.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
        grow.add_argument("--waiting", type=int, default=100_000, help="workflows waiting on a signal (0: skip)")
        grow.add_argument("--scans", type=COUNT, default=200, help="times the scheduler's scans are timed a round")
        grow.add_argument("--map", type=int, default=10_000, help="children of the map and plain jobs (0: skip)")
        grow.add_argument("--rounds", type=COUNT, default=2, help="interleaved runs of each (median, spread)")
        grow.add_argument("--signals", type=int, default=200, help="signals timed to their next start (0: skip)")
        grow.add_argument("--keep", action="store_true", help="keep what was submitted (default: delete it)")
        traced = sub.add_parser("tracing", help="CPU per job with tracing off, on for every job, and on for 1 %")
        traced.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
        traced.add_argument("--jobs", type=COUNT, default=30_000, help="no-op jobs a run")
        traced.add_argument("--threads", type=COUNT, default=4, help="client threads that submit")
        traced.add_argument("--rounds", type=COUNT, default=3, help="interleaved runs of each mode (median, spread)")
        traced.add_argument("--keep", action="store_true", help="keep the submitted jobs (default: delete them)")
        flow = sub.add_parser("flow", help="cost of batches and unused flow control; a rate-limited key held")
        flow.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
        flow.add_argument("--jobs", type=COUNT, default=1000, help="jobs of the plain run and of the batch")
        flow.add_argument("--rounds", type=COUNT, default=3, help="interleaved runs of each (median, spread)")
        flow.add_argument("--rate-limit", type=COUNT, default=50, help="the key's limit, jobs a second")
        flow.add_argument("--rate-seconds", type=float, default=60.0, help="the window counted (0: skip)")
        flow.add_argument("--keep", action="store_true", help="keep what was submitted (default: delete it)")
        dash = sub.add_parser("dashboard", help="server time of every dashboard page with a large jobs table")
        dash.add_argument("--jobs", type=COUNT, default=100_000, help="jobs to seed")
        dash.add_argument("--repeat", type=COUNT, default=30, help="requests per page")
        dash.add_argument("--keep", action="store_true", help="keep the seeded jobs (default: delete them)")
        scale = sub.add_parser("scale", help="every hot path at N jobs against the same path before the fill")
        scale.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
        scale.add_argument("--jobs", type=COUNT, default=10_000_000, help="jobs to fill PostgreSQL with (COPY)")
        scale.add_argument("--repeat", type=COUNT, default=30, help="timed calls of each path")
        scale.add_argument("--pipeline-jobs", type=int, default=10_000, help="jobs of the end-to-end run (0: none)")
        scale.add_argument(
            "--baseline-jobs", type=COUNT, default=10_000, help="jobs of the first measurement (the same mix)"
        )
        scale.add_argument("--keep", action="store_true", help="keep the filled jobs (default: delete them)")
        scale.add_argument("--chart", default="docs/scale.png", help="PNG of both measurements (empty: none)")
        scale.add_argument("--doc", default="docs/benchmarks.md", help="where the table goes (empty: nowhere)")
        soak = sub.add_parser("soak", help="a long steady run: memory of every role, rate vs raw Celery")
        soak.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
        soak.add_argument("--jobs", type=COUNT, default=200_000)
        soak.add_argument("--rate", type=AMOUNT, default=200.0, help="jobs/s offered")
        soak.add_argument("--keep", action="store_true")
        logs = sub.add_parser("logs", help="log handler cost, sink ingest rate and query latency, with baselines")
        logs.add_argument("--records", type=COUNT, default=200_000, help="records for the handler cost")
        logs.add_argument("--sink-records", type=COUNT, default=500_000, help="records for the sink ingest rate")
        logs.add_argument("--rows", type=COUNT, default=10_000_000, help="rows of the generated table for queries")
        logs.add_argument("--lookups", type=COUNT, default=200, help="lookups by job id")
        logs.add_argument("--only", nargs="*", choices=["handler", "sink", "query"], help="run only these parts")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["which"] == "api":
            from devtools.bench import api

            self.stdout.write(f"bench api against {opts['url']} ({os.cpu_count()} CPUs)")
            api.run(
                base=opts["url"].rstrip("/"),
                singles=opts["singles"],
                batches=opts["batches"],
                size=opts["size"],
                keep=opts["keep"],
                out=self.stdout,
            )
        elif opts["which"] == "fairness":
            from devtools.bench import fairness

            fairness.run(
                base=opts["url"].rstrip("/"), n=opts["jobs"], threads=opts["threads"], rate=opts["rate"],
                rounds=opts["rounds"], long_seconds=opts["long_seconds"], long_duration=opts["long_duration"],
                out=self.stdout, chart_path=Path(opts["chart"]) if opts["chart"] else None,
            )  # fmt: skip
        elif opts["which"] == "workflows":
            from devtools.bench import workflows

            self.stdout.write(f"bench workflows against {opts['url']} ({os.cpu_count()} CPUs)")
            workflows.run(
                base=opts["url"].rstrip("/"), wide=opts["wide"], chain=opts["chain"], keep=opts["keep"],
                out=self.stdout, signals=opts["signals"], signal_rate=opts["signal_rate"],
            )  # fmt: skip
        elif opts["which"] == "steps":
            from devtools.bench import steps

            self.stdout.write(f"bench steps against {opts['url']} ({os.cpu_count()} CPUs)")
            steps.run(
                base=opts["url"].rstrip("/"), waiting_n=opts["waiting"], scan_times=opts["scans"], map_n=opts["map"],
                rounds=opts["rounds"], signals=opts["signals"], keep=opts["keep"], out=self.stdout,
            )  # fmt: skip
        elif opts["which"] == "tracing":
            from devtools.bench import tracing

            self.stdout.write(f"bench tracing against {opts['url']} ({os.cpu_count()} CPUs)")
            tracing.run(base=opts["url"].rstrip("/"), n=opts["jobs"], threads=opts["threads"], rounds=opts["rounds"],
                        keep=opts["keep"], out=self.stdout)  # fmt: skip
        elif opts["which"] == "flow":
            from devtools.bench import flow

            self.stdout.write(f"bench flow against {opts['url']} ({os.cpu_count()} CPUs)")
            flow.run(
                base=opts["url"].rstrip("/"), jobs=opts["jobs"], rounds=opts["rounds"], rate_limit=opts["rate_limit"],
                rate_seconds=opts["rate_seconds"], keep=opts["keep"], out=self.stdout,
            )  # fmt: skip
        elif opts["which"] == "dashboard":
            from devtools.bench import dashboard

            self.stdout.write(f"bench dashboard ({os.cpu_count()} CPUs)")
            dashboard.run(jobs=opts["jobs"], repeat=opts["repeat"], keep=opts["keep"], out=self.stdout)
        elif opts["which"] == "scale":
            from devtools.bench import scale

            self.stdout.write(f"bench scale ({os.cpu_count()} CPUs)")
            scale.run(
                base=opts["url"].rstrip("/"), jobs=opts["jobs"], repeat=opts["repeat"],
                baseline=opts["baseline_jobs"], pipeline_jobs=opts["pipeline_jobs"], keep=opts["keep"],
                chart_path=Path(opts["chart"]) if opts["chart"] else None,
                doc=Path(opts["doc"]) if opts["doc"] else None, out=self.stdout,
            )  # fmt: skip
        elif opts["which"] == "soak":
            from devtools.bench import soak

            self.stdout.write(f"soak against {opts['url']} ({os.cpu_count()} CPUs)")
            soak.run(base=opts["url"].rstrip("/"), jobs=opts["jobs"], rate=opts["rate"], keep=opts["keep"],
                     out=self.stdout)  # fmt: skip
        elif opts["which"] == "logs":
            from devtools.bench import logs

            self.stdout.write(f"bench logs ({os.cpu_count()} CPUs, Kafka {settings.KAFKA_BOOTSTRAP_SERVERS}, "
                              f"ClickHouse {settings.CLICKHOUSE_URL})")  # fmt: skip
            logs.run(
                records=opts["records"], sink_records=opts["sink_records"], rows=opts["rows"],
                lookups=opts["lookups"], only=opts["only"], out=self.stdout,
            )  # fmt: skip
        elif opts["which"] == "pipeline":
            from devtools.bench import pipeline

            self.stdout.write(f"bench pipeline against {opts['url']} ({os.cpu_count()} CPUs)")
            pipeline.run(
                base=opts["url"].rstrip("/"),
                n=opts["jobs"],
                concurrency=opts["concurrency"],
                rate=opts["rate"],
                seconds=opts["seconds"],
                keep=opts["keep"],
                out=self.stdout,
                threads=opts["threads"],
                rounds=opts["rounds"],
                peers=[x.strip() for x in opts["peers"].split(",") if x.strip()],
                batch_sizes=[int(x) for x in opts["batch_sizes"].split(",") if x.strip()],
                sweep_jobs=opts["sweep_jobs"],
                loads=[float(x) for x in opts["loads"].split(",") if x.strip()],
                load_seconds=opts["load_seconds"],
                chart_path=Path(opts["chart"]) if opts["chart"] else None,
            )
