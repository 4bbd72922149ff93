"""The one error taxonomy: every failure the gateway answers is a `NexaError` with an HTTP status,
a stable machine-readable `code`, a message and, where a request field is at fault, its `param`.

Engines raise these (they know nothing of HTTP but the number), the gateway raises them, and each
wire style (OpenAI JSON and SSE, Anthropic JSON and SSE, Ollama NDJSON) maps them once, in
gateway/http/errors.py: the same failure gets the same status and code on every route, before and
during a stream. The table of codes is in ARCHITECTURE.md.
"""

from __future__ import annotations

import math

# OpenAI's `error.type` per status; every 5xx (timeouts included) is a server error.
DEFAULT_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class NexaError(Exception):
    """A failure with its HTTP status, code, message and the request field at fault."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str = "", *, status: int | None = None, code: str | None = None,
                 param: str | None = None, type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.param = param
        self.type = type or DEFAULT_TYPES.get(self.status, "server_error" if self.status >= 500 else
                                              "invalid_request_error")
        self.headers = dict(headers or {})


class BackendError(NexaError):
    """An engine refused the input: the caller's fault (an over-long prompt, a bad token id)."""

    status = 400
    code = "invalid_request"


class ContextLengthExceeded(BackendError):
    """The prompt (plus the room asked for the answer) does not fit the model's context."""

    code = "context_length_exceeded"


class LoadError(NexaError):
    """A model could not be loaded: wrong file, wrong format, missing engine."""

    status = 500
    code = "model_load_failed"


class UpstreamError(NexaError):
    """A remote engine (an upstream API) is unreachable or failed: not the caller's fault
    (502, or the upstream's 429/503/504), with Retry-After when the upstream gave one."""

    status = 502
    code = "upstream_unavailable"

    def __init__(self, message: str, *, status: int = 502, retry_after: float | None = None,
                 code: str = "upstream_unavailable"):
        headers = {"retry-after": str(max(1, math.ceil(retry_after)))} if retry_after else None
        super().__init__(message, status=status, code=code, headers=headers,
                         type="rate_limit_error" if status == 429 else "server_error")
        self.retry_after = retry_after


class Unavailable(NexaError):
    """The model cannot take the request now (loading, queue full, stopping): 503 or 429 with
    Retry-After, so clients back off and try again."""

    status = 503
    code = "model_unavailable"

    def __init__(self, message: str, *, status: int = 503, retry_after: float = 5, code: str = "model_unavailable"):
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(message, status=status, code=code, headers={"retry-after": str(self.retry_after)})

