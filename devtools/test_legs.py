"""`make test`: the suite on Django 5.2 (this environment), then the Django Tasks backend's
own tests (`tests/tasks`) on Django 6's built-in `django.tasks`, one leg per release:

    leg         Python   Django   requirements
    django-6.0  3.12     6.0.x    requirements/django60.txt + base.txt without Django and django-tasks
    django-6.1  3.13     6.1.x    requirements/django61.txt + the same

Each leg has a virtual environment of its own (.venv-django60, ...), made on first use and
again when its requirements change. A machine without the leg's Python skips the leg and
says so; the run still passes. Run in the engines' environment (`devtools.engines run`), so
every leg talks to the same real PostgreSQL, Redis, Kafka and ClickHouse.

    python -m devtools.test_legs [pytest args]     the suite, then every leg
    TEST_LEGS=django-6.1 ...                       only these legs (empty: none)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
# What the backend's tests need of requirements/dev.txt (no engines, linters or peers).
TEST_TOOLS = ("pytest", "pytest-django", "pytest-timeout", "hypothesis", "factory-boy", "requests")
# Pinned for Django 5.2 in base.txt; each leg brings its own.
REPLACED = ("django==", "django-tasks==")


@dataclass(frozen=True)
class Leg:
    name: str
    python: str  # the interpreter's name on PATH, or under pyenv
    requirements: str  # in requirements/
    tests: tuple[str, ...] = ("tests/tasks",)

    @property
    def venv(self) -> Path:
        return ROOT / f".venv-{self.name.replace('.', '').replace('-', '')}"


LEGS = (Leg("django-6.0", "python3.12", "django60.txt"), Leg("django-6.1", "python3.13", "django61.txt"))


def say(message: str) -> None:
    print(f"[test legs] {message}", flush=True)


def find_python(name: str) -> str | None:
    """An interpreter of that version that runs: on PATH (a pyenv shim may be there and not
    run), else the newest pyenv one."""
    version = name.removeprefix("python")
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(name), *reversed(sorted(pyenv.glob(f"{version}.*/bin/{name}")))]
    for candidate in filter(None, candidates):
        check = subprocess.run([str(candidate), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)  # fmt: skip
        if check.returncode == 0 and check.stdout.strip() == version:
            return str(candidate)
    return None


def leg_requirements(leg: Leg) -> tuple[list[str], list[str]]:
    """(pins installed with their dependencies, pins installed without: see the leg's file)."""
    pins = [
        line.split("#")[0].strip()
        for line in (REQUIREMENTS / "base.txt").read_text().splitlines()
        if line.split("#")[0].strip() and not line.lower().startswith(REPLACED)
    ]
    tools = [
        line.split("#")[0].strip()
        for line in (REQUIREMENTS / "dev.txt").read_text().splitlines()
        if line.split("==")[0].strip().lower() in TEST_TOOLS
    ]
    own: list[str] = []
    no_deps: list[str] = []
    for line in (REQUIREMENTS / leg.requirements).read_text().splitlines():
        pin, _, comment = line.partition("#")
        if pin.strip():
            (no_deps if comment.strip().startswith("no-deps") else own).append(pin.strip())
    names = {p.split("==")[0].lower() for p in own + no_deps}
    return [p for p in pins if p.split("==")[0].split("[")[0].lower() not in names] + tools + own, no_deps


def ensure_venv(leg: Leg, python: str) -> Path:
    with_deps, no_deps = leg_requirements(leg)
    digest = hashlib.sha256("\n".join([python, *with_deps, "--", *no_deps]).encode()).hexdigest()[:12]
    stamp = leg.venv / f".installed-{digest}"
    if stamp.exists():
        return leg.venv / "bin" / "python"
    say(f"{leg.name}: making {leg.venv.name} with {python} (once, and when requirements change)")
    shutil.rmtree(leg.venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(leg.venv)], check=True)
    pip = [str(leg.venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *with_deps], check=True)
    if no_deps:
        subprocess.run([*pip, "--no-deps", *no_deps], check=True)
    stamp.touch()
    return leg.venv / "bin" / "python"


def run_leg(leg: Leg) -> int | None:
    """The leg's exit status, or None when it was skipped."""
    python = find_python(leg.python)
    if python is None:
        say(f"SKIPPED {leg.name}: {leg.python} is not installed on this machine (Django 6 needs Python 3.12+)")
        return None
    started = time.monotonic()
    interpreter = ensure_venv(leg, python)
    say(f"{leg.name}: {' '.join(leg.tests)} on {interpreter}")
    status = subprocess.run(
        [str(interpreter), "-m", "pytest", "-p", "no:cacheprovider", *leg.tests], cwd=ROOT
    ).returncode
    verdict = "passed" if status == 0 else f"FAILED (pytest exit {status})"
    say(f"{leg.name}: {verdict} in {time.monotonic() - started:.0f} s")
    return status


def main(argv: list[str]) -> int:
    status = subprocess.run([sys.executable, "-m", "pytest", *argv], cwd=ROOT).returncode
    wanted = os.environ.get("TEST_LEGS")
    legs = [leg for leg in LEGS if wanted is None or leg.name in wanted.split(",")]
    results = {leg.name: run_leg(leg) for leg in legs}
    for name, result in results.items():
        say(f"{name}: {'skipped' if result is None else 'passed' if result == 0 else 'FAILED'}")
    failed = [result for result in results.values() if result not in (None, 0)]
    return status or (failed[0] if failed else 0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
