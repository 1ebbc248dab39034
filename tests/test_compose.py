"""docker-compose.yml and the dev stack must not drift apart: same roles, same variables."""

from __future__ import annotations

from pathlib import Path

import yaml

from devtools import engines
from devtools.devstack import roles

COMPOSE = yaml.safe_load((Path(__file__).resolve().parent.parent / "docker-compose.yml").read_text())


def test_every_dev_role_is_a_compose_service_with_the_same_entry_point():
    services = COMPOSE["services"]
    for role in roles(8000):
        assert role.name in services, f"role {role.name} missing from docker-compose.yml"
        command = " ".join(services[role.name]["command"])
        dev = " ".join(role.cmd[1:])  # without the interpreter path
        key = next(
            part
            for part in ("run_relay", "run_bridge", "run_scheduler", "run_log_sink", "worker", "flower", "config.wsgi")
            if part in dev
        )
        assert key in command, f"{role.name}: compose runs {command!r}, dev stack runs {dev!r}"


def test_every_engine_variable_reaches_every_app_service():
    services = COMPOSE["services"]
    for role in roles(8000):
        env = services[role.name]["environment"]
        for variable in engines.ENV_VARS.values():
            assert variable in env, f"{variable} not set for {role.name}"


def test_every_role_but_the_web_serves_its_own_metrics_and_has_a_health_check():
    services = COMPOSE["services"]
    for role in roles(8000):
        service = services[role.name]
        assert "healthcheck" in service, f"{role.name} has no health check"
        assert "restart" in service, f"{role.name} has no restart policy"
        assert "resources" in service.get("deploy", {}), f"{role.name} has no resource limits"
        if role.name not in ("web", "flower"):
            assert service["environment"]["METRICS_PORT"] == "9100"
            assert "9100/metrics" in " ".join(service["healthcheck"]["test"])
    # Set for the web too: its /metrics then shows the web's metrics only, not every role's zeros.
    assert services["web"]["environment"]["METRICS_PORT"] == "9100"


def test_secrets_the_dev_stack_makes_up_are_required_in_production():
    services = COMPOSE["services"]
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    for service in ("web", "prometheus"):
        assert "METRICS_TOKEN" in services[service]["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" in services["grafana"]["environment"]


def test_prometheus_and_grafana_mount_the_repositorys_config():
    volumes = " ".join(COMPOSE["services"]["prometheus"]["volumes"] + COMPOSE["services"]["grafana"]["volumes"])
    for path in ("metrics/prometheus/prometheus.yml", "metrics/prometheus/rules.yml", "metrics/grafana/provisioning",
                 "metrics/grafana/dashboards"):  # fmt: skip
        assert f"./{path}:" in volumes
        assert (Path(__file__).resolve().parent.parent / path).exists()


def test_every_role_sends_its_traces_to_jaeger():
    services = COMPOSE["services"]
    assert "jaeger" in services
    jaeger = " ".join(f"{p}" for p in services["jaeger"]["ports"])
    assert "16686:16686" in jaeger  # the UI; OTLP/HTTP (4318) stays inside the compose network
    for role in roles(8000):
        env = services[role.name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith("http://jaeger:4318}"), role.name
    assert "{trace_id}" in services["web"]["environment"]["TRACE_UI_URL"]
