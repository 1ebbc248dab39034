"""The dispatch pipeline's fixtures, for tests that start a role as a process."""

from tests.orchestration.conftest import queue, topics  # noqa: F401
