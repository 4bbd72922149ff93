"""The route table, gathered from one module per family of endpoints.

Each module exports `ROUTES`: `Route(method, path, capability or None, handler,
request=..., response=...)` entries (gateway.http.core.Route), or plain 4-tuples for a
route without a declared contract. A handler is `async def handler(gateway, request)
-> Response | StreamResponse`. The request and response types are the route's
published contract: GET /openapi.json (gateway/http/openapi.py).
"""

from __future__ import annotations

from typing import Any

from backends.errors import LoadError
from backends.registry import backend_for
from gateway.api.anthropic import messages
from gateway.api.openai import audio, embeddings, images, responses, text
from gateway.api.ops import admin, discovery, gitops, openapi, playground
from gateway.http import openapi as openapi_doc
from gateway.http.core import Route
from gateway.manifest.load import load_file

MODULES = [text, responses, messages, audio, embeddings, images, discovery, admin, playground, gitops, openapi]

TABLE = [Route(*route) for module in MODULES for route in module.ROUTES]
ROUTES = [tuple(route[:4]) for route in TABLE]  # (method, path, capability, handler), as the gateway wires them

# Routes of an API with its own wire style: path -> the style's name in gateway/http/errors.py (a
# module's `ERROR_STYLE`). Every error on such a path uses it, also those raised before its handler
# runs (authentication, model admission, body size, unknown method). Others answer in OpenAI's.
ERROR_STYLES = {path: module.ERROR_STYLE for module in MODULES if getattr(module, "ERROR_STYLE", None)
                for path in (Route(*route).path for route in module.ROUTES)}

# Every model route with the capability it needs, from the routes' own declarations. A route whose
# capability no declared model has answers 404 `route_not_served`.
CAPABILITY_ROUTES = {route.path: route.capability for route in TABLE if route.capability is not None}


def openapi_document(config: str | None, everything: bool) -> dict[str, Any]:
    """The OpenAPI document a gateway serving `config` publishes (every route without one, or with
    `everything`): `nexa schema --openapi`, the same document GET /openapi.json serves."""
    if config is None or everything:
        return openapi_doc.document(TABLE)
    manifest = load_file(config)

    def capabilities(spec: Any) -> frozenset[str]:
        try:
            return backend_for(spec).capabilities
        except LoadError:
            return frozenset()

    auth = bool(manifest.server.api_keys or manifest.server.api_keys_file)
    hidden = playground.playground_paths(manifest.server.playground)
    return openapi_doc.document(TABLE, openapi_doc.offered((capabilities(s) for s in manifest.models), hidden), auth=auth)
