"""The one error taxonomy and its wire styles: the same failure answers the same status and code on
every route, before a stream starts (a JSON answer) and after (an in-band event)."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

from backends.chat_template import ChatTemplateError
from backends.errors import BackendError, ContextLengthExceeded, LoadError, NexaError, UpstreamError
from backends.json_grammar import ConstrainedOutputError
from gateway.http.core import HTTPError
from gateway.http.errors import STYLES, classify, error_event, error_response
from gateway.models.state import ModelUnavailable


def event_body(raw: bytes) -> dict:
    data = [line for line in raw.decode().splitlines() if line.startswith("data: ")]
    return json.loads(data[0][len("data: "):])


FAILURES = [
    (BackendError("prompt too long", param="messages"), 400, "invalid_request"),
    (ContextLengthExceeded("too long"), 400, "context_length_exceeded"),
    (ChatTemplateError("bad template"), 400, "invalid_request"),
    (ConstrainedOutputError("not JSON"), 500, "constrained_output_invalid"),
    (UpstreamError("down", status=503, retry_after=2), 503, "upstream_unavailable"),
    (ModelUnavailable("busy", status=429, retry_after=3, code="queue_full"), 429, "queue_full"),
    (LoadError("bad file"), 500, "model_load_failed"),
    (HTTPError(404, "no such model", code="model_not_found"), 404, "model_not_found"),
    (RuntimeError("a bug"), 500, "internal_error"),
]


@pytest.mark.parametrize("exc, status, code", FAILURES, ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None)
def test_a_failure_has_one_status_and_code_before_and_during_a_stream_in_every_style(exc, status, code):
    err = classify(exc)
    assert isinstance(err, NexaError) and (err.status, err.code) == (status, code)
    openai = error_response(exc, "openai")
    assert openai.status == status and json.loads(openai.body)["error"]["code"] == code
    assert event_body(error_event(exc, "openai"))["error"]["code"] == code
    anthropic = error_response(exc, "anthropic")
    assert anthropic.status == status
    before = json.loads(anthropic.body)
    during = event_body(error_event(exc, "anthropic"))
    assert before["type"] == during["type"] == "error" and before["error"]["type"] == during["error"]["type"]
    assert (before["error"]["type"] == "invalid_request_error") == (400 <= status < 500 and status not in (401, 403, 404, 413, 429))


def test_retry_after_travels_with_the_error():
    response = error_response(ModelUnavailable("loading", retry_after=7))
    assert response.status == 503 and response.headers["retry-after"] == "7"
    assert error_response(UpstreamError("slow down", status=429, retry_after=1.2)).headers["retry-after"] == "2"


def test_a_validation_error_is_a_400_naming_its_message_and_a_bug_hides_its_text():
    class Body(BaseModel):
        n: int

    with pytest.raises(ValidationError) as caught:
        Body.model_validate({"n": "x"})
    assert (classify(caught.value).status, classify(caught.value).code) == (400, "invalid_value")
    body = json.loads(error_response(RuntimeError("secret internals"), None, "Internal server error").body)
    assert body["error"]["message"] == "Internal server error" and "secret" not in json.dumps(body)


def test_credentials_in_a_message_are_redacted_in_every_style():
    exc = UpstreamError("http://user:hunter2@upstream.example/v1 is down")
    for style in STYLES:
        assert "hunter2" not in error_response(exc, style).body.decode()
        assert b"hunter2" not in error_event(exc, style)
