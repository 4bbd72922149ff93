"""API keys and CORS.

Keys are compared in constant time. A key may be limited to some models; the
check happens where a request picks its model, so every route honours it.
"""

from __future__ import annotations

import contextvars
import hmac
from pathlib import Path

from gateway.http.core import HTTPError, Request
from schemas.manifest import ApiKey, ServerSettings

# Paths that never need a key: probes must work for orchestrators; the playground page and its
# files hold no data (the API calls the page makes carry the key); the OpenAPI document names
# route families and body shapes, never a model or a key.
OPEN_PATHS = {"/health", "/ready", "/metrics", "/", "/playground", "/openapi.json"}
OPEN_PREFIXES = ("/static/",)

current_key: contextvars.ContextVar[ApiKey | None] = contextvars.ContextVar("nexa_api_key", default=None)


def load_keys(settings: ServerSettings) -> list[ApiKey]:
    keys = list(settings.api_keys)
    if settings.api_keys_file:
        for line in Path(settings.api_keys_file).expanduser().read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, _, models = line.partition(" ")
            keys.append(ApiKey(key=key, models=[m.strip() for m in models.split(",") if m.strip()] or None))
    return keys


class Authenticator:
    def __init__(self, keys: list[ApiKey]):
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authenticate(self, request: Request) -> ApiKey | None:
        """The matching key, or a 401. Every key is compared, so timing says nothing about which one is close."""
        if (not self.keys or request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES)
                or request.method == "OPTIONS"):
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            token = request.headers.get("x-api-key", "")
            if not token:
                raise HTTPError(401, "Missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`.",
                                code="missing_api_key", headers={"www-authenticate": "Bearer"})
        token = token.strip().encode()
        found = None
        for key in self.keys:
            if hmac.compare_digest(token, key.key.encode()):
                found = key
        if found is None:
            raise HTTPError(401, "Incorrect API key provided.", code="invalid_api_key",
                            headers={"www-authenticate": "Bearer"})
        return found


def allows(key: ApiKey | None, names: list[str]) -> bool:
    return key is None or key.models is None or any(name in key.models for name in names)


def check_model(names: list[str]) -> None:
    key = current_key.get()
    if not allows(key, names):
        raise HTTPError(403, f"This API key may not use model {names[0]!r}.", param="model", code="model_not_allowed")


def cors_headers(request: Request, settings: ServerSettings, allow: str | None = None) -> dict[str, str]:
    """Headers for an allowed origin; none for others (the browser then blocks the answer).
    `allow`: the route's methods, which a preflight's answer lists (none for an unknown route)."""
    origin = request.headers.get("origin")
    allowed = settings.cors_origins
    if not origin or not allowed:
        return {}
    wildcard = "*" in allowed
    if origin not in allowed and not wildcard:
        return {}
    headers = {"vary": "Origin"}
    if wildcard and not settings.cors_allow_credentials:
        headers["access-control-allow-origin"] = "*"
    else:
        # Credentials are never combined with `*`: echo the one origin instead.
        headers["access-control-allow-origin"] = origin
        if settings.cors_allow_credentials:
            headers["access-control-allow-credentials"] = "true"
    if request.method == "OPTIONS" and allow:
        headers["access-control-allow-methods"] = allow
        headers["access-control-allow-headers"] = request.headers.get(
            "access-control-request-headers", "authorization, content-type")
        headers["access-control-max-age"] = "600"
    headers["access-control-expose-headers"] = "x-request-id, retry-after, x-nexa-model"
    return headers
