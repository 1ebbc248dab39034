"""/health/ready follows an engine going away and coming back (a real ClickHouse server of the
test's own, stopped and started again)."""

from __future__ import annotations

import pytest

from tests.logs.test_sink import ClickHouseProcess

pytestmark = [pytest.mark.django_db, pytest.mark.clickhouse]


def test_ready_goes_503_naming_the_engine_and_back(client, settings, tmp_path):
    clickhouse = ClickHouseProcess(tmp_path / "chdb")
    clickhouse.start()
    try:
        settings.CLICKHOUSE_URL = clickhouse.url
        assert client.get("/health/ready").status_code == 200
        clickhouse.stop()
        down = client.get("/health/ready")
        assert down.status_code == 503
        body = down.json()
        assert body["failed"] == ["clickhouse"]
        assert body["checks"]["clickhouse"]["ok"] is False
        assert body["checks"]["postgres"]["ok"] is True
        clickhouse.start()
        assert client.get("/health/ready").status_code == 200
    finally:
        if clickhouse.proc and clickhouse.proc.poll() is None:
            clickhouse.stop()
