"""Request and response bodies of POST /v1/rerank (and its alias /v1/reranking).

The shape is the one Jina, Cohere, llama.cpp's `llama-server` and LocalAI
share, so their clients work unchanged: `query`, `documents` (strings, or
objects with a `text`), `top_n`, `return_documents`; the answer lists
`results` of `index` (into the request's documents), `relevance_score` and,
when asked, the `document` itself, best first. Unknown fields are ignored, as
those servers do (Cohere's `rank_fields`, `max_chunks_per_doc`, ...).

The per-model limits (how many documents, how long each) are the model's
options and are checked by the route, not here: a schema knows no model.
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator
from pydantic_core import PydanticUseDefault

MAX_DOCUMENTS = 10_000  # the hard ceiling of any model; a model's `options.max_documents` is usually lower


class RerankDocument(BaseModel):
    """A document given as an object (Cohere's and Jina's form): only `text` is read."""

    model_config = ConfigDict(extra="ignore")

    text: StrictStr


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    query: StrictStr = Field(min_length=1)
    documents: list[Union[StrictStr, RerankDocument]] = Field(min_length=1, max_length=MAX_DOCUMENTS)
    top_n: StrictInt | None = Field(None, ge=1, description="answer only the best N (default: all)")
    return_documents: StrictBool = Field(False, description="include each document's text in its result")

    @field_validator("model", "top_n", "return_documents", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any) -> Any:
        if value is None:
            raise PydanticUseDefault()  # clients send explicit nulls for unset options
        return value

    @field_validator("documents", mode="before")
    @classmethod
    def _shape(cls, value: Any) -> Any:
        """One clear message instead of pydantic's union branches."""
        if isinstance(value, list):
            for index, item in enumerate(value):
                if not (isinstance(item, str) or (isinstance(item, dict) and isinstance(item.get("text"), str))):
                    raise ValueError(f"documents[{index}] must be a string or an object with a string `text`")
        return value

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResult(BaseModel):
    index: int = Field(description="position of the document in the request")
    relevance_score: float = Field(description="the model's raw score (a logit): higher is more relevant")
    document: RerankDocument | None = Field(None, description="only with return_documents: true")


class RerankResponse(BaseModel):
    id: str
    object: str = "list"
    model: str
    results: list[RerankResult]
    usage: RerankUsage
