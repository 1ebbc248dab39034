"""The embedded engines: start, reuse, refuse a taken port, stop. Each test uses its own data
dir and free ports, never the checkout's .data or the default ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from config.env import read_env_file
from devtools import engines
from devtools.engines import EngineError, ensure, stop, write_env_file


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def environ() -> dict[str, str]:
    """No URL variables (so every engine is embedded), a free port for each engine."""
    return {f"EMBEDDED_{name.upper()}_PORT": str(free_port()) for name in engines.ENGINES}


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    stop(data_dir=tmp_path)  # whatever a failing test left running


def redis_ping(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return bool(client.ping())
    finally:
        client.close()


def test_ensure_starts_reuses_and_stops(data_dir: Path, environ: dict[str, str]) -> None:
    first = ensure(["redis", "kafka"], data_dir=data_dir, environ=environ)
    assert set(first) == {"redis", "kafka"}
    assert all(s.started_by_us for s in first.values())
    assert first["redis"].url == f"redis://127.0.0.1:{environ['EMBEDDED_REDIS_PORT']}/0"
    assert first["kafka"].url == f"127.0.0.1:{environ['EMBEDDED_KAFKA_PORT']}"
    assert redis_ping(first["redis"].url)
    from confluent_kafka.admin import AdminClient

    assert AdminClient({"bootstrap.servers": first["kafka"].url}).list_topics(timeout=5).brokers
    assert (data_dir / "redis" / "redis.pid").exists()
    assert (data_dir / "kafka" / "kafka.log").exists()

    second = ensure(["kafka", "redis"], data_dir=data_dir, environ=environ)
    assert {n: s.pid for n, s in second.items()} == {n: s.pid for n, s in first.items()}
    assert not any(s.started_by_us for s in second.values())

    stop(["redis", "kafka"], data_dir=data_dir)
    for status in first.values():
        assert not psutil.pid_exists(status.pid) or psutil.Process(status.pid).status() == psutil.STATUS_ZOMBIE
    assert not (data_dir / "redis" / "redis.pid").exists()
    assert not redis_ping_quietly(first["redis"].url)


def redis_ping_quietly(url: str) -> bool:
    try:
        return redis_ping(url)
    except Exception:
        return False


def test_engines_with_a_url_are_left_alone(data_dir: Path, environ: dict[str, str]) -> None:
    environ["REDIS_URL"] = "redis://elsewhere:6379/0"
    assert ensure(["redis"], data_dir=data_dir, environ=environ) == {}
    assert not (data_dir / "redis").exists()


def test_a_port_taken_by_something_else_is_a_clear_error(data_dir: Path, environ: dict[str, str]) -> None:
    port = int(environ["EMBEDDED_REDIS_PORT"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(EngineError) as error:
            ensure(["redis"], data_dir=data_dir, environ=environ)
    message = str(error.value)
    assert f"127.0.0.1:{port}" in message
    assert "redis" in message
    assert "REDIS_URL" in message
    assert "EMBEDDED_REDIS_PORT" in message


def test_a_failure_stops_what_the_same_call_started(data_dir: Path, environ: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(environ["EMBEDDED_KAFKA_PORT"])))
        with pytest.raises(EngineError, match="kafka"):
            ensure(["redis", "kafka"], data_dir=data_dir, environ=environ)
    assert not (data_dir / "redis" / "redis.pid").exists()
    assert not redis_ping_quietly(f"redis://127.0.0.1:{environ['EMBEDDED_REDIS_PORT']}/0")


def test_a_stale_pidfile_is_replaced(data_dir: Path, environ: dict[str, str]) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (data_dir / "redis").mkdir()
    (data_dir / "redis" / "redis.pid").write_text(f"{dead.pid}\nredis://127.0.0.1:1/0\n")
    status = ensure(["redis"], data_dir=data_dir, environ=environ)["redis"]
    assert status.started_by_us
    assert status.pid != dead.pid
    assert (data_dir / "redis" / "redis.pid").read_text().split()[0] == str(status.pid)


def test_unknown_engine_names_are_rejected(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="mysql"):
        ensure(["mysql"], data_dir=data_dir, environ={})


def test_env_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "env"
    assert read_env_file(path) == {}
    write_env_file(path, {"DATABASE_URL": "postgres://postgres@127.0.0.1:1/x", "redis": "redis://127.0.0.1:2/0"})
    assert read_env_file(path) == {
        "DATABASE_URL": "postgres://postgres@127.0.0.1:1/x",
        "REDIS_URL": "redis://127.0.0.1:2/0",  # engine names become variable names
    }


def test_postgres(data_dir: Path, environ: dict[str, str]) -> None:
    import psycopg

    status = ensure(["postgres"], data_dir=data_dir, environ=environ)["postgres"]
    port = environ["EMBEDDED_POSTGRES_PORT"]
    assert status.url == f"postgres://postgres@127.0.0.1:{port}/orchestration"
    with psycopg.connect(status.url) as conn:
        assert conn.execute("SELECT current_database(), current_user").fetchone() == ("orchestration", "postgres")
        assert conn.execute("SHOW max_connections").fetchone() == ("200",)
        assert conn.execute("SHOW fsync").fetchone() == ("on",)
        assert conn.execute("SELECT upper('ünï')").fetchone() == ("ÜNÏ",)  # UTF-8, C.UTF-8 ctype
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (1)")
    stop(["postgres"], data_dir=data_dir)
    assert not psutil.pid_exists(status.pid) or psutil.Process(status.pid).status() == psutil.STATUS_ZOMBIE

    again = ensure(["postgres"], data_dir=data_dir, environ=environ)["postgres"]  # no initdb this time
    with psycopg.connect(again.url) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(1,)]


def test_cli_run_exports_urls_and_stops_what_it_started(data_dir: Path, environ: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in engines.ENV_VARS.values()}
    env.update(environ)
    script = "import os, sys; print(os.environ['REDIS_URL']); sys.exit(3)"
    cli = [sys.executable, "-m", "devtools.engines", "run", "--only", "redis", "--data-dir", str(data_dir)]
    command = [*cli, "--", sys.executable, "-c", script]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == f"redis://127.0.0.1:{environ['EMBEDDED_REDIS_PORT']}/0"
    assert "redis      started" in result.stderr
    assert "redis      stopped" in result.stderr
    assert not (data_dir / "redis" / "redis.pid").exists()


def test_cli_up_status_down(data_dir: Path, environ: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in engines.ENV_VARS.values()}
    env.update(environ)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "devtools.engines", *args, "--only", "redis", "--data-dir", str(data_dir)]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)

    assert cli("up").returncode == 0
    assert read_env_file(data_dir / "env") == {"REDIS_URL": f"redis://127.0.0.1:{environ['EMBEDDED_REDIS_PORT']}/0"}
    status = cli("status")
    assert "redis" in status.stdout
    assert "running" in status.stdout
    assert cli("down").returncode == 0
    assert not (data_dir / "env").exists()
    assert "stopped" in cli("status").stdout
