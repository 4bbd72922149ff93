"""Helpers every route module shares: body parsing and server-sent events."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway.http import HTTPError, Request


def parse_body(model: type[BaseModel], request: Request) -> Any:
    data = request.json_object()
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
