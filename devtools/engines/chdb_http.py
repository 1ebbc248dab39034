"""One chDB database behind the part of ClickHouse's HTTP interface that clickhouse-connect uses.

Why this exists: an on-disk chDB path can be opened by one process only (a second one gets
"Error initializing EmbeddedServer"), and chDB has no server mode. In the embedded dev stack
this process owns the path and every other process talks to it with unmodified
clickhouse-connect, the same way production talks to clickhouse-server.

What it answers:
- ``GET /ping`` and ``GET /`` without a query: ``Ok.``
- ``GET|POST /?query=...``: the SQL is the ``query`` parameter, a newline, then the body (the
  body alone when there is no parameter), as in ClickHouse. The output format is the trailing
  ``FORMAT`` clause, else ``default_format``, else TabSeparated. ``param_x`` values are bound
  to ``{x:Type}`` placeholders by chDB; ``database`` selects the database; other parameters
  are settings (transport-only ones are dropped).
- A form body (multipart or URL-encoded), which clickhouse-connect sends when the query and its
  parameters would not fit in the URL: its fields are read like URL parameters.
- ``INSERT ... FORMAT <fmt>`` followed by data (clickhouse-connect's columnar ``insert`` sends
  Native) goes through chDB's streaming insert.
- Request bodies compressed with lz4, zstd, gzip, deflate (``Content-Encoding``). Responses are
  never compressed: HTTP allows ignoring ``Accept-Encoding``, clickhouse-connect handles an
  identity body, and compressing on loopback only costs CPU on both ends.
- Errors: HTTP 500, body ``Code: N. DB::Exception: ...``, header ``X-ClickHouse-Exception-Code``.

Not supported (not needed by the platform): sessions. All clients share one chDB session, so a
``SET`` statement or a temporary table is seen by every client (settings passed as URL
parameters are per request). Also: external data, streaming of large results (each result is
materialized in memory), progress headers, authentication (it listens on 127.0.0.1 only).

Usage: ``python -m devtools.engines.chdb_http --path .data/clickhouse/db --port 58123``
"""

from __future__ import annotations

import argparse
import email.policy
import gzip
import json
import re
import signal
import sys
import threading
import zlib
from collections.abc import Mapping
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import chdb

# Parameters ClickHouse's HTTP handler consumes itself. chDB would reject them as unknown
# settings. client_protocol_version is ignored on purpose: without it chDB's Native output has
# no block-info header, and clickhouse-connect's probe then falls back to protocol 0.
TRANSPORT_PARAMS = frozenset(
    {
        "query", "database", "default_format", "query_id", "session_id", "session_timeout",
        "session_check", "compress", "decompress", "buffer_size", "wait_end_of_query",
        "client_protocol_version", "role", "quota_key", "user", "password",
        "send_progress_in_http_headers", "http_headers_progress_interval_ms",
        "enable_http_compression", "cancel_http_readonly_queries_on_client_close",
    }
)  # fmt: skip
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TRAILING_FORMAT = re.compile(rb"\bFORMAT\s+(\w+)\s*;?\s*\Z", re.IGNORECASE)
# ClickHouse's rule: the data starts after the first newline that follows the format name.
_INSERT_WITH_DATA = re.compile(rb"\s*(INSERT\s+INTO\s[^;]*?)\bFORMAT\s+(\w+)[ \t]*(?:\r?\n)?", re.IGNORECASE)
_NOT_INLINE_DATA = re.compile(rb"\b(?:VALUES|SELECT)\b", re.IGNORECASE)
_ERROR_CODE = re.compile(r"Code: (\d+)\.")
_USE = re.compile(rb"\s*USE\s", re.IGNORECASE)


def form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The fields of a multipart or URL-encoded form body."""
    if content_type.startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(body.decode(), keep_blank_values=True))
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            payload = part.get_payload(decode=True)
            fields[str(name)] = payload.decode() if isinstance(payload, bytes) else str(payload or "")
    return fields


def decompress(body: bytes, encoding: str | None) -> bytes:
    encoding = (encoding or "").strip().lower()
    if not body or encoding in ("", "identity"):
        return body
    if encoding == "lz4":
        import lz4.frame

        # clickhouse-connect compresses every insert block as its own LZ4 frame, and
        # lz4.frame.decompress() would stop after the first one.
        parts = []
        while body:
            frame = lz4.frame.LZ4FrameDecompressor()
            parts.append(frame.decompress(body))
            body = frame.unused_data or b""
        return b"".join(parts)
    if encoding == "zstd":
        try:
            from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+
        except ImportError:
            from backports import zstd  # type: ignore[no-redef]
        return zstd.decompress(body)
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"Unsupported Content-Encoding: {encoding}")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ChdbService:
    """The one chDB connection, and the session state requests have pushed into it."""

    def __init__(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self.conn = chdb.connect(path)
        # One statement at a time: concurrent queries on one chDB connection deadlocked.
        self.lock = threading.Lock()
        self.database: str | None = "default"
        self.settings: dict[str, str] = {}

    def _sync_session(self, database: str | None, settings: Mapping[str, str]) -> None:
        # All clients share chDB's single session, so each request's database and settings are
        # applied, and the previous request's undone. Clients send the same few settings every
        # time, so in the steady state this runs no statement at all.
        database = database or "default"
        if database != self.database:
            self.conn.query(f"USE `{database.replace('`', '``')}`", "TabSeparated")
            self.database = database
        for name in [n for n in self.settings if n not in settings]:
            self.conn.query(f"SET {name} = DEFAULT", "TabSeparated")
            del self.settings[name]
        for name, value in settings.items():
            if self.settings.get(name) != value:
                if not _SETTING_NAME.match(name):
                    raise ValueError(f"Code: 115. DB::Exception: Unknown setting {name!r}. (UNKNOWN_SETTING)")
                self.conn.query(f"SET {name} = {_quote(value)}", "TabSeparated")
                self.settings[name] = value

    def execute(
        self, sql: bytes, params: dict[str, str], database: str | None, settings: Mapping[str, str], default_format: str
    ) -> tuple[bytes, str | None, dict[str, str]]:
        """Run one request; return (body, output format or None if no result set, summary)."""
        insert = _INSERT_WITH_DATA.match(sql, 0, 65536)
        if insert and _NOT_INLINE_DATA.search(insert.group(1)):
            insert = None
        with self.lock:
            self._sync_session(database, settings)
            if insert:
                inserter = self.conn.send_insert(insert.group(1).decode(), insert.group(2).decode())
                try:
                    if len(sql) > insert.end():
                        inserter.append(sql[insert.end() :])
                    done = inserter.finish()
                finally:
                    inserter.cancel()  # a no-op after finish(); aborts the INSERT otherwise
                return b"", None, {"written_rows": str(done.rows_written), "written_bytes": str(done.bytes_written)}
            explicit = _TRAILING_FORMAT.search(sql)
            fmt = explicit.group(1).decode() if explicit else default_format
            with_names = not explicit and fmt in ("TabSeparated", "TSV")
            # chDB has no "this statement has a result set" flag; HTTP reports one with the
            # X-ClickHouse-Format header even for zero rows (clickhouse-connect's command()
            # relies on it). A names line is printed exactly when there is a result set.
            if _USE.match(sql):
                self.database = None  # the session moved; the next request must USE its own again
            result = self.conn.query(sql, "TabSeparatedWithNames" if with_names else fmt, params=params)
            out = result.bytes() or b""
        if with_names:
            has_result = bool(out)
            out = out[out.find(b"\n") + 1 :] if out else b""
        else:
            has_result = bool(out) or explicit is not None
        summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": str(result.rows_written()),
            "written_bytes": str(result.bytes_written()),
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }
        return out, fmt if has_result else None, summary


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clickhouse-connect pools its connections
    disable_nagle_algorithm = True  # TCP_NODELAY: without it a request took ~45 ms, not ~2 ms
    server: Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request would drown the log

    def _read_body(self) -> bytes:
        # clickhouse-connect streams inserts from a generator, which urllib3 sends chunked;
        # http.server does not decode chunked bodies itself.
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            parts.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(parts)

    def _handle(self) -> None:
        url = urlsplit(self.path)
        args = dict(parse_qsl(url.query, keep_blank_values=True))
        body = self._read_body()
        if url.path == "/ping" or (url.path == "/" and "query" not in args and not body):
            return self._reply(200, b"Ok.\n", {})
        if url.path != "/":
            return self._reply(404, b"Not found: only / and /ping are served\n", {})
        try:
            body = decompress(body, self.headers.get("Content-Encoding"))
            content_type = self.headers.get("Content-Type", "")
            if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
                # clickhouse-connect sends the query and its parameters as a form when they
                # would make the URL too long (e.g. a large Array parameter).
                args.update(form_fields(content_type, body))
                body = b""
            query = args.get("query", "").encode()
            sql = query + b"\n" + body if query and body else query or body
            params = {k[6:]: v for k, v in args.items() if k.startswith("param_")}
            settings = {k: v for k, v in args.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
            default_format = args.get("default_format") or "TabSeparated"
            out, fmt, summary = self.server.service.execute(sql, params, args.get("database"), settings, default_format)
        except Exception as ex:  # every failure goes back to the client, never kills the server
            message = str(ex)
            start = message.find("Code: ")
            if start >= 0:
                message = message[start:]
            else:
                message = f"Code: 1001. DB::Exception: {type(ex).__name__}: {message}. (STD_EXCEPTION)"
            match = _ERROR_CODE.match(message)
            code = match.group(1) if match else "1001"
            return self._reply(500, message.encode() + b"\n", {"X-ClickHouse-Exception-Code": code})
        headers = {"X-ClickHouse-Summary": json.dumps(summary), "X-ClickHouse-Query-Id": args.get("query_id", "")}
        if fmt:
            headers["X-ClickHouse-Format"] = fmt
        self._reply(200, out, headers)

    def _reply(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8" if status != 200 else "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many worker processes connect at once at start-up

    def __init__(self, address: tuple[str, int], service: ChdbService) -> None:
        self.service = service
        super().__init__(address, Handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--path", required=True, help="chDB data directory (opened by this process only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=58123)
    args = parser.parse_args(argv)
    # Open chDB before binding: if another process owns the path, fail before answering /ping.
    service = ChdbService(args.path)
    server = Server((args.host, args.port), service)

    def shut_down(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever() to return, so it cannot run on this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    print(f"chdb_http: {args.path} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        with service.lock:  # let the statement in flight finish, then close chDB cleanly
            service.conn.close()
        print("chdb_http: stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
