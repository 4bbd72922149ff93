"""The Responses and Conversations APIs' objects in the state store (gateway/state).

Three kinds of object, each owned by the API key that made it:
- `response`: the response as answered plus every item the model saw (`input_items`), so
  `previous_response_id` continues it and `/input_items` lists it;
- `item`: where each input and output item is kept (its response or conversation), by the item's
  id, so an `item_reference` finds it (a pointer: the item itself is stored once);
- `conversation`: its metadata and its items, oldest first.
An id another key owns is answered exactly like an unknown one (404 or 400), so a key cannot
even learn that it exists.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Callable

from gateway.http.core import HTTPError, Request
from gateway.http.security import current_key
from gateway.state.base import Limits, Store, owner_of

if TYPE_CHECKING:
    from gateway.api.context import Gateway

RESPONSE, ITEM, CONVERSATION = "response", "item", "conversation"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def store_of(gw: "Gateway") -> Store:
    """The gateway's state store, with the bounds the manifest sets now (also after a reload)."""
    server, store = gw.manifest.server, gw.state
    store.limits = Limits(ttl_s=server.responses_ttl_s, max_bytes=int(server.state_max_bytes),
                          max_count={RESPONSE: server.responses_max_stored})
    return store


def owner() -> str:
    key = current_key.get()
    return owner_of(key.key if key is not None else None)


def response_not_found(response_id: str, param: str | None = None) -> HTTPError:
    return HTTPError(404, f"No response with id {response_id!r} is stored (unknown, deleted, expired, or stored "
                          "under another API key).", param=param, code="response_not_found")


def conversation_not_found(conversation_id: str, param: str | None = None) -> HTTPError:
    return HTTPError(404, f"No conversation with id {conversation_id!r} (unknown, deleted, expired, or made "
                          "with another API key).", param=param, code="conversation_not_found")


# -- responses and items ------------------------------------------------------------------


async def load_response(store: Store, who: str, response_id: str, param: str | None = None) -> dict[str, Any]:
    stored = await store.get(who, RESPONSE, response_id)
    if stored is None:
        raise response_not_found(response_id, param)
    return stored


async def point_items(store: Store, who: str, items: list[dict[str, Any]], holder: dict[str, str]) -> None:
    """Record where each item is kept (`{"response": id}` or `{"conversation": id}`) under its own id,
    so an `item_reference` finds it without a second copy of the item."""
    for item in items:
        await store.put(who, ITEM, item["id"], holder)


async def referenced(store: Store, who: str, where: str, item_id: str | None) -> dict[str, Any]:
    """The stored item an `item_reference` at `where` (`input[2]`) names: a 400 naming it when unknown."""
    if not item_id:
        raise HTTPError(400, f"{where} is an item_reference without an `id`.", param=f"{where}.id",
                        code="invalid_value")
    item = await _find(store, who, item_id)
    if item is None:
        raise HTTPError(400, f"Item with id {item_id!r} not found (unknown, expired, deleted, or stored under "
                             "another API key).", param=where, code="item_not_found")
    return item


async def _find(store: Store, who: str, item_id: str) -> dict[str, Any] | None:
    holder = await store.get(who, ITEM, item_id)
    if holder is None:
        return None
    if "response" in holder:
        found = await store.get(who, RESPONSE, holder["response"])
        pool = [*found["input_items"], *found["response"]["output"]] if found else []
    else:
        found = await store.get(who, CONVERSATION, holder.get("conversation", ""))
        pool = found["items"] if found else []
    return next((item for item in pool if item["id"] == item_id), None)


# -- conversations ------------------------------------------------------------------------


async def load_conversation(store: Store, who: str, conversation_id: str, param: str | None = None
                            ) -> dict[str, Any]:
    conversation = await store.get(who, CONVERSATION, conversation_id)
    if conversation is None:
        raise conversation_not_found(conversation_id, param)
    return conversation


async def save_conversation(store: Store, who: str, conversation: dict[str, Any]) -> None:
    """Written whole: a conversation lives `responses_ttl_s` after its last change."""
    await store.put(who, CONVERSATION, conversation["id"], conversation)


async def change_conversation(store: Store, who: str, conversation_id: str,
                              change: Callable[[dict[str, Any]], None], param: str | None = None) -> dict[str, Any]:
    """`change` the stored conversation in place through the store's `update`, so concurrent changes
    (two requests, or two gateways on one store) are all kept: none writes over another's."""
    def changed(conversation: dict[str, Any]) -> dict[str, Any]:
        change(conversation)
        return conversation

    conversation = await store.update(who, CONVERSATION, conversation_id, changed)
    if conversation is None:
        raise conversation_not_found(conversation_id, param)
    return conversation


async def append_to_conversation(store: Store, who: str, conversation_id: str, items: list[dict[str, Any]],
                                 param: str | None = "conversation") -> None:
    """Each batch of items in one piece, in the order the writes landed."""
    await change_conversation(store, who, conversation_id, lambda conversation: conversation["items"].extend(items),
                              param)
    await point_items(store, who, items, {"conversation": conversation_id})


def public(conversation: dict[str, Any]) -> dict[str, Any]:
    """The conversation object as OpenAI answers it (its items are listed separately)."""
    return {"id": conversation["id"], "object": "conversation", "created_at": conversation["created_at"],
            "metadata": conversation["metadata"]}


# -- lists --------------------------------------------------------------------------------


def page(items: list[dict[str, Any]], request: Request, default_order: str = "desc") -> dict[str, Any]:
    """OpenAI's cursor page: `order` (desc by default), `limit` (20, at most 100), `after`/`before` ids."""
    order = request.query_value("order") or default_order
    if order not in ("asc", "desc"):
        raise HTTPError(400, "order must be 'asc' or 'desc'.", param="order", code="invalid_value")
    try:
        limit = int(request.query_value("limit") or 20)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise HTTPError(400, "limit must be an integer from 1 to 100.", param="limit", code="invalid_value")
    items = items if order == "asc" else items[::-1]
    ids = [item["id"] for item in items]
    for name, keep_after in (("after", True), ("before", False)):
        cursor = request.query_value(name)
        if cursor:
            if cursor not in ids:
                raise HTTPError(400, f"{name}: no item {cursor!r} in this list.", param=name, code="invalid_value")
            at = ids.index(cursor)
            items, ids = (items[at + 1:], ids[at + 1:]) if keep_after else (items[:at], ids[:at])
    chunk = items[:limit]
    return {"object": "list", "data": chunk, "first_id": chunk[0]["id"] if chunk else None,
            "last_id": chunk[-1]["id"] if chunk else None, "has_more": len(items) > limit}
