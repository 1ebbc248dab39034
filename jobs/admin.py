"""Django admin for staff: inspect jobs and act on them through the same services as the API.

Nothing here edits a job's fields directly: status changes go through `jobs.services`, so
the admin can never bypass the state machine.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import orjson
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from config import key_rates, queues
from config.text import is_uuid
from jobs import audit, batches, services
from jobs.errors import BatchEnded, JobError
from jobs.handlers import is_registered
from jobs.models import (
    AuditRecord,
    Batch,
    Job,
    JobAttempt,
    Outbox,
    OwnerAdmin,
    OwnerShare,
    RateLimit,
    Schedule,
    UniqueLock,
)  # fmt: skip
from jobs.schedules import schedule_prepare, validate_cron, validate_timezone


def pretty_json(value: Any) -> str:
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    return format_html('<pre style="margin:0;white-space:pre-wrap">{}</pre>', text)


LEVEL_COLOURS = {"DEBUG": "#6b7280", "INFO": "#1d4ed8", "WARNING": "#b45309", "ERROR": "#b91c1c", "CRITICAL": "#7f1d1d"}
ADMIN_LOG_LINES = 200


def render_job_logs(job: Job) -> str:
    """The job's last log lines from ClickHouse, oldest first, coloured by level."""
    from logs import search

    link = format_html('<a href="{}">all log records of this job</a>', reverse("job-logs", args=[job.id]))
    try:
        records, more = search.search(search.LogQuery(job_id=job.id, limit=ADMIN_LOG_LINES))
    except search.LogStoreUnavailable as exc:
        return format_html("<em>The log store is not answering ({}).</em> {}", exc, link)
    if not records:
        return format_html("<em>No log records yet.</em> {}", link)
    rows = format_html_join(
        "",
        '<tr><td style="white-space:nowrap">{}</td><td style="color:{};font-weight:600">{}</td><td>{}</td>'
        "<td>{}</td><td>{}</td><td><pre style=\"margin:0;white-space:pre-wrap\">{}{}</pre></td></tr>",
        (
            (
                r["timestamp"].strftime("%Y-%m-%d %H:%M:%S.%f"), LEVEL_COLOURS.get(r["level"], "inherit"), r["level"],
                r["attempt"] or "", r["service"], r["logger"], r["message"],
                "\n" + r["exception"] if r["exception"] else "",
            )
            for r in reversed(records)
        ),
    )  # fmt: skip
    note = f"the last {ADMIN_LOG_LINES} records; " if more else ""
    return format_html(
        '<table style="width:100%"><thead><tr><th>time (UTC)</th><th>level</th><th>attempt</th><th>service</th>'
        "<th>logger</th><th>message</th></tr></thead><tbody>{}</tbody></table><p>{}{}</p>",
        rows,
        note,
        link,
    )


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AttemptInline(admin.TabularInline):
    model = JobAttempt
    extra = 0
    can_delete = False
    fields = readonly_fields = ("attempt", "status", "worker", "started_at", "finished_at", "error", "traceback_block")

    @admin.display(description="traceback")
    def traceback_block(self, obj: JobAttempt) -> str:
        if not obj.traceback:
            return "-"
        return format_html('<pre style="max-height:20em;overflow:auto">{}</pre>', obj.traceback)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _apply(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Job], action: Any, verb: str) -> None:
    done, refused = 0, []
    for job_id in queryset.values_list("id", flat=True):
        try:
            action(job_id=job_id)
            done += 1
        except JobError as exc:
            refused.append(str(exc))
    if done:
        modeladmin.message_user(request, f"{verb} {done} job(s).", messages.SUCCESS)
    for reason in refused[:20]:
        modeladmin.message_user(request, reason, messages.WARNING)
    if len(refused) > 20:
        modeladmin.message_user(request, f"... and {len(refused) - 20} more refused.", messages.WARNING)


@admin.action(description="Retry selected jobs (dead-lettered or cancelled)")
def retry_jobs(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Job]) -> None:
    _apply(modeladmin, request, queryset, services.job_retry, "Requeued")


@admin.action(description="Cancel selected jobs")
def cancel_jobs(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Job]) -> None:
    _apply(modeladmin, request, queryset, services.job_cancel, "Cancelled")


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "type",
        "status",
        "queue",
        "priority",
        "attempts",
        "max_attempts",
        "owner",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "queue", "type", "created_at"]
    list_select_related = ["owner"]
    date_hierarchy = "created_at"
    search_fields = ["idempotency_key"]
    search_help_text = "A job id (exact) or an idempotency key (exact)."
    show_full_result_count = False  # no COUNT(*) over millions of rows per page view
    change_list_template = "admin/orchestration_jobs/job/change_list.html"  # adds the link to the archive
    actions = [retry_jobs, cancel_jobs]
    inlines = [AttemptInline]
    fields = readonly_fields = (
        "id", "owner", "type", "status", "queue", "priority", "attempts", "max_attempts", "attempt_seq",
        "logs_panel", "payload_pretty", "result_pretty", "last_error", "backoff_pretty", "timeout_seconds", "run_at",
        "next_retry_at", "idempotency_key", "concurrency_key", "concurrency_limit", "rate_limit_key", "rate_slot_at",
        "batch_id",
        "dispatch_token", "worker", "lease_expires_at",
        "cancel_requested_at", "created_at", "queued_at", "started_at", "finished_at", "progress_shown",
    )  # fmt: skip

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The change list must be reachable for actions; the form itself stays read-only.
        return obj is None and request.user.is_staff

    @admin.display(description="logs")
    def logs_panel(self, obj: Job) -> str:
        return render_job_logs(obj)

    @admin.display(description="progress")
    def progress_shown(self, obj: Job) -> str:
        """What its running attempt last said (`ctx.progress`), and when."""
        if obj.progress is None:
            return "-"
        said = f" · {obj.progress_message}" if obj.progress_message else ""
        at = f" (at {obj.progress_at:%Y-%m-%d %H:%M:%S})" if obj.progress_at else ""
        return f"{obj.progress:.0%}{said}{at}"

    @admin.display(description="payload")
    def payload_pretty(self, obj: Job) -> str:
        return pretty_json(obj.payload)

    @admin.display(description="result")
    def result_pretty(self, obj: Job) -> str:
        return pretty_json(obj.result)

    @admin.display(description="backoff")
    def backoff_pretty(self, obj: Job) -> str:
        return pretty_json(obj.backoff)

    # -- the archive (read-only): jobs retention moved to ClickHouse -------------------------

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"  # as Django names the admin's own views
        return [
            path("archive/", view(self.archive_view), name=f"{prefix}_archive"),
            path("archive/<uuid:job_id>/", view(self.archived_job_view), name=f"{prefix}_archived"),
            *super().get_urls(),
        ]

    def archive_view(self, request: HttpRequest) -> HttpResponse:
        """Archived jobs newest first, by status, type or queue, or one id; keyset pages."""
        from jobs.selectors import JobFilter, job_archive_pager
        from logs.search import LogStoreUnavailable

        self._staff_only(request)
        term = request.GET.get("q", "").strip()
        # The API's and the dashboard's filters, validated the same way: a bad value is named.
        filterset = JobFilter(
            {name: request.GET[name] for name in ("status", "type", "queue") if request.GET.get(name)},
            queryset=Job.objects.none(),
            request=request,
        )
        rows: list[Job] = []
        cursor, error = None, ""
        if not filterset.is_valid():
            error = "; ".join(f"{name}: {' '.join(problems)}" for name, problems in filterset.errors.items())
        else:
            filters = filterset.archive_filters()
            if is_uuid(term):
                filters = dataclasses.replace(filters, ids=[str(uuid.UUID(term))])
            try:
                pager = job_archive_pager(user=request.user, filters=filters)
                rows, cursor = pager(None, request.GET.get("cursor"), 100)
            except ValueError:
                error = "That page link is not valid any more."
            except LogStoreUnavailable as exc:
                error = f"ClickHouse is not answering ({exc})."
        params = request.GET.copy()
        if cursor:
            params["cursor"] = cursor
        context = {
            **self.admin_site.each_context(request), "title": "Archived jobs", "opts": self.model._meta,
            "jobs": rows, "next": f"?{params.urlencode()}" if cursor else None, "error": error, "f": request.GET,
            "statuses": ["SUCCEEDED", "DEAD_LETTER", "CANCELLED"],
        }  # fmt: skip
        return TemplateResponse(request, "admin/orchestration_jobs/job/archive.html", context)

    def archived_job_view(self, request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
        from jobs import archive
        from logs.search import LogStoreUnavailable

        self._staff_only(request)
        try:
            job = archive.get(job_id, owners=None)
        except LogStoreUnavailable as exc:
            raise Http404(f"ClickHouse is not answering ({exc})") from exc
        if job is None:
            raise Http404("no such archived job")
        context = {
            **self.admin_site.each_context(request), "title": f"Archived job {job.id}", "opts": self.model._meta,
            "job": job, "history": job.history.all(), "payload": pretty_json(job.payload),
            "result": pretty_json(job.result), "logs": render_job_logs(job),
        }  # fmt: skip
        return TemplateResponse(request, "admin/orchestration_jobs/job/archived_job.html", context)

    @staticmethod
    def _staff_only(request: HttpRequest) -> None:
        if not request.user.is_staff:  # admin_view lets only staff in; said again here for the record
            raise PermissionDenied

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Job], search_term: str
    ) -> tuple[QuerySet[Job], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(id=uuid.UUID(term)), False
        except ValueError:
            return queryset.filter(idempotency_key=term), False


@admin.action(description="Cancel selected batches and their unfinished jobs")
def cancel_batches(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
    cancelled = 0
    for batch in queryset:
        try:
            batches.batch_cancel(user=request.user, batch_id=batch.id)
            cancelled += 1
        except BatchEnded:
            pass  # complete or cancelled already: nothing to do
    modeladmin.message_user(request, f"{cancelled} batches cancelled; their unfinished jobs are being cancelled.")


@admin.register(Batch)
class BatchAdmin(ReadOnlyAdmin):
    """Batches with their counts and callbacks. Read-only but for the cancel action: a batch
    changes through its jobs."""

    list_display = ["id", "owner", "description", "state", "progress", "created_at"]
    search_fields = ["description"]
    show_full_result_count = False
    actions = [cancel_batches]
    fields = readonly_fields = (
        "id", "owner", "description", "state", "progress", "counts", "jobs_link", "on_success_pretty",
        "on_success_job_id", "on_complete_pretty", "on_complete_job_id", "created_at", "closed_at", "completed_at",
        "cancelled_at",
    )  # fmt: skip

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and request.user.is_staff  # the list, for the action; the form stays read-only

    @staticmethod
    def _counts(obj: Batch) -> batches.Counts:
        """Read once per object: its page shows them twice."""
        if "_counts" not in obj.__dict__:
            obj.__dict__["_counts"] = batches.batch_counts(obj.id)
        return obj.__dict__["_counts"]

    @admin.display(description="progress")
    def progress(self, obj: Batch) -> str:
        counts = self._counts(obj)
        return f"{counts.percent:.0f}% of {counts.total}"

    @admin.display(description="jobs by state")
    def counts(self, obj: Batch) -> str:
        return ", ".join(f"{status} {n}" for status, n in self._counts(obj).by_status.items() if n) or "-"

    @admin.display(description="jobs")
    def jobs_link(self, obj: Batch) -> str:
        return format_html('<a href="{}?batch={}">its jobs in the dashboard</a>', reverse("dashboard:jobs"), obj.id)

    @admin.display(description="on success")
    def on_success_pretty(self, obj: Batch) -> str:
        return pretty_json(obj.on_success) if obj.on_success else "-"

    @admin.display(description="on complete")
    def on_complete_pretty(self, obj: Batch) -> str:
        return pretty_json(obj.on_complete) if obj.on_complete else "-"


@admin.register(UniqueLock)
class UniqueLockAdmin(ReadOnlyAdmin):
    """Who holds each owner's unique keys, until when (jobs with a `unique_key`). Read-only:
    a key frees itself when its time is up."""

    list_display = ["owner_id", "key", "job_id", "expires_at"]
    search_fields = ["key"]
    search_help_text = "A unique key (exact)."
    show_full_result_count = False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[UniqueLock], search_term: str
    ) -> tuple[QuerySet[UniqueLock], bool]:
        term = search_term.strip()
        return (queryset.filter(key=term) if term else queryset), False


class AuditedAdmin(admin.ModelAdmin):
    """Staff's changes here are operator actions like the API's: each save and delete writes an
    audit record (jobs.audit) in its transaction, as `<audit_as>.create|update|delete`."""

    audit_as = ""

    def audit_details(self, obj: Any) -> dict[str, Any]:
        """What a record of `obj`'s change says besides its owner (a deleted row's id alone
        would name nothing)."""
        return {}

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            audit.record(f"{self.audit_as}.{'update' if change else 'create'}", self.audit_as, obj.pk,
                         owner_id=getattr(obj, "owner_id", None), changed=sorted(form.changed_data),
                         **self.audit_details(obj))  # fmt: skip

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            audit.record(f"{self.audit_as}.delete", self.audit_as, obj.pk, owner_id=getattr(obj, "owner_id", None),
                         **self.audit_details(obj))  # fmt: skip
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        with transaction.atomic():
            for obj in queryset:
                audit.record(f"{self.audit_as}.delete", self.audit_as, obj.pk,
                             owner_id=getattr(obj, "owner_id", None), **self.audit_details(obj))  # fmt: skip
            super().delete_queryset(request, queryset)


@admin.register(OwnerShare)
class OwnerShareAdmin(AuditedAdmin):
    """An owner's weight in each queue's fair dispatch, and its share of the workers for long
    jobs (owners without a row weigh 1 and get FAIR_SLOT_SHARE). Read by the relays and the
    workers within seconds."""

    list_display = ["owner", "weight", "slot_share", "updated_at"]
    search_fields = ["owner__username"]
    raw_id_fields = ["owner"]
    readonly_fields = ["updated_at"]
    audit_as = "owner_share"


@admin.register(OwnerAdmin)
class OwnerAdminAdmin(AuditedAdmin):
    """Who administers whose tenant (jobs.visibility): the admin sees and acts on the owner's
    objects as the owner can, from the next request on. Granted or revoked, never edited."""

    list_display = ["admin", "owner", "created_at"]
    search_fields = ["admin__username", "owner__username"]
    raw_id_fields = ["owner", "admin"]
    audit_as = "owner_admin"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def audit_details(self, obj: OwnerAdmin) -> dict[str, Any]:
        return {"admin": obj.admin_id, "admin_name": obj.admin.get_username()}


class RateLimitForm(forms.ModelForm):
    """A limit as the API takes it: a rate such as `100/s`, checked the same way."""

    rate = forms.CharField(max_length=20, help_text="100/s, 600/m, 1000/h or 20000/d")
    burst = forms.IntegerField(min_value=1, max_value=key_rates.MAX_BURST, initial=1)

    class Meta:
        model = RateLimit
        fields = ["owner", "pattern", "rate", "burst"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["rate"] = key_rates.format_rate(self.instance.limit, self.instance.period_seconds)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("pattern") and (problem := key_rates.check_pattern(data["pattern"])):
            self.add_error("pattern", problem)
        if data.get("rate"):
            try:
                self.instance.limit, self.instance.period_seconds = key_rates.parse_rate(data["rate"])
            except key_rates.RateError as exc:
                self.add_error("rate", str(exc))
        return data


@admin.register(RateLimit)
class RateLimitAdmin(AuditedAdmin):
    """Rates per rate_limit_key pattern. Without an owner a limit holds for every owner's keys
    (each owner's counted on its own); where several match, the slowest holds. Workers read
    them within JOB_RATE_LIMIT_CACHE_SECONDS."""

    form = RateLimitForm
    audit_as = "rate_limit"
    list_display = ["pattern", "rate", "burst", "owner", "updated_at"]
    search_fields = ["pattern", "owner__username"]
    raw_id_fields = ["owner"]

    @admin.display(description="rate")
    def rate(self, obj: RateLimit) -> str:
        return key_rates.format_rate(obj.limit, obj.period_seconds)


@admin.register(Outbox)
class OutboxAdmin(ReadOnlyAdmin):
    list_display = ["id", "job_id", "topic", "created_at"]
    show_full_result_count = False


class ScheduleForm(forms.ModelForm):
    class Meta:
        model = Schedule
        fields = [
            "owner", "name", "enabled", "cron", "timezone", "misfire_policy", "type", "payload", "queue", "priority",
            "max_attempts", "backoff", "timeout_seconds",
        ]  # fmt: skip

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        for field_name, check in (("cron", validate_cron), ("timezone", validate_timezone)):
            if data.get(field_name) and (problem := check(data[field_name])):
                self.add_error(field_name, problem)
        if data.get("type") and not is_registered(data["type"]):
            self.add_error("type", f"no handler is registered as {data['type']!r}")
        if data.get("queue") and (problem := queues.problem(data["queue"], settings.QUEUES)):
            self.add_error("queue", problem)
        return data


@admin.register(Schedule)
class ScheduleAdmin(AuditedAdmin):
    """Staff edit schedules here; saving recomputes the next slot like the API does."""

    form = ScheduleForm
    audit_as = "schedule"
    list_display = ["name", "cron", "timezone", "enabled", "type", "queue", "next_fire_at", "last_fired_at", "owner"]
    list_filter = ["enabled", "type", "queue"]
    search_fields = ["name", "type"]
    readonly_fields = ["next_fire_at", "last_fired_at", "created_at"]
    actions = ["enable", "disable"]

    def save_model(self, request: HttpRequest, obj: Schedule, form: Any, change: bool) -> None:
        schedule_prepare(obj, now=timezone.now())
        super().save_model(request, obj, form, change)

    @admin.action(description="Enable selected schedules")
    def enable(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self._switch(queryset, True)

    @admin.action(description="Disable selected schedules")
    def disable(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self._switch(queryset, False)

    def _switch(self, queryset: QuerySet[Schedule], enabled: bool) -> None:
        with transaction.atomic():
            for schedule in queryset:
                schedule.enabled = enabled
                schedule_prepare(schedule, now=timezone.now())
                schedule.save(update_fields=["enabled", "next_fire_at", "updated_at"])
                audit.record(
                    "schedule.update", "schedule", schedule.pk, owner_id=schedule.owner_id, changed=["enabled"]
                )


@admin.register(AuditRecord)
class AuditRecordAdmin(ReadOnlyAdmin):
    """The audit log (jobs.audit): read and filtered here; nothing adds, changes or deletes a
    record (nor can anything else: a trigger refuses UPDATE and DELETE)."""

    list_display = ["created_at", "actor", "action", "target_type", "target_id", "source", "request_id"]
    list_filter = ["action", "source", "target_type", "created_at"]
    search_fields = ["actor", "target_id", "request_id", "trace_id"]
    show_full_result_count = False
    fields = readonly_fields = (
        "created_at", "actor", "actor_id", "action", "target_type", "target_id", "target_owner_id", "source",
        "request_id", "trace_id", "details",
    )  # fmt: skip
    actions = None  # not even the bulk delete

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_staff)
