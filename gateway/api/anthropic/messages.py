"""The Anthropic Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

Translation only. The Anthropic body becomes the OpenAI-shaped `ChatRequest`
every chat protocol goes through (`open_chat`: one implementation of prompting,
sampling, stop sequences, tool grammars, images and usage), and its deltas come
back as Anthropic content blocks or Anthropic's event stream. Errors on these
routes, including those raised before the handler runs, use Anthropic's
envelope (`ERROR_STYLE`, listed by `gateway.api.ERROR_STYLES`).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator

from backends.base import Delta
from gateway.api.chat import chain, chat_inputs, closing, open_chat
from gateway.api.common import SSE_HEADERS, parse_body
from gateway.http.core import HTTPError, Request, Response, Route, StreamResponse, json_response
from gateway.http.errors import error_event
from schemas.anthropic import (
    CountTokensRequest,
    CountTokensResponse,
    ErrorResponse,
    ImageBlock,
    Message,
    MessageResponse,
    MessagesRequest,
    TextOut,
    ToolResultBlock,
    ToolUseOut,
    Usage,
)
from schemas.openai import ChatRequest

if TYPE_CHECKING:
    from gateway.api.context import Gateway

# The engine's finish_reason -> Anthropic's stop_reason ("stop_sequence" is told apart below).
STOP_REASONS = {"stop": "end_turn", "cancelled": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}

# Anthropic's tool_choice type -> OpenAI's ("tool" becomes a named function).
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


ERROR_STYLE = "anthropic"  # gateway/http/errors.py: every error on these routes, in Anthropic's envelope


# -- Anthropic -> ChatRequest --------------------------------------------------------


def to_chat(body: CountTokensRequest) -> ChatRequest:
    """The OpenAI-shaped request that generates (or counts) this Anthropic one."""
    system = [block.text for block in body.system or []]
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(body.messages):
        if message.role == "system":
            # Mid-conversation instructions join the system prompt: chat templates (Gemma's, Llama's)
            # accept a system message only at the start.
            system.append(_system_text(message, index))
        else:
            messages += _turn(message, index)
    if system:
        messages.insert(0, {"role": "system", "content": "\n\n".join(system)})
    fields: dict[str, Any] = {"model": body.model, "messages": messages}
    if body.tools:
        fields["tools"] = [{"type": "function", "function": {
            "name": tool.name, **({"description": tool.description} if tool.description else {}),
            "parameters": tool.input_schema}} for tool in body.tools]
    choice = body.tool_choice
    if choice is not None:
        fields["tool_choice"] = (TOOL_CHOICES[choice.type] if choice.type != "tool"
                                 else {"type": "function", "function": {"name": choice.name}})
        if choice.disable_parallel_tool_use:
            fields["parallel_tool_calls"] = False
    if isinstance(body, MessagesRequest):
        fields.update(max_tokens=body.max_tokens, stream=body.stream, stop=body.stop_sequences,
                      temperature=body.temperature, top_p=body.top_p, top_k=body.top_k)
        if body.output_config and body.output_config.format:
            fields["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "output", "schema": body.output_config.format.json_schema}}
    return ChatRequest.model_validate(fields)


def _turn(message: Message, index: int) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI messages: tool results become `tool` messages (before the
    user's own words, as Anthropic orders them), tool_use blocks become `tool_calls`."""
    where = f"messages[{index}].content"
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for block in message.content:
        if block.type in ("thinking", "redacted_thinking"):
            continue  # earlier reasoning handed back: not part of the prompt
        if message.role == "assistant" and block.type not in ("text", "tool_use"):
            raise HTTPError(400, f"{where}: an assistant message holds text and tool_use blocks, not {block.type!r}.",
                            param=where, code="invalid_value")
        if message.role == "user" and block.type == "tool_use":
            raise HTTPError(400, f"{where}: tool_use blocks belong in assistant messages.", param=where,
                            code="invalid_value")
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "image":
            images.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
        elif block.type == "tool_use":
            calls.append({"id": block.id, "type": "function", "function": {
                "name": block.name, "arguments": json.dumps(block.input, ensure_ascii=False)}})
        else:
            results.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": _result_text(block, where)})
    if message.role == "assistant":
        return [{"role": "assistant", "content": "".join(texts), **({"tool_calls": calls} if calls else {})}]
    if not texts and not images:
        return results
    # Text alone is one string (blocks on their own lines); with images, OpenAI content parts.
    content: Any = [*({"type": "text", "text": t} for t in texts), *images] if images else "\n".join(texts)
    return [*results, {"role": "user", "content": content}]


def _system_text(message: Message, index: int) -> str:
    if any(block.type != "text" for block in message.content):
        raise HTTPError(400, f"messages[{index}].content: a system message holds text blocks only.",
                        param=f"messages[{index}].content", code="invalid_value")
    return "\n".join(block.text for block in message.content)


def _image_url(block: ImageBlock) -> str:
    source = block.source
    return f"data:{source.media_type};base64,{source.data}" if source.type == "base64" else source.url


def _result_text(block: ToolResultBlock, where: str) -> str:
    if any(part.type != "text" for part in block.content):
        raise HTTPError(400, f"{where}: images inside a tool_result are not supported; send them in a user "
                             "message's own image blocks.", param=where, code="invalid_value")
    text = "\n".join(part.text for part in block.content)
    return f"Error: {text}" if block.is_error else text


# -- deltas -> Anthropic ----------------------------------------------------------------


def stop_of(delta: Delta | None, stops: list[str]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence): "stop_sequence" only for one of the client's own sequences."""
    if delta is None:
        return "end_turn", None
    if delta.finish_reason == "stop" and delta.stop_sequence is not None and delta.stop_sequence in stops:
        return "stop_sequence", delta.stop_sequence
    return STOP_REASONS.get(delta.finish_reason or "stop", "end_turn"), None


def tool_use(call: dict[str, Any]) -> ToolUseOut:
    try:
        arguments = json.loads(call["function"]["arguments"] or "{}")
    except json.JSONDecodeError:
        arguments = None
    return ToolUseOut(id="toolu_" + call["id"].removeprefix("call_"), name=call["function"]["name"],
                      input=arguments if isinstance(arguments, dict) else {})


def usage_of(delta: Delta | None) -> Usage:
    """As Anthropic counts: `input_tokens` evaluated, `cache_read_input_tokens` taken from the prompt cache."""
    u = delta.usage if delta is not None else None
    cached = u.cached_tokens if u else 0
    return Usage(input_tokens=u.prompt_tokens - cached if u else 0, output_tokens=u.completion_tokens if u else 0,
                 cache_read_input_tokens=cached)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode("utf-8")


# -- routes ------------------------------------------------------------------------------


def refuse_threads(body: MessagesRequest) -> None:
    """Message threads (beta) keep a conversation at Anthropic; this gateway keeps none, so it answers
    as Anthropic does where a thread cannot be used. On that code the SDKs' thread runners and Claude
    Code send the whole conversation again and stop threading; a plain 400, or ignoring the field,
    would break them or lose the history they think the server holds."""
    if body.thread not in (None, False) or body.previous_message_id is not None:
        refusal = HTTPError(400, "Message threads are not supported by this gateway: it keeps no conversation "
                                 "state; send the full conversation without `thread`.",
                            param="thread", code="thread_unsupported_request")
        refusal.details = {"error_code": "thread_unsupported_request"}
        raise refusal


async def messages(gw: "Gateway", request: Request) -> Response | StreamResponse:
    body: MessagesRequest = parse_body(MessagesRequest, request)
    refuse_threads(body)
    handle, first, deltas = await open_chat(gw, request, to_chat(body))
    mid, stops = f"msg_{uuid.uuid4().hex[:24]}", body.stop_sequences or []
    if body.stream:
        return StreamResponse(closing(_events(mid, handle.name, stops, first, deltas), deltas),
                              headers=dict(SSE_HEADERS))

    text, last = "", None
    async for delta in chain(first, deltas):
        text += delta.text
        last = delta if delta.finish_reason else last
    calls = [tool_use(call) for call in (last.tool_calls if last is not None else None) or []]
    reason, sequence = stop_of(last, stops)
    answer = MessageResponse(id=mid, model=handle.name, content=[*([TextOut(text=text)] if text or not calls else []),
                                                                  *calls],
                             stop_reason=reason, stop_sequence=sequence, usage=usage_of(last))
    return json_response(answer.model_dump(mode="json"))


async def _events(mid: str, model: str, stops: list[str], first: Delta | None,
                  deltas: AsyncIterator[Delta]) -> AsyncIterator[bytes]:
    """Anthropic's event stream: message_start, ping, one content block per text run and per tool
    call (a call's input streams as `input_json_delta` fragments while it is generated),
    message_delta (stop_reason, usage), message_stop; an `error` event if generation fails."""
    known = first if first is not None and first.finish_reason else None  # a one-delta answer: usage known now
    start = MessageResponse(id=mid, model=model, content=[], stop_reason=None, usage=usage_of(known))
    yield _event("message_start", {"type": "message_start", "message": start.model_dump(mode="json")})
    yield _event("ping", {"type": "ping"})
    index, open_block, last = 0, None, None  # open_block: "text", a streamed call's id, or None
    streamed: set[str] = set()
    try:
        async for delta in chain(first, deltas):
            if delta.text:
                if open_block != "text":
                    if open_block is not None:
                        yield _block_stop(index)
                        index += 1
                    yield _block_start(index, TextOut(text="").model_dump())
                    open_block = "text"
                yield _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": {"type": "text_delta", "text": delta.text}})
            for part in delta.tool_call_deltas or []:
                if part.name is not None:  # a call starts: its own block, after whatever block was open
                    if open_block is not None:
                        yield _block_stop(index)
                        index += 1
                    streamed.add(part.id)
                    yield _block_start(index, {"type": "tool_use", "id": "toolu_" + part.id.removeprefix("call_"),
                                               "name": part.name, "input": {}})
                    open_block = part.id
                elif part.arguments:
                    yield _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                        "type": "input_json_delta", "partial_json": part.arguments}})
            if delta.finish_reason:
                last = delta
    except Exception as exc:  # noqa: BLE001 - the status line is sent: reported in-band, and the stream ends
        yield error_event(exc, ERROR_STYLE)
        return
    final = [call for call in (last.tool_calls if last is not None else None) or []]
    if open_block is None and not final:
        yield _block_start(index, TextOut(text="").model_dump())  # as the JSON answer: one (empty) text block
        open_block = "text"
    if open_block is not None:
        yield _block_stop(index)
        index += 1
    for call in final:
        if call["id"] in streamed:
            continue
        use = tool_use(call)
        yield _block_start(index, {**use.model_dump(), "input": {}})
        yield _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
            "type": "input_json_delta", "partial_json": json.dumps(use.input, ensure_ascii=False)}})
        yield _block_stop(index)
        index += 1
    reason, sequence = stop_of(last, stops)
    usage = usage_of(last)
    yield _event("message_delta", {"type": "message_delta",
                                   "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                   "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                                             "cache_read_input_tokens": usage.cache_read_input_tokens}})
    yield _event("message_stop", {"type": "message_stop"})


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def _block_stop(index: int) -> bytes:
    return _event("content_block_stop", {"type": "content_block_stop", "index": index})


async def count_tokens(gw: "Gateway", request: Request) -> Response:
    """The prompt tokens a /v1/messages call with this body would use: the model's own tokenizer
    and chat template (and tool prompt, and image positions), counted on the model's thread."""
    body: CountTokensRequest = parse_body(CountTokensRequest, request)
    handle, _params, chat_messages, options = await chat_inputs(gw, request, to_chat(body))
    count = await handle.call_beside(lambda backend: backend.count_chat(chat_messages, options), "counts_beside")
    return json_response(CountTokensResponse(input_tokens=count).model_dump())


ROUTES = [
    Route("POST", "/v1/messages", "chat", messages, request=MessagesRequest, error=ErrorResponse,
          response={"application/json": MessageResponse, "text/event-stream": None}),  # `stream: true`: events
    Route("POST", "/v1/messages/count_tokens", "chat", count_tokens, request=CountTokensRequest,
          response=CountTokensResponse, error=ErrorResponse),
]
