"""Traces through the real roles: relay, bridge, worker, scheduler and log sink run as
processes with tracing on (OTEL_EXPORTER_OTLP_ENDPOINT), exporting to an OTLP/HTTP receiver in
this process (devtools.otlp_sink); the submits happen here, with an in-memory exporter. One
job is one trace from its submit to its outcome, its retry included, with producer and
consumer spans by the messaging conventions; a caller's tracestate and baggage reach its
handler through PostgreSQL, Kafka (the bridge reads the headers) and Celery; a workflow's
jobs share the workflow's trace; a bad trace context stops nothing; the job's log lines in
ClickHouse carry its trace id, and `logs/?trace_id=` finds them."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import orjson
import pytest
from django.db import transaction
from opentelemetry.trace import SpanKind

from config import tracing
from devtools.otlp_sink import OtlpReceiver, ReceivedSpan
from jobs import services
from jobs.models import Job, JobStatus, Outbox
from jobs.services import JobSpec
from tests.orchestration.conftest import Stack, log_shipping_env, produce, wait_for
from workflows.models import Workflow
from workflows.services import TaskSpec, WorkflowSpec, workflow_submit

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.slow]

PRODUCER, CONSUMER = 4, 5  # OTLP's span kinds


def carrier(tracestate: str, baggage: str = "") -> dict[str, str]:
    """A sampled trace context of a caller's, as a propagator would write it."""
    made = {"traceparent": f"00-{uuid.uuid4().hex}-{secrets.token_hex(8)}-01", "tracestate": tracestate}
    return {**made, "baggage": baggage} if baggage else made


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    sink = OtlpReceiver().start()
    yield sink
    sink.close()


def in_trace(receiver: OtlpReceiver, trace_id: str | None) -> list[ReceivedSpan]:
    return [s for s in receiver.received() if s.trace_id == trace_id]


def test_one_job_is_one_trace_through_every_role(
    api, user, traced, receiver, topics, log_topics, ch_table, queue, tmp_path, transactional_db
):
    stack = Stack(
        topics, queue, tmp_path, **log_shipping_env(log_topics, ch_table),
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="100",
    )  # fmt: skip
    jobs_topic = stack.env["KAFKA_JOBS_TOPIC"]
    try:
        for role in ("log-sink", "relay", "bridge", "worker", "scheduler"):
            stack.start(role)
        caller = carrier("vendor=opaque", "tenant=acme")
        with tracing.continued(caller):  # a trusted caller's context, tracestate and baggage included
            job = services.job_submit(
                owner_id=user.pk, spec=JobSpec(type="demo.log", payload={"lines": 3}, queue=queue)
            ).job
        # Alone, so the bridge sends it alone (a lone job's Celery message is in its trace).
        wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED, timeout=90, message="the job ran")
        with tracing.continued(caller):
            seen = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.trace", queue=queue)).job
        backoff = {"initial": 0.2, "factor": 1.0, "max": 1, "jitter": 0}
        flaky = services.job_submit(
            owner_id=user.pk, spec=JobSpec(type="demo.flaky", payload={"failures": 1}, queue=queue, backoff=backoff)
        ).job
        tasks = (
            TaskSpec("a", "demo.echo", options={"queue": queue}),
            TaskSpec("b", "demo.echo", depends_on=("a",), options={"queue": queue}),
        )
        workflow, _ = workflow_submit(owner_id=user.pk, spec=WorkflowSpec(tasks=tasks), max_tasks=10)
        # A dispatch whose Kafka headers carry another context than its envelope (a tool on the
        # way continued it), and one whose envelope's trace is garbage (a foreign producer).
        forwarded = carrier("from=headers")
        with transaction.atomic():
            relayed = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.trace", queue=queue)).job
            odd = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop", queue=queue)).job
            rows = {r.job_id: r for r in Outbox.objects.filter(job_id__in=[relayed.id, odd.id])}
            Outbox.objects.filter(job_id__in=[relayed.id, odd.id]).delete()
        produce(jobs_topic, [orjson.dumps(rows[relayed.id].envelope)], headers=tracing.headers_of(forwarded))
        produce(jobs_topic, [orjson.dumps({**rows[odd.id].envelope, "trace": {"traceparent": "00-nonsense"}})])

        def done() -> bool:
            ids = [job.id, seen.id, flaky.id, relayed.id, odd.id,
                   *Job.objects.filter(workflow_id=workflow.id).values_list("id", flat=True)]  # fmt: skip
            return Job.objects.filter(id__in=ids, status=JobStatus.SUCCEEDED).count() == 7

        wait_for(done, timeout=120, message="every job succeeded")

        # The caller's tracestate and baggage reached the handler, through PostgreSQL, Kafka and Celery.
        caller_trace = tracing.trace_id_of(caller)
        assert Job.objects.get(id=seen.id).result == {
            "trace_id": caller_trace, "tracestate": "vendor=opaque", "baggage": {"tenant": "acme"},
        }  # fmt: skip
        # The headers' context won over the envelope's: the bridge reads what Kafka carried.
        assert Job.objects.get(id=relayed.id).result == {
            "trace_id": tracing.trace_id_of(forwarded), "tracestate": "from=headers", "baggage": {},
        }  # fmt: skip

        # The job: submit (a PRODUCER span, here), the relay's batch send (linked), the bridge's
        # and the worker's CONSUMER spans and Celery's, all in the caller's trace.
        trace_id = Job.objects.get(id=job.id).trace_id
        assert trace_id == caller_trace
        (submit,) = [s for s in traced.get_finished_spans() if s.attributes.get("messaging.message.id") is None
                     and s.kind == SpanKind.PRODUCER and f"{s.context.trace_id:032x}" == trace_id][:1]  # fmt: skip
        submit_id = f"{submit.context.span_id:016x}"

        def worker_span() -> ReceivedSpan | None:
            return next((s for s in in_trace(receiver, trace_id) if s.service == "worker" and s.kind == CONSUMER
                         and s.attributes.get("messaging.message.id") == str(job.id)), None)  # fmt: skip

        def relay_span() -> ReceivedSpan | None:
            return next((s for s in receiver.received() if s.service == "relay" and (trace_id, submit_id) in s.links),
                        None)  # fmt: skip

        wait_for(lambda: worker_span() is not None and relay_span() is not None, timeout=30,
                 message="the job's spans from every role")  # fmt: skip
        relay = relay_span()
        assert relay is not None
        assert relay.kind == PRODUCER
        assert relay.name == f"send {jobs_topic}"
        assert relay.attributes["messaging.system"] == "kafka"
        spans = in_trace(receiver, trace_id)
        bridge = next(s for s in spans if s.service == "bridge" and s.kind == CONSUMER)
        assert bridge.name == f"process {jobs_topic}"
        assert bridge.parent_span_id == submit_id
        assert bridge.attributes["messaging.message.id"] == str(job.id)
        process = worker_span()
        assert process is not None
        assert process.name == f"process {queue}"
        assert process.trace_state == "vendor=opaque"
        assert process.attributes["orchestration.job.status"] == "SUCCEEDED"
        # Celery's own spans of a lone job's message join its trace; the worker's queries too.
        assert any(s.name.startswith("run/orchestration.run_job") for s in spans)

        # Its log lines carry the trace: `logs/?trace_id=` finds them in ClickHouse.
        def lines() -> list[dict]:
            return api.get(f"/api/v1/logs/?trace_id={trace_id}&q=demo.log+line").json()["results"]

        wait_for(lambda: len(lines()) == 3, timeout=30, interval=0.2, message="the job's lines by trace id")
        assert {r["job_id"] for r in lines()} == {str(job.id)}
        assert {r["span_id"] for r in lines()} == {process.span_id}

        # The worker's own line about the outcome is written after it commits: maybe a later batch.
        def finished() -> list[dict]:
            return api.get(f"/api/v1/jobs/{job.id}/logs/?q=job.finished").json()["results"]

        wait_for(lambda: bool(finished()), timeout=30, interval=0.2, message="the worker's job.finished line")
        assert finished()[0]["trace_id"] == trace_id

        # The retried job: both attempts, and the scheduler's release between them, in one trace.
        flaky_trace = Job.objects.get(id=flaky.id).trace_id

        def attempts() -> list[ReceivedSpan]:
            return [s for s in in_trace(receiver, flaky_trace) if s.service == "worker" and s.kind == CONSUMER
                    and s.attributes.get("messaging.message.id") == str(flaky.id)]  # fmt: skip

        wait_for(lambda: len(attempts()) == 2, timeout=30, message="both attempts' spans")
        assert sorted(s.attributes["orchestration.attempt"] for s in attempts()) == [1, 2]
        releases = [s for s in in_trace(receiver, flaky_trace) if s.attributes.get("orchestration.dispatch")]
        assert [(s.service, s.kind, s.attributes["orchestration.dispatch"]) for s in releases] == [
            ("scheduler", PRODUCER, "release")
        ]

        # The workflow: its task jobs are in its trace.
        workflow_trace = tracing.trace_id_of(Workflow.objects.get(id=workflow.id).trace_context)
        assert {j.trace_id for j in Job.objects.filter(workflow_id=workflow.id)} == {workflow_trace}
        wait_for(lambda: len([s for s in in_trace(receiver, workflow_trace) if s.name == f"process {queue}"]) == 2,
                 timeout=30, message="both tasks' spans")  # fmt: skip

        # The garbage trace was dropped: the job ran.
        assert Job.objects.get(id=odd.id).result == {}
    except AssertionError:
        print(stack.logs())
        raise
    finally:
        stack.close()
