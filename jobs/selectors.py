"""Reads on jobs: querysets scoped to what a user may see, and statistics."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, TypeVar

import django_filters
from django import forms
from django.conf import settings
from django.db import connection
from django.db.models import Count, QuerySet
from django.utils import timezone
from django_filters.fields import IsoDateTimeField
from rest_framework.exceptions import ValidationError

from config.rest import in_utc
from jobs.errors import JobNotFound, ScheduleNotFound
from jobs.models import Job, JobStatus, Schedule

M = TypeVar("M", Job, Schedule)


def visible_to(queryset: QuerySet[M], user: Any) -> QuerySet[M]:
    """Users see their own objects; staff see all."""
    return queryset if user.is_staff else queryset.filter(owner_id=user.pk)


def job_visible_to(user: Any) -> QuerySet[Job]:
    return visible_to(Job.objects.all(), user)


def job_get(*, user: Any, job_id: uuid.UUID | str) -> Job:
    """A job the user may see, or JobNotFound (another user's job is indistinguishable)."""
    try:
        return job_visible_to(user).get(id=job_id)
    except (Job.DoesNotExist, ValueError):
        raise JobNotFound(job_id) from None


class CSVChoiceFilter(django_filters.BaseInFilter, django_filters.ChoiceFilter):
    """`status=FAILED` or `status=PENDING,RUNNING`."""


class UTCIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 time, in UTC. Any offset Python accepts (up to ±23:59) works, where
    PostgreSQL would reject one beyond ±15:59 as a parameter (a 500 schemathesis found); a
    time that leaves years 1-9999 once in UTC is a field error."""

    def to_python(self, value: Any) -> datetime | None:
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return in_utc(parsed)
        except ValueError:
            raise forms.ValidationError("is out of range once converted to UTC", code="invalid") from None


class UTCDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UTCIsoDateTimeField


class JobFilter(django_filters.FilterSet):
    status = CSVChoiceFilter(field_name="status", choices=JobStatus.choices)
    type = django_filters.CharFilter(field_name="type")
    queue = django_filters.CharFilter(field_name="queue")
    created_after = UTCDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCDateTimeFilter(field_name="created_at", lookup_expr="lt")
    workflow = django_filters.UUIDFilter(field_name="workflow_id")
    log_contains = django_filters.CharFilter(method="filter_log_contains", max_length=200)

    class Meta:
        model = Job
        fields = ["status", "type", "queue", "workflow", "created_after", "created_before", "log_contains"]

    def filter_log_contains(self, queryset: QuerySet[Job], name: str, value: str) -> QuerySet[Job]:
        """Jobs with a log record containing `value` (any case), asked of ClickHouse first;
        a job's records are never older than the job, so `created_after` bounds that search."""
        from logs import search

        user = self.request.user if self.request is not None else None
        limit = settings.JOBS_LOG_CONTAINS_MAX
        ids = search.job_ids_with_text(
            value,
            owner_id=None if user is None or user.is_staff else user.pk,
            since=self.form.cleaned_data.get("created_after"),  # only an integer reaches ClickHouse
            limit=limit + 1,
        )
        if len(ids) > limit:
            raise ValidationError(
                {
                    "log_contains": [
                        f"matches the logs of more than {limit} jobs; narrow it with created_after, type or status"
                    ]
                }
            )
        return queryset.filter(id__in=ids)


_LATENCY_SQL = """
SELECT count(*) FILTER (WHERE finished_at >= %(since_1m)s),
       count(*),
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM finished_at - created_at)),
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM started_at - coalesce(queued_at, created_at)))
  FROM jobs_job
 WHERE finished_at >= %(since_1h)s AND status = 'SUCCEEDED' {owner}
"""


def _percentiles(values: list[float] | None) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50": round(values[0], 4), "p95": round(values[1], 4), "p99": round(values[2], 4)}


def job_get_stats(*, user: Any) -> dict[str, Any]:
    """Counts by status, throughput over the last minute and hour, latency percentiles of
    the last hour's successes (end to end and queue wait)."""
    by_status = {s: 0 for s in JobStatus.values}
    for row in job_visible_to(user).values("status").annotate(n=Count("id")).order_by():
        by_status[row["status"]] = row["n"]
    now = timezone.now()
    params: dict[str, Any] = {"since_1m": now - timedelta(minutes=1), "since_1h": now - timedelta(hours=1)}
    owner = ""
    if not user.is_staff:
        owner = "AND owner_id = %(owner)s"
        params["owner"] = user.pk
    with connection.cursor() as cur:
        cur.execute(_LATENCY_SQL.format(owner=owner), params)
        last_minute, last_hour, total_p, wait_p = cur.fetchone()
    return {
        "total": sum(by_status.values()),
        "by_status": by_status,
        "throughput": {
            "succeeded_last_minute": last_minute,
            "succeeded_per_minute_last_hour": round(last_hour / 60, 2),
        },
        "latency_seconds": {"end_to_end": _percentiles(total_p), "queue_wait": _percentiles(wait_p)},
    }


def schedule_visible_to(user: Any) -> QuerySet[Schedule]:
    return visible_to(Schedule.objects.all(), user)


def schedule_get(*, user: Any, schedule_id: uuid.UUID | str) -> Schedule:
    try:
        return schedule_visible_to(user).get(id=schedule_id)
    except (Schedule.DoesNotExist, ValueError):
        raise ScheduleNotFound(schedule_id) from None
