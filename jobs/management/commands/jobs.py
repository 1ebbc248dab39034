"""`manage.py jobs ...`: submit, inspect and act on jobs from a shell, through the services.

jobs submit TYPE --payload JSON [--queue Q] [--priority N] [--owner USER] [--wait [--timeout S]]
jobs show ID
jobs list [--status S[,S]] [--type T] [--limit N]
jobs cancel ID [--as USER]
jobs retry ID [--as USER]
"""

from __future__ import annotations

import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import ValidationError

from jobs import batches, bulk_actions, rate_limits, selectors, services
from jobs.cli import OPERATOR, acting_as, cli_owner, dump, operator_command, wait_for_end
from jobs.errors import JobError, RateLimitPatternTaken
from jobs.models import TERMINAL_STATUSES, Job, JobStatus, RateLimit
from jobs.serializers import (
    BatchInputSerializer,
    BatchSerializer,
    JobDetailSerializer,
    JobInputSerializer,
    RateLimitSerializer,
)


class Command(BaseCommand):
    help = "Submit, list, show, cancel and retry jobs."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)

        submit = sub.add_parser("submit", help="submit one job")
        submit.add_argument("type")
        submit.add_argument("--payload", default="{}", help="JSON object")
        submit.add_argument("--queue", default="default")
        submit.add_argument("--priority", type=int, default=5)
        submit.add_argument("--max-attempts", type=int, default=4)
        submit.add_argument("--rate-limit-key", help="start no faster than the rate declared for this key")
        submit.add_argument("--unique-key", help="at most one job of this key within --unique-for seconds")
        submit.add_argument("--unique-for", type=int, help="seconds the key stays taken (default 60)")
        submit.add_argument(
            "--unique-policy", choices=["reject", "keep_existing", "replace"], default="reject",
            help="when the key is taken: refuse, print the job that holds it, or give that job this payload",
        )  # fmt: skip
        submit.add_argument("--owner", help="username (default: the first superuser, created if none)")
        submit.add_argument("--wait", action="store_true", help="wait for a terminal state, print the result")
        submit.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (with --wait)")

        bulk = sub.add_parser("bulk-action", help="cancel, retry or re-run every job that matches a filter")
        bulk.add_argument("bulk", choices=["cancel", "retry", "rerun"], metavar="cancel|retry|rerun")
        for name in ("status", "type", "queue", "created-after", "created-before", "log-contains"):
            bulk.add_argument(f"--{name}")
        bulk.add_argument("--payload", help="rerun: a JSON object merged into each new job's payload")
        bulk.add_argument("--dry-run", action="store_true", help="only count the jobs that match")
        bulk.add_argument("--owner", help="whose action it is (default: the first superuser: every owner's jobs)")

        rates = sub.add_parser("rate-limit", help="declare, list or remove rate limits per rate_limit_key")
        rates.add_argument("rate_action", choices=["set", "list", "delete"], metavar="set|list|delete")
        rates.add_argument("pattern", nargs="?", help="key pattern, shell-style (stripe-*)")
        rates.add_argument("rate", nargs="?", help="set: 100/s, 600/m, 1000/h or 20000/d")
        rates.add_argument("--burst", type=int, default=1, help="set: how many may start at once (default 1)")
        rates.add_argument("--owner", help="whose keys (default: every owner's, a staff limit)")

        batch = sub.add_parser("batch", help="create, show, close or cancel a batch of jobs")
        batch.add_argument(
            "batch_action", choices=["create", "show", "close", "cancel"], metavar="create|show|close|cancel"
        )
        batch.add_argument("batch_id", nargs="?", help="show, close, cancel: the batch")
        batch.add_argument("--jobs", help="create: a JSON list of jobs as the API takes them (a file, or - for stdin)")
        batch.add_argument("--on-success", help="create: the callback job, JSON as the API takes it")
        batch.add_argument("--on-complete", help="create: the callback job, JSON as the API takes it")
        batch.add_argument("--description", default="")
        batch.add_argument("--open", action="store_true", help="create: keep it open for more jobs")
        batch.add_argument("--owner", help="username (default: the first superuser)")

        show = sub.add_parser("show", help="show one job with its history")
        show.add_argument("job_id")

        listing = sub.add_parser("list", help="list jobs, newest first")
        listing.add_argument("--status", help="one status or a comma-separated list")
        listing.add_argument("--type")
        listing.add_argument("--queue")
        listing.add_argument("--limit", type=int, default=20)

        for name in ("cancel", "retry"):
            p = sub.add_parser(name, help=f"{name} one job")
            p.add_argument("job_id")
            p.add_argument("--as", dest="as_user", help="act as this user: only a job it may act on (default: any)")

        dead = sub.add_parser("requeue-dead", help="retry dead-lettered jobs in bulk (history is kept)")
        dead.add_argument("--type", help="only jobs of this type")
        dead.add_argument("--since", help="only jobs that died at or after this ISO 8601 time")
        dead.add_argument("--limit", type=int, default=10000)
        dead.add_argument("--dry-run", action="store_true", help="list what would be requeued, change nothing")

    def handle(self, *args: Any, **opts: Any) -> None:
        actor = acting_as(opts.get("as_user"))
        try:
            with operator_command("jobs", opts["action"], actor=None if actor is OPERATOR else actor):
                getattr(self, f"do_{opts['action'].replace('-', '_')}")({**opts, "actor": actor})
        except (JobError, PermissionDenied) as exc:
            raise CommandError(str(exc)) from exc

    def do_submit(self, opts: dict[str, Any]) -> None:
        try:
            payload = orjson.loads(opts["payload"])
        except orjson.JSONDecodeError as exc:
            raise CommandError(f"--payload is not valid JSON: {exc}") from exc
        body = {
            "type": opts["type"],
            "payload": payload,
            "queue": opts["queue"],
            "priority": opts["priority"],
            "max_attempts": opts["max_attempts"],
        }
        if opts["rate_limit_key"] is not None:
            body["rate_limit_key"] = opts["rate_limit_key"]
        if opts["unique_key"] is not None:
            body |= {
                "unique_key": opts["unique_key"],
                "unique_for": opts["unique_for"],
                "unique_policy": opts["unique_policy"],
            }
        serializer = JobInputSerializer(data=body)
        if not serializer.is_valid():
            raise CommandError("invalid job: " + dump(serializer.errors))
        owner = cli_owner(opts["owner"])
        job = services.job_submit(owner_id=owner.pk, spec=serializer.to_spec(serializer.validated_data)).job
        if not opts["wait"]:
            self.stdout.write(str(job.id))
            return
        self.stderr.write(f"submitted {job.id}, waiting up to {opts['timeout']:.0f}s ...")
        job_id = job.id
        job = wait_for_end(
            f"job {job_id}", lambda: Job.objects.get(id=job_id), TERMINAL_STATUSES, timeout=opts["timeout"],
            interval=0.05,
        )  # fmt: skip
        if job.status != JobStatus.SUCCEEDED:
            raise CommandError(f"job {job.id} ended {job.status}: {job.last_error}")
        self.stdout.write(dump(job.result))

    def do_rate_limit(self, opts: dict[str, Any]) -> None:
        owner_id = None
        if opts["owner"]:
            owner_id = cli_owner(opts["owner"]).pk
        scope = RateLimit.objects.filter(owner_id=owner_id) if owner_id else RateLimit.objects.filter(owner=None)
        if opts["rate_action"] == "list":
            for limit in RateLimit.objects.filter(owner_id=owner_id) if owner_id else RateLimit.objects.all():
                self.stdout.write(str(limit))
            for declared in settings.JOB_RATE_LIMITS:
                self.stdout.write(f"{declared.pattern}: {declared.limit}/{declared.period_seconds}s burst "
                                  f"{declared.burst} (every owner, JOB_RATE_LIMITS)")  # fmt: skip
            return
        if not opts["pattern"]:
            raise CommandError(f"rate-limit {opts['rate_action']} needs a key pattern")
        if opts["rate_action"] == "delete":
            deleted, _ = scope.filter(pattern=opts["pattern"]).delete()
            if not deleted:
                raise CommandError(f"no rate limit for pattern {opts['pattern']!r} at that scope")
            rate_limits.forget_cached()
            self.stdout.write(f"deleted the limit for {opts['pattern']}")
            return
        existing = scope.filter(pattern=opts["pattern"]).first()
        body = {"pattern": opts["pattern"], "rate": opts["rate"], "burst": opts["burst"]}
        serializer = RateLimitSerializer(existing, data=body)
        if not serializer.is_valid():
            raise CommandError("invalid rate limit: " + dump(serializer.errors))
        try:
            saved = rate_limits.rate_limit_save(owner_id=owner_id, data=serializer.validated_data, limit=existing)
        except RateLimitPatternTaken as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(str(saved))

    def do_batch(self, opts: dict[str, Any]) -> None:
        owner = cli_owner(opts["owner"])
        action = opts["batch_action"]
        if action == "create":
            body: dict[str, Any] = {"jobs": _json_arg(opts["jobs"], "--jobs") if opts["jobs"] else [],
                                    "description": opts["description"], "open": opts["open"]}  # fmt: skip
            for name in batches.CALLBACKS:
                if opts[name]:
                    body[name] = _json_arg(opts[name], f"--{name.replace('_', '-')}", inline=True)
            serializer = BatchInputSerializer(data=body)
            if not serializer.is_valid():
                raise CommandError("invalid batch: " + dump(serializer.errors))
            data = serializer.validated_data
            to_spec = JobInputSerializer().to_spec
            batch, _ = batches.batch_create(
                owner_id=owner.pk, specs=[to_spec(j) for j in data["jobs"]], description=data["description"],
                callbacks={n: batches.callback_spec_fields(data[n]) for n in batches.CALLBACKS if data.get(n)},
                open_=data["open"],
            )  # fmt: skip
        else:
            if not opts["batch_id"]:
                raise CommandError(f"batch {action} needs the batch's id")
            batch = selectors.batch_get(user=OPERATOR, batch_id=opts["batch_id"])
            if action == "close":
                batch = batches.batch_close(batch_id=batch.id)
            elif action == "cancel":
                _, matched = batches.batch_cancel(user=owner, batch_id=batch.id)
                self.stderr.write(f"cancelling {matched} unfinished jobs in the background")
                batch.refresh_from_db()
        counts = {batch.id: batches.batch_counts(batch.id)}
        self.stdout.write(dump(BatchSerializer(batch, context={"counts": counts}).data))

    def do_bulk_action(self, opts: dict[str, Any]) -> None:
        filters = {
            name.replace("-", "_"): opts[name.replace("-", "_")]
            for name in ("status", "type", "queue", "created-after", "created-before", "log-contains")
            if opts[name.replace("-", "_")]
        }
        payload = orjson.loads(opts["payload"]) if opts["payload"] else None
        owner = cli_owner(opts["owner"])
        try:
            if opts["dry_run"]:
                self.stdout.write(f"{bulk_actions.matching(owner, filters).count()} jobs match")
                return
            job, count = bulk_actions.start(owner, action=opts["bulk"], filters=filters, payload=payload)
        except ValidationError as exc:
            raise CommandError(f"invalid bulk action: {dump(exc.detail)}") from exc
        self.stderr.write(f"{count} jobs match; the action runs as job")
        self.stdout.write(str(job.id))

    def do_show(self, opts: dict[str, Any]) -> None:
        job = selectors.job_get_detail(user=OPERATOR, job_id=opts["job_id"])
        self.stdout.write(dump(JobDetailSerializer(job).data))

    def do_list(self, opts: dict[str, Any]) -> None:
        qs = Job.objects.order_by("-created_at")
        if opts["status"]:
            qs = qs.filter(status__in=[s.strip().upper() for s in opts["status"].split(",")])
        if opts["type"]:
            qs = qs.filter(type=opts["type"])
        if opts["queue"]:
            qs = qs.filter(queue=opts["queue"])
        rows = list(
            qs.values_list("id", "type", "status", "queue", "attempts", "max_attempts", "created_at")[: opts["limit"]]
        )
        self.stdout.write(f"{'ID':36}  {'TYPE':20} {'STATUS':11} {'QUEUE':10} {'ATT':5} CREATED")
        for job_id, type_, status, queue, attempts, max_attempts, created in rows:
            self.stdout.write(
                f"{job_id!s:36}  {type_[:20]:20} {status:11} {queue[:10]:10} {attempts}/{max_attempts:<3} "
                f"{created:%Y-%m-%d %H:%M:%S}"
            )

    def do_cancel(self, opts: dict[str, Any]) -> None:
        job = services.job_cancel(job_id=selectors.job_get(user=opts["actor"], job_id=opts["job_id"]).id)
        self.stdout.write(f"{job.id} {job.status}" + (" (cancel requested)" if job.status == JobStatus.RUNNING else ""))

    def do_requeue_dead(self, opts: dict[str, Any]) -> None:
        qs = Job.objects.filter(status=JobStatus.DEAD_LETTER).order_by("finished_at")
        if opts["type"]:
            qs = qs.filter(type=opts["type"])
        if opts["since"]:
            since = parse_datetime(opts["since"])
            if since is None:
                raise CommandError(f"--since {opts['since']!r} is not an ISO 8601 date-time")
            qs = qs.filter(finished_at__gte=since if since.tzinfo else since.replace(tzinfo=UTC))
        ids = list(qs.values_list("id", flat=True)[: opts["limit"]])
        if opts["dry_run"]:
            for job_id in ids:
                self.stdout.write(str(job_id))
            self.stdout.write(f"{len(ids)} dead-lettered job(s) would be requeued (dry run)")
            return
        requeued = 0
        for job_id in ids:
            try:
                services.job_retry(job_id=job_id)
                requeued += 1
            except JobError as exc:  # retried by someone else meanwhile
                self.stderr.write(str(exc))
        self.stdout.write(f"requeued {requeued} dead-lettered job(s)")

    def do_retry(self, opts: dict[str, Any]) -> None:
        job = services.job_retry(job_id=selectors.job_get(user=opts["actor"], job_id=opts["job_id"]).id)
        self.stdout.write(f"{job.id} {job.status}")


def _json_arg(value: str, option: str, *, inline: bool = False) -> Any:
    """A JSON option's value: inline text, or (unless `inline`) a file's or stdin's (-)."""
    text = value
    if not inline:
        try:
            text = sys.stdin.read() if value == "-" else Path(value).read_text()
        except OSError as exc:
            raise CommandError(f"{option}: cannot read {value!r}: {exc}") from exc
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CommandError(f"{option} is not valid JSON: {exc}") from exc
