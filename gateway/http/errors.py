"""Failures as answers: any exception becomes one `NexaError` (`classify`), and each wire style
maps a `NexaError` once, as a JSON body (before a stream starts) and as an in-band event (after
its status line is sent). So the same failure has the same status and code on every route.

A route module names its style with `ERROR_STYLE = "anthropic"` (OpenAI's is the default); a new
protocol adds one `Style` to `STYLES`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import ValidationError

from backends.errors import NexaError
from gateway.http.core import HTTPError, Response, json_response
from gateway.observability.redact import scrub


def classify(exc: BaseException, unexpected: str = "Internal server error") -> NexaError:
    """The taxonomy's error for any exception; `unexpected` is the message of a bug's 500."""
    if isinstance(exc, NexaError):
        exc.message = scrub(exc.message)  # every answer passes here: an upstream URL never shows its credentials
        return exc
    if isinstance(exc, ValidationError):
        return HTTPError(400, str(exc.errors()[0]["msg"]), code="invalid_value")
    return NexaError(scrub(unexpected), status=500, code="internal_error")


# -- OpenAI (also the original Nexa routes) --------------------------------------------------


def openai_body(err: NexaError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def openai_event(err: NexaError) -> bytes:
    return b"data: " + json.dumps(openai_body(err), ensure_ascii=False).encode("utf-8") + b"\n\n"


# -- Anthropic ---------------------------------------------------------------------------------

# HTTP status -> Anthropic's error type; other 5xx are "api_error", other 4xx "invalid_request_error".
ANTHROPIC_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_body(err: NexaError) -> dict[str, Any]:
    kind = ANTHROPIC_TYPES.get(err.status) or ("api_error" if err.status >= 500 else "invalid_request_error")
    error: dict[str, Any] = {"type": kind, "message": err.message}
    details = getattr(err, "details", None)
    if details:
        error["details"] = details
    return {"type": "error", "error": error}


def anthropic_event(err: NexaError) -> bytes:
    data = json.dumps(anthropic_body(err), ensure_ascii=False, separators=(",", ":"))
    return f"event: error\ndata: {data}\n\n".encode("utf-8")


@dataclass(frozen=True)
class Style:
    """One wire style: the body of an error answer and the event that reports one mid-stream."""

    body: Callable[[NexaError], dict[str, Any]]
    event: Callable[[NexaError], bytes]


STYLES: dict[str, Style] = {
    "openai": Style(openai_body, openai_event),
    "anthropic": Style(anthropic_body, anthropic_event),
}


def error_response(exc: BaseException, style: str | None = None, unexpected: str = "Internal server error") -> Response:
    err = classify(exc, unexpected)
    return json_response(STYLES[style or "openai"].body(err), err.status, err.headers)


def error_event(exc: BaseException, style: str | None = None) -> bytes:
    """A failure after the stream began, reported in-band as the error it would have been before."""
    err = classify(exc, f"generation failed: {exc}")
    return STYLES[style or "openai"].event(err)
