"""`POST /api/chat` and `POST /api/generate`: Ollama's generation routes on the gateway's one chat path.

The body is translated (translate.py) into the `ChatRequest` /v1/chat/completions would make and
started with `open_chat`; its deltas come back as Ollama's answer: newline-delimited JSON objects
(`stream`, Ollama's default) or one object (`stream: false`). The last object carries `done: true`,
`done_reason` and the counts and durations (nanoseconds) Ollama clients read. An error after the
first line is one `{"error": ...}` line, and the stream ends (Ollama's own in-band error).

`raw: true` on /api/generate is a text completion of the prompt as sent (no template), the same
engine call /v1/completions makes. An empty prompt (no messages) loads the model and answers
`done_reason: "load"`; with `keep_alive: 0` it unloads it (`"unload"`), as Ollama does.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, AsyncIterator

from backends.base import Delta
from gateway.api.chat import chain, closing, open_chat, open_completion
from gateway.api.common import parse_body
from gateway.api.ollama.translate import (
    chat_request,
    completion_request,
    generate_request,
    keep_alive_seconds,
    model_name,
    ollama_tool_calls,
    renamed,
)
from gateway.http.core import HTTPError, Request, Response, StreamResponse, json_response
from gateway.http.errors import error_event
from gateway.models.handle import ModelHandle
from gateway.models.state import ModelState
from schemas.ollama import OllamaChatRequest, OllamaGenerateRequest

if TYPE_CHECKING:
    from gateway.api.context import Gateway

NDJSON_HEADERS = {"content-type": "application/x-ndjson", "cache-control": "no-cache", "x-accel-buffering": "no"}

# The engine's finish_reason -> Ollama's done_reason (a tool call ends a turn as "stop" there).
_unloading: set[asyncio.Task] = set()

DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop", "cancelled": "stop"}


def now() -> str:
    """Ollama's `created_at`: RFC 3339 in UTC."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


class Clock:
    """What Ollama reports about one generation: load, prompt and generation time, in nanoseconds."""

    def __init__(self, request: Request, handle: ModelHandle | None):
        self.started = request.state.get("started", time.perf_counter())
        self.loaded = handle is not None and handle.state != ModelState.ready  # this request waited for a load
        self.first: float | None = None

    def mark(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def final(self, handle: ModelHandle, last: Delta | None) -> dict[str, Any]:
        end = time.perf_counter()
        first = self.first or end
        usage = last.usage if last is not None else None
        load = int((handle.load_seconds or 0) * 1e9) if self.loaded else 0
        return {"done": True, "done_reason": DONE_REASONS.get(last.finish_reason or "stop", "stop") if last else "stop",
                "total_duration": int((end - self.started) * 1e9), "load_duration": load,
                "prompt_eval_count": usage.prompt_tokens if usage else 0,
                "prompt_eval_duration": max(0, int((first - self.started) * 1e9) - load),
                "eval_count": usage.completion_tokens if usage else 0,
                "eval_duration": int((end - first) * 1e9)}


async def chat(gw: "Gateway", request: Request) -> Response | StreamResponse:
    body: OllamaChatRequest = parse_body(OllamaChatRequest, request)
    name = model_name(gw, body.model)
    keep = keep_alive_seconds(body.keep_alive)
    if not body.messages:
        return await load_only(gw, request, body.model, name, keep, "chat", {"message": {"role": "assistant",
                                                                                       "content": ""}})
    handle = gw.pool.get(name)
    clock = Clock(request, handle)
    try:
        handle, first, deltas = await open_chat(gw, request, chat_request(name, body))
    except HTTPError as exc:
        raise renamed(exc) from None
    return await answer(handle, body.model, body.stream, keep, clock, first, deltas, chat=True)


async def generate(gw: "Gateway", request: Request) -> Response | StreamResponse:
    body: OllamaGenerateRequest = parse_body(OllamaGenerateRequest, request)
    name = model_name(gw, body.model)
    keep = keep_alive_seconds(body.keep_alive)
    if not body.prompt and not body.images:
        return await load_only(gw, request, body.model, name, keep, "chat", {"response": ""})
    handle = gw.pool.get(name)
    clock = Clock(request, handle)
    try:
        if body.raw:
            handle, first, deltas = await open_raw(gw, request, name, body)
        else:
            handle, first, deltas = await open_chat(gw, request, generate_request(name, body))
    except HTTPError as exc:
        raise renamed(exc) from None
    return await answer(handle, body.model, body.stream, keep, clock, first, deltas, chat=False)


async def open_raw(gw: "Gateway", request: Request, name: str, body: OllamaGenerateRequest
                   ) -> tuple[ModelHandle, Delta | None, AsyncIterator[Delta]]:
    """`raw: true`: the engine call /v1/completions makes, on the prompt as sent."""
    return await open_completion(gw, request, completion_request(name, body), default_max=None)


async def answer(handle: ModelHandle, model: str, stream: bool, keep: float | None, clock: Clock,
                 first: Delta | None, deltas: AsyncIterator[Delta], *, chat: bool) -> Response | StreamResponse:
    """The deltas as Ollama's answer: NDJSON lines, or one object; `chat` picks /api/chat's `message`
    over /api/generate's `response`. Tool calls come as one line before the last, as Ollama sends them."""
    def piece(text: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        if not chat:
            return {"response": text}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        return {"message": message}

    if stream:
        async def lines() -> AsyncIterator[bytes]:
            last = None
            try:
                async for delta in chain(first, deltas):
                    clock.mark()
                    if delta.text:
                        yield line({"model": model, "created_at": now(), **piece(delta.text), "done": False})
                    calls = ollama_tool_calls(delta.tool_calls)
                    if calls and chat:
                        yield line({"model": model, "created_at": now(), **piece("", calls), "done": False})
                    if delta.finish_reason:
                        last = delta
            except Exception as exc:  # noqa: BLE001 - the status line is sent: reported in-band, and the stream ends
                yield error_event(exc, "ollama")
                return
            finally:
                release(handle, keep)
            yield line({"model": model, "created_at": now(), **piece(""), **clock.final(handle, last)})

        return StreamResponse(closing(lines(), deltas), headers=dict(NDJSON_HEADERS))

    text, last = "", None
    try:
        async for delta in chain(first, deltas):
            clock.mark()
            text += delta.text
            last = delta if delta.finish_reason else last
    finally:
        release(handle, keep)
    calls = ollama_tool_calls(last.tool_calls if last is not None else None) if chat else None
    return json_response({"model": model, "created_at": now(), **piece(text, calls), **clock.final(handle, last)})


def release(handle: ModelHandle, keep: float | None) -> None:
    """`keep_alive: 0`: unload once the model's queued work is done (a pinned model stays)."""
    if keep == 0 and not handle.spec.pinned:
        task = asyncio.get_running_loop().create_task(handle.unload("keep_alive"))
        _unloading.add(task)  # a reference until it ends (the loop keeps only weak ones)
        task.add_done_callback(_unloading.discard)


async def load_only(gw: "Gateway", request: Request, model: str, name: str, keep: float | None, capability: str,
                    empty: dict[str, Any]) -> Response:
    """An empty prompt: load the model (Ollama's way to warm one up), or unload it with keep_alive 0."""
    handle = gw.select_model(name, capability, request.path).current()
    if keep == 0:
        if handle.spec.pinned:
            raise HTTPError(400, f"model {handle.name!r} is pinned in the manifest and stays loaded.",
                            param="keep_alive", code="invalid_value")
        await handle.unload("keep_alive")
        reason = "unload"
    else:
        await handle.ready()
        reason = "load"
    return json_response({"model": model, "created_at": now(), **empty, "done": True, "done_reason": reason})
