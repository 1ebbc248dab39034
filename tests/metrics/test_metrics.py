"""Metrics, heartbeats and `manage.py status` against real PostgreSQL and Redis."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid

import pytest
from django.core.management import call_command
from prometheus_client.parser import text_string_to_metric_families

from jobs import services
from jobs.services import JobSpec
from metrics import heartbeat
from orchestration.worker import execute
from tests.factories import dispatch_of
from tests.orchestration.conftest import REPO

pytestmark = pytest.mark.django_db

CONTRACT = [
    "orchestration_jobs_submitted_total", "orchestration_jobs_finished_total", "orchestration_job_duration_seconds",
    "orchestration_job_queue_wait_seconds", "orchestration_jobs_in_state", "orchestration_outbox_pending",
    "orchestration_bridge_lag", "orchestration_logs_ingested_total", "orchestration_logs_dropped_total",
]  # fmt: skip


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_when_jobs_run(client, user):
    before = scrape(client)
    job = services.job_submit(owner_id=user.pk, spec=JobSpec(type="demo.echo", queue="metrics-q")).job
    execute(dispatch_of(job))
    after = scrape(client)
    labels = {"type": "demo.echo", "queue": "metrics-q"}
    assert (
        value(after, "orchestration_jobs_submitted_total", **labels)
        == value(before, "orchestration_jobs_submitted_total", **labels) + 1
    )
    done = {"status": "SUCCEEDED", **labels}
    assert (
        value(after, "orchestration_jobs_finished_total", **done)
        == value(before, "orchestration_jobs_finished_total", **done) + 1
    )
    assert value(after, "orchestration_job_duration_seconds_count", **labels) >= 1
    assert value(after, "orchestration_job_queue_wait_seconds_count", **labels) >= 1
    text = client.get("/metrics").content.decode()
    for metric in CONTRACT:  # every contract metric is declared, labelled or not yet set
        assert f"# HELP {metric} " in text or f"# HELP {metric.removesuffix('_total')} " in text, metric
    assert "django_http_requests_total_by_method_total" in text  # django-prometheus


def test_metrics_need_the_token_when_one_is_set(client, settings):
    settings.METRICS_TOKEN = "s3cret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200


def test_the_multiprocess_directory_shows_every_process(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings"}
    bump = "from metrics import prom; prom.JOBS_SUBMITTED.labels('t', 'q').inc(3); prom.OUTBOX_PENDING.set(7)"
    for _ in range(2):  # two processes, like two roles
        subprocess.run([sys.executable, "-c", bump], cwd=REPO, env=env, check=True)
    show = (
        "from prometheus_client import generate_latest; from metrics.prom import registry; "
        "print(generate_latest(registry()).decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", show], cwd=REPO, env=env, check=True, capture_output=True, text=True
    ).stdout
    assert 'orchestration_jobs_submitted_total{queue="q",type="t"} 6.0' in out
    assert "orchestration_outbox_pending 7.0" in out


def test_heartbeats_status_and_ready(client, settings):
    settings.HEARTBEAT_PREFIX = f"hb-{uuid.uuid4().hex}"
    heartbeat.beat("relay", {"outbox_pending": 3})
    heartbeat.beat("scheduler", {"leading": True, "bridge_lag": 5, "jobs_in_state": {"PENDING": 2}})
    relay, scheduler = heartbeat.roles()
    assert scheduler["leading"] is True
    assert relay["role"] == "relay"
    assert relay["outbox_pending"] == 3
    assert relay["age"] < 5
    out = io.StringIO()
    call_command("status", stdout=out)
    text = out.getvalue()
    assert "relay" in text
    assert "outbox_pending=3" in text
    assert "MISSING" in text  # no worker, bridge or log sink here
    assert "Kafka jobs (bridge lag)  5" in text
    ready = client.get("/health/ready").json()
    assert ready["roles"]["relay"][0]["age_seconds"] < 5


@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
def test_a_role_serves_its_own_metrics_on_metrics_port(topics, queue, tmp_path):
    import urllib.request

    from tests.logs.test_sink import free_port
    from tests.orchestration.conftest import Stack, wait_for

    ports = {"relay": free_port(), "worker": free_port()}
    stack = Stack(topics, queue, tmp_path, HEARTBEAT_SECONDS="0.5")
    stack.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    for role, port in ports.items():  # run_role's (config/roles.py) and the worker's (config/celery.py)
        stack.env["METRICS_PORT"] = str(port)
        stack.start(role)
    try:

        def scraped(role: str) -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports[role]}/metrics", timeout=2) as r:
                    return r.read().decode()
            except OSError:
                return ""

        for role in ports:
            beat = f'role_heartbeat_timestamp_seconds{{role="{role}"}}'
            wait_for(lambda role=role, beat=beat: beat in scraped(role), timeout=30, message=f"{role} metrics")
        relay, worker = scraped("relay"), scraped("worker")
        assert "orchestration_outbox_pending" in relay
        assert "# TYPE orchestration_job_duration_seconds histogram" in worker
        # Each its own only: no zeros of the other's, the scheduler's or the web's.
        for text, others in ((relay, ["jobs_finished", "job_duration", "jobs_in_state", "bridge_lag"]),
                             (worker, ["outbox_pending", "jobs_in_state", "bridge_lag", "logs_ingested"])):  # fmt: skip
            assert not [o for o in others if f"orchestration_{o}" in text], others
            assert "django_http_" not in text
    finally:
        stack.close()


BUILTIN_TYPES = ["demo.noop", "demo.echo", "demo.sleep", "demo.fail", "demo.flaky", "demo.log"]
TERMINAL = ["SUCCEEDED", "DEAD_LETTER", "CANCELLED"]
STATUSES = ["PENDING", "QUEUED", "RUNNING", "SUCCEEDED", "RETRYING", "DEAD_LETTER", "CANCELLED"]
ROLES = ["web", "worker", "relay", "bridge", "scheduler", "log-sink"]


def fresh_scrape(env: dict[str, str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics of a process that has done nothing yet, as Prometheus would read it."""
    code = (
        "import django; django.setup(); from django.test import Client; "
        "print(Client().get('/metrics').content.decode())"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "METRICS_TOKEN": "", **env}
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):  # set at all, even empty, prometheus_client writes files
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(out)
        for s in family.samples
    }


# The web's /metrics where the roles serve none of their own (no METRICS_PORT): every role's
# series. Production, each role its own: tests/metrics/test_role_metrics.py.
@pytest.mark.parametrize("multiprocess", [True, False], ids=["dev-stack", "one-process"])
def test_every_contract_metric_is_there_from_the_start_at_zero(tmp_path, multiprocess):
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)} if multiprocess else {"PROMETHEUS_MULTIPROC_DIR": ""}
    samples = fresh_scrape({**env, "KAFKA_JOBS_PARTITIONS": "4"})
    expected = [("orchestration_outbox_pending", {}), ("orchestration_logs_ingested_total", {})]
    for t in BUILTIN_TYPES:
        labels = {"type": t, "queue": "default"}
        expected += [
            ("orchestration_jobs_submitted_total", labels),
            ("orchestration_job_duration_seconds_count", labels),
            ("orchestration_job_queue_wait_seconds_count", labels),
        ]
        expected += [("orchestration_jobs_finished_total", {"status": s, **labels}) for s in TERMINAL]
    expected += [("orchestration_jobs_in_state", {"status": s}) for s in STATUSES]
    expected += [("orchestration_bridge_lag", {"partition": str(p)}) for p in range(4)]
    expected += [("orchestration_logs_dropped_total", {"service": r}) for r in ROLES]
    missing = [(n, lab) for n, lab in expected if (n, tuple(sorted(lab.items()))) not in samples]
    assert missing == []
    assert all(samples[(n, tuple(sorted(lab.items())))] == 0 for n, lab in expected)


def test_the_known_label_values_are_the_platforms():
    # metrics loads before Django's apps (the log handler uses it), so it keeps its own lists.
    from jobs.handlers import is_registered
    from jobs.models import TERMINAL_STATUSES, JobStatus
    from metrics import prom

    assert sorted(prom.BUILTIN_TYPES) == sorted(BUILTIN_TYPES)
    assert all(is_registered(t) for t in prom.BUILTIN_TYPES)
    assert list(prom.JOB_STATUSES) == JobStatus.values
    assert set(prom.TERMINAL_STATUSES) == set(TERMINAL_STATUSES)


def test_known_series_at_zero_never_hide_what_a_role_wrote(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings"}
    scheduler = (
        "from metrics import prom; prom.JOBS_IN_STATE.labels('PENDING').set(5); prom.OUTBOX_PENDING.set(2); "
        "prom.LOGS_DROPPED.labels('worker').inc(3)"
    )
    subprocess.run([sys.executable, "-c", scheduler], cwd=REPO, env=env, check=True)
    samples = fresh_scrape({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert samples[("orchestration_jobs_in_state", (("status", "PENDING"),))] == 5
    assert samples[("orchestration_jobs_in_state", (("status", "QUEUED"),))] == 0
    assert samples[("orchestration_outbox_pending", ())] == 2
    assert samples[("orchestration_logs_dropped_total", (("service", "worker"),))] == 3
    assert samples[("orchestration_logs_dropped_total", (("service", "relay"),))] == 0
