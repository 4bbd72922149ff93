"""A tiny, server-agnostic HTTP layer: request, responses, errors and a router.

Handlers are written against these types only, so Granian (and any other
server) needs nothing more than a thin adapter, and handlers can be tested
without a socket.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs


class HTTPError(Exception):
    """An error answered in the OpenAI envelope, or in the envelope of the route's own API
    (`style`: a function of the error that returns the body, as `routes.ERROR_STYLES` lists)."""

    default_types = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        405: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        500: "server_error",
        503: "server_error",
    }

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or self.default_types.get(status, "invalid_request_error")
        self.headers = headers or {}

    def envelope(self, style: "ErrorStyle | None" = None) -> dict[str, Any]:
        if style is not None:
            return style(self)
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, style: "ErrorStyle | None" = None) -> "Response":
        return json_response(self.envelope(style), self.status, self.headers)


ErrorStyle = Callable[[HTTPError], dict[str, Any]]


@dataclass
class Request:
    method: str
    path: str
    query_string: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    client: str = ""
    path_params: dict[str, str] = field(default_factory=dict)
    # Resolves when the client goes away; servers that cannot tell leave it pending forever.
    disconnected: Callable[[], Awaitable[None]] | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.query_string, keep_blank_values=True)

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> Any:
        if not self.body.strip():
            raise HTTPError(400, "The request body is empty; send a JSON object.", code="invalid_json")
        try:
            return json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from None

    def json_object(self) -> dict[str, Any]:
        data = self.json()
        if not isinstance(data, dict):
            raise HTTPError(400, "The request body must be a JSON object.", code="invalid_json")
        return data


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class StreamResponse:
    """A streamed body. The adapter must `aclose()` `chunks` when the client leaves."""

    chunks: AsyncIterator[bytes]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(status, {"content-type": "application/json", **(headers or {})}, body)


Handler = Callable[[Request], Awaitable["Response | StreamResponse"]]


class Router:
    """Exact paths and `{param}` segments; 404 and 405 answered in the OpenAI envelope."""

    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = []
        self._exact: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        if "{" not in path:
            self._exact.setdefault(path, {})[method.upper()] = handler
            return
        # `{name}` matches one segment; `{name:path}` the rest of the path (model names may hold "/").
        pattern = re.compile("^" + re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)",
                                          re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)) + "$")
        for existing, methods in self._routes:
            if existing.pattern == pattern.pattern:
                methods[method.upper()] = handler
                return
        self._routes.append((pattern, {method.upper(): handler}))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        methods = self._exact.get(path)
        params: dict[str, str] = {}
        if methods is None:
            for pattern, candidate in self._routes:
                found = pattern.match(path)
                if found:
                    methods, params = candidate, found.groupdict()
                    break
        if methods is None:
            raise HTTPError(404, f"Unknown route {method} {path}.", code="route_not_found")
        handler = methods.get(method.upper())
        if handler is None and method.upper() == "HEAD":
            handler = methods.get("GET")  # the adapter sends no body for HEAD
        if handler is None:
            allowed = ", ".join(sorted(methods))
            raise HTTPError(405, f"Method {method} is not allowed on {path}; use {allowed}.",
                            code="method_not_allowed", headers={"allow": allowed})
        return handler, params


async def first_of(*awaitables: Awaitable[Any]) -> None:
    """Wait until any of the awaitables finishes, cancelling the rest."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
