"""`/v1/responses`: the OpenAI Responses API, translated onto the one chat path.

A Responses request becomes a `ChatRequest` (input items -> messages, flat function
tools -> chat tools, `text.format` -> `response_format`) and runs through
`open_chat`, so prompting, sampling, stop, grammar-constrained tool calls and usage
are exactly those of `/v1/chat/completions`. The answer is assembled by one
`ResponseTurn` for both the JSON answer and the event stream, so the two cannot
drift apart. Stored responses (`store`, `previous_response_id`, `item_reference`,
GET/DELETE, input items) and `conversation` context live in the state store, per API
key (gateway/api/openai/stored.py); `truncation: "auto"` is gateway/api/openai/truncation.py.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, AsyncIterator

from pydantic import ValidationError

from gateway.api.chat import chain, closing, open_chat
from gateway.api.common import SSE_HEADERS, parse_body, sse
from gateway.api.openai import background, stored
from gateway.api.openai.items import stored_items
from gateway.api.openai.responses_events import ResponseTurn, generate
from gateway.api.openai.truncation import fit
from gateway.http.core import HTTPError, Request, Response, Route, StreamResponse, json_response
from schemas.openai import ChatRequest
from schemas.responses import ResponseObject, ResponsesRequest

if TYPE_CHECKING:
    from gateway.api.context import Gateway

CHOICES = ("auto", "none", "required")


# -- request translation ------------------------------------------------------------------


def _part(part: dict[str, Any], where: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text") or ""}
    if kind == "refusal":
        return {"type": "text", "text": part.get("refusal") or ""}
    if kind == "input_image" and part.get("image_url"):
        return {"type": "image_url", "image_url": {"url": part["image_url"]}}
    raise HTTPError(400, f"{where}: content parts of type {kind!r}"
                         f"{' with a file_id' if part.get('file_id') else ''} are not supported by this gateway "
                         "(input_text, output_text, and input_image with an image_url are).", param=where,
                    code="unsupported_value")


def _content(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    parts = [_part(p, where) for p in content]
    return "".join(p["text"] for p in parts) if all(p["type"] == "text" for p in parts) else parts


def messages_of(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items -> chat messages: calls join the assistant turn they belong to, outputs become tool messages."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    for index, item in enumerate(items):
        where = f"input[{index}].content"
        if item["type"] == "message":
            messages.append({"role": item["role"], "content": _content(item["content"], where)})
        elif item["type"] == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            output = _content(item["output"], where)
            text = output if isinstance(output, str) else "".join(p.get("text", "") for p in output)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
    return messages


def functions_of(tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Flat function tools -> chat tools, and the namespace of each function that came inside a
    `namespace` tool (Codex groups some of its tools that way; a call then names its namespace)."""
    out: list[dict[str, Any]] = []
    namespaces: dict[str, str] = {}
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if tool.get("type") == "namespace" and isinstance(tool.get("tools"), list):
            for inner_index, inner in enumerate(tool["tools"]):
                out.append(_function(inner, f"{where}.tools[{inner_index}]"))
                namespaces[inner["name"]] = str(tool.get("name"))
        else:
            out.append(_function(tool, where))
    return out, namespaces


def _function(tool: Any, where: str) -> dict[str, Any]:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise HTTPError(400, f"{where} is a hosted tool ({kind!r}), which this gateway does not run; "
                             "only `function` tools (executed by the client) are supported.",
                        param=f"{where}.type", code="unsupported_tool")
    if not isinstance(tool.get("name"), str):
        raise HTTPError(400, f"{where} needs a `name`.", param=f"{where}.name", code="invalid_value")
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": function}


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str) and choice in CHOICES:
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise HTTPError(400, f"tool_choice {choice!r} is not supported: use 'auto', 'none', 'required' or "
                         "{\"type\": \"function\", \"name\": ...} (hosted tools are not run by this gateway).",
                    param="tool_choice", code="unsupported_value")


def _response_format(body: ResponsesRequest) -> dict[str, Any] | None:
    fmt = body.text.format
    if fmt.type == "json_schema":
        if not isinstance(fmt.json_schema, dict):
            raise HTTPError(400, "text.format.schema must be a JSON Schema object.", param="text.format.schema",
                            code="invalid_value")
        return {"type": "json_schema", "json_schema": {"name": fmt.name or "output", "schema": fmt.json_schema,
                                                       "strict": fmt.strict}}
    return {"type": fmt.type} if fmt.type == "json_object" else None


def chat_request(body: ResponsesRequest, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> ChatRequest:
    if not messages:
        raise HTTPError(400, "`input` is empty: send a string or at least one item.", param="input",
                        code="invalid_value")
    data: dict[str, Any] = {
        "model": body.model, "messages": messages, "max_tokens": body.max_output_tokens, "stream": body.stream,
        "temperature": body.temperature, "top_p": body.top_p, "seed": body.seed, "stop": body.stop,
        "user": body.user, "parallel_tool_calls": body.parallel_tool_calls,
        "tool_choice": _tool_choice(body.tool_choice), "response_format": _response_format(body),
    }
    if tools:
        data["tools"] = tools
    elif data["tool_choice"] == "auto":
        data["tool_choice"] = None
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        raise HTTPError(400, f"Invalid input: {exc.errors()[0]['msg']}", param="input", code="invalid_value") from None


def _refuse_unsupported(body: ResponsesRequest) -> None:
    if body.background and not body.store:
        raise HTTPError(400, "background: true needs store: true (a background response is kept in the state "
                             "store to be retrieved); send it without `store: false`.", param="background",
                        code="invalid_value")


# -- handlers -----------------------------------------------------------------------------


async def create(gw: "Gateway", request: Request) -> Response | StreamResponse:
    body: ResponsesRequest = parse_body(ResponsesRequest, request)
    _refuse_unsupported(body)
    if body.background and gw.manifest.server.responses_max_stored == 0:
        raise HTTPError(400, "background: true needs a stored response, and this gateway stores none "
                             "(server.responses_max_stored is 0).", param="background", code="invalid_value")
    store, who = stored.store_of(gw), stored.owner()
    history: list[dict[str, Any]] = []
    conversation_id = body.conversation_id
    if body.previous_response_id:
        previous = await stored.load_response(store, who, body.previous_response_id, "previous_response_id")
        history = [*previous["input_items"], *previous["response"]["output"]]
    elif conversation_id:
        history = (await stored.load_conversation(store, who, conversation_id, "conversation"))["items"]
    new_items = await stored_items(store, who, body.input)
    if body.store or conversation_id:
        await store.ping()  # a store that is down is a 503 now, not after the answer was generated
    items = history + new_items
    tools, namespaces = functions_of(body.tools)

    def build(candidate: list[dict[str, Any]]) -> ChatRequest:
        return chat_request(body, messages_of(body.instructions, candidate), tools)

    prompt = await fit(gw, request, items, body.max_output_tokens, build) if body.truncation == "auto" else items
    chat = build(prompt)  # a request this gateway cannot run is a 400 now, also in the background

    async def opener(on: Request = request) -> tuple[Any, Any, AsyncIterator[Any]]:
        try:
            return await open_chat(gw, on, chat)
        except HTTPError as exc:
            if exc.param == "max_tokens":
                exc.param, exc.message = "max_output_tokens", exc.message.replace("max_tokens", "max_output_tokens")
            raise

    model = gw.select_model(body.model, "chat", request.path).name if body.background else None
    handle, first, deltas = (None, None, None) if body.background else await opener()
    turn = ResponseTurn(ResponseObject(
        id=stored.new_id("resp"), created_at=int(time.time()), status="in_progress", model=model or handle.name,
        instructions=body.instructions, max_output_tokens=body.max_output_tokens,
        parallel_tool_calls=body.parallel_tool_calls, previous_response_id=body.previous_response_id,
        store=body.store, temperature=body.temperature, top_p=body.top_p, tool_choice=body.tool_choice,
        tools=body.tools, text={"format": body.text.format.model_dump(by_alias=True, exclude_none=True)},
        truncation=body.truncation, user=body.user, metadata=body.metadata, background=body.background,
        conversation={"id": conversation_id} if conversation_id else None), namespaces)

    async def remember(response: dict[str, Any]) -> None:
        """What keeping a response adds besides its own record: where its items are, its conversation."""
        if body.store:
            await stored.point_items(store, who, [*new_items, *response["output"]], {"response": response["id"]})
        if conversation_id:
            await stored.append_to_conversation(store, who, conversation_id, [*new_items, *response["output"]])

    async def keep(response: dict[str, Any]) -> None:
        if response["status"] == "failed":
            return
        if body.store:
            await store.put(who, stored.RESPONSE, response["id"], {"response": response, "input_items": items})
        await remember(response)

    if body.background:  # the job runs on a copy of the request: this one ends with its answer
        state = {k: v for k, v in request.state.items() if k != "trace"}
        if request.state.get("trace") is not None:  # the job's own span, linked to this request's
            state["trace"] = request.state["trace"].detach(turn.response.id)
        detached = Request(request.method, request.path, headers=dict(request.headers), client=request.client,
                           state=state)
        job = await background.start(store, who, turn, lambda: opener(detached), remember, items, state.get("trace"))
        if not body.stream:
            return json_response(turn.dump())
        return StreamResponse((_event(event) async for event in background.in_band(job.follow(-1))),
                              headers=dict(SSE_HEADERS))

    if body.stream:
        async def events() -> AsyncIterator[bytes]:
            for event in turn.start():
                yield _event(event)
            async for event in generate(turn, first, deltas, keep):
                yield _event(event)

        return StreamResponse(closing(events(), deltas), headers=dict(SSE_HEADERS))

    async for delta in chain(first, deltas):
        turn.feed(delta)
    if not turn.finished:
        raise HTTPError(500, "generation ended without a finish reason", code="internal_error")
    response = turn.dump()
    await keep(response)
    return json_response(response)


def _event(event: dict[str, Any]) -> bytes:
    """Responses events name their type in an `event:` line as well as in the data."""
    return f"event: {event['type']}\n".encode() + sse(event)


async def retrieve(gw: "Gateway", request: Request) -> Response | StreamResponse:
    """The stored response (a background one settled as failed if its gateway died); with `stream=true`,
    a background response's events after `starting_after`, live while it runs."""
    store, who = stored.store_of(gw), stored.owner()
    found = await background.settle(store, who, await stored.load_response(store, who,
                                                                           request.path_params["response_id"]))
    if (request.query_value("stream") or "").lower() not in ("true", "1"):
        return json_response(found["response"])
    try:
        after = int(request.query_value("starting_after") or -1)
    except ValueError:
        raise HTTPError(400, "starting_after must be an integer (a sequence number).", param="starting_after",
                        code="invalid_value") from None
    background.replayable(found, after)
    events = background.in_band(background.events(store, who, found, after))
    return StreamResponse((_event(event) async for event in events), headers=dict(SSE_HEADERS))


async def delete(gw: "Gateway", request: Request) -> Response:
    response_id = request.path_params["response_id"]
    if not await stored.store_of(gw).delete(stored.owner(), stored.RESPONSE, response_id):
        raise stored.response_not_found(response_id)
    background.forget(response_id)  # a job still running here stops now (on another gateway: at its next lease)
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def cancel(gw: "Gateway", request: Request) -> Response:
    """OpenAI cancels background responses only (a foreground stream stops when its client leaves);
    cancelling one that has finished answers it unchanged, as OpenAI's repeated cancel does."""
    store, who = stored.store_of(gw), stored.owner()
    found = await stored.load_response(store, who, request.path_params["response_id"])
    if not found.get("background"):
        raise HTTPError(400, "Only responses created with background=true can be cancelled (a client that "
                             "disconnects from a stream stops it).", code="invalid_request")
    return json_response(await background.cancel(store, who, found))


async def list_input_items(gw: "Gateway", request: Request) -> Response:
    """OpenAI's cursor page: `order` (desc by default), `limit` (20, at most 100), `after`/`before` ids."""
    found = await stored.load_response(stored.store_of(gw), stored.owner(), request.path_params["response_id"])
    return json_response(stored.page(found["input_items"], request))


ROUTES = [
    Route("POST", "/v1/responses", "chat", create, request=ResponsesRequest,
          response={"application/json": ResponseObject, "text/event-stream": None}),  # `stream: true`: events
    Route("GET", "/v1/responses/{response_id}", "chat", retrieve,
          response={"application/json": ResponseObject, "text/event-stream": None}),  # `stream=true`: events
    ("DELETE", "/v1/responses/{response_id}", "chat", delete),
    ("GET", "/v1/responses/{response_id}/input_items", "chat", list_input_items),
    ("POST", "/v1/responses/{response_id}/cancel", "chat", cancel),
]
