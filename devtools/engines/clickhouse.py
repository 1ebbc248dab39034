"""ClickHouse as chDB behind ``chdb_http``: a small server process that owns the on-disk chDB
database (one process per path is all chDB allows) and speaks the part of ClickHouse's HTTP
interface that clickhouse-connect uses, so every process reaches it with an ordinary
``http://`` URL, as in production.
"""

from __future__ import annotations

import http.client
import os
import sys
from pathlib import Path
from typing import Any

from .base import Engine

REPO_ROOT = Path(__file__).resolve().parents[2]


class ClickHouse(Engine):
    name = "clickhouse"
    env_var = "CLICKHOUSE_URL"
    default_port = 58123
    process_marker = "devtools.engines.chdb_http"

    @property
    def url(self) -> str:
        return f"http://default:@127.0.0.1:{self.port}/default"

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.process_marker, "--path", str(self.dir / "db"), "--port", str(self.port)]

    def popen_kwargs(self) -> dict[str, Any]:
        # The server runs with the engine directory as its cwd, so `devtools` must be
        # importable from the repository root.
        path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        return {"env": {**os.environ, "PYTHONPATH": path}}

    def is_ready(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            conn.request("GET", "/ping")
            return conn.getresponse().read().startswith(b"Ok.")
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()
