"""Helpers every route module shares: body parsing and server-sent events."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway.http import HTTPError, Request


def parse_body(model: type[BaseModel], request: Request) -> Any:
    return validate(model, request.json_object())


def parse_query(model: type[BaseModel], request: Request) -> Any:
    """Query parameters (the last value of each) checked against `model`, with the same 400s as bodies."""
    return validate(model, {name: values[-1] for name, values in request.query.items()})


def validate(model: type[BaseModel], data: Any) -> Any:
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
