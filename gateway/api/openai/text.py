"""OpenAI's text routes: /v1/completions, /v1/chat/completions and the original server's
/v1/function-calling (a chat completion that always calls a function).

Every generation route runs the backend as a stream, even when the client
asked for one JSON answer: one code path, and a client that leaves stops the
engine either way.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator

from gateway.api.chat import chain, closing, finish_of, open_chat, open_completion, usage_of
from gateway.api.common import SSE_HEADERS, parse_body, sse
from gateway.api.logprobs import chat_logprobs, completion_logprobs
from gateway.http.core import HTTPError, Request, Response, Route, StreamResponse, json_response
from gateway.http.errors import error_event
from gateway.http.openapi import Events
from schemas.openai import (
    AssistantMessage,
    ChatChoice,
    ChatChunk,
    ChatChunkChoice,
    ChatRequest,
    ChatResponse,
    ChunkDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
)

if TYPE_CHECKING:
    from gateway.api.context import Gateway


# -- /v1/completions -----------------------------------------------------------


async def completions(gw: "Gateway", request: Request) -> Response | StreamResponse:
    body: CompletionRequest = parse_body(CompletionRequest, request)
    if body.suffix:
        raise HTTPError(400, "suffix (fill-in-the-middle) is not supported by this gateway.", param="suffix",
                        code="unsupported_parameter")
    handle, first, deltas = await open_completion(gw, request, body, default_max=128)
    prompt = body.prompt
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    echo = prompt if body.echo and isinstance(prompt, str) else ""

    offset = [len(echo)]

    def chunk(text: str, finish: str | None, entries: list | None = None) -> dict[str, Any]:
        logprobs = None
        if entries and body.logprobs is not None:
            logprobs = completion_logprobs(entries, offset[0])
            offset[0] += sum(len(e.token) for e in entries)
        return {"id": cid, "object": "text_completion", "created": created, "model": handle.name,
                "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]}

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def events() -> AsyncIterator[bytes]:
            if echo:
                yield sse(chunk(echo, None))
            try:
                async for delta in chain(first, deltas):
                    if delta.text or delta.logprobs:
                        yield sse(chunk(delta.text, None, delta.logprobs))
                    if delta.finish_reason:
                        yield sse(chunk("", finish_of(delta)))
                        if include_usage:
                            yield sse({**chunk("", None), "choices": [], "usage": usage_of(delta).model_dump()})
            except Exception as exc:  # noqa: BLE001 - reported in-band once headers are sent
                yield error_event(exc)
            yield sse("[DONE]")

        return StreamResponse(closing(events(), deltas), headers=dict(SSE_HEADERS))

    text, last, entries = echo, None, []
    async for delta in chain(first, deltas):
        text += delta.text
        entries += delta.logprobs or []
        last = delta if delta.finish_reason else last
    logprobs = completion_logprobs(entries, len(echo)) if body.logprobs is not None else None
    answer = CompletionResponse(
        id=cid, created=created, model=handle.name,
        choices=[CompletionChoice(text=text, logprobs=logprobs, finish_reason=finish_of(last) if last else "stop")],
        usage=usage_of(last), result=text,
    )
    return json_response(answer.model_dump(mode="json"))


async def chat_completions(gw: "Gateway", request: Request) -> Response | StreamResponse:
    body: ChatRequest = parse_body(ChatRequest, request)
    handle, first, deltas = await open_chat(gw, request, body)
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: ChunkDelta, finish: str | None = None, entries: list | None = None) -> bytes:
            logprobs = chat_logprobs(entries) if entries and body.logprobs else None
            data = ChatChunk(id=cid, created=created, model=handle.name, choices=[
                ChatChunkChoice(delta=delta, finish_reason=finish, logprobs=logprobs)]).model_dump(mode="json")
            # As OpenAI: a delta carries only the keys it sets (the last one is {}).
            data["choices"][0]["delta"] = delta.model_dump(mode="json", exclude_none=True)
            return sse(data)

        async def events() -> AsyncIterator[bytes]:
            yield chunk(ChunkDelta(role="assistant", content=""))
            streamed: set[str] = set()  # calls whose arguments were streamed as they were generated
            try:
                async for delta in chain(first, deltas):
                    if delta.text:
                        yield chunk(ChunkDelta(content=delta.text), entries=delta.logprobs)
                    for part in delta.tool_call_deltas or []:
                        if part.name is not None:  # id, type and name first, as OpenAI streams them
                            streamed.add(part.id)
                            yield chunk(ChunkDelta(tool_calls=[{"index": part.index, "id": part.id, "type": "function",
                                                                "function": {"name": part.name, "arguments": ""}}]))
                        elif part.arguments:
                            yield chunk(ChunkDelta(tool_calls=[{"index": part.index,
                                                                "function": {"arguments": part.arguments}}]))
                    for index, call in enumerate(delta.tool_calls or []):
                        if call["id"] in streamed:
                            continue
                        # As OpenAI streams them: id, type and name first, then the arguments.
                        head = {"index": index, "id": call["id"], "type": "function",
                                "function": {"name": call["function"]["name"], "arguments": ""}}
                        yield chunk(ChunkDelta(tool_calls=[head]))
                        yield chunk(ChunkDelta(tool_calls=[{"index": index, "function": {
                            "arguments": call["function"]["arguments"]}}]))
                    if delta.finish_reason:
                        yield chunk(ChunkDelta(), finish_of(delta))
                        if include_usage:
                            usage = ChatChunk(id=cid, created=created, model=handle.name, choices=[], usage=usage_of(delta))
                            yield sse(usage.model_dump(mode="json"))
            except Exception as exc:  # noqa: BLE001
                yield error_event(exc)
            yield sse("[DONE]")

        return StreamResponse(closing(events(), deltas), headers=dict(SSE_HEADERS))

    text, last, entries = "", None, []
    async for delta in chain(first, deltas):
        text += delta.text
        entries += delta.logprobs or []
        last = delta if delta.finish_reason else last
    calls = last.tool_calls if last is not None else None
    message = AssistantMessage(content=None if calls else text, tool_calls=calls)
    if calls and (body.legacy_functions or request.path == "/v1/function-calling"):
        message.function_call = dict(calls[0]["function"])  # the pre-tools field some clients still read
    answer = ChatResponse(
        id=cid, created=created, model=handle.name,
        choices=[ChatChoice(message=message, finish_reason=finish_of(last) if last else "stop",
                            logprobs=chat_logprobs(entries) if body.logprobs and not calls else None)],
        usage=usage_of(last),
    )
    data = answer.model_dump(mode="json")
    for choice in data["choices"]:
        choice["message"] = {k: v for k, v in choice["message"].items() if v is not None or k == "content"}
    return json_response(data)


CHAT_ANSWERS = {"application/json": ChatResponse, "text/event-stream": Events(ChatChunk)}  # `stream: true`: SSE

ROUTES = [
    Route("POST", "/v1/completions", "complete", completions, request=CompletionRequest,
          response={"application/json": CompletionResponse, "text/event-stream": Events(CompletionResponse)}),
    Route("POST", "/v1/chat/completions", "chat", chat_completions, request=ChatRequest, response=CHAT_ANSWERS),
    Route("POST", "/v1/function-calling", "chat", chat_completions, request=ChatRequest, response=CHAT_ANSWERS),
]
