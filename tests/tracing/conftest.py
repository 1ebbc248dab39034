"""Fixtures for tracing through the real roles: the dispatch pipeline's topics and queue, and
the log pipeline's topics and ClickHouse table."""

from tests.logs.conftest import ch_table, log_topics  # noqa: F401
from tests.orchestration.conftest import queue, topics  # noqa: F401
