"""The gateway's OpenAPI 3.1 document, generated from the route table's pydantic models.

Every route (gateway.http.core.Route) names its request and response types; this module
turns the table into one document: paths and operations, path and query parameters,
request bodies, the success answer of each media type and, for every operation, the
error envelope as the `default` response (every error of every route has that shape).
A route without a declared body still appears, with a generic one.

Served at GET /openapi.json (only the routes this gateway serves; `?all=true` lists every
route) and written by `nexa schema --openapi`. With `server.api_keys` the document
declares bearer authentication, and the open paths (probes, metrics, playground, the
document itself) say they need none.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Iterable

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

from gateway.http.core import Route
from gateway.http.security import OPEN_PATHS, OPEN_PREFIXES
from schemas.ops import ErrorEnvelope

REF = "#/components/schemas/{model}"
JSON = "application/json"
GENERIC = object()  # a declared "anything" body


def _core_schema(kind: Any) -> Any:
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return kind.__pydantic_core_schema__
    return TypeAdapter(kind).core_schema


class Schemas:
    """Collects every type the operations name, then writes them into components in one pass,
    so that shared models (Usage, ChatMessage, ...) are defined once and referenced."""

    def __init__(self) -> None:
        self._wanted: list[tuple[int, str, Any]] = []  # (id, mode, type)
        self._slots: list[tuple[dict[str, Any], tuple[int, str]]] = []

    def slot(self, kind: Any, mode: str) -> dict[str, Any]:
        """A schema object to fill in later ({} for None: any content)."""
        target: dict[str, Any] = {}
        if kind is None or kind is GENERIC:
            return target
        key = (id(kind), mode)
        if key not in {(k, m) for k, m, _ in self._wanted}:
            self._wanted.append((id(kind), mode, kind))
        self._slots.append((target, key))
        return target

    def components(self) -> dict[str, Any]:
        generator = GenerateJsonSchema(ref_template=REF)
        mapping, definitions = generator.generate_definitions(
            [(k, m, _core_schema(kind)) for k, m, kind in self._wanted])
        for target, key in self._slots:
            target.update(mapping[key])
        return definitions


class Events:
    """A `text/event-stream` answer whose events' `data` are JSON objects of these types, then `[DONE]`.

    Described the way OpenAPI 3.1 tools read an event stream (`schema` is one event, as
    `itemSchema` is in 3.2): an object with `data`, a JSON string of one of the types, the
    error envelope (an error after the headers went out), or the `[DONE]` sentinel."""

    def __init__(self, *kinds: Any):
        self.kinds = kinds

    def schema(self, mode: str, schemas: Schemas) -> dict[str, Any]:
        payloads = [schemas.slot(kind, mode) for kind in (*self.kinds, ErrorEnvelope)]
        return {"type": "object", "required": ["data"], "properties": {
            "event": {"type": "string"}, "id": {"type": "string"},
            "data": {"anyOf": [{"const": "[DONE]"}, {"type": "string", "contentMediaType": JSON,
                                                      "contentSchema": {"anyOf": payloads}}]}}}


def _content(spec: Any, mode: str, schemas: Schemas) -> dict[str, Any]:
    """{media type: {schema}} for a body declaration (a type, or {media type: type or None})."""
    if spec is None:
        return {JSON: {"schema": {}}}
    media = spec if isinstance(spec, dict) else {JSON: spec}
    return {name: {"schema": kind.schema(mode, schemas) if isinstance(kind, Events) else schemas.slot(kind, mode)}
            for name, kind in media.items()}


def _responses(route: Route, schemas: Schemas) -> dict[str, Any]:
    spec = route.response
    by_status = spec if isinstance(spec, dict) and spec and all(isinstance(k, int) for k in spec) else {200: spec}
    out: dict[str, Any] = {str(status): {"description": "OK" if status < 300 else "see the body",
                                          "content": _content(body, "serialization", schemas)}
                           for status, body in by_status.items()}
    error = route.error or ErrorEnvelope
    out["default"] = {"description": "an error, in OpenAI's envelope" if route.error is None else "an error",
                      "content": {JSON: {"schema": schemas.slot(error, "serialization")}}}
    return out


def _parameters(route: Route) -> list[dict[str, Any]]:
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in re.findall(r"\{(\w+)(?::path)?\}", route.path)]
    if route.query is not None:
        schema = TypeAdapter(route.query).json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            prop = {k: v for k, v in prop.items() if k != "title"}
            params.append({"name": name, "in": "query", "required": name in required, "schema": prop})
    return params


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def operation_id(route: Route) -> str:
    words = re.sub(r"\{(\w+)(?::path)?\}", r"by_\1", route.path).strip("/").replace("-", "_")
    return f"{route.method.lower()}_{re.sub(r'[^A-Za-z0-9_]+', '_', words) or 'root'}"


def document(table: Iterable[Route], served: Callable[[Route], bool] | None = None, *, auth: bool = False,
             version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the routes in `table` for which `served(route)` holds."""
    schemas, paths = Schemas(), {}
    for route in table:
        if served is not None and not served(route):
            continue
        summary, _, description = (inspect.getdoc(route.handler) or "").partition("\n")
        operation: dict[str, Any] = {"operationId": operation_id(route), "summary": summary.strip() or route.path}
        if description.strip():
            operation["description"] = description.strip()
        if route.capability:
            operation["tags"] = [route.capability]
        parameters = _parameters(route)
        if parameters:
            operation["parameters"] = parameters
        if route.method.upper() in ("POST", "PUT", "PATCH"):
            operation["requestBody"] = {"required": route.request is not None,
                                        "content": _content(route.request, "validation", schemas)
                                        if route.request is not None else {JSON: {"schema": {"type": "object"}}}}
        operation["responses"] = _responses(route, schemas)
        if auth and is_open(route.path):
            operation["security"] = []
        template = re.sub(r"\{(\w+):path\}", r"{\1}", route.path)
        paths.setdefault(template, {})[route.method.lower()] = operation
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "nexa gateway", "version": version,
                 "description": "OpenAI-compatible API of the models this gateway's manifest declares."},
        "paths": paths,
        "components": {"schemas": schemas.components()},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc


def offered(capability_sets: Iterable[Iterable[str]], hidden: Iterable[str] = ()) -> Callable[[Route], bool]:
    """The filter for the routes a set of models serves (the routes the gateway wires), less the
    `hidden` paths (the playground's, when it is turned off)."""
    capabilities, hidden = set().union(*capability_sets), set(hidden)
    return lambda route: (route.capability is None or route.capability in capabilities) and route.path not in hidden
