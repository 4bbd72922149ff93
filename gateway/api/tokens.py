"""`POST /tokenize`, `POST /detokenize`, `POST /apply-template`: a text model's own tokenizer and
chat template, as llama.cpp's `llama-server` offers them (same bodies, same answers).

`/apply-template` builds its prompt with `chat_inputs`, the same function that prepares every chat
request (system prompt, roles, tools), and the engine's `render_prompt`, the text its `chat`
tokenizes: the prompt shown is the prompt a chat request with these messages feeds the model.

None of these decodes anything, so they do not wait behind a running generation: the engine runs
them beside its decode slots (`ModelHandle.call_beside`) when it says its tokenizer allows it.
A model without a tokenizer (a remote upstream) or template is a 400.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.api.chat import chat_inputs
from gateway.api.common import parse_body
from gateway.http.core import Request, Response, Route, json_response
from schemas.tokens import (
    ApplyTemplateRequest,
    ApplyTemplateResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

if TYPE_CHECKING:
    from gateway.api.context import Gateway


def shown(piece: bytes) -> str | list[int]:
    """A piece as llama-server shows it: text when it is valid UTF-8, else its bytes."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)


async def tokenize(gw: "Gateway", request: Request) -> Response:
    body: TokenizeRequest = parse_body(TokenizeRequest, request)
    handle = gw.select_model(body.model, "complete", request.path)

    def work(backend) -> dict:
        ids = backend.tokenize_text(body.content, add_special=body.add_special,
                                    parse_special=body.parse_special) if body.content else []
        if not body.with_pieces:
            return {"tokens": ids}
        return {"tokens": [{"id": i, "piece": shown(p)} for i, p in zip(ids, backend.token_pieces(ids))]}

    return json_response(await handle.call_beside(work))


async def detokenize(gw: "Gateway", request: Request) -> Response:
    body: DetokenizeRequest = parse_body(DetokenizeRequest, request)
    handle = gw.select_model(body.model, "complete", request.path)
    content = await handle.call_beside(lambda backend: backend.detokenize_tokens(body.tokens))
    return json_response({"content": content})


async def apply_template(gw: "Gateway", request: Request) -> Response:
    body: ApplyTemplateRequest = parse_body(ApplyTemplateRequest, request)
    handle, _params, messages, options = await chat_inputs(gw, request, body)
    options.response_format = None  # it constrains decoding, not the prompt
    prompt = await handle.call_beside(lambda backend: backend.render_prompt(messages, options))
    return json_response({"prompt": prompt})


ROUTES = [
    Route("POST", "/tokenize", "complete", tokenize, request=TokenizeRequest, response=TokenizeResponse),
    Route("POST", "/detokenize", "complete", detokenize, request=DetokenizeRequest, response=DetokenizeResponse),
    Route("POST", "/apply-template", "chat", apply_template, request=ApplyTemplateRequest,
          response=ApplyTemplateResponse),
]
