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

from orchestration.engines import read_env_file

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DATA_DIR") or BASE_DIR / ".data")
ENV_FILE = DATA_DIR / "env"

env = environ.Env()


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
