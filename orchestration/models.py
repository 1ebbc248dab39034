"""State of the orchestration roles themselves (not of jobs)."""

from __future__ import annotations

from django.db import models


class SchedulerFence(models.Model):
    """The fencing token of the scheduler leadership.

    Every scheduler transaction first raises `epoch` to its own (conditionally). A leader
    that was paused past its lock's expiry still holds an older epoch, so its transaction
    finds a newer epoch here, changes nothing and rolls back.
    """

    name = models.CharField(max_length=50, primary_key=True)
    epoch = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name} epoch {self.epoch}"
