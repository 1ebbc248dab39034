"""A small OTLP/HTTP trace receiver: what the roles' exporters send, decoded and kept here.

- Tests point the real roles (subprocesses) at it with OTEL_EXPORTER_OTLP_ENDPOINT and read
  back their spans: an in-memory exporter cannot see another process.
- `python -m devtools.otlp_sink [--port 4318]` counts spans per service every few seconds
  (keeping none), a sink for measuring the pipeline with tracing on:
  `OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 make run`, then `make bench`.

It answers POST /v1/traces with protobuf bodies (gzip or not), as the OTLP/HTTP exporter
sends them, and GET /counts with the spans received per service (JSON); anything else gets
404.
"""

from __future__ import annotations

import argparse
import gzip
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    service: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # empty for a root span
    kind: int  # the OTLP enum: 1 internal, 2 server, 3 client, 4 producer, 5 consumer
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()  # (trace id, span id) of each link
    error: bool = False
    trace_state: str = ""  # the W3C tracestate it carried


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind in ("string_value", "int_value", "bool_value", "double_value") else None


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=s.name, service=service, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(), kind=s.kind, start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano, attributes={a.key: _value(a.value) for a in s.attributes},
                        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links),
                        error=s.status.code == 2, trace_state=s.trace_state,
                    )
                )  # fmt: skip
    return spans


class OtlpReceiver:
    """An OTLP/HTTP receiver on a thread; `endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT takes."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, keep: bool = True) -> None:
        self.keep = keep
        self.spans: list[ReceivedSpan] = []
        self.counts: Counter[str] = Counter()  # spans per service
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/traces":
                    self.send_error(404)
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver._add(decode(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def do_GET(self) -> None:
                """GET /counts: the spans received per service, as JSON (for a benchmark that
                runs this sink as a process of its own)."""
                if self.path.rstrip("/") != "/counts":
                    self.send_error(404)
                    return
                with receiver._lock:
                    body = json.dumps(dict(receiver.counts)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # one line per export is noise
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="otlp-sink", daemon=True)

    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self.counts.update(s.service for s in spans)
            if self.keep:
                self.spans.extend(spans)

    def received(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Count the spans OTLP/HTTP exporters send here.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between reports")
    args = parser.parse_args()
    receiver = OtlpReceiver(args.host, args.port, keep=False).start()
    print(f"OTLP/HTTP sink on {receiver.endpoint} (OTEL_EXPORTER_OTLP_ENDPOINT={receiver.endpoint}); Ctrl-C stops")
    last: Counter[str] = Counter()
    try:
        while True:
            time.sleep(args.every)
            now = Counter(receiver.counts)
            rates = {s: (n - last[s]) / args.every for s, n in now.items()}
            last = now
            print(" ".join(f"{s}={n} ({rates[s]:.0f}/s)" for s, n in sorted(now.items())) or "no spans yet", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        receiver.close()


if __name__ == "__main__":
    main()
