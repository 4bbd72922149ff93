"""Operations: Prometheus metrics and an explicit manifest reload."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.http.core import HTTPError, Request, Response, Route, json_response
from gateway.http.security import current_key
from gateway.observability import metrics

if TYPE_CHECKING:
    from gateway.api.context import Gateway


async def prometheus(gw: "Gateway", request: Request) -> Response:
    return Response(200, {"content-type": "text/plain; version=0.0.4; charset=utf-8"}, metrics.exposition())


async def reload_manifest(gw: "Gateway", request: Request) -> Response:
    """Same as a file change or SIGHUP: validate, diff, apply; a bad manifest is a 400 and changes nothing."""
    key = current_key.get()
    if key is not None and key.models is not None:
        raise HTTPError(403, "This API key is limited to some models and may not reload the manifest.",
                        code="admin_not_allowed")
    if gw.reloader is None:
        raise HTTPError(503, "Reloading is not available in this process.", code="reload_unavailable")
    outcome = await gw.reloader.reload("admin")
    if outcome.get("errors"):
        raise HTTPError(400, "The manifest is invalid; the last good one keeps serving: " + "; ".join(outcome["errors"]),
                        code="invalid_manifest")
    return json_response(outcome, 200 if outcome["ok"] else 500)


ROUTES = [
    Route("GET", "/metrics", None, prometheus, response={"text/plain": str}),
    ("POST", "/admin/reload", None, reload_manifest),
]
