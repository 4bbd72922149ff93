"""Bodies of the gateway's own routes (errors, probes), for the OpenAPI document.

The handlers build these answers as plain dicts; the models here say what they
hold, so that clients (and tests) can check them.
"""

from __future__ import annotations

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    """Every error of every route: OpenAI's envelope."""

    error: ErrorDetail


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    """GET /ready: 200 when every preload model is loaded, 503 (same body) until then."""

    ready: bool
    manifest_hash: str
    models: dict[str, str]  # name -> state
