"""Domain errors of workflows (the API maps them to 404/409)."""

from __future__ import annotations

import uuid
from typing import Any

from config.errors import ObjectNotFound, StateConflict


class WorkflowNotFound(ObjectNotFound):
    def __init__(self, workflow_id: uuid.UUID | str) -> None:
        super().__init__(f"workflow {workflow_id} not found")


class WorkflowFinished(StateConflict):
    """A change the workflow's current state does not allow (API: 409)."""

    code = "illegal_transition"

    def __init__(self, workflow_id: uuid.UUID | str, status: str, action: str) -> None:
        super().__init__(f"workflow {workflow_id} is {status}, cannot {action}")
        self.status = status

    def fields(self) -> dict[str, Any]:
        return {"status": self.status}


class NoSuchSignal(ObjectNotFound):
    """No step of the workflow waits for a signal of that name (API: 404)."""

    def __init__(self, workflow_id: uuid.UUID | str, name: str) -> None:
        super().__init__(f"no step of workflow {workflow_id} waits for a signal named {name!r}")


class WaitEnded(StateConflict):
    """The step that waits for this signal is done already (API: 409)."""

    code = "wait_ended"

    def __init__(self, workflow_id: uuid.UUID | str, task_id: str, name: str, state: str) -> None:
        super().__init__(f"step {task_id!r} of workflow {workflow_id} is {state}: signal {name!r} comes too late")
        self.task_id = task_id
        self.state = state

    def fields(self) -> dict[str, Any]:
        return {"task": self.task_id, "state": self.state}


class SignalAlreadyKept(StateConflict):
    """A signal of that name waits for its step already (API: 409)."""

    code = "signal_kept"

    def __init__(self, workflow_id: uuid.UUID | str, name: str) -> None:
        super().__init__(f"workflow {workflow_id} already keeps a signal {name!r} for its step, not yet reached")


class NoSuchApproval(ObjectNotFound):
    """No approval step of that id in the workflow (API: 404)."""

    def __init__(self, workflow_id: uuid.UUID | str, task_id: str) -> None:
        super().__init__(f"workflow {workflow_id} has no approval step {task_id!r}")


class ApprovalNotOpen(StateConflict):
    """The approval step is not waiting for decisions: not reached yet, or ended (API: 409)."""

    code = "approval_not_open"

    def __init__(self, workflow_id: uuid.UUID | str, task_id: str, state: str) -> None:
        when = "not reached yet" if state == "NONE" else f"{state} already"
        super().__init__(f"approval step {task_id!r} of workflow {workflow_id} is {when}: it takes no decision")
        self.task_id = task_id
        self.state = state

    def fields(self) -> dict[str, Any]:
        return {"task": self.task_id, "state": self.state}


class AlreadyDecided(StateConflict):
    """The user decided on this step already (API: 409)."""

    code = "already_decided"

    def __init__(self, task_id: str, username: str, decision: str) -> None:
        super().__init__(f"{username} has already decided on step {task_id!r}: {decision}")
        self.decision = decision

    def fields(self) -> dict[str, Any]:
        return {"decision": self.decision}


class NotAnApprover(Exception):
    """The user may not decide on this step: not in its group, or the workflow is their own
    and the step does not allow self-approval (API: 403)."""
