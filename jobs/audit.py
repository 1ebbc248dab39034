"""The audit log: every operator action, who, when, what, on what, from where.

    AuditContext (web middleware)   each request: its source (api, admin or dashboard, by
                                    path), its request id (X-Request-ID, else a new one)
    acting(source="cli", actor=...) the same for a management command
    record(action, target_type, target_id, ...)
                                    called by the services that carry an action out (cancel,
                                    retry, bulk actions, approvals, signals, limits, schedules,
                                    tokens), in their transaction: an action that fails leaves
                                    no record, and one that commits always has one

Outside any such context (a worker, the scheduler, a saga cancelling its own jobs) nothing is
recorded: that is the platform acting, not an operator. Records are append-only (a trigger
refuses UPDATE and DELETE); the API, the admin and the dashboard only read them, for staff and
viewers. PostgreSQL keeps them for good; the scheduler's retention pass also copies them, in id
order, to ClickHouse beside the archived jobs (jobs.archive, `newest_and_writers` and
`records_between` below).
"""

from __future__ import annotations

import getpass
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.http import HttpRequest, HttpResponse

from config import tracing
from jobs import visibility
from jobs.models import AuditRecord

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")  # a caller's X-Request-ID is kept only if it looks like one


@dataclass(frozen=True)
class _Context:
    source: str
    request: HttpRequest | None  # its user is read at record time (DRF authenticates in the view)
    actor: Any  # a user, when the interface knows it (the CLI's --as)
    request_id: str


_context: ContextVar[_Context | None] = ContextVar("audit_context", default=None)


@contextmanager
def acting(source: str, *, actor: Any = None, request: HttpRequest | None = None,
           request_id: str = "") -> Iterator[None]:  # fmt: skip
    token = _context.set(_Context(source, request, actor, request_id or uuid.uuid4().hex))
    try:
        yield
    finally:
        _context.reset(token)


def record(action: str, target_type: str, target_id: Any, /, *, owner_id: int | None = None, actor: Any = None,
           **details: Any) -> None:  # fmt: skip
    """Record an operator's action, when an interface is acting (else nothing)."""
    ctx = _context.get()
    if ctx is None:
        return
    user: Any = actor or ctx.actor or (ctx.request.user if ctx.request is not None else None)
    known = bool(user is not None and getattr(user, "is_authenticated", False) and getattr(user, "pk", None))
    name = user.get_username() if known else (f"cli:{getpass.getuser()}" if ctx.source == "cli" else "anonymous")
    AuditRecord.objects.create(
        actor_id=user.pk if known else None, actor=name[:150], action=action, target_type=target_type,
        target_id=str(target_id)[:200], target_owner_id=owner_id, source=ctx.source, request_id=ctx.request_id,
        trace_id=tracing.current_trace_id() or "", details=details,
    )  # fmt: skip


class AuditContext:
    """Web middleware: every request acts in an audit context of its source and request id,
    and answers with the id (X-Request-ID) so a client can quote it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        source = "api" if path.startswith("/api/") else "admin" if path.startswith("/admin/") else "dashboard"
        sent = request.headers.get("X-Request-ID", "")
        request_id = sent if REQUEST_ID.match(sent) else uuid.uuid4().hex
        with acting(source, request=request, request_id=request_id):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


# --- reading it: staff and viewers ----------------------------------------------------------


def readable_by(user: Any) -> bool:
    return bool(getattr(user, "is_staff", False)) or visibility.is_viewer(user)


# --- copying it to the archive (orchestration.scheduler.retention.AuditArchiveScan) ------------

# Ids are drawn in order, but the records commit in any order: a transaction that drew id 7
# may commit after the one that drew id 8. A copy that went on after 8 would never see 7. A
# transaction draws ids only while it holds the table's ROW EXCLUSIVE lock (an INSERT takes it
# before it draws, and keeps it to the end), so: every id up to the newest one visible is final
# (committed or never will be) once the transactions that held that lock then have ended. One
# statement: the snapshot (the newest id) is taken before pg_locks is read. Assumes the id
# sequence caches no values (CACHE 1, Django's), so ids are drawn in time order.
# pg_locks is read only when there is something newer than `known` (an idle tick: one probe
# of the primary key).
_NEWEST_AND_WRITERS_SQL = """
WITH newest AS (SELECT coalesce(max(id), 0) AS id FROM jobs_auditrecord)
SELECT newest.id,
       CASE WHEN newest.id > %(known)s THEN array(
            SELECT DISTINCT l.virtualtransaction FROM pg_locks l
             WHERE l.locktype = 'relation' AND l.mode = 'RowExclusiveLock'
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.relation = 'jobs_auditrecord'::regclass
               AND l.pid IS DISTINCT FROM pg_backend_pid())
       ELSE '{}'::text[] END
  FROM newest
"""


def newest_and_writers(known: int = 0) -> tuple[int, frozenset[str]]:
    """The newest record's id (0: none), and the other transactions that may be adding records
    now (their virtual transaction ids; none looked for when the newest id is not past
    `known`): every id up to the newest is final once they have ended."""
    with connection.cursor() as cur:
        cur.execute(_NEWEST_AND_WRITERS_SQL, {"known": known})
        newest, writers = cur.fetchone()
    return int(newest), frozenset(writers)


def records_between(after: int, upto: int, limit: int) -> list[AuditRecord]:
    """Up to `limit` records with after < id <= upto, in id order (the primary key)."""
    return list(AuditRecord.objects.filter(id__gt=after, id__lte=upto).order_by("id")[:limit])
