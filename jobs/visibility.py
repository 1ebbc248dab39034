"""Who may see what: the one rule, for every reader of users' objects (the API, the dashboard,
the logs, the archive, the breakers, the queues' backlogs, the admin).

A user sees its own objects, and those of the owners whose tenants it administers (an
`OwnerAdmin` grant, made by staff), and acts on them as their owner can; staff, and viewers
(the `viewer` group: operators who look and never act), see everyone's. A viewer who also
holds grants still acts on nothing: the viewer rule wins. Anybody else (no user at all, an
anonymous or an inactive one) sees nothing: asked about someone it cannot place, the rule
says no (`Nobody`), where a forgotten filter would have shown everything.

    scope(user).owners     None: everyone's (staff, viewers); else the owners whose objects it
                           sees (its own and those it administers), never empty
    scope(user).filter(qs) the rows of a queryset with an `owner_id` that it may see
    scope(user).allows(owner_id)
    may_act(user)          False for a viewer: every action (API, dashboard, CLI) is refused
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet

from jobs.models import OwnerAdmin

M = TypeVar("M", bound=Model)


class Nobody(PermissionDenied):
    """No user, or one that is anonymous or inactive, asked to see users' objects."""


@dataclass(frozen=True)
class Scope:
    owners: frozenset[int] | None  # None: every owner's (staff, viewers)

    @property
    def everyone(self) -> bool:
        return self.owners is None

    def filter(self, queryset: QuerySet[M]) -> QuerySet[M]:
        # One owner's IN (x) is planned as = x: the usual case reads as it did with one owner.
        return queryset if self.owners is None else queryset.filter(owner_id__in=sorted(self.owners))

    def allows(self, owner_id: int | None) -> bool:
        return self.owners is None or owner_id in self.owners


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


def administered(user: Any) -> frozenset[int]:
    """The owners whose tenants `user` administers. Asked once per user object, as is_viewer:
    each request loads its user afresh, so a revoked grant ends with the next request."""
    cached: frozenset[int] | None = user.__dict__.get("_administers")
    if cached is None:
        granted = OwnerAdmin.objects.filter(admin_id=user.pk).values_list("owner_id", flat=True)
        cached = user.__dict__["_administers"] = frozenset(granted)
    return cached


def scope(user: Any) -> Scope:
    """What `user` may see; raises Nobody (a 403 in a view) when it is nobody in particular."""
    if user is None or not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", False):
        raise Nobody("only a signed-in, active user may see users' objects")
    if user.is_staff or is_viewer(user):
        return Scope(None)
    return Scope(frozenset({int(user.pk)}) | administered(user))
