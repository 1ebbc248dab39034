"""Bulk actions by filter: cancel, retry, or re-run with an edited payload every job that
matches a filter (the jobs list's: type, queue, status, created_after/before, workflow,
log_contains), first as a dry run that only counts, then for real, in the background.

The action itself runs as a job (`platform.bulk_action`, internal: the API cannot submit it
with a payload of its own choosing): it walks the matching jobs in pages of PAGE in
(created_at, id) order, acts on each, says how far it is (`ctx.progress`) and stops early
when cancelled. Its owner is the caller; it touches only the jobs of the owners the caller
sees (its own, those it administers: jobs.visibility), all owners' for staff (decided when
the action is asked for, and carried in its payload; a grant revoked meanwhile narrows it
further). A viewer cannot ask for one. Jobs made after the
request are left alone (`created_before` is capped at the request's time), as are other bulk
actions. It is safe to run twice (delivery is at least once): a cancel or retry of a job that
is past it is skipped, and a re-run's new job carries an idempotency key made from the
action and the job it re-runs (`bulk:<action>:<job>`), so a second pass makes nothing new.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from jobs import audit, handlers, selectors, services, visibility
from jobs.errors import IllegalTransition, JobNotFound
from jobs.handlers import JobContext
from jobs.keys import BULK_KEY_PREFIX
from jobs.models import Job

TYPE = "platform.bulk_action"
ACTIONS = ("cancel", "retry", "rerun")
PAGE = 500
FILTERS = ("status", "type", "queue", "workflow", "batch", "created_after", "created_before", "log_contains")


@dataclass(frozen=True)
class _Caller:
    """What the jobs filter needs of a request: who asks (log_contains is searched as them)."""

    user: Any


def matching(user: Any, filters: dict[str, Any]) -> QuerySet[Job]:
    """The jobs `user` may see that match `filters` (the jobs list's query parameters), bulk
    actions excluded. ValidationError naming a bad filter."""
    unknown = sorted(set(filters) - set(FILTERS))
    if unknown:
        raise ValidationError({"filter": [f"unknown filters {unknown}: use {list(FILTERS)}"]})
    data = {name: value if isinstance(value, str) else ",".join(value) for name, value in filters.items()}
    found = selectors.JobFilter(data, queryset=selectors.job_visible_to(user), request=_Caller(user))
    if not found.is_valid():
        raise ValidationError({"filter": found.errors})
    return found.qs.exclude(type=TYPE)


def start(user: Any, *, action: str, filters: dict[str, Any], payload: dict[str, Any] | None) -> tuple[Job, int]:
    """Ask for the action: the job that will carry it out, and how many jobs match now.
    PermissionDenied for a viewer (the CLI's --owner reaches here without the API's check)."""
    if not visibility.may_act(user):
        raise PermissionDenied(visibility.VIEWERS_LOOK_ONLY)
    asked_at = timezone.now()
    before = filters.get("created_before")
    capped = {**filters, "created_before": min(before, asked_at.isoformat()) if before else asked_at.isoformat()}
    count = matching(user, capped).count()
    seen = visibility.scope(user).owners
    owners = {} if seen is None else {"owners": sorted(seen)}
    spec = services.JobSpec(
        type=TYPE,
        payload={"action": action, "filter": capped, "payload": payload or {}, "all_owners": seen is None, **owners},
        timeout_seconds=7 * 86400,
        max_attempts=3,
    )
    job = services.job_submit(owner_id=user.pk, spec=spec).job
    audit.record("jobs.bulk_action", "job", job.id, owner_id=user.pk, verb=action, filter=capped, matching=count,
                 **owners)  # fmt: skip
    return job, count


def run(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Carry out an action (the handler of TYPE)."""
    action, patch = payload["action"], payload.get("payload") or {}
    owner = Job.objects.only("owner_id").get(id=ctx.job_id).owner_id
    user = get_user_model().objects.get(pk=owner)
    if not payload.get("all_owners"):
        user.is_staff = False  # as asked: staff rights are what the request had, not what the user has now
    jobs = matching(user, payload["filter"])
    if "owners" in payload:  # and grants too, less any revoked since
        jobs = jobs.filter(owner_id__in=payload["owners"])
    jobs = jobs.order_by("created_at", "id")
    total = jobs.count()
    done = skipped = 0
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        ctx.check_cancelled()
        page = (
            jobs
            if after is None
            else jobs.filter(created_at__gte=after[0]).exclude(created_at=after[0], id__lte=after[1])
        )
        batch = list(page[:PAGE])
        if not batch:
            break
        for job in batch:
            if _act(action, job, patch, ctx.job_id):
                done += 1
            else:
                skipped += 1
        after = (batch[-1].created_at, batch[-1].id)
        ctx.progress(min(1.0, (done + skipped) / total) if total else 1.0, f"{done + skipped} of {total}")
    return {"action": action, "matched": total, "done": done, "skipped": skipped}


def _act(action: str, job: Job, patch: dict[str, Any], action_id: uuid.UUID) -> bool:
    """Whether the action changed (or, for a re-run, made) anything for `job`."""
    try:
        if action == "cancel":
            services.job_cancel(job_id=job.id)
        elif action == "retry":
            services.job_retry(job_id=job.id)
        else:
            spec = services.JobSpec(
                type=job.type, payload={**(job.payload or {}), **patch}, queue=job.queue, priority=job.priority,
                max_attempts=job.max_attempts, backoff=job.backoff, timeout_seconds=job.timeout_seconds,
                concurrency_key=job.concurrency_key, concurrency_limit=job.concurrency_limit,
                rate_limit_key=job.rate_limit_key, idempotency_key=f"{BULK_KEY_PREFIX}{action_id}:{job.id}",
            )  # fmt: skip
            return services.job_submit(owner_id=job.owner_id, spec=spec).created
    except (IllegalTransition, JobNotFound):
        return False  # past it (finished, or already waiting again): a second pass changes nothing
    return True


handlers.register(TYPE, run, internal=True)
