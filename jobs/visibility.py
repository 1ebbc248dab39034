"""Who may see what: the one rule, for every reader of users' objects (the API, the dashboard,
the logs, the archive, the breakers, the queues' backlogs, the admin).

A user sees its own objects; staff, and viewers (the `viewer` group: operators who look and
never act), see everyone's. Anybody else (no user at all, an anonymous or an inactive one)
sees nothing: asked about someone it cannot place, the rule
says no (`Nobody`), where a forgotten filter would have shown everything.

    scope(user).owner_id   None: everyone's (staff); else the one owner whose objects it sees
    scope(user).filter(qs) the rows of a queryset with an `owner_id` that it may see
    scope(user).allows(owner_id)
    may_act(user)          False for a viewer: every action (API, dashboard, CLI) is refused
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet

M = TypeVar("M", bound=Model)


class Nobody(PermissionDenied):
    """No user, or one that is anonymous or inactive, asked to see users' objects."""


@dataclass(frozen=True)
class Scope:
    owner_id: int | None  # None: every owner's (staff)

    @property
    def everyone(self) -> bool:
        return self.owner_id is None

    def filter(self, queryset: QuerySet[M]) -> QuerySet[M]:
        return queryset if self.owner_id is None else queryset.filter(owner_id=self.owner_id)

    def allows(self, owner_id: int | None) -> bool:
        return self.owner_id is None or owner_id == self.owner_id


class _Operator:
    """Code that runs with the operator's authority (`manage.py` commands): staff, by name."""

    is_staff = is_authenticated = is_active = True
    pk = None


OPERATOR = _Operator()


VIEWER_GROUP = "viewer"  # made by migration 0030: sees what staff see, does nothing
VIEWERS_LOOK_ONLY = "viewers may look, not act"


def is_viewer(user: Any) -> bool:
    """In the `viewer` group and not staff (staff act whatever their groups). Asked once per
    user object: a request's user keeps the answer."""
    if getattr(user, "is_staff", False) or not getattr(user, "pk", None):
        return False
    cached = user.__dict__.get("_is_viewer")
    if cached is None:
        cached = user.__dict__["_is_viewer"] = user.groups.filter(name=VIEWER_GROUP).exists()
    return bool(cached)


def may_act(user: Any) -> bool:
    return not is_viewer(user)


def scope(user: Any) -> Scope:
    """What `user` may see; raises Nobody (a 403 in a view) when it is nobody in particular."""
    if user is None or not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", False):
        raise Nobody("only a signed-in, active user may see users' objects")
    return Scope(None if user.is_staff or is_viewer(user) else int(user.pk))
