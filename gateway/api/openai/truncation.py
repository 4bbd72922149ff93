"""`truncation: "auto"` on /v1/responses: drop the oldest items until the prompt fits.

The prompt is counted exactly as it would be generated (the model's chat template, tool
prompt and all: `backend.count_chat`), leaving room for the answer (`max_output_tokens`,
else a quarter of the context up to `ANSWER_ROOM`). System and developer messages and
`instructions` are never dropped, nor the newest item; a function call's outputs go
with it. The number of items to drop is found by bisection, so a long conversation
costs a handful of counts, not one per item. Models that cannot count (remote ones)
are sent the items as they are: their upstream applies its own limits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from backends.errors import BackendError, ContextLengthExceeded
from gateway.api.chat import chat_inputs
from gateway.http.core import Request
from schemas.openai import ChatRequest

if TYPE_CHECKING:
    from gateway.api.context import Gateway

ANSWER_ROOM = 512


def without_oldest(items: list[dict[str, Any]], dropped: int) -> list[dict[str, Any]]:
    """`items` less the `dropped` oldest droppable ones, and the outputs of the calls dropped."""
    droppable = [i for i, item in enumerate(items)
                 if not (item["type"] == "message" and item["role"] in ("system", "developer"))][:-1]
    gone = set(droppable[:dropped])
    calls = {items[i]["call_id"] for i in gone if items[i]["type"] == "function_call"}
    return [item for i, item in enumerate(items) if i not in gone
            and not (item["type"] == "function_call_output" and item["call_id"] in calls)]


def droppable_count(items: list[dict[str, Any]]) -> int:
    return max(0, sum(1 for item in items if not (item["type"] == "message"
                                                  and item["role"] in ("system", "developer"))) - 1)


async def fit(gw: "Gateway", request: Request, items: list[dict[str, Any]], max_output_tokens: int | None,
              build: Callable[[list[dict[str, Any]]], ChatRequest]) -> list[dict[str, Any]]:
    """The newest items whose prompt (built by `build`) fits the model's context with room to answer."""

    async def tokens(candidate: list[dict[str, Any]]) -> int:
        handle, _params, messages, options = await chat_inputs(gw, request, build(candidate))
        return await handle.call(lambda backend: backend.count_chat(messages, options))

    handle = gw.select_model(build(items).model, "chat", request.path)
    n_ctx = handle.spec.nctx
    budget = n_ctx - (max_output_tokens or min(ANSWER_ROOM, n_ctx // 4))
    try:
        if await tokens(items) <= budget:
            return items
    except BackendError as exc:
        if "cannot count" in str(exc):
            return items
        raise
    low, high = 1, droppable_count(items)  # the answer is in [low, high]: fewest drops that fit
    if high < 1 or await tokens(without_oldest(items, high)) > budget:
        raise ContextLengthExceeded(f"Even the newest item alone (with instructions and system messages) does not "
                                    f"fit this model's context of {n_ctx} tokens with {n_ctx - budget} left to "
                                    "answer; send a shorter input.", param="input")
    while low < high:
        middle = (low + high) // 2
        if await tokens(without_oldest(items, middle)) <= budget:
            high = middle
        else:
            low = middle + 1
    return without_oldest(items, low)
