"""The packages' import rules (pyproject.toml, [tool.importlinter]) hold: import-linter reads
every module, function-level imports included, and follows indirect chains."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_import_contract_is_kept():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "0 broken" in result.stdout


# One import per rule, each of the kind the rules were written against (issue 17): the
# contracts must report every one of them broken.
VIOLATIONS = {
    "jobs/serializers.py": "from orchestration import breaker",
    "jobs/transitions.py": "from workflows import advance",
    "metrics/heartbeat.py": "from orchestration import celery_queues",
    "logs/shipping.py": "from jobs import models",
    "logs/apis.py": "from orchestration import breaker",
    "logs/search.py": "from jobs import selectors",
    "orchestration/relay.py": "from devtools import chaos",
    "orchestration/worker/monitor.py": "from orchestration.worker import batch",
    "config/tracing.py": "from logs import context",
}


def test_the_contracts_catch_the_violations_they_were_written_for(tmp_path):
    copy = tmp_path / "repo"
    packages = ["config", "jobs", "workflows", "logs", "metrics", "orchestration", "dashboard", "devtools"]
    for name in packages:
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", "migrations"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    for path, line in VIOLATIONS.items():
        with open(copy / path, "a") as f:
            f.write(f"\n{line}  # noqa\n")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=copy, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(copy)},
    )  # fmt: skip
    assert result.returncode != 0
    broken = result.stdout.count(" BROKEN")
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert broken == len(contracts), result.stdout[-3000:]
