"""Helpers every route module shares: body parsing and server-sent events."""

from __future__ import annotations

import functools
import json
import logging
from typing import Any, Iterable

from pydantic import AliasChoices, AliasPath, BaseModel, ValidationError

from gateway.http.core import HTTPError, Request

log = logging.getLogger("nexa.gateway.api.common")

MAX_NOTED = 1000  # (route, field) pairs remembered: field names come from clients, so the memory is bounded
_noted: set[tuple[str, str]] = set()


@functools.lru_cache(maxsize=None)
def known_fields(model: type[BaseModel]) -> frozenset[str]:
    """Every name a request schema reads: its fields and their aliases (`max_new_tokens`, ...)."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        for alias in (info.alias, info.validation_alias):
            choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
            names.update(c if isinstance(c, str) else str(c.path[0]) for c in choices
                         if isinstance(c, str) or (isinstance(c, AliasPath) and c.path))
    return frozenset(names)


def note_unknown_fields(request: Request, names: Iterable[str], known: Iterable[str]) -> None:
    """Unknown request fields are accepted (clients send extensions), and logged at debug
    level once per route and field, so an operator can see what a client expected."""
    route = request.state.get("route") or request.path
    for name in sorted(set(names) - set(known)):
        key = (route, name[:100])
        if key in _noted or len(_noted) >= MAX_NOTED:
            continue
        _noted.add(key)
        log.debug("ignoring unknown field %r on %s", key[1], route,
                  extra={"event": "unknown_field", "route": route, "field": key[1]})


def parse_body(model: type[BaseModel], request: Request) -> Any:
    data = request.json_object()
    if isinstance(data, dict):
        note_unknown_fields(request, data, known_fields(model))
    return validate(model, data)


def parse_query(model: type[BaseModel], request: Request) -> Any:
    """Query parameters (the last value of each) checked against `model`, with the same 400s as bodies."""
    return validate(model, {name: values[-1] for name, values in request.query.items()})


def validate(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = param_path(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        raise HTTPError(400, f"Invalid value for '{param}': {message}" if param else message,
                        param=param, code="invalid_value") from None


def param_path(loc: tuple) -> str | None:
    """A pydantic error location as a request path: `tools[0].function.parameters`. The tags of
    unions picked by JSON type (`<object>`, schemas.openai.by_json_type) are left out."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not (part.startswith("<") and part.endswith(">")):
            path += f".{part}" if path else part
    return path or None


def sse(data: Any) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode("utf-8")


SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no"}
