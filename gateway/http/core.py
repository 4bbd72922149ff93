"""A tiny, server-agnostic HTTP layer: request, responses, errors and a router.

Handlers are written against these types only, so Granian (and any other
server) needs nothing more than a thin adapter, and handlers can be tested
without a socket.
"""

from __future__ import annotations

import json
import re
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, NamedTuple
from urllib.parse import parse_qs

from backends.errors import NexaError


class HTTPError(NexaError):
    """A failure found by the gateway itself (a bad body, an unknown model, a missing key), raised
    as `HTTPError(status, message, code=..., param=...)`; one kind of `NexaError`, answered in each
    route's wire style by gateway/http/errors.py like every other."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message, status=status, param=param, type=type, headers=headers)
        self.code = code  # OpenAI's own answers often carry none


@dataclass
class Request:
    method: str
    path: str
    query_string: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    client: str = ""
    path_params: dict[str, str] = field(default_factory=dict)
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
            data = json.loads(self.body, parse_constant=_not_json)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from None
        except RecursionError:
            raise HTTPError(400, f"The request body nests JSON deeper than {MAX_JSON_DEPTH} levels.",
                            code="invalid_json") from None
        except ValueError as exc:
            if "digits" in str(exc):  # an integer literal over Python's 4300-digit limit
                exc = ValueError(f"an integer literal is longer than {sys.get_int_max_str_digits()} digits")
            raise HTTPError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from None
        check_json(data)
        return data

    def json_object(self) -> dict[str, Any]:
        data = self.json()
        if not isinstance(data, dict):
            raise HTTPError(400, "The request body must be a JSON object.", code="invalid_json")
        return data


# Deeper JSON is refused before any handler sees it: request schemas (tools' `parameters`,
# `json_schema`) are walked recursively by pydantic, the grammar builder and the engines.
MAX_JSON_DEPTH = 64
_CHECKED = (str, dict, list)  # what check_json looks into; numbers, booleans and null pass as they are


def check_json(data: Any) -> None:
    """Refuse, with a 400 naming the field, what no engine should see: JSON nested deeper than
    MAX_JSON_DEPTH, and strings (or keys) holding lone UTF-16 surrogates (`"\\ud800"` is valid
    JSON, but not Unicode text: tokenizers crash on it). Iterative, so depth costs no stack."""
    queue: deque[tuple[Any, str, int]] = deque([(data, "", 1)])  # breadth first: fields in document order
    while queue:
        value, path, depth = queue.popleft()
        path = path if len(path) <= 200 else path[:197] + "..."
        if isinstance(value, str):
            if not value.isascii() and not _encodable(value):
                raise HTTPError(400, f"Invalid value for '{path or 'body'}': the text holds a lone UTF-16 "
                                     "surrogate (an unpaired \\ud800-\\udfff escape), which is not valid Unicode.",
                                param=path or None, code="invalid_value")
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise HTTPError(400, f"Invalid value for '{path}': JSON nested deeper than {MAX_JSON_DEPTH} levels.",
                            param=path or None, code="invalid_value")
        if isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{_shown(key)}" if path else _shown(key)
                if not key.isascii() and not _encodable(key):
                    queue.append((key, child, depth + 1))
                if isinstance(item, _CHECKED):
                    queue.append((item, child, depth + 1))
        else:
            # Numbers need no check: skipping them keeps token-id arrays cheap (no path per element).
            queue.extend((item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)
                         if isinstance(item, _CHECKED))


def _not_json(name: str) -> Any:
    """Python's json module reads NaN and Infinity, which JSON does not have (nor do engines want them)."""
    raise ValueError(f"{name} is not a JSON value")


def _shown(key: str) -> str:
    """A key as it may appear in an error's param: printable, encodable, short."""
    key = key.encode("utf-8", "backslashreplace").decode("utf-8")
    return key if len(key) <= 64 else key[:61] + "..."


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


class Route(NamedTuple):
    """One entry of the route table (the `ROUTES` list of a gateway/api route module), with its contract.

    `request` and `response` name the bodies for the OpenAPI document (gateway/http/openapi.py):
    a pydantic model (or any type pydantic can describe) is a JSON body; `{media type: type or
    None}` names other or several media types (None: any content); `response` may also be
    `{status: ...}`. Left out (None), the document shows a generic body. `query` is a pydantic
    model of the query parameters. A plain `(method, path, capability, handler)` tuple is a
    Route without a declared contract, so registering one is still one line."""

    method: str
    path: str
    capability: str | None  # what a declared model must offer for the route to be served
    handler: Callable[..., Awaitable[Any]]
    request: Any = None
    response: Any = None
    query: Any = None
    error: Any = None  # the error body, when the route's API has its own envelope (default: OpenAI's)


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

    def _lookup(self, method: str, path: str) -> tuple[dict[str, Handler], dict[str, str]]:
        """The route's handlers by method and the path's parameters; a 404 for an unknown path."""
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
        return methods, params

    def allowed(self, path: str) -> str:
        """The `allow` header of a path's OPTIONS answer: its own methods (HEAD with GET), or a 404."""
        methods = set(self._lookup("OPTIONS", path)[0]) | {"OPTIONS"}
        if "GET" in methods:
            methods.add("HEAD")
        return ", ".join(sorted(methods))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        methods, params = self._lookup(method, path)
        handler = methods.get(method.upper())
        if handler is None and method.upper() == "HEAD":
            handler = methods.get("GET")  # the adapter sends no body for HEAD
        if handler is None:
            allowed = ", ".join(sorted(methods))
            raise HTTPError(405, f"Method {method} is not allowed on {path}; use {allowed}.",
                            code="method_not_allowed", headers={"allow": allowed})
        return handler, params

