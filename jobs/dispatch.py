"""The dispatch envelope: the one message that carries a job from submit to a worker.

    built once (jobs.services: submit, retry, a scheduler release) → outbox row (JSON)
      → relay → Kafka `jobs` → bridge: `parse` (unusable → `jobs.dlq` with the reason)
      → Celery message (`as_dict`, on the envelope's queue and priority)
      → worker: `parse` once, then attributes all the way down

Small and versioned. What each field is for: `job_id` and `dispatch_token` claim the job (only
the current token can win); `type` asks the breaker and finds the handler; `queue` and
`priority` route the Celery message; `concurrency_key`/`_limit` decide whether the claim takes
a slot; `rate_limit_key` makes the worker reserve a start slot of the key's rate first
(`rate_slot`: it waited for the one it reserved, and starts now unless late); `owner_id`, `attempt`,
`workflow_id` tag the lines a worker or the bridge writes about the job before it is claimed
(blocked, paused, claim lost, dead-lettered), so its owner finds them in the job's logs;
`trace` (the propagators' carrier: W3C `traceparent`, `tracestate`, `baggage` by default)
continues the job's trace in every role it passes (the submit's span, or the scheduler's
release of this attempt); `lane` is set by the relay: "express" for a dispatch
whose owner had few jobs in flight in its queue (workers take those first, so a light tenant's
job never waits behind a heavy tenant's window), absent otherwise.
Optional fields are left out of the JSON when empty; a message of version 1 from before
`owner_id` existed parses without one (its lines are then visible to staff only), and the
bridge passes it on as it came; one from before `trace` carries a bare `traceparent`, read as
{"traceparent": ...}. A malformed `trace` is dropped, never an error: tracing must not stop a
job, and neither does an unknown `lane`.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from config.tracing import Carrier, valid_carrier
from logs.context import JobLogContext

VERSION = 1
SUPPORTED_VERSIONS = frozenset({VERSION})
EXPRESS = "express"  # the one lane a dispatch may name; any other value reads as none


class BadEnvelope(ValueError):
    """The message can never be dispatched; the text says why (it goes to the DLQ)."""


class DispatchSource(Protocol):
    """What a dispatch is made from: a JobSpec, a Job, or a job the scheduler released."""

    # Read-only members, so frozen dataclasses satisfy it too.
    @property
    def type(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def concurrency_key(self) -> str | None: ...
    @property
    def concurrency_limit(self) -> int | None: ...
    @property
    def rate_limit_key(self) -> str | None: ...
    @property
    def workflow_id(self) -> uuid.UUID | None: ...


@dataclass(frozen=True, slots=True)
class DispatchEnvelope:
    job_id: str
    owner_id: int | None  # None only in a message from before the field existed
    type: str
    queue: str
    priority: int
    attempt: int  # the history number this dispatch's attempt gets
    dispatch_token: str
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    rate_limit_key: str | None = None
    rate_slot: float | None = None  # the start slot it waited for (unix seconds): it need not ask again
    workflow_id: str | None = None
    trace: Carrier | None = None  # the job's trace context (a carrier), None when not traced
    lane: str | None = None  # EXPRESS, set by the relay; None: the bulk lane
    v: int = VERSION

    @classmethod
    def build(
        cls,
        job_id: uuid.UUID,
        source: DispatchSource,
        *,
        owner_id: int,
        attempt: int,
        token: uuid.UUID,
        trace: Carrier | None = None,
        rate_slot: float | None = None,
    ) -> DispatchEnvelope:
        keyed = bool(source.concurrency_key)
        return cls(
            job_id=str(job_id), owner_id=owner_id, type=source.type, queue=source.queue, priority=source.priority,
            attempt=attempt, dispatch_token=str(token),
            concurrency_key=source.concurrency_key if keyed else None,
            concurrency_limit=(source.concurrency_limit or 1) if keyed else None,  # a key alone: one at a time
            rate_limit_key=source.rate_limit_key or None,
            rate_slot=rate_slot if source.rate_limit_key else None,
            workflow_id=str(source.workflow_id) if source.workflow_id else None,
            trace=valid_carrier(trace),
        )  # fmt: skip

    def log_context(self) -> JobLogContext:
        """Tags for what is logged about this dispatch before (or without) a claim."""
        return JobLogContext(
            job_id=self.job_id, attempt=self.attempt, type=self.type, queue=self.queue, owner_id=self.owner_id or 0,
            workflow_id=self.workflow_id,
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        # By hand: dataclasses.asdict (recursive, deep-copying) was a sixth of the bridge's CPU.
        out = {"v": self.v, "job_id": self.job_id, "type": self.type, "queue": self.queue, "priority": self.priority,
               "attempt": self.attempt, "dispatch_token": self.dispatch_token}  # fmt: skip
        if self.owner_id is not None:
            out["owner_id"] = self.owner_id
        if self.concurrency_key is not None:
            out["concurrency_key"] = self.concurrency_key
            out["concurrency_limit"] = self.concurrency_limit
        if self.rate_limit_key is not None:
            out["rate_limit_key"] = self.rate_limit_key
            if self.rate_slot is not None:
                out["rate_slot"] = self.rate_slot
        if self.workflow_id is not None:
            out["workflow_id"] = self.workflow_id
        if self.trace is not None:
            out["trace"] = self.trace
        if self.lane is not None:
            out["lane"] = self.lane
        return out

    @classmethod
    def parse(cls, data: Any) -> DispatchEnvelope:
        """The envelope in a decoded message, checked field by field; BadEnvelope says what is wrong."""
        if not isinstance(data, dict):
            raise BadEnvelope(f"envelope must be a JSON object, not {type(data).__name__}")
        version = _field(data, "v", int)
        if version not in SUPPORTED_VERSIONS:
            raise BadEnvelope(f"unsupported envelope version {version}")
        keyed = "concurrency_key" in data
        envelope = cls(
            v=version,
            job_id=_uuid(data, "job_id"),
            owner_id=_field(data, "owner_id", int) if "owner_id" in data else None,
            type=_field(data, "type", str),
            queue=_field(data, "queue", str),
            priority=_field(data, "priority", int),
            attempt=_field(data, "attempt", int),
            dispatch_token=_uuid(data, "dispatch_token"),
            concurrency_key=_field(data, "concurrency_key", str) if keyed else None,
            concurrency_limit=_field(data, "concurrency_limit", int) if keyed else None,
            rate_limit_key=_field(data, "rate_limit_key", str) if "rate_limit_key" in data else None,
            rate_slot=float(data["rate_slot"]) if type(data.get("rate_slot")) in (int, float) else None,
            workflow_id=_uuid(data, "workflow_id") if "workflow_id" in data else None,
            trace=_trace(data),
            lane=EXPRESS if data.get("lane") == EXPRESS else None,  # advisory: anything else is the bulk lane
        )
        if not 0 <= envelope.priority <= 9:
            raise BadEnvelope(f"priority {envelope.priority} is outside 0-9")
        if not envelope.queue:
            raise BadEnvelope("queue is empty")
        return envelope


def _trace(data: dict[str, Any]) -> Carrier | None:
    """The envelope's trace context; bad: treated as absent. A bare `traceparent` is how
    envelopes written before the carrier said it (still in the outbox at an upgrade)."""
    if "trace" in data:
        return valid_carrier(data["trace"])
    return valid_carrier({"traceparent": data["traceparent"]}) if "traceparent" in data else None


def _field(data: dict[str, Any], name: str, kind: type) -> Any:
    if name not in data:
        raise BadEnvelope(f"missing field {name!r}")
    value = data[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadEnvelope(f"field {name!r} must be {kind.__name__}, not {type(value).__name__}")
    return value


# How every envelope of ours writes a UUID: checked by one match, without building a UUID (that
# was half of the bridge's parse). Any other form uuid.UUID takes is still accepted.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def _uuid(data: dict[str, Any], name: str) -> str:
    value: str = _field(data, name, str)
    if _CANONICAL_UUID.match(value):
        return value
    try:
        uuid.UUID(value)
    except ValueError:
        raise BadEnvelope(f"field {name!r} is not a UUID") from None
    return value
