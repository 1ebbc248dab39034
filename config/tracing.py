"""OpenTelemetry tracing: off unless the environment asks for it; one job is one trace.

    setup(service)  once per process, early: web (config.wsgi), the worker (each Celery
                    process, config.celery), relay, bridge, scheduler and log sink (config.roles)
      on only when OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) or OTEL_TRACES_EXPORTER is
      set and OTEL_SDK_DISABLED is not true: a TracerProvider whose resource says
      `service.name` = OTEL_SERVICE_NAME or else the role (the role also in
      `orchestration.role` and `service.instance.id`), a BatchSpanProcessor with the OTLP/HTTP exporter (the SDK
      reads the other OTEL_* variables: sampler, batch delay, headers), and the maintained
      instrumentations for Django, psycopg, Celery and redis. The relay's Kafka producer is
      wrapped on its own (`traced_producer`): instrumenting confluent_kafka globally would
      trace the log shipper too, one span per log record.

Off, nothing is installed: the helpers below are one test of a module global and return
a shared null context, so a process without tracing pays nothing measurable.

The trace context of a job travels as a W3C `traceparent` string: on the job row, in the
dispatch envelope, on a workflow's row. `continued(traceparent)` makes it the current parent
in another process; `span(...)` opens a span under the current parent (or a given one);
`record(...)` writes a span after the fact (a batch's claim, timed once for every job in it).

Spans of instrumented libraries with no parent at all (a scheduler tick's queries, a
heartbeat's Redis call) are not sampled: each would be a trace of one span. Roots of our own
and the web's requests go to the configured sampler (default: parent-based, always on).

A request's own trace context (`traceparent`, `tracestate`, `baggage` headers) is not
continued unless OTEL_TRUST_INCOMING says the callers are trusted: on a public API any
tenant could otherwise choose to be traced (a sampled flag overrides a ratio sampler, at
about three times a worker's CPU per job) and attach its jobs to any trace id. Untrusted,
`UntrustedTraceContext` (first of the web's middleware) takes the headers off, the request
starts a trace of ours, sampled by our sampler, and its span links the caller's context.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags

logger = logging.getLogger("config.tracing")

TRACER_NAME = "orchestration"
# A W3C traceparent as we write it (version 00); the ids must not be all zeros.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
TRACE_ID = re.compile(r"[0-9a-f]{32}\Z")
SPAN_ID = re.compile(r"[0-9a-f]{16}\Z")
# Probes and scrapes would each be a trace of their own.
DEFAULT_EXCLUDED_URLS = "health/,metrics,static/,favicon"
INSTRUMENTATIONS = ("django", "psycopg", "celery", "redis", "confluent_kafka")

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
        if name in disabled or name == "confluent_kafka":  # Kafka: per producer, `traced_producer`
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


def traced_producer(producer: Any) -> Any:
    """A confluent-kafka producer whose `produce` opens a PRODUCER span under the current
    context and puts its traceparent in the message's headers; `producer` itself when off."""
    disabled = os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    if _tracer is None or "confluent_kafka" in disabled:
        return producer
    from opentelemetry.instrumentation.confluent_kafka import ConfluentKafkaInstrumentor, ProxiedProducer

    if isinstance(producer, ProxiedProducer):
        return producer
    return ConfluentKafkaInstrumentor.instrument_producer(producer, tracer_provider=_provider)


def flush(timeout_millis: int = 5000) -> None:
    """Export what is buffered (a Celery prefork child leaves through os._exit: no atexit)."""
    if _provider is not None and hasattr(_provider, "force_flush"):
        _provider.force_flush(timeout_millis)


class DropOrphanSpans:
    """The sampler: a CLIENT, PRODUCER or CONSUMER span without a parent is dropped (the
    instrumentations make those for every query and Redis call outside any trace); every
    other span goes to `delegate` (OTEL_TRACES_SAMPLER, default parent-based always-on)."""

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
        if kind in self._ORPHANS and not trace.get_current_span(parent_context).get_span_context().is_valid:
            from opentelemetry.sdk.trace.sampling import Decision, SamplingResult

            return SamplingResult(Decision.DROP)
        return self.delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"DropOrphanSpans{{{self.delegate.get_description()}}}"


# -- the trace context as a string -------------------------------------------------------------


def valid_traceparent(value: Any) -> str | None:
    """`value` if it is a W3C traceparent we can continue, else None: a bad one is ignored,
    never an error (it is advisory; the job it travels with must run anyway)."""
    if not isinstance(value, str) or len(value) != 55:
        return None
    match = _TRACEPARENT.match(value)
    if match is None or match[1] == "0" * 32 or match[2] == "0" * 16:
        return None
    return value


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id (32 hex digits) in a traceparent."""
    value = valid_traceparent(traceparent)
    return value[3:35] if value is not None else None


def current_traceparent() -> str | None:
    """The current span's context as a traceparent (None outside any span)."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _parent(traceparent: str | None) -> otel_context.Context | None:
    """The context to start a span in: `traceparent`'s, or None (the current one) when it
    is absent or bad, or when the current span is already in that trace (a workflow's task
    released by its parent's outcome nests under that outcome)."""
    value = valid_traceparent(traceparent)
    if value is None:
        return None
    trace_id = int(value[3:35], 16)
    current = trace.get_current_span().get_span_context()
    if current.is_valid and current.trace_id == trace_id:
        return None
    return trace.set_span_in_context(NonRecordingSpan(_remote_context(value)))


def _remote_context(traceparent: str) -> SpanContext:
    """A valid traceparent as a remote span context."""
    return SpanContext(int(traceparent[3:35], 16), int(traceparent[36:52], 16), is_remote=True,
                       trace_flags=TraceFlags(int(traceparent[53:], 16)))  # fmt: skip


# -- spans -------------------------------------------------------------------------------------


def span(
    name: str,
    *,
    parent: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    start_time: int | None = None,
    links: Sequence[Link] | None = None,
) -> AbstractContextManager[Span | None]:
    """A span, current while the block runs, under `parent` (a traceparent) or the current
    context. Yields None when tracing is off, or when the parent was not sampled (a job whose
    trace the sampler left out at its submit: its spans would be dropped anyway). An exception
    leaving the block is recorded."""
    if _tracer is None:
        return _NULL
    context = _parent(parent)
    if _sampled_out(context):
        return _NULL
    return _tracer.start_as_current_span(
        name, context=context, kind=kind, attributes=attributes, start_time=start_time, links=links
    )


def record(
    name: str,
    *,
    parent: str | None,
    start_time: int,
    end_time: int | None = None,
    attributes: Mapping[str, Any] | None = None,
    links: Sequence[Link] | None = None,
) -> None:
    """A span that already happened (times from time.time_ns()), under `parent`."""
    if _tracer is None:
        return
    context = _parent(parent)
    if _sampled_out(context):
        return
    done = _tracer.start_span(name, context=context, attributes=attributes, start_time=start_time, links=links)
    done.end(end_time=end_time)


def _sampled_out(context: otel_context.Context | None) -> bool:
    """The parent exists and was not sampled. Our spans follow their parent's decision (the
    default, parent-based samplers would drop them): making them costs the worker about a
    third of its CPU per job for nothing."""
    parent = trace.get_current_span(context).get_span_context()
    return parent.is_valid and not parent.trace_flags.sampled


def continued(traceparent: str | None) -> AbstractContextManager[None]:
    """Make `traceparent` the current parent while the block runs (what another process
    started continues here); nothing when tracing is off or it is absent or bad."""
    if _tracer is None:
        return _NULL
    ctx = _parent(traceparent)
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
