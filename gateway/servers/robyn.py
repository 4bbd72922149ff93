"""Robyn adapter: translates Robyn's request into `gateway.http.core` and back.

Robyn 0.88 runs its own actix-web server and calls Python handlers on one
asyncio (uvloop) loop in the main thread. It gets several things wrong for a
model gateway; each is worked around here (measured, see README "Servers"):

- `import robyn` parses `sys.argv` (and would take `--dev`, `--processes`, ...
  from nexa's own command line): it is imported with a bare `sys.argv`.
- It reads every body whole and has no size limit (`ROBYN_MAX_PAYLOAD_SIZE` is
  ignored): `server.max_body_bytes` is enforced on the declared length and on
  what arrived, before the gateway sees the body (413 in the OpenAI envelope).
  Memory is not protected: Robyn has buffered the body by then.
- It parses multipart bodies itself and drops the raw body, every part's
  content type and the field name of every file (`request.files` is keyed by
  file name): the adapter rebuilds a multipart body from the text fields and
  the files, naming each file part `file` (the only upload field of the API).
- Query values reach Python still percent-encoded: the adapter rebuilds the
  raw query string, and `Request.query` decodes it like Granian's.
- SIGTERM makes actix stop accepting (new connections then wait in the backlog
  until the process exits), but the process never exits and the shutdown
  handler never runs: the adapter handles SIGTERM itself, waits for in-flight
  requests (streams included), then stops the loop. SIGINT is a forced stop in
  actix that cuts streams: the adapter takes it back and answers it with SIGTERM.
- A busy port makes Robyn prompt on stdin: the port is checked first.
- A client that leaves a stream is noticed only when Robyn drops the iterator,
  and pyo3 defers that drop until some thread next enters Robyn's native code:
  while streams are open a 100 ms tick enters it, so the stream's `chunks` are
  closed (and generation stops) within about 0.1 s. A client that leaves before
  a non-streamed answer is ready cannot be detected: that request runs to the
  end (bounded by the model's `timeout_s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import mimetypes
import os
import signal
import sys
import threading
import uuid
from typing import Any, AsyncIterator
from urllib.parse import unquote

from gateway.app import Gateway
from gateway.http.core import Request, Response, StreamResponse
from gateway.http.errors import error_response
from gateway.servers.common import busy_port_message, exit_if_port_busy, reloader_options
from schemas.manifest import Manifest

log = logging.getLogger("nexa.gateway.servers.robyn")

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
# How often, while streams are open, native code is entered so that pyo3 runs the
# drops it deferred (a dropped stream iterator is how a disconnect shows).
DROP_TICK_S = 0.1
# After the last in-flight request finished: time for actix to write its last bytes.
SETTLE_S = 0.25
FILE_FIELD = "file"
ROBYN_STREAM_HEADERS = {"cache-control", "x-accel-buffering"}


def import_robyn() -> tuple[Any, Any]:
    """`import robyn` parses sys.argv at import time; give it nothing to parse.

    Returns the module and the `Config` for the app."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "nexa"]
    try:
        import robyn
        from robyn.argument_parser import Config

        config = Config()
    except ImportError:
        sys.stderr.write("nexa: --server robyn needs the robyn package: pip install 'nexa-gateway[robyn]'\n")
        raise SystemExit(1) from None
    finally:
        sys.argv = saved
    config.disable_openapi = True  # no /docs or /openapi.json beside the gateway's routes
    config.log_level = "WARN"  # Robyn's own chatter; the gateway logs requests itself
    config.processes = 1  # each process would load its own copy of every model
    config.workers = 1
    return robyn, config


class RobynAdapter:
    """One catch-all async route per method hands every request to `Gateway.respond`;
    the adapter also owns the lifecycle Robyn gets wrong (start-up, signals, drain)."""

    def __init__(self, gateway: Gateway, robyn: Any, config: Any):
        self.gateway = gateway
        self.robyn = robyn
        self.config = config
        self.loop: asyncio.AbstractEventLoop | None = None
        self.inflight = 0  # requests not answered yet, open streams included
        self.streams = 0
        self.draining = False
        self._ticker: asyncio.Task | None = None
        self._drainer: asyncio.Task | None = None
        self._sigint_taken = False
        self._closing: set[asyncio.Task] = set()

    # -- app -------------------------------------------------------------------

    def build(self) -> Any:
        app = self.robyn.Robyn(__file__, config=self.config)
        for method in METHODS:
            # "/*path" does not match "/" itself.
            app.add_route(method, "/", self.respond)
            app.add_route(method, "/*path", self.respond)
        app.startup_handler(self.startup)
        return app

    async def startup(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.gateway.startup(self.loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._on_signal, sig)

    def _take_sigint(self) -> None:
        """actix, started after our startup handler, makes SIGINT a forced stop that cuts every
        stream. By the first request it is running: take SIGINT back, and answer it with a
        SIGTERM, which actix (and then `_on_signal`) handle gracefully."""
        self._sigint_taken = True
        self.loop.add_signal_handler(signal.SIGINT, os.kill, os.getpid(), signal.SIGTERM)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.draining:
            log.warning("second %s: stopping without waiting", sig.name, extra={"event": "shutdown_forced"})
            self._stop_loop()
            return
        self.draining = True
        log.info("%s: finishing %d in-flight request(s)", sig.name, self.inflight,
                 extra={"event": "draining", "inflight": self.inflight})
        self._drainer = self.loop.create_task(self._drain())  # keep a reference: tasks are weakly held

    async def _drain(self) -> None:
        deadline = self.loop.time() + self.gateway.manifest.server.shutdown_grace_s
        while self.inflight > 0 and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.inflight:
            log.warning("shutdown grace over; %d request(s) cut off", self.inflight, extra={"event": "shutdown_forced"})
        if self.gateway.reloader is not None:
            # While the loop still runs, so the file watcher's task (and its worker thread) can end.
            self.gateway.reloader.stop()
        await asyncio.sleep(SETTLE_S)
        self._stop_loop()

    def _stop_loop(self, times: int = 2) -> None:
        """Robyn runs the loop twice in a row (inside `Server.start`, then again in
        `spawn_process`): stop the first run, and the second as soon as it starts."""
        self.loop.stop()
        if times > 1:
            self.loop.call_soon(self._stop_loop, times - 1)

    # -- requests --------------------------------------------------------------

    async def respond(self, request: Any) -> Any:
        if self.inflight == 0 or not self._sigint_taken:
            # actix installs its own SIGINT handler from another thread at a moment we cannot
            # observe, so take SIGINT back whenever the server goes from idle to busy (a syscall).
            self._take_sigint()
        self.inflight += 1
        streamed = False
        try:
            translated = self.translate(request)
            if isinstance(translated, Response):
                return self._response(translated)
            response = await self.gateway.respond(translated)
            if isinstance(response, StreamResponse):
                answer = self._stream(response)
                streamed = True  # from here on the stream's end releases it
                return answer
            return self._response(response)
        except Exception:  # noqa: BLE001 - Robyn would answer a bare text/plain 500
            log.exception("robyn adapter failed on %s %s", request.method, request.url.path,
                          extra={"event": "error"})
            return self._response(error_response(RuntimeError(), None, "Internal server error; see the gateway log."))
        finally:
            if not streamed:
                self.inflight -= 1

    def translate(self, request: Any) -> Request | Response:
        """Robyn's request -> gateway.http.core.Request, or the 413 answer (logged and counted by the gateway)."""
        limit = self.gateway.manifest.server.max_body_bytes
        translated = Request(
            method=request.method,
            path=unquote(request.url.path),  # Robyn leaves the path percent-encoded; Granian decodes it
            query_string=query_string(request.query_params),
            headers={k.lower(): v for k, v in request.headers.to_dict().items()},
            client=request.ip_addr or "",
        )
        headers = translated.headers
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return self.gateway.refuse(translated, 413)
        body = request.body
        if isinstance(body, str):  # Robyn hands over UTF-8 bodies decoded
            body = body.encode("utf-8")
        if len(body) > limit:  # chunked bodies have no declared length
            return self.gateway.refuse(translated, 413)
        if "multipart/form-data" in headers.get("content-type", ""):  # Robyn's own test, verbatim
            body, headers["content-type"] = rebuild_multipart(request.form_data, request.files)
            headers["content-length"] = str(len(body))
            if len(body) > limit:
                return self.gateway.refuse(translated, 413)
        translated.body = body
        return translated

    def _response(self, response: Response) -> Any:
        return self.robyn.Response(status_code=response.status, headers=dict(response.headers),
                                   description=response.body)

    def _stream(self, response: StreamResponse) -> Any:
        self.streams += 1
        if self._ticker is None or self._ticker.done():
            self._ticker = self.loop.create_task(self._tick())
        bridge = StreamBridge(response.chunks, self.loop, self._stream_ended)
        # Robyn sets its own (stricter) caching and proxy-buffering headers on every stream.
        kept = {k: v for k, v in response.headers.items() if k.lower() not in ROBYN_STREAM_HEADERS}
        headers = self.robyn.Headers(kept)
        # media_type "text/event-stream" would make Robyn set a second Content-Type.
        return self.robyn.StreamingResponse(content=bridge, status_code=response.status, headers=headers,
                                            media_type="")

    def _stream_ended(self, chunks: AsyncIterator[bytes]) -> None:
        """On the loop, once per stream: finished, failed, or dropped by Robyn (client gone)."""
        self.streams -= 1
        self.inflight -= 1
        closing = self.loop.create_task(_aclose(chunks))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _tick(self) -> None:
        """Enter native code now and then so that pyo3 runs the drops it deferred."""
        while self.streams > 0:
            await asyncio.sleep(DROP_TICK_S)
            self.robyn.Headers({})


class StreamBridge:
    """The sync iterator Robyn pulls a streamed body from, on one of its own threads.

    Each pull runs one step of the gateway's async iterator on the gateway's loop.
    Robyn stops pulling when the client goes and drops this object; `__del__`
    then closes `chunks`, which cancels the generation.
    """

    def __init__(self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop, ended):
        self._chunks = chunks
        self._loop = loop
        self._ended = ended
        self._lock = threading.Lock()
        self._finished = False

    def __iter__(self) -> "StreamBridge":
        return self

    def __next__(self) -> bytes:
        if self._finished:
            raise StopIteration
        if self._loop_thread():
            # Never block the loop waiting for itself.
            raise RuntimeError("Robyn pulled a stream on the event loop's thread")
        step = asyncio.run_coroutine_threadsafe(self._chunks.__anext__(), self._loop)
        try:
            return step.result()
        except StopAsyncIteration:
            self._finish()
            raise StopIteration from None
        except Exception as exc:  # noqa: BLE001 - the stream ends; the client sees it cut short
            log.info("stream ended early: %s", exc, extra={"event": "stream_aborted"})
            self._finish()
            raise StopIteration from None

    def _loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _finish(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        with contextlib.suppress(RuntimeError):  # the loop is already closed at exit
            self._loop.call_soon_threadsafe(self._ended, self._chunks)

    def __del__(self) -> None:
        self._finish()


async def _aclose(chunks: AsyncIterator[bytes]) -> None:
    with contextlib.suppress(Exception):
        await chunks.aclose()


def query_string(params: Any) -> str:
    """Robyn splits the query on & and = but leaves every value percent-encoded:
    join the raw pairs again and let `Request.query` decode them."""
    return "&".join(f"{key}={value}" for key, value in params.multi_items())


def rebuild_multipart(form_data: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    """A multipart body from what Robyn kept of one: text fields by name, files by file name.

    Robyn drops file parts' field names and content types (and keeps one value per
    text field); files become parts of the `file` field, with the content type
    guessed from the file name.
    """
    boundary = "nexa-" + uuid.uuid4().hex
    out: list[bytes] = []
    for name, value in form_data.items():
        out.append(_part_head(boundary, f'form-data; name="{_quote(name)}"', None))
        out.append(value.encode("utf-8") + b"\r\n")
    for filename, data in files.items():
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        disposition = f'form-data; name="{FILE_FIELD}"; filename="{_quote(filename)}"'
        out.append(_part_head(boundary, disposition, content_type))
        out.append(bytes(data) + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def _part_head(boundary: str, disposition: str, content_type: str | None) -> bytes:
    head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return (head + "\r\n").encode("utf-8")


def _quote(value: str) -> str:
    """As browsers do: no raw quote or line break inside a quoted header parameter."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


# -- serving -------------------------------------------------------------------------


def run(manifest: Manifest, options: dict[str, Any]) -> None:
    """Serve in this process until SIGTERM/SIGINT; returns once the models are unloaded."""
    server = manifest.server
    for name in ("ROBYN_HOST", "ROBYN_PORT"):  # the manifest says where to listen
        os.environ.pop(name, None)
    robyn, config = import_robyn()
    gateway = Gateway(manifest, reloader_options=options)
    adapter = RobynAdapter(gateway, robyn, config)
    app = adapter.build()
    log.info("Robyn %s listening at http://%s:%s", robyn.__version__, server.host, server.port,
             extra={"event": "listening", "server": "robyn", "host": server.host, "port": server.port})
    try:
        app.start(host=server.host, port=server.port, _check_port=False)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE and "already in use" not in str(exc):
            raise
        sys.stderr.write(busy_port_message(server.host, server.port) + "\n")  # taken since the check
        raise SystemExit(1) from None
    finally:
        gateway.shutdown()
    log.info("stopped", extra={"event": "stopped", "server": "robyn"})


def _run_child(manifest_json: str, options: dict[str, Any]) -> None:
    """The process watchfiles restarts on code changes (`--reload`)."""
    from gateway.manifest.load import build
    from gateway.observability.logs import setup_logging

    manifest = build(json.loads(manifest_json), origin="manifest")
    setup_logging(manifest.server.log_level, manifest.server.log_format)
    run(manifest, options)


def serve(manifest: Manifest, *, manifest_path: str | None = None, watch_files: list[str] = (),
          code_reload_paths: list[str] | None = None) -> None:
    """Run Robyn in the foreground until SIGINT/SIGTERM."""
    server = manifest.server
    exit_if_port_busy(server.host, server.port)
    options = reloader_options(manifest, manifest_path, watch_files)
    if not code_reload_paths:
        run(manifest, options)
        return
    import watchfiles

    log.info("restarting on code changes in %s", ", ".join(code_reload_paths), extra={"event": "code_reload"})
    watchfiles.run_process(*code_reload_paths, target=_run_child, args=(manifest.model_dump_json(), options),
                           target_type="function", sigint_timeout=int(server.shutdown_grace_s) + 5)
