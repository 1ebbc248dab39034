"""`make chaos` / `python -m devtools.chaos [--faults a,b] [--keep-engines]`.

Starts a private set of embedded engines (their own data directory and ports, so the dev
stack is untouched and an engine can be restarted as a fault), migrates, then runs
`manage.py chaos` against them and exits with its exit code (non-zero when any fault broke
an invariant). No Django here: settings must only ever see the private engines' URLs.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from devtools import engines

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.chaos")
    parser.add_argument("--faults", default="all", help="comma-separated fault names, or all")
    parser.add_argument("--rate", type=float, default=15.0, help="jobs per second while a fault runs")
    parser.add_argument("--data-dir", help="engines' data directory (default: a temporary one)")
    args = parser.parse_args()

    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="chaos-"))
    ports = {f"EMBEDDED_{name.upper()}_PORT": str(free_port()) for name in engines.ENGINES}
    environ = {k: v for k, v in os.environ.items() if k not in engines.ENV_VARS.values()} | ports
    print(f"chaos: engines in {data_dir} on ports {', '.join(ports.values())}", flush=True)
    statuses = engines.ensure(engines.ENGINES, data_dir=data_dir, environ=environ)
    env = environ | engines.env_vars(statuses) | {"DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    # SIGTERM (a CI timeout, kill) cleans up like Ctrl-C: the harness stops its roles, we stop
    # the engines. Nothing is left running against a deleted data directory.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    inner: subprocess.Popen[bytes] | None = None
    try:
        for command in (["migrate", "--noinput"], ["clickhouse_migrate"]):
            subprocess.run([sys.executable, "manage.py", *command], cwd=REPO, env=env, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
        inner = subprocess.Popen(
            [sys.executable, "manage.py", "chaos", "--faults", args.faults, "--rate", str(args.rate)], cwd=REPO, env=env
        )
        return inner.wait()
    finally:
        if inner is not None and inner.poll() is None:
            inner.terminate()
            try:
                inner.wait(60)
            except subprocess.TimeoutExpired:
                inner.kill()
        os.environ.update(ports)  # stop() finds the engines by their data directory and ports
        engines.stop(engines.ENGINES, data_dir=data_dir)


if __name__ == "__main__":
    sys.exit(main())
