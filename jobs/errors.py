"""Domain errors. Each message names the object and its state; the API maps them to 404/409."""

from __future__ import annotations

import uuid
from typing import Any

from config.errors import ObjectNotFound, StateConflict


class JobError(Exception):
    """Base class for errors about jobs."""


class JobNotFound(JobError, ObjectNotFound):
    def __init__(self, job_id: uuid.UUID | str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class IllegalTransition(JobError, StateConflict):
    """A state change the job's current state does not allow (API: 409)."""

    code = "illegal_transition"

    def __init__(self, job_id: uuid.UUID | str, current: str | None, action: str) -> None:
        state = current if current is not None else "gone"
        super().__init__(f"job {job_id} is {state}, cannot {action}")
        self.job_id = job_id
        self.current = current
        self.action = action

    def fields(self) -> dict[str, Any]:
        return {"status": self.current}


class IdempotencyConflict(JobError, StateConflict):
    """The idempotency key was used before with a different request body (API: 409)."""

    code = "idempotency_conflict"

    def __init__(self, key: str, job_id: uuid.UUID | str, kind: str = "job") -> None:
        super().__init__(f"idempotency key {key!r} was already used for {kind} {job_id} with a different request body")
        self.key = key
        self.job_id = job_id
        self.kind = kind

    def fields(self) -> dict[str, Any]:
        return {self.kind: str(self.job_id)}


class UniqueConflict(JobError, StateConflict):
    """A job with the same unique key is already there, within its `unique_for` (API: 409):
    policy `reject`, or `replace` once that job has started."""

    code = "unique_conflict"

    def __init__(self, key: str, job_id: uuid.UUID | str, reason: str = "") -> None:
        message = f"unique key {key!r} is taken by job {job_id}"
        super().__init__(f"{message}: {reason}" if reason else message)
        self.key = key
        self.job_id = job_id

    def fields(self) -> dict[str, Any]:
        return {"job": str(self.job_id)}


class ScheduleNotFound(ObjectNotFound):
    def __init__(self, schedule_id: uuid.UUID | str) -> None:
        super().__init__(f"schedule {schedule_id} not found")


class ScheduleNameTaken(StateConflict):
    """The owner already has a schedule of that name (API: 409)."""

    code = "name_taken"

    def __init__(self, name: str) -> None:
        super().__init__(f"you already have a schedule named {name!r}")
        self.name = name

    def fields(self) -> dict[str, Any]:
        return {"name": self.name}


class RateLimitNotFound(ObjectNotFound):
    def __init__(self, limit_id: int | str) -> None:
        super().__init__(f"rate limit {limit_id} not found")


class RateLimitPatternTaken(StateConflict):
    """A limit for that key pattern is already declared at that scope (API: 409)."""

    code = "pattern_taken"

    def __init__(self, pattern: str) -> None:
        super().__init__(f"a rate limit for key pattern {pattern!r} is already declared: change that one")
        self.pattern = pattern


class BatchNotFound(ObjectNotFound):
    def __init__(self, batch_id: uuid.UUID | str) -> None:
        super().__init__(f"batch {batch_id} not found")


class BatchClosed(StateConflict):
    """Jobs may be added to an open batch only (API: 409)."""

    code = "batch_closed"

    def __init__(self, batch_id: uuid.UUID | str, state: str) -> None:
        super().__init__(f"batch {batch_id} is {state}: no more jobs can be added")
        self.batch_id = batch_id
        self.state = state

    def fields(self) -> dict[str, Any]:
        return {"state": self.state}


class BatchEnded(StateConflict):
    """A batch that is complete or cancelled cannot be cancelled (API: 409)."""

    code = "batch_ended"

    def __init__(self, batch_id: uuid.UUID | str, state: str) -> None:
        super().__init__(f"batch {batch_id} is {state}: there is nothing left to cancel")
        self.batch_id = batch_id
        self.state = state

    def fields(self) -> dict[str, Any]:
        return {"state": self.state}
