"""The job page in the admin shows the job's log lines, oldest first, coloured by level."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import submit_job
from tests.logs.conftest import record, store_records

pytestmark = pytest.mark.clickhouse


def test_the_job_page_shows_its_logs(client, staff, user, ch_table):
    job = submit_job(user)
    t0 = timezone.now() - timedelta(minutes=1)
    store_records(
        record("first <line>", job_id=job.id, attempt=1, when=t0),
        record("then it broke", level="ERROR", job_id=job.id, attempt=1, when=t0 + timedelta(seconds=1),
               exception="Traceback ...\nValueError: x"),
    )  # fmt: skip
    client.force_login(staff)
    html = client.get(f"/admin/orchestration_jobs/job/{job.id}/change/").content.decode()
    assert html.index("first &lt;line&gt;") < html.index("then it broke")  # escaped, oldest first
    assert "ValueError: x" in html
    assert "#b91c1c" in html  # ERROR in red
    assert f'href="/api/v1/jobs/{job.id}/logs/"' in html


def test_the_job_page_still_opens_when_the_log_store_is_away(client, staff, user, ch_table, settings):
    job = submit_job(user)
    settings.CLICKHOUSE_URL = "http://default:@127.0.0.1:9/default"
    settings.CLICKHOUSE_CONNECT_TIMEOUT = 1
    client.force_login(staff)
    page = client.get(f"/admin/orchestration_jobs/job/{job.id}/change/")
    assert page.status_code == 200
    assert "The log store is not answering" in page.content.decode()
