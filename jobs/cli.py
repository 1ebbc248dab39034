"""Shared by the management commands (`jobs`, `workflows`): output and who they act as."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import orjson
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from config import tracing
from jobs import audit, visibility


class _HasStatus(Protocol):
    @property
    def status(self) -> str: ...


S = TypeVar("S", bound=_HasStatus)


def wait_for_end(
    name: str,
    load: Callable[[], S],
    ended: Collection[str],
    *,
    timeout: float,
    interval: float,
    on_poll: Callable[[S], None] | None = None,
) -> S:
    """`--wait`: load the object until its status is one of `ended` and return it; a
    CommandError naming it and its status once `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        obj = load()
        if on_poll is not None:
            on_poll(obj)
        if obj.status in ended:
            return obj
        if time.monotonic() >= deadline:
            raise CommandError(f"{name} is still {obj.status} after {timeout:.0f}s")
        time.sleep(interval)


def dump(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()


OPERATOR = visibility.OPERATOR  # the CLI runs with the operator's authority: every object is visible


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


def acting_as(username: str | None) -> Any:
    """Who a CLI action acts as: `--as USER`, with that user's rights (the objects it sees;
    refused to a viewer), else the operator (every object)."""
    if not username:
        return OPERATOR
    user = cli_owner(username)
    if not visibility.may_act(user):
        raise CommandError(visibility.VIEWERS_LOOK_ONLY)
    return user


@contextmanager
def operator_command(command: str, action: str, actor: Any = None) -> Iterator[None]:
    """What a CLI action runs in: tracing as the environment asks (service `cli`), a span of
    the command (what it submits joins its trace), and the audit context (source `cli`, and
    `actor` when it acts as a user)."""
    tracing.setup("cli")
    name = f"{command} {action}"
    with audit.acting("cli", actor=actor), tracing.span(f"cli {name}", attributes={"orchestration.cli.command": name}):
        yield
