"""The route table, gathered from one module per family of endpoints.

Each module exports `ROUTES`: `Route(method, path, capability or None, handler,
request=..., response=...)` entries (gateway.http.Route), or plain 4-tuples for a
route without a declared contract. A handler is `async def handler(gateway, request)
-> Response | StreamResponse`. The request and response types are the route's
published contract: GET /openapi.json (gateway/openapi.py).
"""

from __future__ import annotations

from gateway.http import Route
from gateway.routes import (admin, audio, discovery, embeddings, gitops, images, messages, openapi, playground,
                            responses, text)

MODULES = [text, responses, messages, audio, embeddings, images, discovery, admin, playground, gitops, openapi]

TABLE = [Route(*route) for module in MODULES for route in module.ROUTES]
ROUTES = [tuple(route[:4]) for route in TABLE]  # (method, path, capability, handler), as the gateway wires them

# Routes of an API with its own error envelope: path -> a function of the HTTPError that returns the
# body (a module's `ERROR_STYLE`). Every error on such a path uses it, also those raised before its
# handler runs (authentication, model admission, body size, unknown method). Others answer in OpenAI's.
ERROR_STYLES = {path: module.ERROR_STYLE for module in MODULES if getattr(module, "ERROR_STYLE", None)
                for path in (route[1] for route in module.ROUTES)}

# Every model route of SERVER-API.md and OpenAI, with the capability it needs. A route
# whose capability no declared model has answers 404 `route_not_served`.
CAPABILITY_ROUTES = {
    "/v1/completions": "complete",
    "/v1/chat/completions": "chat",
    "/v1/function-calling": "chat",
    "/v1/messages": "chat",
    "/v1/messages/count_tokens": "chat",
    "/v1/responses": "chat",
    "/v1/embeddings": "embed",
    "/v1/audio/transcriptions": "transcribe",
    "/v1/audio/translations": "translate",
    "/v1/txt2img": "txt2img",
    "/v1/images/generations": "txt2img",
    "/v1/img2img": "img2img",
}
