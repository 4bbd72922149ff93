"""What a route handler may use of the gateway: the handlers are `handler(gateway, request)`, and
this is the `gateway` they get (gateway/app.py's `Gateway` is the one implementation). Typed here,
below the routes, so that no route module imports the app that wires it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.http.core import Route
    from gateway.http.security import Authenticator
    from gateway.models.handle import ModelHandle
    from gateway.models.pool import ModelPool
    from schemas.manifest import Manifest


class Gateway(Protocol):
    manifest: "Manifest"
    manifest_hash: str
    started: int
    pool: "ModelPool"
    auth: "Authenticator"
    reloader: Any  # gateway.manifest.reload.Reloader, or None without --reload/-c
    responses_store: Any
    table: list["Route"]  # every route this build knows (the OpenAPI document lists a subset)

    def select_model(self, name: str | None, capability: str, path: str) -> "ModelHandle": ...
