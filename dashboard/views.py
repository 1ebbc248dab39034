"""The operator dashboard: server-rendered pages behind login, with the same permissions as
the API (jobs.visibility: users see their own jobs and workflows and those of the owners they
administer, staff see all) and every action a POST
with Django's CSRF protection. Parts of a page that change refresh themselves by fetching a
fragment (see static/dashboard/app.js)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_POST, require_safe
from rest_framework.exceptions import ValidationError

from config.errors import StateConflict
from config.text import is_uuid
from config.tracing import TRACE_ID
from dashboard import charts, queries
from jobs import audit, batches, bulk_actions, schedules, selectors, services, visibility
from jobs.errors import BatchEnded, BatchNotFound, JobError, ScheduleNotFound
from jobs.models import TERMINAL_STATUSES, AuditRecord, JobStatus
from jobs.serializers import JobDetailSerializer
from logs import search
from logs.records import LEVELS
from logs.services import log_scope
from workflows import selectors as workflow_selectors
from workflows import services as workflow_services
from workflows import steps
from workflows.errors import NoSuchApproval, NotAnApprover, WorkflowFinished, WorkflowNotFound
from workflows.graph import graph_tasks, render_svg
from workflows.models import WORKFLOW_TERMINAL, Decision, WorkflowStatus
from workflows.serializers import task_rows

PAGE = 50


def acting(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """An action: refused (403) to a viewer, who sees what staff see and may do nothing."""

    @functools.wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not visibility.may_act(request.user):
            raise PermissionDenied(visibility.VIEWERS_LOOK_ONLY)
        return view(request, *args, **kwargs)

    return checked


def _page_and_panel(page: str, panel: str, context: Callable[..., dict[str, Any]]) -> tuple[Any, Any]:
    """A page and the fragment of it that refreshes itself, from one context function."""

    @login_required
    def full(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        return render(request, page, context(request, **kwargs))

    @login_required
    def part(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        return render(request, panel, context(request, **kwargs))

    return full, part


def _overview_context(request: HttpRequest) -> dict[str, Any]:
    data = queries.overview(request.user)
    m = data["minutes"]
    data["throughput_chart"] = charts.line_chart(
        [("succeeded", "#15803d", m["succeeded"]), ("dead-lettered", "#b91c1c", m["dead"])],
        m["labels"], title="Jobs finished per minute, last hour",
    )  # fmt: skip
    data["latency_chart"] = charts.line_chart(
        [("p50", "#1d4ed8", m["p50"]), ("p95", "#7c3aed", m["p95"])],
        m["labels"], title="End-to-end latency per minute, last hour (seconds)", unit=" s",
    )  # fmt: skip
    data["statuses"] = JobStatus.values
    return data


overview, overview_panel = _page_and_panel(
    "dashboard/overview.html", "dashboard/_overview_panel.html", _overview_context
)


@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico on every page that names no icon of its own (the API's
    JSON, its docs, the admin): the dashboard's SVG, without login. A day in their cache."""
    response = redirect(static("dashboard/favicon.svg"))
    patch_cache_control(response, public=True, max_age=86400)
    return response


# --- jobs ---------------------------------------------------------------------------------


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    filterset = selectors.JobFilter(request.GET, queryset=selectors.job_visible_to(request.user), request=request)
    rows: list[Any] = []
    cursor = None
    error = None
    archived = False
    if filterset.is_valid():
        archived = bool(filterset.form.cleaned_data.get("archived"))
        try:
            pager = filterset.pager()
            if pager is None:
                rows, cursor = queries.keyset_page(filterset.qs, request.GET.get("cursor"), PAGE)
            else:
                rows, cursor = queries.keyset_page(None, request.GET.get("cursor"), PAGE, pager)
        except ValidationError as exc:
            error = "; ".join(str(m) for msgs in exc.detail.values() for m in msgs)  # type: ignore[union-attr]
        except search.LogStoreUnavailable:
            error = "ClickHouse is not answering: the log text filter and the archive cannot be used right now."
    else:
        error = "; ".join(f"{k}: {', '.join(v)}" for k, v in filterset.errors.items())
    params = request.GET.copy()
    params.pop("cursor", None)
    next_url = None
    if cursor:
        params["cursor"] = cursor
        next_url = f"?{params.urlencode()}"
    return render(
        request,
        "dashboard/jobs.html",
        {
            "jobs": rows,
            "next_url": next_url,
            "error": error,
            "f": request.GET,
            "statuses": JobStatus.values,
            "archived": archived,
        },
    )


@login_required
@require_POST
@acting
def job_bulk(request: HttpRequest) -> HttpResponse:
    action = request.POST.get("action")
    do = {"retry": services.job_retry, "cancel": services.job_cancel}.get(action or "")
    if do is None:
        messages.error(request, "Choose retry or cancel.")
        return _back(request, reverse("dashboard:jobs"))
    ids = [i for i in request.POST.getlist("ids") if is_uuid(i)]
    visible = set(selectors.job_visible_to(request.user).filter(id__in=ids).values_list("id", flat=True))
    done, refused = 0, []
    for job_id in visible:
        try:
            do(job_id=job_id)
            done += 1
        except JobError as exc:
            refused.append(str(exc))
    verb = "Retried" if action == "retry" else "Cancelled"
    if done:
        messages.success(request, f"{verb} {done} job(s).")
    for reason in refused[:10]:
        messages.warning(request, reason)
    if not ids:
        messages.warning(request, "No jobs were selected.")
    return _back(request, reverse("dashboard:jobs"))


BULK_VERBS = {"cancel": "Cancel", "retry": "Retry"}


@login_required
@acting
def job_bulk_action(request: HttpRequest) -> HttpResponse:
    """Every job that matches the list's filters: GET shows how many and asks to confirm,
    POST starts the action in the background and shows its job (its progress bar)."""
    source = request.POST if request.method == "POST" else request.GET
    action = source.get("action", "")
    if action not in BULK_VERBS:
        raise Http404("no such action")
    filters = {name: source[name] for name in bulk_actions.FILTERS if source.get(name)}
    try:
        if request.method == "POST":
            job, count = bulk_actions.start(request.user, action=action, filters=filters, payload=None)
            messages.success(request, f"{BULK_VERBS[action]} of {count} job(s) started: this job carries it out.")
            return redirect("dashboard:job", job_id=job.id)
        count = bulk_actions.matching(request.user, filters).count()
    except ValidationError as exc:
        messages.error(request, f"Bad filter: {exc.detail}")
        return redirect(f"{reverse('dashboard:jobs')}?{urlencode(filters)}")
    administers = len(visibility.administered(request.user))
    context = {"action": action, "verb": BULK_VERBS[action], "count": count, "filters": filters,
               "administers": administers}  # fmt: skip
    return render(request, "dashboard/bulk_action.html", context)


@login_required
def job_logs(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    job = _job_or_404(request, job_id, archived=True)
    try:
        records, _ = search.search(search.LogQuery(job_id=job.id, limit=200))
        records.reverse()  # newest last, like a terminal
        error = None
    except search.LogStoreUnavailable:
        records, error = [], "The log store is not answering."
    return render(request, "dashboard/_log_tail.html", {"records": records, "error": error, "job": job})


def _job_or_404(request: HttpRequest, job_id: uuid.UUID, *, detail: bool = False, archived: bool = False) -> Any:
    """The user's job (`detail` and `archived`: archived ones too); 404 when it is in neither
    PostgreSQL nor the archive, or the archive cannot be asked."""
    try:
        if detail:
            return selectors.job_get_detail(user=request.user, job_id=job_id)
        return selectors.job_get(user=request.user, job_id=job_id, archived=archived)
    except (JobError, search.LogStoreUnavailable):
        raise Http404("no such job") from None


def _job_context(request: HttpRequest, job_id: uuid.UUID) -> dict[str, Any]:
    job = _job_or_404(request, job_id, detail=True)
    data = JobDetailSerializer(job).data
    trace_url = (
        settings.TRACE_UI_URL.replace("{trace_id}", job.trace_id) if job.trace_id and settings.TRACE_UI_URL else ""
    )
    return {"job": job, "data": data, "terminal": job.status in TERMINAL_STATUSES, "trace_url": trace_url}


job_detail, job_panel = _page_and_panel("dashboard/job.html", "dashboard/_job_panel.html", _job_context)


# What each button on a job's page does, and what it says when it worked.
JOB_ACTIONS: dict[str, tuple[Callable[..., Any], str]] = {
    "retry": (services.job_retry, "Job requeued."),
    "cancel": (services.job_cancel, "Job cancel requested."),
}


@login_required
@require_POST
@acting
def job_action(request: HttpRequest, job_id: uuid.UUID, action: str) -> HttpResponse:
    if action not in JOB_ACTIONS:
        raise Http404("no such action")  # never a default: a typo must not cancel a job
    job = _job_or_404(request, job_id)
    do, done = JOB_ACTIONS[action]
    try:
        do(job_id=job.id)
        messages.success(request, done)
    except JobError as exc:
        messages.warning(request, str(exc))
    return redirect("dashboard:job", job_id=job.id)


# --- workflows ----------------------------------------------------------------------------


@login_required
def workflow_list(request: HttpRequest) -> HttpResponse:
    filterset = workflow_selectors.WorkflowFilter(
        request.GET, queryset=workflow_selectors.workflow_visible_to(request.user)
    )
    rows, cursor = queries.keyset_page(
        filterset.qs if filterset.is_valid() else filterset.queryset.none(), request.GET.get("cursor"), PAGE
    )
    next_url = f"?status={request.GET.get('status', '')}&cursor={cursor}" if cursor else None
    return render(request, "dashboard/workflows.html", {"workflows": rows, "next_url": next_url, "f": request.GET,
                                                        "statuses": WorkflowStatus.values})  # fmt: skip


def _workflow_context(request: HttpRequest, workflow_id: uuid.UUID) -> dict[str, Any]:
    try:  # an approver of one of its steps sees it too (and may decide there, nothing else)
        workflow = workflow_selectors.workflow_for_decision(user=request.user, workflow_id=workflow_id)
    except WorkflowNotFound:
        raise Http404("no such workflow") from None
    tasks = task_rows(workflow)
    graph = render_svg(graph_tasks(tasks, lambda child: reverse("dashboard:workflow", args=[child])))
    approvals = [  # the task rows carry each approval's rule already
        {**t, "why_not": steps.may_decide(workflow, t["id"], t["approval"], request.user)}
        for t in tasks
        if t["approval"]
    ]
    return {
        "workflow": workflow, "tasks": tasks, "graph": graph, "terminal": workflow.status in WORKFLOW_TERMINAL,
        "approvals": approvals,  # an approver from another tenant may decide here, not cancel
        "can_cancel": visibility.may_act(request.user) and visibility.scope(request.user).allows(workflow.owner_id),
    }  # fmt: skip


workflow_detail, workflow_panel = _page_and_panel(
    "dashboard/workflow.html", "dashboard/_workflow_panel.html", _workflow_context
)


@login_required
@require_POST
@acting
def workflow_cancel(request: HttpRequest, workflow_id: uuid.UUID) -> HttpResponse:
    try:
        workflow = workflow_selectors.workflow_get(user=request.user, workflow_id=workflow_id)
        workflow_services.workflow_cancel(workflow_id=workflow.id)
        messages.success(request, "Workflow cancelled: what succeeded is being compensated.")
    except WorkflowNotFound:
        raise Http404("no such workflow") from None
    except WorkflowFinished as exc:
        messages.warning(request, str(exc))
    return redirect("dashboard:workflow", workflow_id=workflow_id)


@login_required
@require_POST
@acting
def workflow_decide(request: HttpRequest, workflow_id: uuid.UUID, task_id: str) -> HttpResponse:
    decision = request.POST.get("decision", "")
    if decision not in Decision.values:
        raise Http404("no such decision")  # never a default: a typo must not approve
    comment = request.POST.get("comment", "")[:2000].replace("\x00", "")
    try:
        workflow = workflow_selectors.workflow_for_decision(user=request.user, workflow_id=workflow_id)
        with transaction.atomic():
            steps.decide(workflow_id=workflow.id, task_id=task_id, user=request.user, decision=decision,
                         comment=comment)  # fmt: skip
        messages.success(request, f"Step {task_id}: {decision}d.")
    except (WorkflowNotFound, NoSuchApproval):
        raise Http404("no such approval") from None
    except (NotAnApprover, StateConflict) as exc:
        messages.warning(request, str(exc))
    return redirect("dashboard:workflow", workflow_id=workflow_id)


# --- batches ------------------------------------------------------------------------------


@login_required
def batch_list(request: HttpRequest) -> HttpResponse:
    rows, cursor = queries.keyset_page(selectors.batch_visible_to(request.user), request.GET.get("cursor"), PAGE)
    counts = batches.batches_counts([b.id for b in rows])
    listed = [(b, counts[b.id]) for b in rows]
    next_url = f"?cursor={cursor}" if cursor else None
    return render(request, "dashboard/batches.html", {"batches": listed, "next_url": next_url})


def _batch_context(request: HttpRequest, batch_id: uuid.UUID) -> dict[str, Any]:
    try:
        batch = selectors.batch_get(user=request.user, batch_id=batch_id)
    except BatchNotFound:
        raise Http404("no such batch") from None
    counts = batches.batch_counts(batch.id)
    shown = [(s, counts.by_status[s]) for s in JobStatus.values if counts.by_status[s]]
    return {"batch": batch, "counts": counts, "shown": shown, "terminal": batch.state in ("complete", "cancelled")}


batch_detail, batch_panel = _page_and_panel("dashboard/batch.html", "dashboard/_batch_panel.html", _batch_context)


@login_required
@require_POST
@acting
def batch_cancel(request: HttpRequest, batch_id: uuid.UUID) -> HttpResponse:
    try:
        batch = selectors.batch_get(user=request.user, batch_id=batch_id)
    except BatchNotFound:
        raise Http404("no such batch") from None
    try:
        _, matched = batches.batch_cancel(user=request.user, batch_id=batch.id)
        messages.success(request, f"Batch cancelled: its {matched} unfinished jobs are being cancelled.")
    except BatchEnded as exc:
        messages.warning(request, str(exc))
    return redirect("dashboard:batch", batch_id=batch_id)


# --- logs ---------------------------------------------------------------------------------


@login_required
def log_search(request: HttpRequest) -> HttpResponse:
    g = request.GET
    error = None
    records: list[dict[str, Any]] = []
    next_cursor = None
    job_id = g.get("job_id") if is_uuid(g.get("job_id", "")) else None
    level = g.get("level", "").upper() or None
    if level and level not in LEVELS:
        error, level = f"Unknown level {level!r}.", None
    trace_id = g.get("trace_id", "").strip().lower() or None
    if trace_id and not TRACE_ID.fullmatch(trace_id):
        error, trace_id = "A trace id is 32 hexadecimal digits.", None
    since = _parse_since(g.get("window", "1h"))
    visible, owners = log_scope(request.user, job_id)
    if not visible:
        job_id = "00000000-0000-0000-0000-000000000000"  # another user's job: nothing
    if "q" in g or job_id or level or g.get("service") or trace_id:
        try:
            records, next_cursor = search.search(
                search.LogQuery(
                    job_id=uuid.UUID(job_id) if job_id else None, min_level=level, service=g.get("service") or None,
                    q=(g.get("q") or "")[:200] or None, since=since, owners=owners, limit=200,
                    cursor=g.get("cursor") or None, trace_id=trace_id,
                )
            )  # fmt: skip
        except search.InvalidCursor:
            error = "That page link is no longer valid."
        except search.LogStoreUnavailable:
            error = "The log store is not answering; try again shortly."
    params = g.copy()
    params.pop("cursor", None)
    next_url = None
    if next_cursor:
        params["cursor"] = next_cursor
        next_url = f"?{params.urlencode()}"
    return render(request, "dashboard/logs.html", {"records": records, "error": error, "f": g, "levels": list(LEVELS),
                                                   "next_url": next_url})  # fmt: skip


def _parse_since(window: str) -> Any:
    spans = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}
    span = spans.get(window)
    return timezone.now() - span if span else None


# --- schedules ----------------------------------------------------------------------------


@login_required
def schedule_list(request: HttpRequest) -> HttpResponse:
    schedules = selectors.schedule_visible_to(request.user).order_by("name")
    return render(request, "dashboard/schedules.html", {"schedules": schedules})


@login_required
@require_POST
@acting
def schedule_toggle(request: HttpRequest, schedule_id: uuid.UUID) -> HttpResponse:
    try:
        schedule = selectors.schedule_get(user=request.user, schedule_id=schedule_id)
    except ScheduleNotFound:
        raise Http404("no such schedule") from None
    schedules.schedule_save(owner_id=schedule.owner_id, data={"enabled": not schedule.enabled}, schedule=schedule)
    messages.success(request, f"Schedule {schedule.name} {'enabled' if schedule.enabled else 'disabled'}.")
    return redirect("dashboard:schedules")


# --- the audit log ------------------------------------------------------------------------


@login_required
def audit_list(request: HttpRequest) -> HttpResponse:
    """Operators' actions, newest first, filtered as the API filters them: staff and viewers."""
    if not audit.readable_by(request.user):
        raise PermissionDenied("the audit log is for staff and viewers")
    filterset = selectors.AuditFilter(request.GET, queryset=AuditRecord.objects.all())
    rows, cursor = queries.keyset_page(
        filterset.qs if filterset.is_valid() else filterset.queryset.none(), request.GET.get("cursor"), PAGE
    )
    kept = {k: v for k, v in request.GET.items() if k != "cursor" and v}
    next_url = f"?{urlencode({**kept, 'cursor': cursor})}" if cursor else None
    context = {"records": rows, "next_url": next_url, "f": request.GET, "errors": filterset.errors,
               "sources": selectors.AUDIT_SOURCES}  # fmt: skip
    return render(request, "dashboard/audit.html", context)


def _back(request: HttpRequest, fallback: str) -> HttpResponse:
    target = request.POST.get("next") or fallback
    if not target.startswith("/") or target.startswith("//"):
        target = fallback  # only back to our own pages
    return HttpResponseRedirect(target)
