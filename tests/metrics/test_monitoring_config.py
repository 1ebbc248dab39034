"""Prometheus config, alert rules and Grafana dashboards: valid, and about metrics that exist.
`promtool` comes from Debian's prometheus package (fetched with `apt-get download` and
unpacked under .data/tools/ when it is not on PATH)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from metrics import prom

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "metrics" / "prometheus"
DASHBOARDS = REPO / "metrics" / "grafana" / "dashboards"
TOOLS = REPO / ".data" / "tools"


def declared_metrics() -> set[str]:
    names = set()
    for value in vars(prom).values():
        if hasattr(value, "_name") and hasattr(value, "_type"):
            names.add(value._name + ("_total" if value._type == "counter" else ""))
    return names


def referenced_metrics(text: str) -> set[str]:
    return {re.sub(r"_(bucket|count|sum)$", "", m) for m in re.findall(r"\borchestration_[a-z_]+\b", text)}


@pytest.fixture(scope="session")
def promtool(tmp_path_factory) -> str:
    found = shutil.which("promtool") or (str(TOOLS / "promtool") if (TOOLS / "promtool").exists() else None)
    if found:
        return found
    apt_get, dpkg_deb = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if not apt_get or not dpkg_deb:
        pytest.skip("promtool is not installed and apt-get is not available to fetch it")
    work = tmp_path_factory.mktemp("promtool")
    fetched = subprocess.run([apt_get, "download", "prometheus"], cwd=work, capture_output=True, text=True)
    debs = list(work.glob("prometheus_*.deb"))
    if not debs:
        pytest.skip(f"could not fetch Debian's prometheus package: {fetched.stderr.strip()[-300:]}")
    subprocess.run([dpkg_deb, "-x", str(debs[0]), str(work / "x")], check=True)
    TOOLS.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "x" / "usr" / "bin" / "promtool", TOOLS / "promtool")
    return str(TOOLS / "promtool")


def test_alert_rules_pass_promtool(promtool):
    result = subprocess.run([promtool, "check", "rules", str(PROMETHEUS / "rules.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_prometheus_config_passes_promtool(promtool, tmp_path):
    # The config names files inside the container; point them at copies here.
    config = (PROMETHEUS / "prometheus.yml").read_text()
    shutil.copy(PROMETHEUS / "rules.yml", tmp_path / "rules.yml")
    config = config.replace("/etc/prometheus/rules.yml", str(tmp_path / "rules.yml"))
    for name in ("metrics_token", "flower_user", "flower_password"):  # written at start (compose)
        (tmp_path / name).write_text("secret")
        config = config.replace(f"/prometheus/{name}", str(tmp_path / name))
    # basic_auth's username_file is Prometheus 2.47's (compose runs 2.55.1); Debian's promtool
    # is 2.42: check the rest with a plain username in its place.
    config = config.replace(f"username_file: {tmp_path / 'flower_user'}", "username: flower")
    (tmp_path / "prometheus.yml").write_text(config)
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_role_is_scraped():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"web", "worker", "relay", "bridge", "scheduler", "log-sink", "flower"}


def test_rules_and_dashboards_only_use_metrics_that_exist():
    declared = declared_metrics()
    for path in [PROMETHEUS / "rules.yml", *DASHBOARDS.glob("*.json")]:
        unknown = referenced_metrics(path.read_text()) - declared
        assert not unknown, f"{path.name} uses metrics nothing exports: {sorted(unknown)}"


def test_dashboards_are_valid_and_use_the_provisioned_datasource():
    datasource = yaml.safe_load((REPO / "metrics/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    dashboards = list(DASHBOARDS.glob("*.json"))
    assert dashboards
    for path in dashboards:
        board = json.loads(path.read_text())
        assert board["uid"]
        assert board["title"]
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == uid, panel["title"]
            assert panel["targets"], panel["title"]
            assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
