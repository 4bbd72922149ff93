"""`/v1/conversations`: OpenAI's Conversations API on the state store.

A conversation is metadata plus a list of items; `POST /v1/responses` with
`conversation` reads the items as context and appends its input and output
(gateway/api/openai/responses.py). The same item shapes as Responses `input`, with
ids; a key sees only its own conversations. Conversations need no model, so these
routes are served whatever the manifest declares.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gateway.api.common import parse_body
from gateway.api.openai import stored
from gateway.api.openai.items import stored_items
from gateway.http.core import HTTPError, Request, Response, Route, json_response
from schemas.conversations import (
    Conversation,
    ConversationCreate,
    ConversationDeleted,
    ConversationUpdate,
    ItemList,
    ItemsCreate,
)

if TYPE_CHECKING:
    from gateway.api.context import Gateway


async def _load(gw: "Gateway", request: Request) -> tuple[Any, str, dict[str, Any]]:
    store, who = stored.store_of(gw), stored.owner()
    return store, who, await stored.load_conversation(store, who, request.path_params["conversation_id"])


async def create(gw: "Gateway", request: Request) -> Response:
    body: ConversationCreate = parse_body(ConversationCreate, request)
    store, who = stored.store_of(gw), stored.owner()
    items = await stored_items(store, who, body.items, "items")
    conversation = {"id": stored.new_id("conv"), "created_at": int(time.time()), "metadata": body.metadata,
                    "items": items}
    await stored.save_conversation(store, who, conversation)
    await stored.point_items(store, who, items, {"conversation": conversation["id"]})
    return json_response(stored.public(conversation))


async def retrieve(gw: "Gateway", request: Request) -> Response:
    _, _, conversation = await _load(gw, request)
    return json_response(stored.public(conversation))


async def update(gw: "Gateway", request: Request) -> Response:
    body: ConversationUpdate = parse_body(ConversationUpdate, request)
    conversation = await stored.change_conversation(stored.store_of(gw), stored.owner(),
                                                    request.path_params["conversation_id"],
                                                    lambda conversation: conversation.update(metadata=body.metadata))
    return json_response(stored.public(conversation))


async def delete(gw: "Gateway", request: Request) -> Response:
    conversation_id = request.path_params["conversation_id"]
    if not await stored.store_of(gw).delete(stored.owner(), stored.CONVERSATION, conversation_id):
        raise stored.conversation_not_found(conversation_id)
    return json_response({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


async def list_items(gw: "Gateway", request: Request) -> Response:
    _, _, conversation = await _load(gw, request)
    return json_response(stored.page(conversation["items"], request))


async def add_items(gw: "Gateway", request: Request) -> Response:
    body: ItemsCreate = parse_body(ItemsCreate, request)
    store, who, conversation = await _load(gw, request)
    items = await stored_items(store, who, body.items, "items")
    await stored.append_to_conversation(store, who, conversation["id"], items, param=None)
    return json_response({"object": "list", "data": items, "first_id": items[0]["id"], "last_id": items[-1]["id"],
                          "has_more": False})


def _item_at(conversation: dict[str, Any], item_id: str) -> int:
    for index, item in enumerate(conversation["items"]):
        if item["id"] == item_id:
            return index
    raise HTTPError(404, f"No item with id {item_id!r} in conversation {conversation['id']!r}.",
                    code="item_not_found")


async def retrieve_item(gw: "Gateway", request: Request) -> Response:
    _, _, conversation = await _load(gw, request)
    return json_response(conversation["items"][_item_at(conversation, request.path_params["item_id"])])


async def delete_item(gw: "Gateway", request: Request) -> Response:
    """Answers the conversation, as OpenAI's does."""
    def remove(conversation: dict[str, Any]) -> None:
        del conversation["items"][_item_at(conversation, request.path_params["item_id"])]

    conversation = await stored.change_conversation(stored.store_of(gw), stored.owner(),
                                                    request.path_params["conversation_id"], remove)
    return json_response(stored.public(conversation))


ROUTES = [
    Route("POST", "/v1/conversations", None, create, request=ConversationCreate, response=Conversation),
    Route("GET", "/v1/conversations/{conversation_id}", None, retrieve, response=Conversation),
    Route("POST", "/v1/conversations/{conversation_id}", None, update, request=ConversationUpdate,
          response=Conversation),
    Route("DELETE", "/v1/conversations/{conversation_id}", None, delete, response=ConversationDeleted),
    Route("GET", "/v1/conversations/{conversation_id}/items", None, list_items, response=ItemList),
    Route("POST", "/v1/conversations/{conversation_id}/items", None, add_items, request=ItemsCreate,
          response=ItemList),
    Route("GET", "/v1/conversations/{conversation_id}/items/{item_id}", None, retrieve_item),
    Route("DELETE", "/v1/conversations/{conversation_id}/items/{item_id}", None, delete_item, response=Conversation),
]
