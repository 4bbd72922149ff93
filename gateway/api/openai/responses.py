"""`/v1/responses`: the OpenAI Responses API, translated onto the one chat path.

A Responses request becomes a `ChatRequest` (input items -> messages, flat function
tools -> chat tools, `text.format` -> `response_format`) and runs through
`open_chat`, so prompting, sampling, stop, grammar-constrained tool calls and usage
are exactly those of `/v1/chat/completions`. The answer is assembled by one
`ResponseTurn` for both the JSON answer and the event stream, so the two cannot
drift apart. Stored responses (`store`, `previous_response_id`, GET/DELETE) live in
`gateway.api.openai.responses_store`, per API key.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator

from pydantic import ValidationError

from gateway.api.chat import chain, closing, open_chat
from gateway.api.common import SSE_HEADERS, parse_body, sse
from gateway.api.openai.responses_events import ResponseTurn
from gateway.api.openai.responses_store import ResponseStore, Stored
from gateway.http.core import HTTPError, Request, Response, Route, StreamResponse, json_response
from gateway.http.security import current_key
from schemas.openai import ChatRequest
from schemas.responses import InputItem, ResponseObject, ResponsesRequest

if TYPE_CHECKING:
    from gateway.api.context import Gateway

CHOICES = ("auto", "none", "required")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def store_of(gw: "Gateway") -> ResponseStore:
    """The gateway's store; its limits follow the manifest (also after a reload)."""
    store = gw.responses_store
    store.max_items = gw.manifest.server.responses_max_stored
    store.ttl_s = gw.manifest.server.responses_ttl_s
    return store


def owner() -> str:
    return ResponseStore.owner(current_key.get())


def not_found(response_id: str, param: str | None = None) -> HTTPError:
    return HTTPError(404, f"No response with id {response_id!r} is stored (unknown, deleted, expired, or stored "
                          "under another API key).", param=param, code="response_not_found")


# -- request translation ------------------------------------------------------------------


def input_items(body: ResponsesRequest) -> list[dict[str, Any]]:
    """`input` as stored items (each with an id), the form `input_items` lists."""
    if isinstance(body.input, str):
        return [{"type": "message", "id": new_id("msg"), "role": "user", "status": "completed",
                 "content": [{"type": "input_text", "text": body.input}]}]
    return [item for index, raw in enumerate(body.input) if (item := _item(index, raw)) is not None]


def _item(index: int, item: InputItem) -> dict[str, Any] | None:
    where = f"input[{index}]"
    if item.type == "message":
        if item.role is None:
            raise HTTPError(400, f"{where} is a message without a `role`.", param=f"{where}.role", code="invalid_value")
        kind = "output_text" if item.role == "assistant" else "input_text"
        content = ([{"type": kind, "text": item.content}] if isinstance(item.content, str)
                   else [p.model_dump(exclude_none=True) for p in item.content or []])
        return {"type": "message", "id": item.id or new_id("msg"), "role": item.role,
                "status": item.status or "completed", "content": content}
    if item.type == "function_call":
        if not (item.call_id and item.name and item.arguments is not None):
            raise HTTPError(400, f"{where}: a function_call needs `call_id`, `name` and `arguments`.", param=where,
                            code="invalid_value")
        return {"type": "function_call", "id": item.id or new_id("fc"), "call_id": item.call_id, "name": item.name,
                "arguments": item.arguments, "status": "completed"}
    if item.type == "function_call_output":
        if not item.call_id or item.output is None:
            raise HTTPError(400, f"{where}: a function_call_output needs `call_id` and `output`.", param=where,
                            code="invalid_value")
        output = item.output if isinstance(item.output, str) else [p.model_dump(exclude_none=True) for p in item.output]
        return {"type": "function_call_output", "id": item.id or new_id("fco"), "call_id": item.call_id,
                "output": output, "status": "completed"}
    if item.type == "reasoning":
        return None  # accepted and ignored, like `reasoning`
    raise HTTPError(400, f"{where}: input items of type {item.type!r} are not supported by this gateway "
                         "(message, function_call and function_call_output are).", param=f"{where}.type",
                    code="unsupported_value")


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
    if body.background:
        raise HTTPError(400, "background: true is not supported by this gateway; send the request without it "
                             "(and stream it if it is long).", param="background", code="unsupported_value")


# -- handlers -----------------------------------------------------------------------------


async def create(gw: "Gateway", request: Request) -> Response | StreamResponse:
    body: ResponsesRequest = parse_body(ResponsesRequest, request)
    _refuse_unsupported(body)
    store, who = store_of(gw), owner()
    history: list[dict[str, Any]] = []
    if body.previous_response_id:
        previous = store.get(who, body.previous_response_id)
        if previous is None:
            raise not_found(body.previous_response_id, "previous_response_id")
        history = [*previous.input_items, *previous.response["output"]]
    items = history + input_items(body)
    tools, namespaces = functions_of(body.tools)
    chat = chat_request(body, messages_of(body.instructions, items), tools)
    try:
        handle, first, deltas = await open_chat(gw, request, chat)
    except HTTPError as exc:
        if exc.param == "max_tokens":
            exc.param, exc.message = "max_output_tokens", exc.message.replace("max_tokens", "max_output_tokens")
        raise
    turn = ResponseTurn(ResponseObject(
        id=new_id("resp"), created_at=int(time.time()), status="in_progress", model=handle.name,
        instructions=body.instructions, max_output_tokens=body.max_output_tokens,
        parallel_tool_calls=body.parallel_tool_calls, previous_response_id=body.previous_response_id,
        store=body.store, temperature=body.temperature, top_p=body.top_p, tool_choice=body.tool_choice,
        tools=body.tools, text={"format": body.text.format.model_dump(by_alias=True, exclude_none=True)},
        user=body.user, metadata=body.metadata), namespaces)

    def keep(response: dict[str, Any]) -> None:
        if body.store and response["status"] != "failed":
            store.put(who, response["id"], Stored(response=response, input_items=items))

    if body.stream:
        async def events() -> AsyncIterator[bytes]:
            for event in turn.start():
                yield _event(event)
            try:
                async for delta in chain(first, deltas):
                    batch = turn.feed(delta)
                    if turn.finished:
                        keep(turn.dump())  # before the terminal event: a client may retrieve it at once
                    for event in batch:
                        yield _event(event)
            except Exception as exc:  # noqa: BLE001 - reported in-band once headers are sent
                yield _event(turn.fail(exc))
                return
            if not turn.finished:  # the engine ended without a finish reason: never leave the stream open
                yield _event(turn.fail(RuntimeError("generation ended without a finish reason")))

        return StreamResponse(closing(events(), deltas), headers=dict(SSE_HEADERS))

    async for delta in chain(first, deltas):
        turn.feed(delta)
    if not turn.finished:
        raise HTTPError(500, "generation ended without a finish reason", code="internal_error")
    response = turn.dump()
    keep(response)
    return json_response(response)


def _event(event: dict[str, Any]) -> bytes:
    """Responses events name their type in an `event:` line as well as in the data."""
    return f"event: {event['type']}\n".encode() + sse(event)


async def retrieve(gw: "Gateway", request: Request) -> Response:
    stored = store_of(gw).get(owner(), request.path_params["response_id"])
    if stored is None:
        raise not_found(request.path_params["response_id"])
    return json_response(stored.response)


async def delete(gw: "Gateway", request: Request) -> Response:
    response_id = request.path_params["response_id"]
    if not store_of(gw).delete(owner(), response_id):
        raise not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def list_input_items(gw: "Gateway", request: Request) -> Response:
    """OpenAI's cursor page: `order` (desc by default), `limit` (20, at most 100), `after`/`before` ids."""
    response_id = request.path_params["response_id"]
    stored = store_of(gw).get(owner(), response_id)
    if stored is None:
        raise not_found(response_id)
    order = request.query_value("order") or "desc"
    if order not in ("asc", "desc"):
        raise HTTPError(400, "order must be 'asc' or 'desc'.", param="order", code="invalid_value")
    try:
        limit = int(request.query_value("limit") or 20)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise HTTPError(400, "limit must be an integer from 1 to 100.", param="limit", code="invalid_value")
    items = stored.input_items if order == "asc" else stored.input_items[::-1]
    ids = [item["id"] for item in items]
    for name, keep_after in (("after", True), ("before", False)):
        cursor = request.query_value(name)
        if cursor:
            if cursor not in ids:
                raise HTTPError(400, f"{name}: no input item {cursor!r} in this response.", param=name,
                                code="invalid_value")
            at = ids.index(cursor)
            items, ids = (items[at + 1:], ids[at + 1:]) if keep_after else (items[:at], ids[:at])
    page = items[:limit]
    return json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                          "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})


ROUTES = [
    Route("POST", "/v1/responses", "chat", create, request=ResponsesRequest,
          response={"application/json": ResponseObject, "text/event-stream": None}),  # `stream: true`: events
    Route("GET", "/v1/responses/{response_id}", "chat", retrieve, response=ResponseObject),
    ("DELETE", "/v1/responses/{response_id}", "chat", delete),
    ("GET", "/v1/responses/{response_id}/input_items", "chat", list_input_items),
]
