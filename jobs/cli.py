"""Shared by the management commands (`jobs`, `workflows`): output and who they act as."""

from __future__ import annotations

from typing import Any

import orjson
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError


def dump(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()


class _Operator:
    """The CLI runs with the operator's authority: every object is visible."""

    is_staff = True
    pk = None


OPERATOR = _Operator()


def cli_owner(username: str | None) -> Any:
    """The user named, else the first superuser (a login-less `cli` superuser if none)."""
    users = get_user_model().objects
    if username:
        try:
            return users.get(username=username)
        except users.model.DoesNotExist:
            raise CommandError(f"no user named {username!r}") from None
    owner = users.filter(is_superuser=True).order_by("pk").first()
    if owner is None:
        # A login-less system user owns CLI work until a real superuser exists.
        owner, _ = users.get_or_create(username="cli", defaults={"is_staff": True, "is_superuser": True})
        owner.set_unusable_password()
        owner.save(update_fields=["password"])
    return owner
