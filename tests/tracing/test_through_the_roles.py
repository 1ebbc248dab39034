"""Traces through the real roles: relay, bridge, worker, scheduler and log sink run as
processes with tracing on (OTEL_EXPORTER_OTLP_ENDPOINT), exporting to an OTLP/HTTP receiver in
this process (devtools.otlp_sink); the submits happen here, with an in-memory exporter. One
job is one trace from its submit to its outcome, its retry included; a workflow's jobs share
the workflow's trace; a bad traceparent stops nothing; the job's log lines in ClickHouse
carry its trace id, and `logs/?trace_id=` finds them."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from django.db import transaction

from config import tracing
from devtools.otlp_sink import OtlpReceiver, ReceivedSpan
from jobs import services
from jobs.models import Job, JobStatus, Outbox
from jobs.services import JobSpec
from tests.orchestration.conftest import Stack, log_shipping_env, produce, wait_for
from workflows.models import Workflow
from workflows.services import TaskSpec, WorkflowSpec, workflow_submit

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.slow]

# Our own spans, and which role writes each; Celery's and psycopg's come along.
ROLE_OF = {"bridge.enqueue": "bridge", "job.claim": "worker", "job.handler": "worker", "job.outcome": "worker"}


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
    try:
        for role in ("log-sink", "relay", "bridge", "worker", "scheduler"):
            stack.start(role)
        job = services.job_submit(
            owner_id=user.pk, spec=JobSpec(type="demo.log", payload={"lines": 3}, queue=queue)
        ).job
        # Alone, so the bridge sends it alone (a lone job's Celery message is in its trace).
        wait_for(lambda: Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED, timeout=90, message="the job ran")
        backoff = {"initial": 0.2, "factor": 1.0, "max": 1, "jitter": 0}
        flaky = services.job_submit(
            owner_id=user.pk, spec=JobSpec(type="demo.flaky", payload={"failures": 1}, queue=queue, backoff=backoff)
        ).job
        tasks = (
            TaskSpec("a", "demo.echo", options={"queue": queue}),
            TaskSpec("b", "demo.echo", depends_on=("a",), options={"queue": queue}),
        )
        workflow, _ = workflow_submit(owner_id=user.pk, spec=WorkflowSpec(tasks=tasks), max_tasks=10)
        # A dispatch whose traceparent is garbage (from an older or a foreign producer).
        with transaction.atomic():
            odd = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop", queue=queue)).job
            (row,) = Outbox.objects.filter(job_id=odd.id)
            Outbox.objects.filter(id=row.id).delete()
        produce(stack.env["KAFKA_JOBS_TOPIC"], [orjson.dumps({**row.envelope, "traceparent": "00-nonsense"})])

        def done() -> bool:
            ids = [job.id, flaky.id, odd.id, *Job.objects.filter(workflow_id=workflow.id).values_list("id", flat=True)]
            return Job.objects.filter(id__in=ids, status=JobStatus.SUCCEEDED).count() == 5

        wait_for(done, timeout=120, message="every job succeeded")

        # The job: submit (here), relay (its Kafka send), bridge, worker (claim, handler, outcome).
        trace_id = Job.objects.get(id=job.id).trace_id
        assert trace_id is not None
        wanted = {"jobs.submit", "job.handler", "job.outcome", "job.claim", "bridge.enqueue"}

        def names() -> set[str]:
            return {s.name for s in in_trace(receiver, trace_id)} | {
                s.name for s in traced.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id
            }

        def complete() -> bool:
            seen = names()
            return wanted <= seen and any(n.endswith(" send") for n in seen) and any(n.startswith("run/") for n in seen)

        wait_for(complete, timeout=30, message="the job's spans from every role")
        spans = in_trace(receiver, trace_id)
        for span in spans:
            if span.name in ROLE_OF:
                assert span.service == ROLE_OF[span.name], span
        assert {s.service for s in spans if s.name.endswith(" send")} == {"relay"}
        handler = next(s for s in spans if s.name == "job.handler")
        assert handler.attributes["job.id"] == str(job.id)
        # Celery's own spans of a lone job's message join its trace; the worker's queries too.
        assert any(s.name.startswith("run/orchestration.run_job") for s in spans)

        # Its log lines carry the trace: `logs/?trace_id=` finds them in ClickHouse.
        def lines() -> list[dict]:
            return api.get(f"/api/v1/logs/?trace_id={trace_id}&q=demo.log+line").json()["results"]

        wait_for(lambda: len(lines()) == 3, timeout=30, interval=0.2, message="the job's lines by trace id")
        assert {r["job_id"] for r in lines()} == {str(job.id)}
        assert {r["span_id"] for r in lines()} == {handler.span_id}

        # The worker's own line about the outcome is written after it commits: maybe a later batch.
        def finished() -> list[dict]:
            return api.get(f"/api/v1/jobs/{job.id}/logs/?q=job.finished").json()["results"]

        wait_for(lambda: bool(finished()), timeout=30, interval=0.2, message="the worker's job.finished line")
        assert finished()[0]["trace_id"] == trace_id

        # The retried job: both attempts, and the scheduler's release between them, in one trace.
        flaky_trace = Job.objects.get(id=flaky.id).trace_id
        wait_for(lambda: len([s for s in in_trace(receiver, flaky_trace) if s.name == "job.handler"]) == 2,
                 timeout=30, message="both attempts' handler spans")  # fmt: skip
        flaky_spans = in_trace(receiver, flaky_trace)
        assert sorted(s.attributes["job.attempt"] for s in flaky_spans if s.name == "job.handler") == [1, 2]
        assert [s.service for s in flaky_spans if s.name == "job.release"] == ["scheduler"]

        # The workflow: its task jobs are in its trace.
        workflow_trace = tracing.trace_id_of(Workflow.objects.get(id=workflow.id).traceparent)
        assert {j.trace_id for j in Job.objects.filter(workflow_id=workflow.id)} == {workflow_trace}
        wait_for(lambda: len([s for s in in_trace(receiver, workflow_trace) if s.name == "job.handler"]) == 2,
                 timeout=30, message="both tasks' handler spans")  # fmt: skip

        # The garbage traceparent was dropped: the job ran, in no trace of its submit's.
        assert Job.objects.get(id=odd.id).result == {}
    except AssertionError:
        print(stack.logs())
        raise
    finally:
        stack.close()
