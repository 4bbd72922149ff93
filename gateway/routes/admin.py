"""Operations: Prometheus metrics and an explicit manifest reload."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway import metrics
from gateway.http import HTTPError, Request, Response, json_response

if TYPE_CHECKING:
    from gateway.app import Gateway


async def prometheus(gw: "Gateway", request: Request) -> Response:
    return Response(200, {"content-type": "text/plain; version=0.0.4; charset=utf-8"}, metrics.exposition())


async def reload_manifest(gw: "Gateway", request: Request) -> Response:
    """Same as a file change or SIGHUP: validate, diff, apply; a bad manifest is a 400 and changes nothing."""
    if gw.reloader is None:
        raise HTTPError(503, "Reloading is not available in this process.", code="reload_unavailable")
    outcome = await gw.reloader.reload("admin")
    if outcome.get("errors"):
        raise HTTPError(400, "The manifest is invalid; the last good one keeps serving: " + "; ".join(outcome["errors"]),
                        code="invalid_manifest")
    return json_response(outcome, 200 if outcome["ok"] else 500)


ROUTES = [
    ("GET", "/metrics", None, prometheus),
    ("POST", "/admin/reload", None, reload_manifest),
]
