"""Manifest -> model pool + route table, and the one place errors become HTTP answers."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pydantic import ValidationError

from backends.base import BackendError
from gateway import routes
from gateway.config import manifest_hash
from gateway.http import HTTPError, Request, Response, Router, StreamResponse
from gateway.pool import ModelHandle, ModelPool, ModelUnavailable
from schemas.manifest import Manifest

log = logging.getLogger("nexa.gateway")

# Capability -> a phrase for error messages.
CAPABILITY_NAMES = {
    "complete": "text completion",
    "chat": "chat completion",
    "embed": "embeddings",
    "transcribe": "speech transcription",
    "translate": "speech translation",
    "txt2img": "image generation",
    "img2img": "image-to-image generation",
}


class Gateway:
    """Everything a server adapter needs: `startup`, `handle`, `shutdown`."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.manifest_hash = manifest_hash(manifest)
        self.started = int(time.time())
        self.pool: ModelPool | None = None
        self.router = Router()
        self._unserved: dict[str, str] = {}

    # -- lifecycle -----------------------------------------------------------

    def startup(self, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = ModelPool(self.manifest.models, loop, self.manifest.server.stream_buffer)
        self._wire_routes()
        self.pool.preload()
        log.info("gateway ready to accept requests", extra={"event": "startup", "models": [h.name for h in self.pool],
                                                             "manifest_hash": self.manifest_hash})

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.close(timeout=self.manifest.server.shutdown_grace_s)
            log.info("models unloaded", extra={"event": "shutdown"})

    def _wire_routes(self) -> None:
        """Wire only the routes some declared model can serve."""
        offered = set().union(*(h.capabilities for h in self.pool)) if self.pool.handles else set()
        for method, path, capability, handler in routes.ROUTES:
            if capability is None or capability in offered:
                self.router.add(method, path, self._bind(handler))
        self._unserved = {path: cap for path, cap in routes.CAPABILITY_ROUTES.items() if cap not in offered}

    def _bind(self, handler):
        async def bound(request: Request):
            return await handler(self, request)

        return bound

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
            return handle
        for handle in self.pool:
            if capability in handle.capabilities:
                return handle
        raise HTTPError(404, f"No model of this gateway serves {CAPABILITY_NAMES.get(capability, capability)}.",
                        code="model_not_found")

    # -- requests ------------------------------------------------------------

    async def handle(self, request: Request) -> Response | StreamResponse:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state["request_id"] = request_id
        started = time.perf_counter()
        try:
            response = await self._dispatch(request)
        except HTTPError as exc:
            response = exc.response()
        except ModelUnavailable as exc:
            response = HTTPError(503, str(exc), code="model_unavailable", headers={"retry-after": "5"}).response()
        except BackendError as exc:
            response = HTTPError(400, str(exc), code="invalid_request").response()
        except ValidationError as exc:
            response = HTTPError(400, str(exc.errors()[0]["msg"]), code="invalid_value").response()
        except Exception:  # noqa: BLE001 - logged with its traceback, answered without it
            log.exception("unhandled error on %s %s", request.method, request.path,
                          extra={"event": "error", "request_id": request_id})
            response = HTTPError(500, "Internal server error; see the gateway log for request " + request_id,
                                 code="internal_error").response()
        response.headers["x-request-id"] = request_id
        log.info("%s %s %s", request.method, request.path, response.status,
                 extra={"event": "request", "request_id": request_id, "method": request.method, "path": request.path,
                        "status": response.status, "ms": round((time.perf_counter() - started) * 1000, 2),
                        "stream": isinstance(response, StreamResponse)})
        return response

    async def _dispatch(self, request: Request) -> Response | StreamResponse:
        if request.method == "OPTIONS":
            return Response(204, {"allow": "GET, POST, OPTIONS"})
        try:
            handler, params = self.router.match(request.method, request.path)
        except HTTPError as exc:
            capability = self._unserved.get(request.path)
            if exc.status == 404 and capability:
                raise HTTPError(404, f"This gateway's manifest declares no model that serves "
                                     f"{CAPABILITY_NAMES.get(capability, capability)} ({request.path}).",
                                code="route_not_served") from None
            raise
        request.path_params = params
        return await handler(request)

    def too_large(self, size: int | None = None) -> Response:
        limit = self.manifest.server.max_body_bytes
        return HTTPError(413, f"The request body is larger than this gateway's limit of {limit} bytes.",
                         code="request_too_large").response()

