"""Text from user code made storable (and ids in it told apart): every process role and the log handler (which loads
before Django's apps) share it, so it imports nothing of ours.

PostgreSQL's text and jsonb refuse NUL, no UTF-8 encoder takes a lone surrogate, and an
unbounded string can be larger than a Kafka message. Such text is never refused where it is
an outcome or a log line (refusing would lose it): NUL becomes U+FFFD, a lone surrogate "?",
and anything over its limit is cut with a visible marker.
"""

from __future__ import annotations

import uuid
from typing import Any

NUL, REPLACEMENT = "\x00", "\ufffd"


def storable(text: str) -> str:
    """`text` without NUL or lone surrogates."""
    return text.replace(NUL, REPLACEMENT).encode("utf-8", "replace").decode("utf-8")


def bounded_text(text: str, limit: int) -> str:
    """`storable(text)`, at most `limit` characters: cut with a marker saying how long it was."""
    text = storable(text)
    if len(text) <= limit:
        return text
    marker = f"… [truncated: {len(text):,} characters in all]"
    return text[: max(0, limit - len(marker))] + marker[:limit]


def is_uuid(value: Any) -> bool:
    """Whether `value` (as text) is a UUID: ids from forms, links and log `extra` are checked
    before they reach a query or a UUID column."""
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True
