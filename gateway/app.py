"""Manifest -> model pool + route table, and the one place errors become HTTP answers."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import time
import uuid

from pydantic import ValidationError

from backends.errors import NexaError
from gateway.api import table as routes
from gateway.api.openai import background
from gateway.http.core import HTTPError, Request, Response, Router, StreamResponse
from gateway.http.errors import error_response
from gateway.http.security import Authenticator, check_model, cors_headers, current_key, load_keys
from gateway.manifest.load import manifest_hash
from gateway.manifest.plan import Plan
from gateway.models import gauges
from gateway.models.handle import ModelHandle
from gateway.models.pool import ModelPool
from gateway.observability import metrics
from gateway.observability.tracing import CLIENT_LEFT, TIMELINE, Tracing
from gateway.state.urls import open_store
from schemas.manifest import Manifest

log = logging.getLogger("nexa.gateway.app")

# The model a request picked, for its log line and metrics labels.
current_model: contextvars.ContextVar[str] = contextvars.ContextVar("nexa_model", default="")

# Capability -> a phrase for error messages.
CAPABILITY_NAMES = {
    "complete": "text completion",
    "chat": "chat completion",
    "embed": "embeddings",
    "rerank": "reranking",
    "speech": "speech synthesis",
    "transcribe": "speech transcription",
    "translate": "speech translation",
    "txt2img": "image generation",
    "img2img": "image-to-image generation",
}


# nginx's "client closed request": the status logged and counted for a request whose client left before
# its answer was sent (none was: the client never sees it).
CLIENT_CLOSED = 499

# A client's own X-Request-Id is echoed and logged only when it is short and plain.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def request_id_of(request: Request) -> str:
    """The client's X-Request-Id (to trace a request through proxies), or a new one when it is
    missing, longer than 128 characters or holds anything but letters, digits and `._:/+=-`."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class Gateway:
    """Everything a server adapter needs: `startup`, `respond`, `shutdown`."""

    def __init__(self, manifest: Manifest, reloader_options: dict | None = None):
        self.manifest = manifest
        self.manifest_hash = manifest_hash(manifest)
        self.started = int(time.time())
        self.pool: ModelPool | None = None
        self.router = Router()
        self.table = routes.TABLE
        self.auth = Authenticator(load_keys(manifest.server))
        self.reloader = None
        self._reloader_options = reloader_options
        self._unserved: dict[str, str] = {}
        # Stored responses and conversations (gateway/api/openai/stored.py): connected at startup,
        # and a store that cannot be reached then is tried again by every request that needs it.
        self.state = open_store(manifest.server.state)
        self.tracing: Tracing | None = None  # OpenTelemetry spans, when server.tracing or OTEL_* asks for them
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -----------------------------------------------------------

    def startup(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._state_started = asyncio.run_coroutine_threadsafe(self._start_state(), loop)
        self.tracing = Tracing.configure(self.manifest.server.tracing)
        self.pool = ModelPool(self.manifest.models, loop, self.manifest.server)
        self._wire_routes()
        self.pool.preload()
        gauges.observe_pool(self.pool)
        if self._reloader_options is not None:
            from gateway.manifest.reload import Reloader

            self.reloader = Reloader(self, **self._reloader_options)
            self.reloader.start(loop)
        log.info("gateway ready to accept requests", extra={"event": "startup", "models": [h.name for h in self.pool],
                                                             "manifest_hash": self.manifest_hash})

    async def _start_state(self) -> None:
        """Open the state store without holding up the start: stateless requests never need it."""
        try:
            await self.state.start()
            log.info("state store %s ready", self.state.url, extra={"event": "state_ready", "store": self.state.url})
        except NexaError as exc:
            log.error("state store %s unavailable: %s", self.state.url, exc.message,
                      extra={"event": "state_unavailable", "store": self.state.url})

    def shutdown(self) -> None:
        if self.reloader is not None:
            self.reloader.stop()
        loop = self._loop
        if loop is not None and not loop.is_running() and not loop.is_closed():
            # Both servers call this once their loop has stopped serving (the streams drained): background
            # responses get half the grace to finish, then end `failed` in the store, never left in progress.
            loop.run_until_complete(background.drain(self.manifest.server.shutdown_grace_s))
        if self.pool is not None:
            self.pool.close(timeout=self.manifest.server.shutdown_grace_s)
            log.info("models unloaded", extra={"event": "shutdown"})
        if self.tracing is not None:
            self.tracing.shutdown()  # exports the spans still buffered

    def _wire_routes(self) -> None:
        """Wire only the routes some declared model can serve."""
        offered = set().union(*(h.capabilities for h in self.pool)) if self.pool.handles else set()
        router = Router()
        for method, path, capability, handler in routes.ROUTES:
            if capability is None or capability in offered:
                router.add(method, path, self._bind(handler))
        self.router = router
        self._unserved = {path: cap for path, cap in routes.CAPABILITY_ROUTES.items() if cap not in offered}

    def _bind(self, handler):
        async def bound(request: Request):
            return await handler(self, request)

        return bound

    # -- reload ----------------------------------------------------------------

    async def apply(self, new: Manifest, plan: Plan) -> list[str]:
        """Apply a manifest diff. Returns the models whose replacement failed (the old ones keep serving)."""
        failed = await self.pool.apply(plan, new.models)
        kept = [m if m.name not in failed else next(s for s in self.manifest.models if s.name == m.name)
                for m in new.models]
        self.manifest = new.model_copy(update={"models": kept})
        self.manifest_hash = manifest_hash(self.manifest)
        self.auth = Authenticator(load_keys(new.server))  # key changes apply without a restart
        self._wire_routes()
        return failed

    # -- model selection -----------------------------------------------------

    def select_model(self, name: str | None, capability: str, path: str) -> ModelHandle:
        """By name or alias; with no name, the first declared model that can serve the route."""
        if name:
            handle = self.pool.get(name)
            if handle is None:
                raise HTTPError(404, f"The model {name!r} does not exist. Available: "
                                     f"{', '.join(h.name for h in self.pool)}.", param="model", code="model_not_found")
            if capability not in handle.capabilities:
                raise HTTPError(400, f"Model {name!r} ({handle.spec.type.value}) cannot serve "
                                     f"{CAPABILITY_NAMES.get(capability, capability)} at {path}.",
                                param="model", code="model_not_capable")
            check_model(handle.spec.names)
            current_model.set(handle.name)
            return handle
        for handle in self.pool:
            if capability in handle.capabilities:
                check_model(handle.spec.names)
                current_model.set(handle.name)
                return handle
        raise HTTPError(404, f"No model of this gateway serves {CAPABILITY_NAMES.get(capability, capability)}.",
                        code="model_not_found")

    # -- requests ------------------------------------------------------------

    async def respond(self, request: Request) -> Response | StreamResponse:
        request_id = request_id_of(request)
        request.state["request_id"] = request_id
        current_model.set("")  # a server may run several requests of one connection in one task
        started = request.state["started"] = time.perf_counter()
        style = routes.ERROR_STYLES.get(request.path)
        trace = None
        if self.tracing is not None:  # the request's span; the model handle notes its phases in TIMELINE
            trace = request.state["trace"] = self.tracing.start(request.headers, request.method, request.path,
                                                                request_id)
            TIMELINE.set(trace.timeline)
        try:
            current_key.set(self.auth.authenticate(request))
            response = await self._dispatch(request)
        except asyncio.CancelledError:  # the client left before the answer (Granian cancels the handler)
            # No answer went out, but the request is logged and counted all the same (status 499), and its
            # span ends saying so. Robyn never cancels a handler (it cannot see the client go): it runs to the end.
            self._observe(request, CLIENT_CLOSED, bool(request.state.get("stream")), started, request_id)
            if trace is not None:
                TIMELINE.set(None)
                trace.route(request.state.get("route"))
                trace.end(error=CLIENT_LEFT)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is answered in the route's wire style
            if not isinstance(exc, (NexaError, ValidationError)):  # a bug: logged with its traceback, answered without
                log.exception("unhandled error on %s %s", request.method, request.path,
                              extra={"event": "error", "request_id": request_id})
            response = error_response(exc, style, "Internal server error; see the gateway log for request " + request_id)
        if request.method == "HEAD" and isinstance(response, Response):
            response.body = b""
        self._headers(request, response, request_id)
        self._observe(request, response.status, isinstance(response, StreamResponse), started, request_id)
        if trace is not None:
            TIMELINE.set(None)
            trace.route(request.state.get("route"))
            if not trace.deferred:  # a model stream's span ends with its last token (gateway/api/chat.py)
                trace.end(response.status)
        return response

    def refuse(self, request: Request, status: int) -> Response:
        """The answer a server adapter gives on its own, before the request reaches `respond`: 408 (its body
        did not arrive within server.body_timeout_s; the connection closes), 413 (its body is over
        server.max_body_bytes) or CLIENT_CLOSED (the client left during its upload: nothing is sent).
        Every request is logged and counted, so these go through the same `_observe` and headers as the
        answers of `respond`, under the route asked for. `request` needs no body; `state["started"]`, when
        the adapter set it, is when the request arrived (a 408's time is the wait for the body)."""
        request_id = request.state["request_id"] = request_id_of(request)
        current_model.set("")
        started = request.state.setdefault("started", time.perf_counter())
        with contextlib.suppress(HTTPError):  # an unknown route or method keeps the label "unmatched"
            self._match(request)
        if status == CLIENT_CLOSED:
            response = Response(status)  # never sent: the client is gone
        else:
            response = error_response(self._refusal(status), routes.ERROR_STYLES.get(request.path))
        self._headers(request, response, request_id)
        self._observe(request, status, False, started, request_id)
        return response

    def _refusal(self, status: int) -> HTTPError:
        """The error of an adapter's own answer (only these two: another status is a bug, a KeyError)."""
        server = self.manifest.server
        return {
            408: lambda: HTTPError(408, f"The request body did not arrive within {server.body_timeout_s:g}s "
                                        "(server.body_timeout_s).", code="request_timeout",
                                   headers={"connection": "close"}),
            413: lambda: HTTPError(413, f"The request body is larger than this gateway's limit of "
                                        f"{server.max_body_bytes} bytes.", code="request_too_large"),
        }[status]()

    def _headers(self, request: Request, response: Response | StreamResponse, request_id: str) -> None:
        response.headers["x-request-id"] = request_id
        if current_model.get():  # which model answered: routing is observable without reading the words
            response.headers["x-nexa-model"] = current_model.get()
        response.headers.update(cors_headers(request, self.manifest.server, allow=response.headers.get("allow")))

    def _observe(self, request: Request, status: int, stream: bool, started: float, request_id: str) -> None:
        """The request's log line and metrics: for every request, answered or not (CLIENT_CLOSED). A stream's
        are written when its headers go out; its latency when it ends, and its end in the `generation` line."""
        route = request.state.get("route", "unmatched")
        model = current_model.get()
        elapsed = time.perf_counter() - started
        metrics.REQUESTS.labels(route, model, str(status)).inc()
        if not stream:  # a stream's is observed with its last byte (gateway/api/chat.py)
            metrics.LATENCY.labels(route).observe(elapsed)
        extra = {"event": "request", "request_id": request_id, "method": request.method, "path": request.path,
                 "status": status, "ms": round(elapsed * 1000, 2), "model": model, "stream": stream}
        if status == CLIENT_CLOSED:
            extra["client_disconnected"] = True
        log.info("%s %s %s", request.method, request.path, status, extra=extra)

    async def _dispatch(self, request: Request) -> Response | StreamResponse:
        try:
            if request.method == "OPTIONS":  # a CORS preflight or a client asking: only on a real route
                return Response(204, {"allow": self.router.allowed(request.path)})
            handler = self._match(request)
        except HTTPError as exc:
            capability = self._unserved.get(request.path)
            if exc.status == 404 and capability:
                raise HTTPError(404, f"This gateway's manifest declares no model that serves "
                                     f"{CAPABILITY_NAMES.get(capability, capability)} ({request.path}).",
                                code="route_not_served") from None
            raise
        return await handler(request)

    def _match(self, request: Request):
        """The route's handler; notes its path parameters and its template (the `route` label)."""
        handler, params = self.router.match(request.method, request.path)
        request.path_params = params
        route = request.path
        for name, value in params.items():  # the route's template, not the value: bounded metric labels
            route = route.replace(value, "{" + name + "}")
        request.state["route"] = route
        return handler
