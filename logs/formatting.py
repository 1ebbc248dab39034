"""Console formatting: the event name, then its structured fields as key=value.

Records are written as `logger.info("job.finished", extra={"job_id": ..., "outcome": ...})`;
the standard formatter would drop the fields, which are the useful part."""

from __future__ import annotations

import logging

# The attributes every LogRecord has; anything else on a record came from `extra=`.
STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in record.__dict__.items() if k not in STANDARD_ATTRS and not k.startswith("_")}
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        return head + " " + " ".join(f"{k}={v}" for k, v in fields.items()) + sep + tail
