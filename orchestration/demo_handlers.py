"""The built-in `demo.*` job handlers, for demos, tests and benchmarks. Always registered:
the orchestration app imports this module at start in every role (`OrchestrationConfig`),
whatever JOB_HANDLER_MODULES lists. Your own handlers go in modules of yours listed there
(`jobs.handlers` says how a handler is written)."""

from __future__ import annotations

import logging
import time
from typing import Any

from opentelemetry import baggage, trace

from jobs.handlers import JobContext, PermanentError, handler

logger = logging.getLogger("orchestration.demo")

_LEVELS = logging.getLevelNamesMapping()


class DemoFailure(Exception):
    """The retryable failure `demo.fail` raises."""


@handler("demo.noop")
def noop(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return {}


@handler("demo.echo")
def echo(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return payload


@handler("demo.trace")
def trace_context(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The trace context the handler runs in, as a handler of yours sees it: its trace id,
    its W3C tracestate and its baggage (all empty with tracing off). For checking that what
    a submit carried arrived."""
    span = trace.get_current_span().get_span_context()
    return {
        "trace_id": f"{span.trace_id:032x}" if span.is_valid else "",
        "tracestate": span.trace_state.to_header() if span.is_valid else "",
        "baggage": {k: str(v) for k, v in baggage.get_all().items()},
    }


@handler("demo.sleep")
def sleep(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Sleeps `seconds`, checking for a cancel request every 50 ms so it stops early."""
    seconds = float(payload.get("seconds", 1))
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ctx.check_cancelled()
        time.sleep(min(0.05, left))
    return {"slept": seconds}


@handler("demo.progress")
def progress(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Works through `steps` steps over `seconds`, saying how far it is after each
    (`ctx.progress`), and stops early when cancelled."""
    steps = max(1, int(payload.get("steps", 10)))
    seconds = float(payload.get("seconds", 1))
    for step in range(1, steps + 1):
        ctx.check_cancelled()
        time.sleep(seconds / steps)
        ctx.progress(step / steps, f"step {step} of {steps}")
    return {"steps": steps}


@handler("demo.fail")
def fail(payload: dict[str, Any], ctx: JobContext) -> None:
    message = str(payload.get("message", "demo.fail always fails"))
    if payload.get("retryable", True):
        raise DemoFailure(message)
    raise PermanentError(message)


@handler("demo.flaky")
def flaky(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Fails the first `failures` attempts of the job, then succeeds."""
    failures = int(payload.get("failures", 1))
    if ctx.attempt <= failures:
        raise DemoFailure(f"demo.flaky: attempt {ctx.attempt} of {failures} planned failures")
    return {"succeeded_on_attempt": ctx.attempt}


@handler("demo.log")
def log_lines(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    lines = int(payload.get("lines", 1))
    level = _LEVELS.get(str(payload.get("level", "INFO")).upper(), logging.INFO)
    for i in range(lines):
        logger.log(level, "demo.log line %d of %d", i + 1, lines, extra={"line": i + 1})
    return {"lines": lines}
