"""What the dashboard shows, read with a few cheap queries (the pages must stay fast with
millions of jobs: counts and the last hour come from the tallies, the rest from live rows,
indexes or Redis)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from config import broker, rest
from jobs import visibility
from jobs.models import Job, JobStatus
from jobs.selectors import LastHour, job_get_stats, job_last_hour, job_visible_to, outbox_backlog, queue_backlog
from metrics import heartbeat


def per_minute(user: Any, last_hour: LastHour | None = None) -> dict[str, list[Any]]:
    """The last hour, minute by minute: succeeded, dead-lettered, end-to-end p50 and p95."""
    hour = last_hour or job_last_hour(user)
    out: dict[str, list[Any]] = {"labels": [], "succeeded": [], "dead": [], "p50": [], "p95": []}
    for i in range(60):
        minute = hour.since + timedelta(minutes=i)
        tally = hour.minutes.get(minute)
        p50, p95 = (tally.end_to_end.percentiles((0.5, 0.95)) if tally else None) or (0.0, 0.0)
        out["labels"].append(timezone.localtime(minute).strftime("%H:%M"))
        out["succeeded"].append(tally.finished[JobStatus.SUCCEEDED] if tally else 0)
        out["dead"].append(tally.finished[JobStatus.DEAD_LETTER] if tally else 0)
        out["p50"].append(round(p50, 3))
        out["p95"].append(round(p95, 3))
    return out


def overview(user: Any) -> dict[str, Any]:
    """What the overview shows `user`: the counts, charts and queue backlogs of the owners it
    sees (its own, those it administers; staff: everyone's), and to staff only what is the
    platform's own (the stages' backlog, Kafka lag, workers, roles, the scheduler, Flower): one
    tenant learns nothing of another's load."""
    seen = visibility.scope(user)
    hour = job_last_hour(user)  # read once for both
    stats = job_get_stats(user=user, last_hour=hour)
    minutes = per_minute(user, hour)
    finished = sum(minutes["succeeded"]) + sum(minutes["dead"])
    data = {
        "stats": stats,
        "minutes": minutes,
        "failure_rate": (sum(minutes["dead"]) / finished) if finished else 0.0,
        "finished_last_hour": finished,
        "queues": [
            {"name": name, **queue_backlog(name, owners=seen.owners)._asdict()} for name in settings.QUEUES
        ],
        "dead_letters": list(
            job_visible_to(user).filter(status=JobStatus.DEAD_LETTER).order_by("-created_at")
            .only("id", "type", "queue", "last_error", "finished_at", "created_at")[:10]
        ),
        "platform": None,
    }  # fmt: skip
    if seen.everyone:
        data["platform"] = _platform()
    return data


def _platform() -> dict[str, Any]:
    """The platform's own state, for staff."""
    roles = heartbeat.roles()
    scheduler = next((r for r in roles if r["role"] == "scheduler" and r.get("leading")), None)
    outbox, outbox_age = outbox_backlog()
    return {
        "backlog": {
            "outbox": outbox,
            "outbox_age": outbox_age,
            "kafka_lag": scheduler.get("bridge_lag") if scheduler else None,
            "celery": broker.depths(list(settings.QUEUES)),
        },
        "workers": [r for r in roles if r["role"] == "worker"],
        "roles": roles,
        "scheduler": scheduler,
        "flower_url": settings.FLOWER_URL,
    }


def keyset_page(
    queryset: Any, cursor: str | None, size: int, pager: rest.Pager = rest.keyset_page
) -> tuple[list[Job], str | None]:
    """The API's keyset pages; a mangled cursor in a page link shows the first page."""
    try:
        return pager(queryset, cursor, size)
    except ValueError:
        return pager(queryset, None, size)
