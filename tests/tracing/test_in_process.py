"""Tracing (config.tracing) in this process: when it is on, what the helpers do, and the trace
context a job keeps from submit to every dispatch, its retries and its workflow's jobs. The
real roles' spans are checked in test_through_the_roles.py."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import orjson
import pytest
from django.utils import timezone
from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator, default_getter, default_setter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from config import tracing
from jobs import services, transitions
from jobs.dispatch import DispatchEnvelope
from jobs.models import Job, JobStatus, Outbox
from jobs.services import JobSpec
from logs.records import COLUMNS, Batch
from logs.shipping import KafkaLogHandler
from orchestration.worker import execute, execute_batch
from tests.workflows.conftest import pending_dispatches, run_all

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
CARRIER = {"traceparent": PARENT, "tracestate": "vendor=opaque", "baggage": "tenant=acme,flow=checkout"}


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "True"}, []),
    ],
)
def test_tracing_is_off_unless_the_environment_asks_for_it(environ, wanted):
    assert tracing.exporters(environ) == wanted


def test_off_nothing_is_installed_and_the_helpers_do_nothing(monkeypatch):
    monkeypatch.setattr(tracing, "_setup_pid", 0)
    assert tracing.setup("web", environ={}) is False
    assert not tracing.enabled()
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"  # no SDK, no exporter
    with tracing.span("anything") as span, tracing.continued(CARRIER):
        assert span is None
        assert tracing.current_trace_id() is None
        assert tracing.inject() is None
    assert tracing.link(CARRIER) is None
    with tracing.batch_span("b", [CARRIER], kind=SpanKind.CONSUMER, attributes={}) as batch:
        assert batch is None


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (PARENT, True),
        (f"00-{TRACE}-00f067aa0ba902b7-00", True),  # not sampled: still continued (as not sampled)
        (PARENT.upper(), False),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", False),
        (f"00-{TRACE}-{'0' * 16}-01", False),
        (f"01-{TRACE}-00f067aa0ba902b7-01", False),
        (PARENT + "-", False),
        ("garbage", False),
        (None, False),
        (42, False),
    ],
)
def test_a_traceparent_is_checked_and_a_bad_one_ignored(value, valid):
    assert tracing.valid_traceparent(value) == (value if valid else None)
    assert tracing.trace_id_of({"traceparent": value} if isinstance(value, str) else None) == (TRACE if valid else None)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (CARRIER, True),
        ({"traceparent": PARENT}, True),
        ({"traceparent": "garbage", "tracestate": "a=1"}, False),
        ({}, False),
        ("traceparent", False),
        ({"traceparent": PARENT, "baggage": 7}, False),
        ({"Traceparent": PARENT}, False),  # propagators write lowercase names
        ({"traceparent": PARENT, "baggage": "k=" + "v" * tracing.MAX_CARRIER_BYTES}, False),  # past W3C's 8 KB
        ({"traceparent": PARENT, "x\x00": "1"}, False),
    ],
)
def test_a_carrier_is_checked_and_a_bad_one_ignored(value, valid):
    assert tracing.valid_carrier(value) == (value if valid else None)


def test_a_carrier_goes_into_kafka_headers_and_back():
    headers = tracing.headers_of(CARRIER)
    assert headers == [(k, v.encode()) for k, v in CARRIER.items()]
    assert tracing.carrier_of_headers(headers) == CARRIER
    # A stranger's headers are not ours to continue; ours in another case are.
    assert tracing.carrier_of_headers([*headers, ("x-other", b"1")]) == CARRIER
    assert tracing.carrier_of_headers([("TraceParent", PARENT.encode())]) == {"traceparent": PARENT}
    assert tracing.carrier_of_headers([("traceparent", b"\xff\xfe")]) is None
    assert tracing.carrier_of_headers([("traceparent", None)]) is None
    assert tracing.carrier_of_headers([]) is None
    assert tracing.headers_of(None) is None


def test_spans_nest_under_a_continued_carrier_with_its_tracestate_and_baggage(traced):
    with tracing.continued(CARRIER), tracing.span("child") as child:
        assert child is not None
        assert tracing.current_trace_id() == TRACE
        assert baggage.get_baggage("tenant") == "acme"
        onward = tracing.inject()
    assert onward is not None
    assert onward["traceparent"].startswith(f"00-{TRACE}-")
    assert (onward["tracestate"], onward["baggage"]) == (CARRIER["tracestate"], CARRIER["baggage"])
    tracing.record("after", parent=CARRIER, start_time=1_000, end_time=2_000)
    tracer = trace.get_tracer("lib", tracer_provider=tracing._provider)
    with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as orphan:
        assert not orphan.is_recording()  # a query outside any trace: not a trace of its own
    with tracing.span("root"), tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as query:
        assert query.is_recording()
    spans = {s.name: s for s in traced.get_finished_spans()}
    assert set(spans) == {"child", "after", "root", "SELECT"}
    for name in ("child", "after"):
        assert f"{spans[name].context.trace_id:032x}" == TRACE
        assert spans[name].parent.span_id == 0x00F067AA0BA902B7
        assert spans[name].context.trace_state.to_header() == "vendor=opaque"
    assert (spans["after"].start_time, spans["after"].end_time) == (1_000, 2_000)
    assert spans["SELECT"].parent.span_id == spans["root"].context.span_id


def test_a_batch_is_one_span_linked_to_its_sampled_messages(traced):
    other = {"traceparent": f"00-{'1' * 32}-00f067aa0ba902b7-01"}
    unsampled = {"traceparent": f"00-{'2' * 32}-00f067aa0ba902b7-00"}
    attributes = tracing.messaging("process", "jobs", system="kafka", count=4)
    with tracing.batch_span("process jobs", [CARRIER, other, unsampled, None], kind=SpanKind.CONSUMER,
                            attributes=attributes) as span:  # fmt: skip
        assert span is not None
    with tracing.batch_span("process jobs", [unsampled, None], kind=SpanKind.CONSUMER, attributes=attributes) as none:
        assert none is None  # no sampled trace to link: no span at all
    (done,) = traced.get_finished_spans()
    assert done.kind == SpanKind.CONSUMER
    assert done.parent is None  # a root of its own, kept by the sampler for its links
    assert [f"{link.context.trace_id:032x}" for link in done.links] == [TRACE, "1" * 32]
    assert done.attributes["messaging.system"] == "kafka"
    assert done.attributes["messaging.operation.type"] == "process"
    assert done.attributes["messaging.batch.message_count"] == 4


def test_a_batch_span_makes_no_more_links_than_the_sdk_keeps(traced, monkeypatch):
    monkeypatch.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "2")
    carriers = [{"traceparent": f"00-{i:032x}-00f067aa0ba902b7-01"} for i in range(1, 6)]
    with tracing.batch_span("send jobs", carriers, kind=SpanKind.PRODUCER, attributes={}):
        pass
    (done,) = traced.get_finished_spans()
    assert len(done.links) == 2


def test_our_attributes_are_prefixed_and_the_conventions_kept():
    attributes = tracing.messaging("send", "default", message_id="j1", attempt=2, job_type="demo.noop", unset=None)
    assert attributes == {
        "messaging.system": "orchestration", "messaging.operation.type": "send",
        "messaging.destination.name": "default", "messaging.message.id": "j1",
        "orchestration.attempt": 2, "orchestration.job_type": "demo.noop",
    }  # fmt: skip


def test_a_log_record_carries_the_current_span(traced):
    handler = KafkaLogHandler("127.0.0.1:1", service="test")  # serialize() alone: nothing is sent

    def shipped() -> dict:
        return orjson.loads(handler.serialize(logging.LogRecord("t", logging.INFO, __file__, 1, "hi", None, None)))

    assert "trace_id" not in shipped()
    with tracing.span("work") as span:
        doc = shipped()
    ctx = span.get_span_context()
    assert (doc["trace_id"], doc["span_id"]) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    batch = Batch()
    batch.add(orjson.dumps({**doc, "timestamp": 1_764_445_200_000_000}))
    batch.add(orjson.dumps({**doc, "timestamp": 1_764_445_200_000_000, "trace_id": "not hex", "span_id": 7}))
    column = dict(zip(COLUMNS, batch.columns, strict=True))
    assert column["trace_id"] == [doc["trace_id"], ""]  # a bad id is stored empty, the line kept
    assert column["span_id"] == [doc["span_id"], ""]


def _envelope(job: Job) -> DispatchEnvelope:
    (row,) = Outbox.objects.filter(job_id=job.id, topic="jobs")
    return DispatchEnvelope.parse(row.envelope if isinstance(row.envelope, dict) else orjson.loads(row.envelope))


def _carrier_of(span) -> dict[str, str]:
    ctx = span.get_span_context()
    return {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"}


@pytest.mark.django_db
def test_a_submit_is_a_producer_span_whose_context_its_jobs_and_dispatches_keep(traced, user, api):
    (a, b) = services.job_submit_bulk(owner_id=user.pk, specs=[JobSpec(type="demo.noop"), JobSpec(type="demo.noop")])
    (submit,) = traced.get_finished_spans()
    assert (submit.name, submit.kind) == ("send default", SpanKind.PRODUCER)
    assert submit.attributes["messaging.system"] == "orchestration"
    assert submit.attributes["messaging.operation.type"] == "send"
    assert submit.attributes["messaging.destination.name"] == "default"
    assert submit.attributes["messaging.batch.message_count"] == 2
    assert submit.attributes["orchestration.owner_id"] == user.pk
    expected = _carrier_of(submit)
    for job in (a.job, b.job):
        assert Job.objects.get(id=job.id).trace_context == expected == job.trace_context
        assert _envelope(job).trace == expected
    trace_id = f"{submit.get_span_context().trace_id:032x}"
    assert api.get(f"/api/v1/jobs/{a.job.id}/").json()["trace_id"] == trace_id


@pytest.mark.django_db
def test_tracestate_and_baggage_reach_the_handler(traced, user):
    with tracing.continued(CARRIER):
        job = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.trace")).job
    stored = Job.objects.get(id=job.id).trace_context
    assert (stored["tracestate"], stored["baggage"]) == (CARRIER["tracestate"], CARRIER["baggage"])
    assert _envelope(job).trace == stored
    assert execute(_envelope(job), worker="test").status == "SUCCEEDED"
    seen = Job.objects.get(id=job.id).result
    assert seen == {"trace_id": TRACE, "tracestate": "vendor=opaque", "baggage": {"tenant": "acme", "flow": "checkout"}}


class _OneHeader(TextMapPropagator):
    """A propagator of another format (like B3's single header): `x-trace: <trace>-<span>-<flags>`."""

    fields = {"x-trace"}

    def inject(self, carrier, context=None, setter=default_setter):
        ctx = trace.get_current_span(context).get_span_context()
        if ctx.is_valid:
            setter.set(carrier, "x-trace", f"{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}")

    def extract(self, carrier, context=None, getter=default_getter):
        (value,) = getter.get(carrier, "x-trace") or [None]
        if not value:
            return context or Context()
        trace_id, span_id, flags = value.split("-")
        span = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16)))
        return trace.set_span_in_context(NonRecordingSpan(span), context)


@pytest.fixture
def one_header_propagator():
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(_OneHeader())  # what OTEL_PROPAGATORS picks at start
    yield
    propagate.set_global_textmap(before)


@pytest.mark.django_db
def test_the_configured_propagators_write_the_carrier(traced, user, one_header_propagator):
    job = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop")).job
    (submit,) = traced.get_finished_spans()
    ctx = submit.get_span_context()
    assert job.trace_context == {"x-trace": f"{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"}
    assert job.trace_id == f"{ctx.trace_id:032x}"
    assert tracing.carrier_of_headers(tracing.headers_of(job.trace_context)) == job.trace_context
    execute(_envelope(job), worker="test")
    process = next(s for s in traced.get_finished_spans() if s.name == "process default")
    assert process.parent.span_id == ctx.span_id


@pytest.mark.django_db
def test_off_a_job_has_no_trace_and_its_dispatch_none(user, api):
    job = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop")).job
    assert Job.objects.get(id=job.id).trace_context is None
    assert "trace" not in Outbox.objects.get(job_id=job.id).envelope
    assert api.get(f"/api/v1/jobs/{job.id}/").json()["trace_id"] is None


@pytest.mark.django_db
def test_every_attempt_of_a_retried_job_is_in_the_trace_of_its_submit(traced, user):
    backoff = {"initial": 0.01, "factor": 1.0, "max": 1, "jitter": 0}
    job = services.job_submit(
        owner_id=user.pk, spec=JobSpec(type="demo.flaky", payload={"failures": 1}, backoff=backoff)
    ).job
    assert execute(_envelope(job), worker="test").status == "RETRYING"
    Outbox.objects.all().delete()
    released = transitions.release_batch("retries", now=timezone.now() + timedelta(seconds=5), limit=10)
    services.job_dispatch_released(released)
    again = _envelope(job)
    assert execute(again, worker="test").status == "SUCCEEDED"
    spans = traced.get_finished_spans()
    assert {f"{s.context.trace_id:032x}" for s in spans} == {Job.objects.get(id=job.id).trace_id}
    processes = [s for s in spans if s.name == "process default"]
    processes.sort(key=lambda s: s.attributes["orchestration.attempt"])
    assert [s.kind for s in processes] == [SpanKind.CONSUMER] * 2
    assert [s.attributes["orchestration.job.status"] for s in processes] == ["RETRYING", "SUCCEEDED"]
    assert [s.status.status_code for s in processes] == [StatusCode.ERROR, StatusCode.UNSET]
    (release,) = (s for s in spans if s.attributes.get("orchestration.dispatch") == "release")
    assert (release.name, release.kind) == ("send default", SpanKind.PRODUCER)
    assert again.trace == _carrier_of(release)
    assert processes[1].parent.span_id == release.context.span_id  # attempt 2 hangs under its release


@pytest.mark.django_db
def test_a_manual_retry_continues_the_jobs_trace(traced, user):
    job = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop")).job
    services.job_cancel(job_id=job.id)
    services.job_retry(job_id=job.id)
    assert tracing.trace_id_of(_envelope(job).trace) == job.trace_id
    spans = traced.get_finished_spans()
    assert [s.name for s in spans] == ["send default", "send default"]
    assert spans[1].attributes["orchestration.dispatch"] == "retry"


@pytest.mark.django_db
def test_a_workflows_jobs_are_in_the_workflows_trace(traced, user):
    from workflows.models import Workflow
    from workflows.services import TaskSpec, WorkflowSpec, workflow_submit

    spec = WorkflowSpec(tasks=(TaskSpec("a", "demo.echo"), TaskSpec("b", "demo.echo", depends_on=("a",))))
    workflow, _ = workflow_submit(owner_id=user.pk, spec=spec, max_tasks=100)
    run_all()
    trace_id = tracing.trace_id_of(Workflow.objects.get(id=workflow.id).trace_context)
    jobs = list(Job.objects.filter(workflow_id=workflow.id))
    assert len(jobs) == 2
    assert {j.status for j in jobs} == {JobStatus.SUCCEEDED}
    assert {j.trace_id for j in jobs} == {trace_id}
    spans = traced.get_finished_spans()
    assert {f"{s.context.trace_id:032x}" for s in spans} == {trace_id}
    assert [s.name for s in spans if s.kind == SpanKind.PRODUCER] == ["send default", "send default"]
    # Task b was released by a's outcome: its submit nests under a's process span.
    by_id = {s.context.span_id: s for s in spans}
    b_submit = [s for s in spans if s.name == "send default"][-1]
    assert by_id[b_submit.parent.span_id].name == "process default"


@pytest.mark.parametrize("bad", ["garbage", 42, {"traceparent": PARENT.upper()}, {"traceparent": 1}])
@pytest.mark.django_db
def test_a_malformed_trace_in_an_envelope_is_dropped_and_the_job_runs(traced, user, bad):
    job = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.echo", payload={"x": 1})).job
    (raw,) = [r.envelope for r in Outbox.objects.filter(job_id=job.id)]
    raw = {**(raw if isinstance(raw, dict) else orjson.loads(raw)), "trace": bad}
    envelope = DispatchEnvelope.parse(raw)
    assert envelope.trace is None
    assert "trace" not in envelope.as_dict()
    assert execute(envelope, worker="test").status == "SUCCEEDED"
    assert Job.objects.get(id=job.id).result == {"x": 1}


def test_an_envelope_from_before_the_carrier_is_read():
    """A dispatch written before `trace` (still in the outbox or Kafka at an upgrade)."""
    old = {"v": 1, "job_id": str(uuid.uuid4()), "type": "t", "queue": "q", "priority": 5, "attempt": 1,
           "dispatch_token": str(uuid.uuid4()), "traceparent": PARENT}  # fmt: skip
    assert DispatchEnvelope.parse(old).trace == {"traceparent": PARENT}
    assert DispatchEnvelope.parse({**old, "traceparent": "garbage"}).trace is None


@pytest.mark.django_db
def test_the_worker_takes_runs_and_records_a_job_in_its_process_span(traced, user):
    job = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop")).job
    (envelope,) = pending_dispatches()
    execute(envelope, worker="test")
    spans = {s.name: s for s in traced.get_finished_spans()}
    assert set(spans) == {"send default", "process default"}  # one span a job in the worker
    process = spans["process default"]
    assert process.kind == SpanKind.CONSUMER
    assert process.parent.span_id == spans["send default"].context.span_id
    assert process.attributes["messaging.message.id"] == str(job.id)
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["orchestration.job_type"] == "demo.noop"
    assert process.attributes["orchestration.job.status"] == "SUCCEEDED"
    assert not process.links  # no other trace to link: it ran alone


def test_an_envelope_with_a_trace_survives_the_wire():
    envelope = DispatchEnvelope(
        job_id=str(uuid.uuid4()), owner_id=1, type="t", queue="q", priority=5, attempt=1,
        dispatch_token=str(uuid.uuid4()), trace=CARRIER,
    )  # fmt: skip
    assert envelope.as_dict()["trace"] == CARRIER
    assert DispatchEnvelope.parse(orjson.loads(orjson.dumps(envelope.as_dict()))) == envelope


@pytest.mark.django_db
def test_a_batch_is_one_span_linked_to_its_jobs_which_run_in_their_own_contexts(traced, user):
    """The conventions' batch process: one span, a link to each job; each handler still runs
    in its job's context (baggage, trace id), and a failed attempt gets its span after all."""
    with tracing.continued(CARRIER):
        seen = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.trace")).job
    jobs = [services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop")).job for _ in range(2)]
    failing = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.fail", payload={"message": "no"})).job
    with tracing.span("run/orchestration.run_jobs") as task:  # as Celery's instrumentation, under the bridge's
        outcomes = execute_batch(pending_dispatches(), worker="test")
    assert sorted(o.status for o in outcomes) == ["RETRYING", "SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]
    spans = traced.get_finished_spans()
    (batch,) = [s for s in spans if s.name == "process default" and s.attributes.get("messaging.batch.message_count")]
    assert batch.kind == SpanKind.CONSUMER
    assert batch.parent.span_id == task.get_span_context().span_id
    assert batch.attributes["messaging.batch.message_count"] == 4
    linked = {f"{link.context.trace_id:032x}" for link in batch.links}
    assert linked == {j.trace_id for j in (seen, *jobs, failing)}
    for job in jobs:  # a job that succeeded: its submit, and the batch's link to it
        assert {s.name for s in spans if f"{s.context.trace_id:032x}" == job.trace_id} == {"send default"}
    assert Job.objects.get(id=seen.id).result["baggage"] == {"tenant": "acme", "flow": "checkout"}
    (failed,) = [s for s in spans if f"{s.context.trace_id:032x}" == failing.trace_id and s.name == "process default"]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["orchestration.job.status"] == "RETRYING"
    assert [link.context.span_id for link in failed.links] == [batch.context.span_id]


@pytest.mark.django_db
def test_a_dispatch_from_kafka_takes_its_trace_from_the_headers(traced, user):
    """The bridge continues the context in the message's headers (what the relay wrote, or a
    tool on the way changed), the envelope's being the fallback."""
    from arroyo.backends.kafka import KafkaPayload
    from arroyo.types import BrokerValue, Message, Partition, Topic

    from orchestration.consumers.steps.decode_job_event import DecodeJobEvent

    job = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop")).job
    envelope = _envelope(job)
    got: list[DispatchEnvelope] = []

    class Keep:
        def submit(self, message):
            got.append(message.payload)

    def message(headers):
        payload = KafkaPayload(None, orjson.dumps(envelope.as_dict()), headers)
        return Message(BrokerValue(payload, Partition(Topic("jobs"), 0), 1, timezone.now()))

    step = DecodeJobEvent(Keep())  # type: ignore[arg-type]
    step.submit(message(tracing.headers_of(CARRIER)))
    step.submit(message([]))
    step.submit(message([("traceparent", b"garbage")]))
    assert [e.trace for e in got] == [CARRIER, envelope.trace, envelope.trace]


def test_under_a_parent_the_sampler_left_out_no_span_is_made_but_the_context_still_travels(traced):
    unsampled = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-00"}
    with tracing.continued(unsampled), tracing.span("process q") as span:
        assert span is None
        assert tracing.current_trace_id() == TRACE  # log lines still carry the job's trace id
    tracing.record("claim", parent=unsampled, start_time=1, end_time=2)
    assert tracing.link(unsampled) is None
    assert traced.get_finished_spans() == ()


# -- a request's own trace context: continued only from trusted callers -------------------------


@pytest.fixture
def web_traced(settings):
    """Django's instrumentation and our middleware before it, as `setup` installs them, on an
    in-memory provider whose sampler never samples a root of ours (a ratio sampler at its
    extreme): only a caller's sampled flag could make a request's spans sampled."""
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.DropOrphanSpans(ParentBased(ALWAYS_OFF)))  # type: ignore[arg-type]
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings.MIDDLEWARE = list(settings.MIDDLEWARE)
    DjangoInstrumentor().instrument(tracer_provider=provider, request_hook=tracing.link_caller)
    settings.MIDDLEWARE.insert(0, tracing.UNTRUSTED_MIDDLEWARE)
    tracing.use(provider)
    yield exporter
    tracing.use(None)
    tracing.trust_incoming(False)
    DjangoInstrumentor().uninstrument()
    provider.shutdown()


CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER = f"00-{CALLER_TRACE}-b7ad6b7169203331-01"  # sampled: "trace me"


@pytest.mark.django_db
def test_an_untrusted_callers_traceparent_neither_samples_nor_owns_its_jobs(web_traced, user):
    from tests.conftest import client_for

    response = client_for(user).post(
        "/api/v1/jobs/", {"type": "demo.noop"}, format="json", HTTP_TRACEPARENT=CALLER, HTTP_TRACESTATE="v=1"
    )
    assert response.status_code == 201
    job = Job.objects.get(id=response.json()["id"])
    assert job.trace_id != CALLER_TRACE  # not attached to the caller's trace
    carrier = job.trace_context or {"traceparent": "-00"}
    assert not int(carrier["traceparent"][-2:], 16) & 1  # our sampler's call: not sampled
    assert not web_traced.get_finished_spans()  # no span recorded for it at all


@pytest.mark.django_db
def test_a_trusted_callers_traceparent_is_continued(web_traced, user):
    from tests.conftest import client_for

    tracing.trust_incoming(True)
    response = client_for(user).post("/api/v1/jobs/", {"type": "demo.noop"}, format="json", HTTP_TRACEPARENT=CALLER)
    assert Job.objects.get(id=response.json()["id"]).trace_id == CALLER_TRACE
    assert {s.context.trace_id for s in web_traced.get_finished_spans()} == {int(CALLER_TRACE, 16)}


def test_untrusted_a_request_starts_its_own_trace_and_links_the_callers(traced, rf):
    """The request span of an untrusted caller is a root of ours; it links the caller's context."""
    request = rf.get("/api/v1/jobs/", HTTP_TRACEPARENT=CALLER, HTTP_TRACESTATE="v=1", HTTP_BAGGAGE="k=v")
    seen: dict[str, object] = {}
    tracing.UntrustedTraceContext(lambda r: seen.update(r.META))(request)
    assert not {"HTTP_TRACEPARENT", "HTTP_TRACESTATE", "HTTP_BAGGAGE"} & set(seen)
    assert seen[tracing.CALLER_TRACEPARENT] == CALLER
    with tracing.span("request") as span:
        tracing.link_caller(span, request)
    (done,) = traced.get_finished_spans()
    assert done.context.trace_id != int(CALLER_TRACE, 16)
    assert [f"{link.context.trace_id:032x}" for link in done.links] == [CALLER_TRACE]
    bad = rf.get("/", HTTP_TRACEPARENT="00-nonsense")
    tracing.UntrustedTraceContext(lambda r: seen.update(r.META))(bad)
    assert tracing.CALLER_TRACEPARENT not in bad.META


def test_otel_service_name_is_honoured_and_the_role_kept():
    own = tracing.resource_attributes("bridge", environ={})
    assert (own["service.name"], own["orchestration.role"]) == ("bridge", "bridge")
    assert own["service.instance.id"].startswith("bridge@")
    named = tracing.resource_attributes("bridge", environ={"OTEL_SERVICE_NAME": "shop-jobs"})
    assert (named["service.name"], named["orchestration.role"]) == ("shop-jobs", "bridge")
    assert named["service.instance.id"].startswith("bridge@")


def test_a_cli_action_is_a_span_its_jobs_join(traced, user):
    from django.core.management import call_command

    from jobs.models import Job

    call_command("jobs", "submit", "demo.noop", "--owner", user.username)
    spans = {s.name: s for s in traced.get_finished_spans()}
    cli = spans["cli jobs submit"]
    assert cli.attributes["orchestration.cli.command"] == "jobs submit"
    job = Job.objects.get(owner=user)
    assert tracing.trace_id_of(job.trace_context) == f"{cli.context.trace_id:032x}"


def test_an_exception_in_a_span_under_a_carrier_is_recorded_and_the_context_restored(traced):
    with pytest.raises(ValueError, match="boom"), tracing.span("process q", parent=CARRIER):
        raise ValueError("boom")
    assert tracing.current_trace_id() is None  # detached again
    (done,) = traced.get_finished_spans()
    assert done.status.status_code == StatusCode.ERROR
    assert [e.name for e in done.events] == ["exception"]
