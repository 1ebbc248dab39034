"""OpenTelemetry tracing: off unless the environment asks for it; one job is one trace.

    setup(service)  once per process, early: web (config.wsgi), the worker (each Celery
                    process, config.celery), relay, bridge, scheduler and log sink (config.roles)
      on only when OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) or OTEL_TRACES_EXPORTER is
      set and OTEL_SDK_DISABLED is not true: a TracerProvider whose resource says
      `service.name` = OTEL_SERVICE_NAME or else the role (the role also in
      `orchestration.role` and `service.instance.id`), a BatchSpanProcessor with the
      OTLP/HTTP exporter (the SDK reads the other OTEL_* variables: sampler, batch delay,
      headers), and the maintained instrumentations for Django, psycopg, Celery and redis.
      Kafka's is not used: it makes a span per message, where our batches make one with
      links, and it would trace the log shipper, one span per log record.

Off, nothing is installed: the helpers below are one test of a module global and return
a shared null context, so a process without tracing pays nothing measurable.

A job's trace context travels as a carrier: the dict the configured propagators write
(`opentelemetry.propagate.inject`; OTEL_PROPAGATORS, by default W3C `traceparent`,
`tracestate` and `baggage`). It is kept on the job row and a workflow's (`trace_context`),
carried in the dispatch envelope (`trace`) and in the Kafka message's headers, and Celery's
instrumentation carries the Celery message's own. `continued(carrier)` makes it current in
another process; `span(...)` opens a span under it (or under the current context);
`record(...)` writes a span after the fact; `link(carrier)` links a batch's span to each of
its messages.

Spans follow the OTel messaging conventions (`messaging(...)` makes their attributes): a
submit is a PRODUCER `send <queue>` whose context the jobs keep (their creation context);
the relay's, the bridge's and the worker's batches are one span each (PRODUCER `send`,
CONSUMER `process`), linked to every message they carry, each job of a worker's batch
running in its own context; a job run alone has its own CONSUMER `process <queue>`, a child
of its creation context. Attributes of ours are prefixed `orchestration.`.

Spans of instrumented libraries with no parent at all (a scheduler tick's queries, a
heartbeat's Redis call) are not sampled: each would be a trace of one span. Roots of our own
and the web's requests go to the configured sampler (default: parent-based, always on).

A request's own trace context (`traceparent`, `tracestate`, `baggage` headers) is not
continued unless OTEL_TRUST_INCOMING says the callers are trusted: on a public API any
tenant could otherwise choose to be traced (a sampled flag overrides a ratio sampler: a cost
of its choosing, on shared workers) and attach its jobs to any trace id. Untrusted,
`UntrustedTraceContext` (first of the web's middleware) takes the headers off, the request
starts a trace of ours, sampled by our sampler, and its span links the caller's context.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import re
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags

logger = logging.getLogger("config.tracing")

TRACER_NAME = "orchestration"
# A W3C traceparent as we write it (version 00); the ids must not be all zeros.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
TRACE_ID = re.compile(r"[0-9a-f]{32}\Z")
SPAN_ID = re.compile(r"[0-9a-f]{16}\Z")
# Probes and scrapes would each be a trace of their own.
DEFAULT_EXCLUDED_URLS = "health/,metrics,static/,favicon"
INSTRUMENTATIONS = ("django", "psycopg", "celery", "redis")

_NULL: AbstractContextManager[Any] = nullcontext()
_tracer: trace.Tracer | None = None  # None: tracing is off in this process
_provider: Any = None
_setup_pid = 0
_trust_incoming = False  # OTEL_TRUST_INCOMING: continue a request's own trace context
CALLER_TRACEPARENT = "orchestration.caller_traceparent"  # request.META: the untrusted caller's context


# -- on or off ------------------------------------------------------------------------------


def exporters(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The span exporters the environment asks for (empty: tracing stays off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if names:
        return [n for n in names if n != "none"]
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return ["otlp"] if endpoint else []


def enabled() -> bool:
    return _tracer is not None


def resource_attributes(role: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What every span of this process says it came from. `service.name` is OTEL_SERVICE_NAME
    when set (one name for the whole platform, as a collector's pipelines may expect), else the
    role; the role is always in `orchestration.role` and in `service.instance.id`."""
    return {
        "service.name": environ.get("OTEL_SERVICE_NAME", "").strip() or role,
        "service.namespace": "orchestration",
        "service.instance.id": f"{role}@{socket.gethostname()}:{os.getpid()}",
        "orchestration.role": role,
    }


def setup(service: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Turn tracing on for this process if the environment asks for it. Idempotent: a second
    call (or a forked child of a process that set it up: the SDK restarts its export thread
    there) changes nothing. Returns whether tracing is on."""
    global _setup_pid
    if _setup_pid == os.getpid() or (_provider is not None and _setup_pid):
        _setup_pid = os.getpid()
        return enabled()
    _setup_pid = os.getpid()
    wanted = exporters(environ)
    if not wanted:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import _get_from_env_or_default

    resource = Resource.create(resource_attributes(service, environ))
    sampler = cast(Any, DropOrphanSpans(_get_from_env_or_default()))  # duck-typed: the SDK stays unimported when off
    provider = TracerProvider(resource=resource, sampler=sampler)
    for name in wanted:
        exporter = _exporter(name, environ)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    use(provider)
    trust_incoming(environ.get("OTEL_TRUST_INCOMING", "").strip().lower() in ("1", "true", "yes", "on"))
    _instrument(provider, environ)
    logger.info("tracing.on", extra={"service": service, "exporters": ",".join(wanted)})
    return True


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name in ("otlp", "otlp_proto_http"):
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol and protocol != "http/protobuf":
            logger.warning("tracing.protocol_ignored", extra={"protocol": protocol, "using": "http/protobuf"})
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # endpoint, headers, timeout: from the OTEL_EXPORTER_OTLP_* variables
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    logger.warning("tracing.exporter_unknown", extra={"exporter": name, "known": "otlp, console, none"})
    return None


def _instrument(provider: Any, environ: Mapping[str, str]) -> None:
    """The maintained instrumentations, each on its own: one that fails is logged, not fatal."""
    disabled = {n.strip() for n in environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    for name in INSTRUMENTATIONS:
        if name in disabled:
            continue
        try:
            if name == "django":
                from django.conf import settings
                from opentelemetry.instrumentation.django import DjangoInstrumentor

                own = environ.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS") or environ.get("OTEL_PYTHON_EXCLUDED_URLS")
                DjangoInstrumentor().instrument(
                    tracer_provider=provider, excluded_urls=None if own else DEFAULT_EXCLUDED_URLS,
                    request_hook=link_caller,
                )  # fmt: skip
                # Before OpenTelemetry's own middleware (it inserted itself first): a request's
                # headers are judged before they are read.
                settings.MIDDLEWARE.insert(0, UNTRUSTED_MIDDLEWARE)
            elif name == "psycopg":
                from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

                PsycopgInstrumentor().instrument(tracer_provider=provider)
            elif name == "celery":
                from opentelemetry.instrumentation.celery import CeleryInstrumentor

                CeleryInstrumentor().instrument(tracer_provider=provider)
            elif name == "redis":
                from opentelemetry.instrumentation.redis import RedisInstrumentor

                RedisInstrumentor().instrument(tracer_provider=provider)
        except Exception as exc:
            logger.warning("tracing.instrumentation_failed", extra={"instrumentation": name, "error": repr(exc)})


UNTRUSTED_MIDDLEWARE = "config.tracing.UntrustedTraceContext"
_CONTEXT_HEADERS = ("HTTP_TRACEPARENT", "HTTP_TRACESTATE", "HTTP_BAGGAGE")


def trust_incoming(trusted: bool) -> None:
    """Whether a request's own trace context is continued (OTEL_TRUST_INCOMING; tests set it)."""
    global _trust_incoming
    _trust_incoming = trusted


class UntrustedTraceContext:
    """Django middleware, the first of all: unless callers are trusted, a request's trace
    headers are taken off before OpenTelemetry reads them (its span then starts a trace of
    ours), and a valid `traceparent` is kept aside for `link_caller`."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        if not _trust_incoming:
            caller = request.META.get("HTTP_TRACEPARENT")
            for header in _CONTEXT_HEADERS:
                request.META.pop(header, None)
            if valid_traceparent(caller):
                request.META[CALLER_TRACEPARENT] = caller
        return self.get_response(request)


def link_caller(span: Any, request: Any) -> None:
    """The request span's link to the caller's own context (DjangoInstrumentor's request hook):
    the caller's trace can still find the request, without deciding its sampling."""
    caller = valid_traceparent(request.META.get(CALLER_TRACEPARENT))
    if caller is not None and span is not None and span.is_recording():
        link = _remote_context(caller)
        span.add_link(link, {"orchestration.link": "caller (OTEL_TRUST_INCOMING is off)"})


def use(provider: Any) -> None:
    """Send our spans to `provider` (None: off). `setup` calls it; tests call it with a
    provider of their own (an in-memory exporter) without touching the global one."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME) if provider is not None else None


def flush(timeout_millis: int = 5000) -> None:
    """Export what is buffered (a Celery prefork child leaves through os._exit: no atexit)."""
    if _provider is not None and hasattr(_provider, "force_flush"):
        _provider.force_flush(timeout_millis)


class DropOrphanSpans:
    """The sampler: a CLIENT, PRODUCER or CONSUMER span without a parent is dropped (the
    instrumentations make those for every query and Redis call outside any trace), unless it
    has links (a batch's span, `batch_span`, made only when one of its messages' traces was
    sampled: kept) or is a job hop of ours (`messaging.system` orchestration: a submit outside
    any request, from a schedule or a script, starts its job's trace: the delegate decides).
    Every other span goes to `delegate` (OTEL_TRACES_SAMPLER, default parent-based always-on)."""

    _ORPHANS = frozenset({SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER})

    def __init__(self, delegate: Any) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> Any:
        if (
            kind in self._ORPHANS
            and not (attributes and attributes.get("messaging.system") == SYSTEM)
            and not trace.get_current_span(parent_context).get_span_context().is_valid
        ):
            from opentelemetry.sdk.trace.sampling import Decision, SamplingResult

            return SamplingResult(Decision.RECORD_AND_SAMPLE if links else Decision.DROP, attributes)
        return self.delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"DropOrphanSpans{{{self.delegate.get_description()}}}"


# -- the trace context as a carrier ------------------------------------------------------------

Carrier = dict[str, str]
# What a carrier may hold: W3C allows 512 characters of tracestate and 8,192 bytes of baggage;
# a carrier past that (a caller's baggage, with OTEL_TRUST_INCOMING on) is dropped, not kept on
# every job row and message.
MAX_CARRIER_BYTES = 8192
_CARRIER_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}\Z")


def inject() -> Carrier | None:
    """The current context in the configured propagators' form (OTEL_PROPAGATORS; default W3C
    `traceparent`, `tracestate` and `baggage`): what a job row, an envelope and a Kafka
    message carry. None when tracing is off or there is no current trace."""
    if _tracer is None or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: Carrier = {}
    propagate.inject(carrier)
    return valid_carrier(carrier)


def valid_carrier(value: Any) -> Carrier | None:
    """`value` if it is a carrier we can continue, else None: a bad one is ignored, never an
    error (it is advisory; the job it travels with must run anyway). Headers are lowercase
    names with string values; a `traceparent` must be one."""
    if not isinstance(value, dict) or not value:
        return None
    size = 0
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str) or not _CARRIER_KEY.match(key):
            return None
        size += len(key) + len(item)
    if size > MAX_CARRIER_BYTES or ("traceparent" in value and valid_traceparent(value["traceparent"]) is None):
        return None
    return value


def valid_traceparent(value: Any) -> str | None:
    """`value` if it is a W3C traceparent we can continue (version 00, ids not all zeros)."""
    if not isinstance(value, str) or len(value) != 55:
        return None
    match = _TRACEPARENT.match(value)
    if match is None or match[1] == "0" * 32 or match[2] == "0" * 16:
        return None
    return value


def trace_id_of(carrier: Mapping[str, str] | None) -> str | None:
    """The trace id (32 hex digits) a carrier continues: read off its traceparent, or through
    the configured propagators when they write another format (B3, Jaeger)."""
    if not carrier:
        return None
    if "traceparent" in carrier:
        value = valid_traceparent(carrier["traceparent"])
        return value[3:35] if value is not None else None
    ctx = _extracted(carrier)
    return f"{trace.get_current_span(ctx).get_span_context().trace_id:032x}" if ctx is not None else None


def current_trace_id() -> str | None:
    """The current span's trace id (None outside any span)."""
    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None


def headers_of(carrier: Carrier | None) -> list[tuple[str, str | bytes | None]] | None:
    """A carrier as Kafka message headers (what the relay writes)."""
    return [(k, v.encode()) for k, v in carrier.items()] if carrier else None


def carrier_of_headers(headers: Sequence[tuple[str, str | bytes | None]] | None) -> Carrier | None:
    """The carrier in a Kafka message's headers (what the bridge reads); None when absent or
    bad (a producer of ours never writes others; a stranger's are ignored)."""
    if not headers:
        return None
    try:
        found = {k.lower(): v if isinstance(v, str) else v.decode() for k, v in headers if v is not None}
    except (AttributeError, UnicodeDecodeError):
        return None
    return valid_carrier({k: v for k, v in found.items() if k in _carrier_fields()})


def _carrier_fields() -> set[str]:
    return _fields_of(propagate.get_global_textmap())


@functools.lru_cache(maxsize=4)
def _fields_of(textmap: Any) -> set[str]:
    return set(textmap.fields)


# Extracted contexts by carrier. A bulk submit's jobs share one carrier (the request's), so a
# batch of them is parsed once, not per job; contexts are immutable, so sharing them is safe.
_EXTRACTED: dict[tuple[Any, ...], otel_context.Context | None] = {}
_EXTRACTED_MAX = 1024


def _extracted(carrier: Mapping[str, str] | None) -> otel_context.Context | None:
    """The context a carrier holds, or None when it holds no valid span context."""
    if not carrier:
        return None
    key = (id(propagate.get_global_textmap()), *carrier.items())  # another textmap reads it otherwise
    try:
        return _EXTRACTED[key]
    except KeyError:
        pass
    ctx: otel_context.Context | None = propagate.extract(carrier)
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        ctx = None
    if len(_EXTRACTED) >= _EXTRACTED_MAX:
        _EXTRACTED.clear()
    _EXTRACTED[key] = ctx
    return ctx


def _parent(carrier: Mapping[str, str] | None) -> otel_context.Context | None:
    """The context to start a span in: the carrier's (its span context and baggage), or None
    (the current one) when it is absent or bad, or when the current span is already in that
    trace (a workflow's task released by its parent's outcome nests under that outcome)."""
    ctx = _extracted(carrier)
    if ctx is None:
        return None
    current = trace.get_current_span().get_span_context()
    if current.is_valid and current.trace_id == trace.get_current_span(ctx).get_span_context().trace_id:
        return None
    return ctx


def link(carrier: Mapping[str, str] | None, attributes: Mapping[str, Any] | None = None) -> Link | None:
    """A link to the context a carrier holds (each message of a batch span); None without one,
    or when that trace was not sampled (a link into it would lead nowhere)."""
    if _tracer is None or not carrier:
        return None
    traceparent = valid_traceparent(carrier.get("traceparent"))
    if traceparent is not None and not int(traceparent[53:], 16) & 1:
        return None  # not sampled: known without parsing the rest
    ctx = _extracted(carrier)
    if ctx is None:
        return None
    linked = trace.get_current_span(ctx).get_span_context()
    return Link(linked, attributes) if linked.trace_flags.sampled else None


def _max_links() -> int:
    """The SDK keeps this many links a span (OTEL_SPAN_LINK_COUNT_LIMIT): more are not made."""
    try:
        return max(1, int(os.environ.get("OTEL_SPAN_LINK_COUNT_LIMIT", "128")))
    except ValueError:
        return 128


def batch_span(
    name: str,
    carriers: Iterable[Mapping[str, str] | None],
    *,
    kind: SpanKind,
    attributes: Mapping[str, Any],
    start_time: int | None = None,
) -> AbstractContextManager[Span | None]:
    """One span for a batch of messages, linked to each message's context (the conventions'
    way for a batch: not one span per message). Made only when at least one of those traces
    was sampled, so at a 1 % ratio 99 % of batches cost one flag test per message."""
    if _tracer is None:
        return _NULL
    links = list(itertools.islice((found for found in map(link, carriers) if found is not None), _max_links()))
    if not links:
        return _NULL
    return span(name, kind=kind, attributes=attributes, links=links, start_time=start_time)


def _remote_context(traceparent: str) -> SpanContext:
    """A valid traceparent as a remote span context."""
    return SpanContext(int(traceparent[3:35], 16), int(traceparent[36:52], 16), is_remote=True,
                       trace_flags=TraceFlags(int(traceparent[53:], 16)))  # fmt: skip


# -- the messaging semantic conventions --------------------------------------------------------

SYSTEM = "orchestration"  # messaging.system of our own hop (the job queue: outbox, Celery); Kafka's is "kafka"


def messaging(
    operation: str,
    destination: str | None,
    *,
    system: str = SYSTEM,
    message_id: str | None = None,
    count: int | None = None,
    **ours: Any,
) -> dict[str, Any]:
    """A span's attributes by the OTel messaging conventions (operation: create, send,
    receive, process or settle), plus ours under the `orchestration.` prefix: `job_type=` is
    written `orchestration.job_type`. `count` is a batch's (messaging.batch.message_count)."""
    attributes: dict[str, Any] = {"messaging.system": system, "messaging.operation.type": operation}
    if destination:
        attributes["messaging.destination.name"] = destination
    if message_id is not None:
        attributes["messaging.message.id"] = message_id
    if count is not None:
        attributes["messaging.batch.message_count"] = count
    attributes.update({f"{PREFIX}{k}": v for k, v in ours.items() if v is not None})
    return attributes


PREFIX = "orchestration."  # every attribute of ours; the conventions' own keep their names


# -- spans -------------------------------------------------------------------------------------


def span(
    name: str,
    *,
    parent: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    start_time: int | None = None,
    links: Sequence[Link] | None = None,
    link_current: bool = False,
) -> AbstractContextManager[Span | None]:
    """A span, current while the block runs, under `parent` (a carrier: its context, baggage
    included, is current in the block) or the current context. `link_current`: when `parent`
    is another trace than the current span's, the span links the current one (a job of a
    batch, to the batch's task). Yields None when tracing is off, or when the parent was not
    sampled (a job whose trace the sampler left out at its submit: its spans would be dropped
    anyway). An exception leaving the block is recorded."""
    if _tracer is None:
        return _NULL
    context = _parent(parent)
    if context is None:
        if _sampled_out(None):
            return _NULL
        return _tracer.start_as_current_span(name, kind=kind, attributes=attributes, start_time=start_time,
                                             links=links)  # fmt: skip
    if _sampled_out(context):
        return _attached(context)  # no span, but the context (trace id for log lines, baggage) still holds
    if link_current:
        current = trace.get_current_span().get_span_context()
        if current.is_valid:
            links = [*(links or ()), Link(current)]
    return _span_in(context, name, kind=kind, attributes=attributes, start_time=start_time, links=links)


@contextmanager
def _span_in(context: otel_context.Context, name: str, **options: Any) -> Iterator[Span]:
    """A span under `context`, with the whole of that context current (its baggage too:
    `start_as_current_span(context=...)` would take only its parent span). One attach, not
    the two of attaching `context` and then starting a current span in it."""
    assert _tracer is not None
    made = _tracer.start_span(name, context=context, **options)
    token = otel_context.attach(trace.set_span_in_context(made, context))
    try:
        yield made
    except Exception as exc:  # as start_as_current_span does: recorded, the span an error
        if made.is_recording():
            made.record_exception(exc)
            made.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        otel_context.detach(token)
        made.end()


def record(
    name: str,
    *,
    parent: Mapping[str, str] | None,
    start_time: int,
    end_time: int | None = None,
    attributes: Mapping[str, Any] | None = None,
    links: Sequence[Link] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    error: str | None = None,
) -> None:
    """A span that already happened (times from time.time_ns()), under `parent`; `error`: it
    is an error, so described."""
    if _tracer is None:
        return
    context = _parent(parent)
    if _sampled_out(context):
        return
    done = _tracer.start_span(
        name, context=context, kind=kind, attributes=attributes, start_time=start_time, links=links
    )
    if error is not None:
        done.set_status(Status(StatusCode.ERROR, error))
    done.end(end_time=end_time)


def _sampled_out(context: otel_context.Context | None) -> bool:
    """The parent exists and was not sampled. Our spans follow their parent's decision (the
    default, parent-based samplers would drop them): making them costs the worker about a
    third of its CPU per job for nothing."""
    parent = trace.get_current_span(context).get_span_context()
    return parent.is_valid and not parent.trace_flags.sampled


def continued(carrier: Mapping[str, str] | None) -> AbstractContextManager[None]:
    """Make the carrier's context (its span and baggage) current while the block runs (what
    another process started continues here); nothing when tracing is off or it is absent or
    bad."""
    if _tracer is None:
        return _NULL
    ctx = _parent(carrier)
    return _NULL if ctx is None else _attached(ctx)


@contextmanager
def _attached(ctx: otel_context.Context) -> Iterator[None]:
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def link_to_current() -> list[Link] | None:
    """A link to the current span (the batch a job's span belongs to), if any."""
    if _tracer is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    return [Link(ctx)] if ctx.is_valid else None
