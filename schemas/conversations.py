"""Request and response bodies of the OpenAI Conversations API (`/v1/conversations`).

A conversation is a list of items (the same items as Responses `input`) kept by the
gateway; a response created with `conversation` reads them as its context and
appends its input and output. Shapes only: gateway/api/openai/conversations.py serves them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.openai import _Lenient
from schemas.responses import InputItem, Metadata

MAX_ITEMS_PER_REQUEST = 20  # OpenAI's bound on `items` in one create / add request


class ConversationCreate(_Lenient):
    items: list[InputItem] = Field(default_factory=list, max_length=MAX_ITEMS_PER_REQUEST)
    metadata: Metadata = Field(default_factory=dict)


class ConversationUpdate(_Lenient):
    metadata: Metadata


class ItemsCreate(_Lenient):
    items: list[InputItem] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


class Conversation(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    created_at: int
    metadata: dict[str, str] = Field(default_factory=dict)


class ConversationDeleted(BaseModel):
    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: bool = True


class ItemList(BaseModel):
    """OpenAI's cursor page of items (conversation items, a response's input items)."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
