"""The dispatch envelope: one typed message from submit to worker, every field it carries read."""

from __future__ import annotations

import logging
import uuid

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs import services
from jobs.dispatch import BadEnvelope, DispatchEnvelope
from jobs.models import Outbox
from jobs.services import JobSpec
from logs.context import JobLogContext, current_job
from orchestration.worker import execute
from tests.factories import dispatch_of

names = st.text(min_size=1, max_size=50)
envelopes = st.builds(
    DispatchEnvelope,
    job_id=st.uuids().map(str),
    owner_id=st.none() | st.integers(1, 2**31),
    type=names,
    queue=names,
    priority=st.integers(0, 9),
    attempt=st.integers(1, 1000),
    dispatch_token=st.uuids().map(str),
    concurrency_key=st.none() | names,
    concurrency_limit=st.integers(1, 100),
    workflow_id=st.none() | st.uuids().map(str),
    trace=st.none()
    | st.fixed_dictionaries(
        {
            "traceparent": st.builds(
                lambda t, s, f: f"00-{t:032x}-{s:016x}-{f:02x}",
                st.integers(1, 2**128 - 1),
                st.integers(1, 2**64 - 1),
                st.integers(0, 255),
            )
        },
        optional={"tracestate": st.text(max_size=100), "baggage": st.text(max_size=100)},
    ),
).map(lambda e: e if e.concurrency_key else DispatchEnvelope(**{**_fields(e), "concurrency_limit": None}))


def _fields(e: DispatchEnvelope) -> dict:
    return {name: getattr(e, name) for name in DispatchEnvelope.__dataclass_fields__}


@given(envelopes)
def test_an_envelope_survives_the_wire_unchanged(envelope):
    """JSON out (outbox, Kafka, Celery) and back in gives the same envelope, and the same bytes."""
    wire = orjson.dumps(envelope.as_dict())
    assert DispatchEnvelope.parse(orjson.loads(wire)) == envelope
    assert orjson.dumps(DispatchEnvelope.parse(orjson.loads(wire)).as_dict()) == wire


@pytest.mark.django_db
def test_submit_writes_the_whole_envelope_once(user):
    """owner, attempt and workflow ride along: nothing is dropped between submit and worker."""
    job = services.job_submit(
        owner_id=user.pk, spec=JobSpec(type="demo.noop", queue="q", priority=7, concurrency_key="k")
    ).job
    sent = DispatchEnvelope.parse(Outbox.objects.get(job_id=job.id).envelope)
    assert sent == DispatchEnvelope(
        job_id=str(job.id), owner_id=user.pk, type="demo.noop", queue="q", priority=7, attempt=1,
        dispatch_token=str(job.dispatch_token), concurrency_key="k", concurrency_limit=1,
    )  # fmt: skip


def test_a_message_from_before_owner_id_still_parses_and_passes_on_as_it_came():
    old = {"v": 1, "job_id": str(uuid.uuid4()), "type": "demo.noop", "queue": "default", "priority": 5,
           "attempt": 1, "dispatch_token": str(uuid.uuid4())}  # fmt: skip
    envelope = DispatchEnvelope.parse(old)
    assert envelope.owner_id is None
    assert envelope.as_dict() == old
    assert envelope.log_context().owner_id == 0  # staff-only lines, as before


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"v": 2}, "unsupported envelope version 2"),
        ({"owner_id": "1"}, "field 'owner_id' must be int, not str"),
        ({"attempt": True}, "field 'attempt' must be int, not bool"),
        ({"workflow_id": "w1"}, "field 'workflow_id' is not a UUID"),
        ({"dispatch_token": "x" * 1_000_000}, "field 'dispatch_token' is not a UUID"),
        ({"job_id": "01a252c8-dfd6-7213-884b-1ad291722125\n"}, "field 'job_id' is not a UUID"),
        ({"job_id": "01a252c8-dfd6-7213-884b-1ad29172212g"}, "field 'job_id' is not a UUID"),
        ({"priority": 10}, "priority 10 is outside 0-9"),
        ({"queue": ""}, "queue is empty"),
        ({"concurrency_key": "k", "concurrency_limit": None}, "field 'concurrency_limit' must be int, not NoneType"),
    ],
)
def test_a_bad_envelope_says_what_is_wrong(change, says):
    good = DispatchEnvelope(
        job_id=str(uuid.uuid4()), owner_id=1, type="demo.noop", queue="default", priority=5, attempt=1,
        dispatch_token=str(uuid.uuid4()),
    ).as_dict()  # fmt: skip
    with pytest.raises(BadEnvelope, match=f"^{says}$".replace("(", r"\(").replace(")", r"\)")):
        DispatchEnvelope.parse(good | change)


@pytest.mark.parametrize("form", ["{%s}", "urn:uuid:%s", "%s"])
def test_a_uuid_in_another_form_uuid_takes_still_parses(form):
    """The canonical form is matched without building a UUID; any other form the uuid module
    reads (braces, a URN, upper case) is still accepted, and passed on as it came."""
    value = form % str(uuid.uuid4()).upper()
    good = DispatchEnvelope(
        job_id=str(uuid.uuid4()), owner_id=1, type="demo.noop", queue="default", priority=5, attempt=1,
        dispatch_token=str(uuid.uuid4()),
    ).as_dict()  # fmt: skip
    assert DispatchEnvelope.parse(good | {"job_id": value}).job_id == value


class _Contexts(logging.Handler):
    """The job context each record of the worker was written under."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, JobLogContext | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage(), current_job.get()))


@pytest.mark.django_db
def test_what_the_worker_logs_before_a_claim_is_the_jobs_own(user):
    """A job held by its concurrency key, and a duplicate delivery losing its claim: those
    lines carry the envelope's owner, attempt and workflow, so the owner finds them."""
    running = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop", concurrency_key="one")).job
    held = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop", concurrency_key="one")).job
    from jobs import transitions

    assert transitions.take_slot(running.id, 1)  # the key's only slot is taken
    contexts = _Contexts()
    logger = logging.getLogger("orchestration.worker")
    logger.addHandler(contexts)
    try:
        assert execute(dispatch_of(held)).status == "BLOCKED"
        done = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.noop")).job
        first = dispatch_of(done)
        assert execute(first).status == "SUCCEEDED"
        assert execute(first).status == "SKIPPED"  # the same message again
    finally:
        logger.removeHandler(contexts)
    tags = {message: ctx for message, ctx in contexts.seen if message in ("job.blocked_by_key", "job.claim_lost")}
    assert tags["job.blocked_by_key"] == JobLogContext(
        job_id=str(held.id), attempt=1, type="demo.noop", queue="default", owner_id=user.pk
    )
    assert tags["job.claim_lost"] is not None
    assert (tags["job.claim_lost"].job_id, tags["job.claim_lost"].owner_id) == (str(done.id), user.pk)
