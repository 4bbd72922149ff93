"""The built-in playground: one static page (plus its script and style) that talks to this
gateway's own API from a browser.

The files live in the package (`gateway/static/`), so the page works offline and needs no
build step. The page itself holds no data, so it is served without an API key
(`gateway.http.security.OPEN_PATHS`); the API calls it makes carry the key the user types in.

`server.playground: false` (CLI `--no-playground`) turns these routes off: they answer the same
404 as a route that does not exist. The check is made per request (not at wiring time) because the
route table is built from capabilities only; a reload that flips the setting is honoured at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.http.core import HTTPError, Request, Response, Route

if TYPE_CHECKING:
    from gateway.api.context import Gateway

log = logging.getLogger("nexa.gateway.api.ops.playground")

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
STATIC_PATH = "/static"
PAGE = "playground.html"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# The page only ever talks to its own origin; images are shown from data: and blob: URLs.
SECURITY_HEADERS = {
    "content-security-policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data: blob:; media-src 'self' data: blob:; connect-src 'self'; "
                                "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9]+)+$")


@lru_cache(maxsize=1)
def assets() -> dict[str, Path]:
    """The servable files: plain files directly in the static folder with a known type.

    Requests are looked up in this listing, never joined onto a path, so `..`, encoded
    slashes or symlinks out of the folder cannot reach anything else."""
    found: dict[str, Path] = {}
    if STATIC_DIR.is_dir():
        for path in STATIC_DIR.iterdir():
            if path.is_file() and not path.is_symlink() and path.suffix in CONTENT_TYPES and _NAME.match(path.name):
                found[path.name] = path
    return found


def _not_found(request: Request) -> HTTPError:
    # Word for word what the router answers for a route that does not exist.
    return HTTPError(404, f"Unknown route {request.method} {request.path}.", code="route_not_found")


async def _serve(gw: "Gateway", request: Request, name: str) -> Response:
    if not gw.manifest.server.playground:
        raise _not_found(request)
    path = assets().get(name) if _NAME.match(name) else None
    if path is None:
        raise _not_found(request)
    try:
        body = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:  # the package is broken; say so in the log, not to the browser
        log.error("cannot read playground file %s: %s", path, exc, extra={"event": "playground_missing"})
        raise _not_found(request) from None
    return Response(200, {"content-type": CONTENT_TYPES[path.suffix], **SECURITY_HEADERS}, body)


async def page(gw: "Gateway", request: Request) -> Response:
    return await _serve(gw, request, PAGE)


async def asset(gw: "Gateway", request: Request) -> Response:
    return await _serve(gw, request, request.path_params.get("name", ""))


ROUTES = [
    Route("GET", "/", None, page, response={"text/html": str}),
    Route("GET", "/playground", None, page, response={"text/html": str}),
    Route("GET", STATIC_PATH + "/{name}", None, asset, response={"*/*": bytes}),
]


def playground_paths(enabled: bool) -> list[str]:
    """The paths to leave out of the OpenAPI document when the playground is off (they answer 404 then)."""
    return [] if enabled else [Route(*route).path for route in ROUTES]
