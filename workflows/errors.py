"""Domain errors of workflows (the API maps them to 404/409)."""

from __future__ import annotations

import uuid


class WorkflowNotFound(Exception):
    def __init__(self, workflow_id: uuid.UUID | str) -> None:
        super().__init__(f"workflow {workflow_id} not found")


class WorkflowFinished(Exception):
    """A change the workflow's current state does not allow (API: 409)."""

    def __init__(self, workflow_id: uuid.UUID | str, status: str, action: str) -> None:
        super().__init__(f"workflow {workflow_id} is {status}, cannot {action}")
        self.status = status
