"""Every PostgreSQL connection of ours has limits: one slow statement, an idle transaction or
a silent server fails a request, a tick or a round instead of hanging a role for good."""

from __future__ import annotations

import pytest
from django.db import OperationalError, connection, transaction

pytestmark = pytest.mark.django_db


def show(name: str) -> str:
    with connection.cursor() as cur:
        cur.execute(f"SHOW {name}")
        return cur.fetchone()[0]


def test_a_connection_has_statement_idle_and_socket_limits():
    assert show("statement_timeout") == "30s"
    assert show("idle_in_transaction_session_timeout") == "1min"
    assert connection.get_connection_params()["tcp_user_timeout"] == 30_000
    assert connection.get_connection_params()["connect_timeout"] == 5


def sleep_over_a_lowered_limit() -> None:
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("SET LOCAL statement_timeout = '100ms'")
        cur.execute("SELECT pg_sleep(2)")


def test_a_statement_over_its_limit_is_cancelled():
    with pytest.raises(OperationalError, match="statement timeout"):
        sleep_over_a_lowered_limit()
