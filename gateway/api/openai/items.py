"""Responses `input` items (and conversation items) as the gateway stores them: each with an id.

One translation for `/v1/responses` input and `/v1/conversations` items: a message (text
content becomes parts), a `function_call`, a `function_call_output`, or an `item_reference`,
which is replaced by the item the gateway stored under that id for the same API key
(unknown: a 400 naming it, as OpenAI answers). `reasoning` items are dropped: these models
have no separate reasoning channel to feed them back to.
"""

from __future__ import annotations

from typing import Any

from gateway.api.openai.stored import new_id, referenced
from gateway.http.core import HTTPError
from gateway.state.base import Store
from schemas.responses import InputItem


async def stored_items(store: Store, who: str, raw: str | list[InputItem], field: str = "input"
                       ) -> list[dict[str, Any]]:
    """`raw` as stored items, references resolved (a string is one user message)."""
    if isinstance(raw, str):
        return [{"type": "message", "id": new_id("msg"), "role": "user", "status": "completed",
                 "content": [{"type": "input_text", "text": raw}]}]
    items: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        if item.type == "item_reference":
            items.append(await referenced(store, who, f"{field}[{index}]", item.id))
        elif (converted := to_item(item, f"{field}[{index}]")) is not None:
            items.append(converted)
    return items


def to_item(item: InputItem, where: str) -> dict[str, Any] | None:
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
                         "(message, function_call, function_call_output and item_reference are).",
                    param=f"{where}.type", code="unsupported_value")
