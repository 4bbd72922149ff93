"""Granian (RSGI) adapter: translates RSGI to `gateway.http.core` and back, nothing more.

Granian runs one worker process (each worker would load its own copy of every
model). The manifest reaches the worker through the environment, so the worker
validates exactly what the CLI validated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from typing import Any

from gateway.app import CLIENT_CLOSED, Gateway
from gateway.http.core import Request, Response, StreamResponse
from gateway.observability.logs import use_json
from gateway.servers.common import die_with_supervisor, exit_if_port_busy, mark_supervisor, reloader_options
from schemas.manifest import Manifest

log = logging.getLogger("nexa.gateway.servers.granian")

MANIFEST_ENV = "NEXA_MANIFEST_JSON"
RELOADER_ENV = "NEXA_RELOADER_JSON"  # what to re-read and watch (gateway.servers.common.reloader_options)
DRAIN_BYTES = 8 * 1024 * 1024


class RSGIApp:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.gateway.startup(loop)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.gateway.shutdown()

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        request = Request(
            method=scope.method,
            path=scope.path,
            query_string=scope.query_string,
            headers={k.lower(): v for k, v in scope.headers.items()},
            client=scope.client,
            state={"started": time.perf_counter()},  # a refusal's time includes the wait for the body
        )
        try:
            # A client that declares a body and never sends it would hold the connection forever.
            body = await asyncio.wait_for(self._read_body(request.headers, protocol),
                                          self.gateway.manifest.server.body_timeout_s)
        except asyncio.TimeoutError:
            body = 408
        if isinstance(body, int):  # refused before the gateway had the request: logged and counted all the same
            refusal = self.gateway.refuse(request, body)
            if body != CLIENT_CLOSED:
                self._send(protocol, refusal)
            return
        request.body = body
        # A client that leaves before the answer is ready cancels the handler
        # (and so the model's work) instead of letting it run to the end.
        handling = asyncio.ensure_future(self.gateway.respond(request))
        gone = asyncio.ensure_future(protocol.client_disconnect())
        await asyncio.wait([handling, gone], return_when=asyncio.FIRST_COMPLETED)
        if not handling.done():
            handling.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await handling
            return
        response = handling.result()
        if isinstance(response, StreamResponse):
            await self._stream(protocol, response, gone)
        else:
            gone.cancel()
            self._send(protocol, response)

    async def _read_body(self, headers: dict[str, str], protocol: Any) -> bytes | int:
        """Read the body, or the status that refuses it: 413 for anything over the limit, chunked
        bodies included; CLIENT_CLOSED for one shorter than its declared length (Granian ends the
        body when the client leaves: the route must not get a truncated body as if it were whole).

        Past the limit the rest is read and dropped (up to a bound), so the client
        gets its 413 instead of a connection reset while it is still sending."""
        limit = self.gateway.manifest.server.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return 413
        chunks, size = [], 0
        async for chunk in protocol:
            size += len(chunk)
            if size > limit:
                chunks = []
                if size > limit + DRAIN_BYTES:
                    break
                continue
            chunks.append(chunk)
        if size > limit:
            return 413
        return CLIENT_CLOSED if declared.isdigit() and size < int(declared) else b"".join(chunks)

    @staticmethod
    def _send(protocol: Any, response: Response) -> None:
        protocol.response_bytes(response.status, list(response.headers.items()), response.body)

    @staticmethod
    async def _stream(protocol: Any, response: StreamResponse, gone: asyncio.Future) -> None:
        transport = protocol.response_stream(response.status, list(response.headers.items()))

        async def pump() -> None:
            async for chunk in response.chunks:
                await transport.send_bytes(chunk)

        pumping = asyncio.ensure_future(pump())
        try:
            await asyncio.wait([pumping, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, gone):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pumping
            with contextlib.suppress(Exception):
                await response.chunks.aclose()
            if pumping.done() and not pumping.cancelled() and pumping.exception() is not None:
                log.info("stream ended early: %s", pumping.exception(), extra={"event": "stream_aborted"})


def create_app() -> RSGIApp:
    """Granian's factory target: rebuild the gateway from the manifest the CLI validated."""
    from gateway.manifest.load import build
    from gateway.observability.logs import setup_logging

    die_with_supervisor()
    data = json.loads(os.environ[MANIFEST_ENV])
    manifest = build(data, origin="manifest")
    setup_logging(manifest.server.log_level, manifest.server.log_format)
    return RSGIApp(Gateway(manifest, reloader_options=json.loads(os.environ[RELOADER_ENV])))


def serve(manifest: Manifest, *, manifest_path: str | None = None, watch_files: list[str] = (),
          code_reload_paths: list[str] | None = None) -> None:
    """Run Granian in the foreground until SIGINT/SIGTERM."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    options: dict[str, Any] = {}

    class NexaGranian(Granian):
        """SIGHUP re-applies the manifest inside the worker instead of respawning it (and every model)."""

        def signal_handler_reload(self, *args: Any, **kwargs: Any) -> None:
            for worker in list(self.wrks):
                pid = getattr(getattr(worker, "inner", None), "pid", None)
                if pid:
                    os.kill(pid, signal.SIGHUP)

    server = manifest.server
    exit_if_port_busy(server.host, server.port)
    if use_json(server.log_format):
        # Granian's own lines ("Listening at ...") as JSON too, on stderr like ours.
        options["log_dictconfig"] = {
            "formatters": {"generic": {"()": "gateway.observability.logs.JSONFormatter"}},
            "handlers": {"console": {"formatter": "generic", "class": "logging.StreamHandler",
                                     "stream": "ext://sys.stderr"}},
            "loggers": {"_granian": {"handlers": ["console"], "level": "INFO", "propagate": False}},
        }
    mark_supervisor()
    os.environ[MANIFEST_ENV] = manifest.model_dump_json()
    os.environ[RELOADER_ENV] = json.dumps(reloader_options(manifest, manifest_path, watch_files))
    if code_reload_paths:
        options.update(reload=True, reload_paths=code_reload_paths, reload_ignore_worker_failure=True)
    NexaGranian(
        "gateway.servers.granian:create_app",
        address=server.host,
        port=server.port,
        interface=Interfaces.RSGI,
        factory=True,
        workers=1,
        # Granian kills a worker this long after asking it to stop. The worker's own bounds come one after the
        # other: streams (the grace), background responses (about the grace), unloading (the grace) and the
        # prompt cache's write: a kill at one grace cut the later steps short without a word.
        workers_kill_timeout=max(1, int(3 * server.shutdown_grace_s) + 30),
        log_enabled=True,
        log_level=LogLevels(server.log_level),
        **options,
    ).serve()
