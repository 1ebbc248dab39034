"""docker-compose.yml and the dev stack must not drift apart: same roles, same variables."""

from __future__ import annotations

from pathlib import Path

import yaml

from orchestration import engines
from orchestration.devstack import roles

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
