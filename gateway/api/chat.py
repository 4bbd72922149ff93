"""The one chat path: every chat protocol (Chat Completions, the original function-calling route,
Responses, Anthropic Messages, Ollama) translates its body into a `ChatRequest` and comes through
`open_chat`: one place for prompting, sampling, tools, response format, images and usage, and for
the stream plumbing (first delta pulled before answering, metrics, closing the engine's stream).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, AsyncIterator

from backends.base import ChatOptions, Delta, SamplingParams
from backends.media import MediaError, content_parts
from gateway.http.core import HTTPError, Request
from gateway.media.inputs import pixel_limit, resolve_image_parts
from gateway.models.handle import ModelHandle
from gateway.observability import metrics
from gateway.observability.prompt_cache import log_abandoned, log_generation
from gateway.observability.tracing import CLIENT_LEFT
from schemas.openai import ChatRequest, CompletionRequest, PromptTokensDetails, SamplingFields, Usage

if TYPE_CHECKING:
    from gateway.api.context import Gateway


def sampling(body: SamplingFields, handle: ModelHandle, default_max: int | None) -> SamplingParams:
    limit = handle.spec.max_tokens_limit
    if body.max_tokens is not None and body.max_tokens > limit:
        raise HTTPError(400, f"max_tokens is {body.max_tokens}, but model {handle.name!r} allows at most {limit}.",
                        param="max_tokens", code="max_tokens_too_large")
    params = SamplingParams(
        max_tokens=body.max_tokens or default_max or limit,
        stop=body.stop or [],
        grammar_max_tokens=None if body.max_tokens else min(handle.spec.grammar_max_tokens, limit),
    )
    defaults, given = handle.spec.sampling, body.model_fields_set
    for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty",
                 "frequency_penalty", "seed"):
        value = getattr(body, name) if name in given else None  # (the penalties default to 0.0, not None)
        if value is None:
            value = getattr(defaults, name)  # the manifest's `sampling:` for what the request leaves unset
        if value is not None:
            setattr(params, name, value)
    if params.top_p == 0:  # what evaluation harnesses send for greedy decoding
        params.top_p, params.top_k = 1.0, 1
    return params


def usage_of(delta: Delta | None) -> Usage:
    u = delta.usage if delta and delta.usage else None
    return Usage(prompt_tokens=u.prompt_tokens if u else 0, completion_tokens=u.completion_tokens if u else 0,
                 total_tokens=u.total_tokens if u else 0,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=u.cached_tokens if u else 0))


def finish_of(delta: Delta) -> str:
    return "stop" if delta.finish_reason == "cancelled" else (delta.finish_reason or "stop")


async def start_stream(handle: ModelHandle, request: Request,
                       deltas: AsyncIterator[Delta]) -> tuple[Delta | None, AsyncIterator[Delta]]:
    """Pull the first delta before answering, so that errors such as an over-long
    prompt or a model that fails to load become a proper HTTP status."""
    deltas = _observed(handle, request, deltas)
    try:
        first = await deltas.__anext__()
    except StopAsyncIteration:
        return None, deltas
    return first, deltas


async def _observed(handle: ModelHandle, request: Request, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """Time to first token, token counts and (for streams) total latency, as metrics (nexa_* and the
    model-server protocol's vllm:*); the generation's log line (tokens, cached tokens, timings) when it
    ends; and, for a traced request, its first token, usage, finish reason and, for a stream, the end of
    its span when the last token went out."""
    started = request.state.get("started", time.perf_counter())
    trace = request.state.get("trace")
    ttft: float | None = None
    last: Delta | None = None
    count, logged = 0, False
    output: list[str] | None = [] if trace is not None and trace.capture_content else None
    failure: BaseException | None = None  # what ended it early: the client left (a cancellation, a close), or an error
    try:
        async for delta in deltas:
            if ttft is None:
                ttft = time.perf_counter() - started
                metrics.TTFT.labels(handle.name).observe(ttft)
                if trace is not None:
                    trace.first_token()
                    # the span ends with the stream (a background job's: with the job)
                    trace.deferred = bool(request.state.get("stream")) and not trace.detached
            if delta.usage:
                metrics.TOKENS.labels(handle.name).inc(delta.usage.completion_tokens)
                metrics.PROMPT_TOKENS.labels(handle.name).inc(delta.usage.prompt_tokens)
                last = delta
                if delta.finish_reason:
                    log_generation(handle.name, request.state.get("request_id"), request.state.get("route"),
                                   delta.usage, ttft, delta.finish_reason)
                    logged = True
            if output is not None:
                output.append(delta.text)
            count += 1
            yield delta
    except BaseException as exc:
        failure = exc
        raise
    finally:
        await deltas.aclose()
        elapsed = time.perf_counter() - started
        if ttft is not None and not logged:  # it began, and its usage never came
            log_abandoned(handle.name, request.state.get("request_id"), request.state.get("route"), count, ttft,
                          elapsed)
        if request.state.get("stream"):
            metrics.LATENCY.labels(request.state.get("route", request.path)).observe(elapsed)
        usage = last.usage if last is not None else None
        if usage is not None:
            metrics.MODEL_SERVER.observe(handle.name, ttft=ttft, e2e=elapsed, prompt_tokens=usage.prompt_tokens,
                                         generation_tokens=usage.completion_tokens, finish_reason=last.finish_reason)
        if trace is not None:
            if usage is not None:
                trace.usage(usage.prompt_tokens, usage.completion_tokens)
                trace.finish_reasons([finish_of(last)])
            if output is not None:
                trace.content(output="".join(output))
            if ttft is not None and not logged:  # what the log's abandoned line says, on the span
                left = isinstance(failure, (asyncio.CancelledError, GeneratorExit))
                trace.abandoned(count, CLIENT_LEFT if left else type(failure).__name__ if failure else "stream_incomplete")
            if trace.deferred:
                trace.end(200)


def note_request(request: Request, handle: ModelHandle, params: SamplingParams, prompt: Any = None) -> None:
    """The model and its sampling on the request's trace, and the prompt when the manifest opts in."""
    trace = request.state.get("trace")
    if trace is not None:
        trace.model(handle.name, params)
        if prompt is not None:
            trace.content(messages=prompt)


async def chain(first: Delta | None, rest: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    if first is not None:
        yield first
    async for delta in rest:
        yield delta


async def closing(events: AsyncIterator[bytes], *inner: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    """Make sure the model stream is closed when the HTTP stream is, however it ends."""
    try:
        async for item in events:
            yield item
    finally:
        await events.aclose()
        for it in inner:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()


def chat_messages(body: ChatRequest, handle: ModelHandle) -> list[dict[str, Any]]:
    """Plain dicts for the chat template: the whole history.

    For models with the "vision" capability, list content is passed through as
    OpenAI-style part dicts; for text-only models the text parts are joined and
    an image is a clear 400."""
    vision = "vision" in handle.capabilities
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(body.messages):
        content: Any = message.content
        if isinstance(content, list):
            parts = []
            try:
                for part in content_parts([p.model_dump(exclude_none=True) for p in content]):
                    if part.is_image and not vision:
                        raise HTTPError(400, f"Model {handle.name!r} is a text-only model and cannot read images; "
                                             "send images to a MULTIMODAL model.",
                                        param=f"messages[{index}].content", code="images_not_supported")
                    parts.append(part)
            except MediaError as exc:
                text = str(exc)
                raise HTTPError(400, f"{text[:1].upper()}{text[1:]}.", param=f"messages[{index}].content",
                                code=exc.code) from None
            content = [p.raw for p in parts] if vision else "".join(p.text for p in parts)
        item: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role,
                                "content": content or ""}
        for extra in ("name", "tool_calls", "tool_call_id"):
            value = getattr(message, extra)
            if value is not None:
                item[extra] = value
        messages.append(item)
    if handle.spec.system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": handle.spec.system_prompt})
    return messages


async def open_chat(gw: "Gateway", request: Request, body: ChatRequest
                    ) -> tuple[ModelHandle, Delta | None, AsyncIterator[Delta]]:
    """Start one chat generation from an OpenAI-shaped request.

    Every chat protocol (Chat Completions, the original function-calling route,
    Responses, Anthropic Messages) translates its body into a `ChatRequest` and
    comes through here: one path for prompting, sampling, tools, response format,
    images and usage. Returns the model, the first delta (already pulled, so load
    and prompt errors are HTTP statuses) and the rest of the stream."""
    handle, params, messages, options = await chat_inputs(gw, request, body)
    note_request(request, handle, params, messages)
    deltas = handle.stream(lambda backend, cancelled: backend.chat(messages, params, cancelled, options))
    request.state["stream"] = body.stream
    first, deltas = await start_stream(handle, request, deltas)
    return handle, first, deltas


async def open_completion(gw: "Gateway", request: Request, body: CompletionRequest, default_max: int | None
                          ) -> tuple[ModelHandle, Delta | None, AsyncIterator[Delta]]:
    """Start one text completion of the prompt as sent, no chat template: /v1/completions and
    Ollama's `raw: true` generate. Returns what `open_chat` returns."""
    handle = gw.select_model(body.model, "complete", request.path)
    params = sampling(body, handle, default_max=default_max)
    params.logprobs = body.logprobs
    prompt = body.prompt
    note_request(request, handle, params, prompt)
    deltas = handle.stream(lambda backend, cancelled: backend.complete(prompt, params, cancelled))
    request.state["stream"] = body.stream
    first, deltas = await start_stream(handle, request, deltas)
    return handle, first, deltas


async def chat_inputs(gw: "Gateway", request: Request, body: ChatRequest
                      ) -> tuple[ModelHandle, SamplingParams, list[dict[str, Any]], ChatOptions]:
    """The model, sampling, messages and options `backend.chat` gets for this request;
    token counting (`backend.count_chat`) uses the same ones, so a count is the
    prompt the generation would see."""
    handle = gw.select_model(body.model, "chat", request.path)
    params = sampling(body, handle, default_max=None)
    params.logprobs = (body.top_logprobs or 0) if body.logprobs else None
    messages = chat_messages(body, handle)
    if "vision" in handle.capabilities:
        messages = await resolve_image_parts(messages, gw.manifest.server,
                                             pixel_limit(gw.manifest.server, handle.spec.options))
    tools, tool_choice = _tools_of(body)
    if request.path == "/v1/function-calling" and tools and tool_choice in (None, "auto"):
        # This route exists to "call the most appropriate function": with "auto" a small model
        # often just answers, and clients of the original read tool_calls[0] unconditionally.
        tool_choice = "required"
    options = ChatOptions(response_format=body.response_format)
    if tools:
        options.tools, options.tool_choice, options.parallel_tool_calls = tools, tool_choice, body.parallel_tool_calls
    return handle, params, messages, options


def _tools_of(body: ChatRequest) -> tuple[list[dict[str, Any]] | None, Any]:
    """`tools`/`tool_choice`, or the older `functions`/`function_call` mapped onto them."""
    if body.tools:
        return body.tools, body.tool_choice
    if body.functions:
        choice = body.function_call
        if isinstance(choice, dict):
            choice = {"type": "function", "function": {"name": choice.get("name")}}
        return [{"type": "function", "function": f} for f in body.functions], choice
    if body.tool_choice not in (None, "none", "auto"):
        raise HTTPError(400, "tool_choice needs `tools`.", param="tool_choice", code="invalid_value")
    return None, None
