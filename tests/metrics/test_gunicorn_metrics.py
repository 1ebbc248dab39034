"""The web's metrics under gunicorn: its workers are processes, and with
PROMETHEUS_MULTIPROC_DIR (set by compose and the dev stack) every scrape shows the sum of
them all. Without it a scrape read one worker's counters, at random."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from django.db import connection
from rest_framework.authtoken.models import Token

from tests.factories import UserFactory

REPO = Path(__file__).resolve().parents[2]
SUBMITS = 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERIES = 'orchestration_jobs_submitted_total{queue="default",type="demo.noop"} '


def _submitted(text: str) -> float:
    line = next((ln for ln in text.splitlines() if ln.startswith(SERIES)), None)
    return float(line.rsplit(" ", 1)[1]) if line else 0.0


@pytest.mark.django_db(transaction=True)
def test_two_gunicorn_workers_counters_add_up_in_every_scrape(tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    log = (tmp_path / "gunicorn.log").open("wb")
    user = UserFactory()
    token = Token.objects.create(user=user).key
    db = connection.settings_dict
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",  # this test's database
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "LOG_SHIPPING": "false",
        "METRICS_TOKEN": "",
        "OTEL_SDK_DISABLED": "true",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--config", "python:config.gunicorn",
         "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "1"],
        cwd=REPO, env=env, stdout=log, stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{base}/health/live", timeout=1).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # the socket listens before the app loads
                pass
            assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()[-2000:]
            time.sleep(0.2)
        session_headers = {"Authorization": f"Token {token}"}

        def submit(_: int) -> int:
            return requests.post(f"{base}/api/v1/jobs/", json={"type": "demo.noop"}, headers=session_headers,
                                 timeout=10).status_code  # fmt: skip

        with ThreadPoolExecutor(4) as pool:  # at once: both workers take some
            assert set(pool.map(submit, range(SUBMITS))) == {201}
        writers = {p.name.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_*.db")}
        assert len(writers) >= 2, f"one worker served every request: {writers}"
        scrapes = [_submitted(requests.get(f"{base}/metrics", timeout=5).text) for _ in range(10)]
        assert scrapes == [float(SUBMITS)] * 10, scrapes  # every scrape, whichever worker answers
    finally:
        server.terminate()
        server.wait(10)
        log.close()
