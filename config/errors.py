"""What a domain error means to the API, without the API knowing the domain: jobs' and
workflows' errors subclass these, and `config.rest.exception_handler` maps them (404, 409)."""

from __future__ import annotations

from typing import Any


class ObjectNotFound(Exception):
    """An object that does not exist, or is not the caller's: 404."""


class StateConflict(Exception):
    """A change the object's state, or an earlier request, does not allow: 409 with `code`
    and `fields()` beside the message."""

    code = "conflict"

    def fields(self) -> dict[str, Any]:
        return {}
