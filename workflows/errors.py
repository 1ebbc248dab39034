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
