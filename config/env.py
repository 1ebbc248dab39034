"""Environment for every role: process variables first, then `.data/env`.

`make run` writes the URLs of the embedded engines it started to `.data/env`, so any
`manage.py` command run in the checkout talks to the running dev stack without exporting
anything. A variable set in the process environment always wins.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
# The checkout's .data/, or, installed into another project (no manage.py beside us), the
# .data/ of the directory it runs in: never inside site-packages.
DATA_DIR = Path(os.environ.get("DATA_DIR") or (BASE_DIR if (BASE_DIR / "manage.py").exists() else Path.cwd()) / ".data")
ENV_FILE = DATA_DIR / "env"

env = environ.Env()


def read_env_file(path: Path) -> dict[str, str]:
    """Parse ``VAR=value`` lines (``#`` comments, blank lines, optional quotes). Missing: {}."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    result = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            result[key.strip()] = value
    return result


def load_env_file(path: Path = ENV_FILE) -> None:
    """Fill unset (or empty) variables from `path`; never override what the process has."""
    for key, value in read_env_file(path).items():
        if not os.environ.get(key):
            os.environ[key] = value


def dev_secret_key() -> str:
    """A random per-checkout key kept in `.data/`: no default secret ships in the code."""
    path = DATA_DIR / "secret_key"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()
