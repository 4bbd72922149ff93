"""Bodies of the tokenizer routes (`POST /tokenize`, `/detokenize`, `/apply-template`), shaped as
llama.cpp's `llama-server` reads and answers them, plus `model` to pick one of the manifest's
text models (left out: the first text model, as llama-server serves its one model)."""

from __future__ import annotations

from typing import Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from schemas.openai import ChatRequest


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    content: str = Field("", description="the text to tokenize")
    add_special: bool = Field(False, description="add the special tokens a prompt starts with (BOS)")
    parse_special: bool = Field(True, description="read special-token spellings in the text as those tokens")
    with_pieces: bool = Field(False, description="answer {id, piece} objects instead of ids")


class Piece(BaseModel):
    id: int
    piece: Union[str, list[int]] = Field(description="the token's text, or its bytes when they are not valid UTF-8")


class TokenizeResponse(BaseModel):
    tokens: Union[list[int], list[Piece]]


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[StrictInt] = Field(default_factory=list, max_length=1_000_000)


class DetokenizeResponse(BaseModel):
    content: str


class ApplyTemplateRequest(ChatRequest):
    """A chat request's `model`, `messages` and `tools`/`tool_choice`: the prompt is the one that
    request would give the engine. Sampling fields are accepted and ignored."""


class ApplyTemplateResponse(BaseModel):
    prompt: str
