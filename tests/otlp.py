"""A real OTLP/HTTP trace receiver for the tests, on 127.0.0.1.

It speaks the protocol the OpenTelemetry Collector's `otlp` receiver speaks over HTTP: `POST
/v1/traces` with a protobuf `ExportTraceServiceRequest` body (optionally gzip), answered with an
`ExportTraceServiceResponse`. The bodies are decoded with `opentelemetry-proto`, the project's own
generated protobuf classes, so what the gateway's exporter sends is checked against the wire format,
not against the SDK's in-memory span objects. (The Collector itself ships as a Go binary that no
package registry here carries.)
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Span:
    """One received span, flattened: ids as hex, attributes as plain Python values."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int
    links: list[tuple[str, str]]  # (trace_id, span_id) of each linked span


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


class Receiver:
    """`with Receiver() as r:` ... `r.endpoint` is the base URL to export to; `r.spans` what arrived."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self.raw: list[bytes] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                    ExportTraceServiceRequest, ExportTraceServiceResponse)

                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or "protobuf" not in self.headers.get("content-type", ""):
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._add(request, body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="otlp-receiver")

    def _add(self, request: Any, body: bytes) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    spans.append(Span(s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.kind,
                                      s.start_time_unix_nano, s.end_time_unix_nano, _attributes(s.attributes),
                                      resource, s.status.code,
                                      [(link.trace_id.hex(), link.span_id.hex()) for link in s.links]))
        with self._lock:
            self.requests += 1
            self.raw.append(body)
            self.spans.extend(spans)

    def __enter__(self) -> "Receiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
