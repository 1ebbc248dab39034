"""What a handler hands back (its result, its error text and traceback), made storable.

Handlers are user code: a result may hold U+0000 (which PostgreSQL's jsonb and text refuse),
an exception's text may hold lone surrogates (which no UTF-8 encoder accepts), and either may
be megabytes. Refusing them would lose the outcome, and one refused row in a batch's write
lost every success beside it. So outcomes are never refused (`config.text`): NUL becomes
U+FFFD, invalid code points become "?", and anything over its limit is cut with a marker.
"""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings

from config.text import NUL, REPLACEMENT, bounded_text

PREVIEW_CHARS = 1000  # of a result too large to keep


def to_json(value: Any) -> str:
    """The one encoder for what a job hands back, on every path that writes it (one job or a
    batch). orjson writes NaN and ±Infinity, which JSON cannot carry, as null; psycopg's own
    json.dumps wrote `NaN`, which PostgreSQL refuses, and the job's success was lost."""
    return orjson.dumps(value).decode()


def bounded_error(text: str) -> str:
    return bounded_text(text, settings.JOB_ERROR_MAX_CHARS)


def bounded_traceback(text: str) -> str:
    return bounded_text(text, settings.JOB_TRACEBACK_MAX_CHARS)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT)
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    return value


def bounded_result(result: Any) -> Any:
    """The result as it will be stored. Raises orjson.JSONEncodeError when it is not JSON at
    all (the caller dead-letters the job: retrying cannot change that)."""
    data = orjson.dumps(result)
    if b"\\u0000" in data:  # JSON escapes NUL so: a cheap test before the walk
        result = _without_nul(result)
        data = orjson.dumps(result)
    limit = settings.JOB_RESULT_MAX_BYTES
    if len(data) <= limit:
        return result
    preview = data[:PREVIEW_CHARS].decode("utf-8", "ignore")
    return {"truncated": True, "bytes": len(data), "limit": limit, "preview": preview}
