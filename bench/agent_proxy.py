"""A recording reverse proxy between a coding agent and the gateway (for bench/agents.py).

The gateway's log says what each request cost (tokens, cached tokens, timings) but not what the agent
sent; to see why a prompt missed the cache (a changed system prompt, other tools, a side call) the
bodies are needed. Each request gets an `X-Request-Id` of its own (`agent-0001`, ...) that the gateway's
request and generation log lines carry, and its body, status and answer (the SSE stream as it came) are
written to `DIR/0001.json`. Streams pass through chunk by chunk, so the agent sees the gateway's timing.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "accept-encoding",
       "content-encoding"}


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, folder: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.folder = folder
        self.counter = itertools.count(1)
        self.lock = threading.Lock()
        self.client = httpx.Client(timeout=httpx.Timeout(1800, connect=10))
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.client.close()

    def records(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.folder.glob("*.json"))]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def log_message(self, *args) -> None:  # the gateway logs every request already
        pass

    def _forward(self) -> None:
        with self.server.lock:
            number = next(self.server.counter)
        request_id = f"agent-{number:04d}"
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP | {"x-request-id"}}
        headers["x-request-id"] = request_id
        started = time.time()
        record: dict = {"id": request_id, "method": self.command, "path": self.path, "started": started}
        try:
            record["body"] = json.loads(body) if body else None
        except ValueError:
            record["body"] = body.decode("utf-8", "replace")
        answer = bytearray()
        try:
            with self.server.client.stream(self.command, self.server.upstream + self.path, headers=headers,
                                           content=body) as upstream:
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP:
                        self.send_header(key, value)
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                record["status"] = upstream.status_code
                for chunk in upstream.iter_raw():
                    answer += chunk
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
        except (httpx.HTTPError, OSError) as exc:
            record["error"] = repr(exc)
            self.close_connection = True
        record["seconds"] = round(time.time() - started, 3)
        record["answer"] = answer.decode("utf-8", "replace")
        (self.server.folder / f"{number:04d}.json").write_text(json.dumps(record, ensure_ascii=False, indent=1))

    do_GET = do_POST = do_PUT = do_DELETE = _forward
