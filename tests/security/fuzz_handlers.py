"""A handler for the pipeline fuzz target (`test_pipeline_fuzz`), loaded by the roles it
starts through JOB_HANDLER_MODULES: it turns a plain JSON payload into hostile output that
no API request could carry (NUL, lone surrogates, megabytes, deep nesting, huge integers)
as a result, an exception, a log record or a SystemExit."""

from __future__ import annotations

import logging
from typing import Any

from jobs.handlers import JobContext, PermanentError, handler

logger = logging.getLogger("tests.fuzz")


def hostile_text(payload: dict[str, Any]) -> str:
    text = str(payload.get("text", "")).replace("{NUL}", "\x00").replace("{SURR}", "\ud800")
    return text * max(1, min(int(payload.get("repeat", 1)), 5_000_000 // max(1, len(text))))


def nested(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = {"a": [value]}
    return value


@handler("fuzz.hostile")
def hostile(payload: dict[str, Any], ctx: JobContext) -> Any:
    op, text = payload.get("op", "echo"), hostile_text(payload)
    if op == "fail":
        raise RuntimeError(text)
    if op == "permanent":
        raise PermanentError(text)
    if op == "exit":
        raise SystemExit(text)
    if op == "log":
        logger.warning(text, extra={"fuzz": text[:1000]})
        return {}
    return nested({"text": text, "big": int(payload.get("big", 0))}, int(payload.get("depth", 0)))
