"""Each role exports only its own metrics: real processes, each serving its /metrics as in
production (`serve_role_metrics` on METRICS_PORT; the web's view with METRICS_PORT set), and
the dev stack's web view of a multiprocess directory every role wrote to."""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from metrics import prom
from tests.orchestration.conftest import REPO

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
P = "orchestration_"

# The spec, written out apart from prom.WRITERS: who exports each contract metric.
CONTRACT = {
    "jobs_submitted": {"web", "worker", "scheduler"},
    "jobs_finished": {"web", "worker", "scheduler"},
    "job_duration_seconds": {"worker"},
    "job_queue_wait_seconds": {"worker"},
    "jobs_in_state": {"scheduler"},
    "outbox_pending": {"relay"},
    "bridge_lag": {"scheduler"},  # the scheduler's leader measures it
    "logs_ingested": {"log-sink"},
    "logs_dropped": set(prom.ROLES),
}
# Families several roles export, each its own part: lifecycle counters count where the event
# happens (summed over roles by every rule and panel); log shipping and heartbeats are each
# process's own, labelled by service or role.
SHARED = {
    P + name
    for name in (
        "jobs_submitted", "jobs_finished", "job_retries", "workflows_submitted", "workflows_finished",
        "logs_shipped", "logs_dropped", "logs_queued", "role_heartbeat_timestamp_seconds",
    )
}  # fmt: skip

# A role's /metrics as Prometheus reads it (argv: the role, then Python to run first).
ROLE_SCRAPE = """
import sys, urllib.request
import django; django.setup()
from metrics import prom
exec(sys.argv[2] if len(sys.argv) > 2 else "")
port = prom.serve_role_metrics(sys.argv[1])
print(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
"""
WEB_SCRAPE = """
import django; django.setup()
from django.test import Client
print(Client().get('/metrics').content.decode())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(code: str, *args: str, **env: str) -> str:
    full = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "METRICS_TOKEN": "", **env}
    if not full.get("PROMETHEUS_MULTIPROC_DIR"):  # set at all, even empty, prometheus_client writes files
        full.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, env=full, check=True, capture_output=True, text=True, timeout=60
    ).stdout


def parse(text: str) -> tuple[set[str], Samples]:
    """The families of ours (orchestration_) and of django-prometheus' requests, and every sample."""
    families, samples = set(), {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith((P, "django_http_")) and not family.name.endswith("_created"):
            families.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


def scrape_role(role: str, before: str = "") -> tuple[set[str], Samples]:
    """`role`'s /metrics in production: its own server on METRICS_PORT, the web's view with
    METRICS_PORT set. `before`: Python the role runs first."""
    env = {"METRICS_PORT": str(_free_port()), "METRICS_ADDRESS": "127.0.0.1", "KAFKA_JOBS_PARTITIONS": "4"}
    if role == "web":
        return parse(run(WEB_SCRAPE, **env))
    return parse(run(ROLE_SCRAPE, role, before, **env))


@pytest.fixture(scope="module")
def scrapes() -> dict[str, tuple[set[str], Samples]]:
    return {role: scrape_role(role) for role in prom.ROLES}


def own(role: str) -> set[str]:
    return {metric._name for metric, roles in prom.WRITERS.items() if role in roles}


def ours(families: set[str]) -> set[str]:
    return {f for f in families if f.startswith(P)}


def test_every_metric_says_which_roles_write_it():
    metrics = [v for v in vars(prom).values() if isinstance(v, (Counter, Gauge, Histogram))]
    assert len(metrics) == len(prom.WRITERS)
    for metric in metrics:
        assert metric in prom.WRITERS, f"{metric._name}: no roles in prom.WRITERS"
        assert prom.WRITERS[metric], metric._name
        assert set(prom.WRITERS[metric]) <= set(prom.ROLES), metric._name


def test_each_role_exports_exactly_its_own_families(scrapes):
    for role, (families, _) in scrapes.items():
        assert ours(families) == own(role), role
        for name, writers in CONTRACT.items():
            assert (P + name in families) == (role in writers), (role, name)
        # django-prometheus' request metrics exist in every Django process; only the web serves requests
        assert any(f.startswith("django_http_") for f in families) == (role == "web"), role


def test_no_two_roles_export_the_same_family_but_the_shared_ones(scrapes):
    for (a, (fa, _)), (b, (fb, _)) in itertools.combinations(scrapes.items(), 2):
        assert fa & fb <= SHARED, (a, b, sorted(fa & fb - SHARED))
    assert P + "role_heartbeat_timestamp_seconds" not in scrapes["web"][0]  # the web beats no heartbeat


def test_each_role_declares_only_its_own_known_series_at_zero(scrapes):
    for role, (_, samples) in scrapes.items():
        dropped = {dict(labels)["service"] for (name, labels) in samples if name == P + "logs_dropped_total"}
        assert dropped == {role}, role
    relay, scheduler, web = scrapes["relay"][1], scrapes["scheduler"][1], scrapes["web"][1]
    assert relay[(P + "outbox_pending", ())] == 0
    for status in prom.JOB_STATUSES:
        assert scheduler[(P + "jobs_in_state", (("status", status),))] == 0
    assert [scheduler[(P + "bridge_lag", (("partition", str(p)),))] for p in range(4)] == [0] * 4
    for t in prom.BUILTIN_TYPES:
        labels = (("queue", "default"), ("type", t))
        assert web[(P + "jobs_submitted_total", labels)] == 0
        assert scrapes["worker"][1][(P + "job_duration_seconds_count", labels)] == 0
    assert not any(name.startswith(P + "jobs_finished") for name, _ in relay)


def test_every_contract_series_starts_at_zero_in_each_role_that_writes_it(scrapes):
    expected = [("outbox_pending", "outbox_pending", {}), ("logs_ingested", "logs_ingested_total", {})]
    for t in prom.BUILTIN_TYPES:
        labels = {"type": t, "queue": "default"}
        expected += [
            ("jobs_submitted", "jobs_submitted_total", labels),
            ("job_duration_seconds", "job_duration_seconds_count", labels),
            ("job_queue_wait_seconds", "job_queue_wait_seconds_count", labels),
        ]
        expected += [("jobs_finished", "jobs_finished_total", {"status": s, **labels}) for s in prom.TERMINAL_STATUSES]
    expected += [("jobs_in_state", "jobs_in_state", {"status": s}) for s in prom.JOB_STATUSES]
    expected += [("bridge_lag", "bridge_lag", {"partition": str(p)}) for p in range(4)]
    for family, sample, labels in expected:
        for role in CONTRACT[family]:
            assert scrapes[role][1].get((P + sample, tuple(sorted(labels.items())))) == 0, (role, sample, labels)
    for role in prom.ROLES:
        assert scrapes[role][1][(P + "logs_dropped_total", (("service", role),))] == 0


def test_another_roles_family_a_role_wrote_to_is_not_hidden():
    # The relay dead-letters a job it can never dispatch: jobs_finished_total, not one of its
    # families, shows that count (and none of the zeros).
    dead_letter = "prom.JOBS_FINISHED.labels('DEAD_LETTER', 'demo.echo', 'default').inc()"
    families, samples = scrape_role("relay", before=dead_letter)
    assert P + "jobs_finished" in families
    finished = {labels: v for (name, labels), v in samples.items() if name == P + "jobs_finished_total"}
    assert finished == {(("queue", "default"), ("status", "DEAD_LETTER"), ("type", "demo.echo")): 1.0}


WRITE_EVERY_FAMILY = """
import sys
from prometheus_client import Counter, Gauge
from metrics import prom
prom.registry(sys.argv[1])  # what the role does at start: its known series
for metric, roles in prom.WRITERS.items():
    if sys.argv[1] in roles:
        child = metric.labels(*["x"] * len(metric._labelnames)) if metric._labelnames else metric
        (child.inc if isinstance(metric, Counter) else child.set if isinstance(metric, Gauge) else child.observe)(1)
"""


def test_the_dev_stack_web_shows_every_role_and_the_production_web_its_own(tmp_path: Path):
    shared, web_only = tmp_path / "dev", tmp_path / "web"
    shared.mkdir()
    web_only.mkdir()
    for role in prom.ROLES:  # the dev stack: every role writes into one directory
        run(WRITE_EVERY_FAMILY, role, PROMETHEUS_MULTIPROC_DIR=str(shared))
    run(WRITE_EVERY_FAMILY, "web", PROMETHEUS_MULTIPROC_DIR=str(web_only))  # production: gunicorn's workers

    dev, dev_samples = parse(run(WEB_SCRAPE, PROMETHEUS_MULTIPROC_DIR=str(shared)))
    assert ours(dev) == {metric._name for metric in prom.WRITERS}
    assert dev_samples[(P + "outbox_pending", ())] == 1  # the relay's
    assert dev_samples[(P + "jobs_in_state", (("status", "PENDING"),))] == 0  # known, at 0

    families, samples = parse(run(WEB_SCRAPE, PROMETHEUS_MULTIPROC_DIR=str(web_only), METRICS_PORT="9100"))
    assert ours(families) == own("web")
    assert samples[(P + "jobs_submitted_total", (("queue", "x"), ("type", "x")))] == 1
    assert not any(name.startswith((P + "jobs_in_state", P + "outbox_pending")) for name, _ in samples)


def test_the_operating_guide_lists_what_each_role_exports():
    text = (REPO / "docs" / "operating.md").read_text()
    documented: dict[str, set[str]] = {role: set() for role in prom.ROLES}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) != 4 or not cells[1].startswith(("every role", *prom.ROLES)) or cells[1] == "role":
            continue
        roles = (
            {cells[1]}
            if cells[1] in prom.ROLES
            else set(prom.ROLES) - ({"web"} if "but the web" in cells[1] else set())
        )
        names = {P + n.removesuffix("_total") for n in re.findall(r"`([a-z_]+)`", cells[2])}
        for role in roles:
            documented[role] |= names
    assert documented == {role: own(role) for role in prom.ROLES}
