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
        param = ".".join(str(p) for p in err["loc"]) or None
        message = err["msg"].removeprefix("Value error, ")
        raise HTTPError(400, f"Invalid value for '{param}': {message}" if param else message,
                        param=param, code="invalid_value") from None


def sse(data: Any) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode("utf-8")


SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no"}
