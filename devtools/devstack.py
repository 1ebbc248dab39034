"""The dev stack behind `make run`: engines, migrations and every role, supervised.

1. Starts the embedded engines whose URL is unset (or reuses running ones) and writes their
   URLs to `.data/env`, so `manage.py ...` in the checkout talks to this stack.
2. Applies migrations (PostgreSQL, then the ClickHouse logs table).
3. Runs every role under circus, which restarts a role that dies (within a second or two)
   and prefixes each output line with the role's name.
4. Waits for `/health/ready`, prints the URLs, and stays in the foreground. Ctrl-C stops the
   roles, then the engines this run started.

Roles are declared once, in ROLES; docker-compose.yml runs the same commands.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circus.stream import StdoutStream

from devtools import engines

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


@dataclass(frozen=True)
class Role:
    name: str
    cmd: list[str]
    color: int  # ANSI colour of its prefix
    processes: int = 1


def roles(port: int) -> list[Role]:
    web_workers = os.environ.get("WEB_CONCURRENCY", "3")
    # WORKERS (as in `BRIDGES=2 WORKERS=4 make run`) or WORKER_CONCURRENCY: worker processes.
    worker_concurrency = os.environ.get("WORKERS") or os.environ.get("WORKER_CONCURRENCY", "2")
    queues = os.environ.get("WORKER_QUEUES", "default")
    return [
        Role(
            "web",
            [
                PY, "-m", "gunicorn", "config.wsgi:application", "--config", "python:config.gunicorn",
                "--bind", f"127.0.0.1:{port}", "--workers", web_workers, "--threads", "4",
                "--worker-class", "gthread", "--access-logfile", "-", "--graceful-timeout", "5",
                "--no-control-socket",
            ],
            32,
        ),
        # WORKER_CONCURRENCY solo-pool processes rather than one prefork pool: no IPC between
        # a pool parent and its children per task (about twice the throughput on no-op jobs),
        # and handlers run in each process's main thread, where timeouts can interrupt them.
        Role(
            "worker",
            [
                PY, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--queues", queues,
                "--hostname", "worker$(circus.wid)@%h", "--loglevel", "INFO", "--without-mingle",
                "--without-gossip",
            ],
            33,
            processes=int(worker_concurrency),
        ),
        Role("relay", [PY, "manage.py", "run_relay"], 34),
        # BRIDGES bridges share the jobs topic's partitions (each checks there are enough).
        Role("bridge", [PY, "manage.py", "run_bridge"], 35, processes=int(os.environ.get("BRIDGES", "1"))),
        Role("scheduler", [PY, "manage.py", "run_scheduler"], 31),
        Role("log-sink", [PY, "manage.py", "run_log_sink"], 94),
        # Flower keeps the events of its last --max_tasks tasks in memory: at its default of
        # 100,000 it held about 875 MiB in the soak (docs/reliability.md). 10,000 is the last
        # minute or so at full speed, which is what Flower is for; a job's history is in
        # PostgreSQL (API, dashboard) however old.
        Role(
            "flower",
            [
                PY, "-m", "celery", "-A", "config", "flower", f"--port={flower_port()}", "--address=127.0.0.1",
                f"--enable_events={os.environ.get('CELERY_TASK_EVENTS', 'true')}", "--max_tasks=10000",
            ],
            36,
        ),
    ]  # fmt: skip


def flower_port() -> int:
    return int(os.environ.get("FLOWER_PORT", "5555"))


def flower_credentials() -> str:
    """Flower's basic-auth pair from FLOWER_BASIC_AUTH, else a random one kept in .data/."""
    if os.environ.get("FLOWER_BASIC_AUTH"):
        return os.environ["FLOWER_BASIC_AUTH"]
    path = engines.default_data_dir() / "flower_auth"
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"admin:{secrets.token_urlsafe(16)}")
        path.chmod(0o600)
    return path.read_text().strip()


class RoleStream(StdoutStream):
    """Writes a role's output to the terminal, each line prefixed with the role's name."""

    width = 10

    def __init__(self, role: str = "?", color: int = 37, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prefix = (
            f"\033[{color}m{role:<{self.width}}|\033[0m ".encode()
            if sys.stdout.isatty()
            else f"{role:<{self.width}}| ".encode()
        )

    def __call__(self, data: dict[str, Any]) -> None:
        text = data["data"]
        if isinstance(text, str):
            text = text.encode()
        lines = text.splitlines(keepends=True)
        sys.stdout.buffer.write(b"".join(self.prefix + line for line in lines))
        if not text.endswith(b"\n"):
            sys.stdout.buffer.write(b"\n")
        sys.stdout.buffer.flush()


def say(message: str) -> None:
    print(f"{'stack':<10}| {message}", flush=True)


def start_engines() -> tuple[dict[str, engines.EngineStatus], dict[str, str]]:
    data_dir = engines.default_data_dir()
    wanted = [name for name in engines.ENGINES if not os.environ.get(engines.ENV_VARS[name])]
    statuses = engines.ensure(wanted, data_dir=data_dir)
    urls = {engines.ENV_VARS[name]: s.url for name, s in statuses.items()}
    engines.write_env_file(data_dir / "env", urls)
    for name in engines.ENGINES:
        if name not in statuses:
            say(f"{name:<10} from {engines.ENV_VARS[name]}")
    return statuses, urls


def migrate(env: dict[str, str]) -> None:
    say("applying migrations (PostgreSQL, ClickHouse)")
    for command in ("migrate", "clickhouse_migrate"):
        subprocess.run([PY, "manage.py", command, "--noinput"] if command == "migrate" else [PY, "manage.py", command],
                       cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip


def wait_ready(port: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def announce(port: int) -> None:
    if wait_ready(port):
        base = f"http://127.0.0.1:{port}"
        say(f"ready: {base}/  (API {base}/api/v1/, docs {base}/api/docs/, admin {base}/admin/)")
        say(f"flower: http://127.0.0.1:{flower_port()}/  (basic auth {flower_credentials()})")
        say("no users yet? `.venv/bin/python manage.py createsuperuser`; Ctrl-C stops everything")
    else:
        say(f"web did not become ready on port {port} within 60s; see the web lines above")


def run_roles(port: int, env: dict[str, str]) -> None:
    from circus import get_arbiter

    run_dir = engines.default_data_dir() / "circus"
    run_dir.mkdir(parents=True, exist_ok=True)
    watchers = []
    for role in roles(port):
        stream = {"class": "devtools.devstack.RoleStream", "role": role.name, "color": role.color}
        watchers.append(
            {
                "name": role.name,
                "cmd": role.cmd[0],
                "args": role.cmd[1:],
                "working_dir": str(REPO),
                "env": env,
                "copy_env": False,
                "numprocesses": role.processes,
                "stop_signal": signal.SIGTERM,
                "graceful_timeout": 10,
                "stdout_stream": stream,
                "stderr_stream": stream,
                # A role that dies is restarted, however often; circus' flapping guard would
                # otherwise give up on a role that keeps failing while an engine is down.
                "respawn": True,
                "max_retry": -1,
            }
        )
    arbiter = get_arbiter(
        watchers,
        controller=f"ipc://{run_dir}/control.sock",
        pubsub_endpoint=f"ipc://{run_dir}/pubsub.sock",
        check_delay=1,
        loglevel="WARNING",
    )
    threading.Thread(target=announce, args=(port,), daemon=True).start()
    arbiter.start()  # returns once circus stopped every role (Ctrl-C / SIGTERM)


def fresh_metrics_dir() -> Path:
    """An empty Prometheus multiprocess directory for this run (counters start at zero)."""
    import shutil

    path = engines.default_data_dir() / "prometheus"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    say("starting engines")
    try:
        statuses, urls = start_engines()
    except engines.EngineError as exc:
        say(f"error: {exc}")
        raise SystemExit(1) from exc
    env = {
        **os.environ,
        **urls,
        # Every role writes its metrics here; the web's /metrics shows them all.
        "PROMETHEUS_MULTIPROC_DIR": str(fresh_metrics_dir()),
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "FLOWER_BASIC_AUTH": flower_credentials(),
    }
    started_here = [name for name, s in statuses.items() if s.started_by_us]
    try:
        migrate(env)
        say(f"starting roles: {', '.join(r.name for r in roles(port))}")
        run_roles(port, env)
    except KeyboardInterrupt:
        pass
    finally:
        if started_here:
            say(f"stopping engines started by this run: {', '.join(started_here)}")
            engines.stop(started_here, data_dir=engines.default_data_dir())
            engines.forget_env(engines.default_data_dir() / "env", started_here)
        say("stopped")


if __name__ == "__main__":
    main()
