"""Base for steps that hand each message to the next step: poll, join, close and terminate
simply pass along the chain."""

from __future__ import annotations

from typing import Any

from arroyo.processing.strategies.abstract import ProcessingStrategy


class ForwardingStep(ProcessingStrategy[Any]):
    next_step: ProcessingStrategy[Any]

    def poll(self) -> None:
        self.next_step.poll()

    def join(self, timeout: float | None = None) -> None:
        self.next_step.join(timeout)

    def close(self) -> None:
        self.next_step.close()

    def terminate(self) -> None:
        self.next_step.terminate()
