"""The route table, gathered from one module per family of endpoints.

Each module exports `ROUTES`: (method, path, capability or None, handler).
A handler is `async def handler(gateway, request) -> Response | StreamResponse`.
"""

from __future__ import annotations

from gateway.routes import admin, audio, discovery, embeddings, gitops, images, playground, responses, text

MODULES = [text, responses, audio, embeddings, images, discovery, admin, playground, gitops]

ROUTES = [route for module in MODULES for route in module.ROUTES]

# Every model route of SERVER-API.md and OpenAI, with the capability it needs. A route
# whose capability no declared model has answers 404 `route_not_served`.
CAPABILITY_ROUTES = {
    "/v1/completions": "complete",
    "/v1/chat/completions": "chat",
    "/v1/function-calling": "chat",
    "/v1/responses": "chat",
    "/v1/embeddings": "embed",
    "/v1/audio/transcriptions": "transcribe",
    "/v1/audio/translations": "translate",
    "/v1/txt2img": "txt2img",
    "/v1/images/generations": "txt2img",
    "/v1/img2img": "img2img",
}
