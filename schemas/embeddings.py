"""Request and response bodies of POST /v1/embeddings.

One body serves both kinds of client: the original Nexa server's
(`input`, `normalize`, `truncate`) and OpenAI's (`input`, `model`,
`encoding_format`, `dimensions`, `user`). Unknown fields are ignored, as
OpenAI's own server does.

`normalize` has no fixed default here (None): SERVER-API.md documents false,
and that is what a request without it gets, unless the model's manifest entry
sets `options.normalize: true` (useful for OpenAI clients, which never send the
field and expect unit vectors, as OpenAI's models return).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator
from pydantic_core import PydanticUseDefault

MAX_INPUTS = 2048  # OpenAI's limit per request

EmbeddingInput = Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]]


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: EmbeddingInput
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, gt=0)
    normalize: bool | None = None
    truncate: bool = True
    user: str | None = None

    @field_validator("encoding_format", "truncate", "dimensions", "model", "user", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any) -> Any:
        if value is None:
            raise PydanticUseDefault()  # OpenAI clients send explicit nulls for unset options
        return value

    @field_validator("input", mode="before")
    @classmethod
    def _shape(cls, value: object) -> object:
        """One clear message instead of pydantic's four union branches."""
        if isinstance(value, str) or (isinstance(value, list) and (
                all(isinstance(v, str) for v in value) or all(_is_id(v) for v in value)
                or all(isinstance(v, list) and all(_is_id(t) for t in v) for v in value))):
            return value
        raise ValueError("input must be a string, a list of strings, a list of token ids (integers) "
                         "or a list of token-id lists")

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: EmbeddingInput) -> EmbeddingInput:
        if isinstance(value, str):
            if not value:
                raise ValueError("input must not be an empty string")
            return value
        if not value:
            raise ValueError("input must not be an empty list")
        if len(value) > MAX_INPUTS and not isinstance(value[0], int):
            raise ValueError(f"input may hold at most {MAX_INPUTS} items")
        for index, item in enumerate(value):
            if isinstance(item, (str, list)) and not item:
                raise ValueError(f"input[{index}] is empty")
            if isinstance(item, int) and item < 0:
                raise ValueError(f"input[{index}] is a negative token id")
            if isinstance(item, list) and any(token < 0 for token in item):
                raise ValueError(f"input[{index}] holds a negative token id")
        return value

    def inputs(self) -> list[str] | list[list[int]]:
        """Always a list of texts or a list of token-id lists (one per embedding)."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if isinstance(value[0], int):
            return [list(value)]  # one text given as token ids
        return list(value)


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]  # floats, or base64 of little-endian float32


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage
