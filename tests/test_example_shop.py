"""examples/shop/, a Django project of its own that uses the platform as README says: in a
fresh virtual environment with only what its requirements install (the platform's wheel,
built from this checkout), its `manage.py check` is clean and its own tests pass. Those run
its task through the platform's real relay, bridge and worker, on the shop's settings."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

SHOP = Path(settings.BASE_DIR) / "examples" / "shop"
OURS = ("config", "jobs", "workflows", "logs", "metrics", "orchestration", "dashboard")

pytestmark = pytest.mark.slow


def run(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=SHOP, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    )
    return done


def unnamespaced(package: Path) -> list[str]:
    """Imports in the installed package that still name one of our packages at the top."""
    found = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [f"{path}:{node.lineno}: {n}" for n in names if n.split(".")[0] in OURS]
    return found


def test_the_example_shop_installs_checks_clean_and_passes_its_own_tests(tmp_path):
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    clean = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV")}
    run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", "requirements.txt"], clean, 900
    )

    db = settings.DATABASES["default"]
    env = {
        **clean,
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/shop",
        "REDIS_URL": settings.REDIS_URL,
        "KAFKA_BOOTSTRAP_SERVERS": settings.KAFKA_BOOTSTRAP_SERVERS,
        "CLICKHOUSE_URL": settings.CLICKHOUSE_URL,
        "LOG_SHIPPING": "false",
        "DATA_DIR": str(tmp_path / "data"),
    }
    imported = run(
        [python, "-c", "import jobs, orchestration_platform; print(jobs.__file__, orchestration_platform.__file__)"],
        env,
        60,
    )
    shops_jobs, platform = imported.stdout.split()
    assert shops_jobs == str(SHOP / "jobs" / "__init__.py")  # the shop's own `jobs`, not ours
    assert not unnamespaced(Path(platform).parent)
    checked = run([python, "manage.py", "check", "--fail-level", "WARNING"], env, 120)
    assert "System check identified no issues" in checked.stdout
    tested = run([python, "manage.py", "test", "--noinput"], env, 600)
    assert "Ran 3 tests" in tested.stderr
    assert "\nOK\n" in tested.stderr
