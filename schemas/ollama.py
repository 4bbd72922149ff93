"""Request and response bodies of the Ollama API (`/api/...`), as Ollama's own server reads and writes them.

Only the shapes: the translation onto the gateway's one chat path is gateway/api/ollama/.
Unknown fields are ignored (Ollama does the same), so newer clients keep working; `options`
stays a plain dict because Ollama's clients send many runner settings this gateway does not
have (gateway/api/ollama/translate.py says which it reads).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticUseDefault


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    @field_validator("*", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any) -> Any:
        if value is None:  # clients built from dicts send `"format": null`
            raise PydanticUseDefault()
        return value


# `format`: "" (none), "json", or a JSON Schema object; `keep_alive`: seconds or a Go duration ("5m").
Format = Union[Literal["", "json"], dict[str, Any]]
KeepAlive = Union[float, str]


class OllamaToolCallFunction(_Lenient):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    index: int | None = None


class OllamaToolCall(_Lenient):
    id: str | None = None
    function: OllamaToolCallFunction


class OllamaMessage(_Lenient):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = Field(None, description="base64 images, for vision models")
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = Field(None, description="on a tool message: the function whose result it is")
    thinking: str | None = None  # earlier reasoning handed back: not part of the prompt


class _Generation(_Lenient):
    model: str = Field(min_length=1)
    stream: bool = True
    format: Format = ""
    options: dict[str, Any] = Field(default_factory=dict)
    keep_alive: KeepAlive | None = None
    think: Union[bool, Literal["low", "medium", "high"]] = False


class OllamaChatRequest(_Generation):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class OllamaGenerateRequest(_Generation):
    prompt: str = ""
    system: str | None = None
    images: list[str] | None = None
    raw: bool = False
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None


class OllamaEmbedRequest(_Lenient):
    model: str = Field(min_length=1)
    input: Union[str, list[str]]
    truncate: bool = True
    dimensions: int | None = Field(None, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)
    keep_alive: KeepAlive | None = None


class OllamaEmbeddingsRequest(_Lenient):
    """The older `/api/embeddings`: one prompt, one (unnormalized) vector."""

    model: str = Field(min_length=1)
    prompt: str
    options: dict[str, Any] = Field(default_factory=dict)
    keep_alive: KeepAlive | None = None


class OllamaModelRequest(_Lenient):
    """`/api/show`, `/api/pull`, `/api/delete`, `/api/push`: `model` (older clients send `name`)."""

    model: str = ""
    name: str = ""
    stream: bool = True
    verbose: bool = False

    @property
    def target(self) -> str:
        return self.model or self.name


# -- answers ------------------------------------------------------------------------------------


class OllamaDetails(BaseModel):
    parent_model: str = ""
    format: str
    family: str
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


class OllamaModelEntry(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: OllamaDetails


class OllamaTags(BaseModel):
    models: list[OllamaModelEntry]


class OllamaRunningModel(OllamaModelEntry):
    expires_at: str
    size_vram: int
    context_length: int | None = None


class OllamaRunning(BaseModel):
    models: list[OllamaRunningModel]


class OllamaShowResponse(BaseModel):
    modelfile: str
    parameters: str
    template: str
    details: OllamaDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class OllamaAnswerMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    tool_calls: list[dict[str, Any]] | None = None


class OllamaTimings(BaseModel):
    """The last object of a generation (also every streamed line's `model`, `created_at`, `done`)."""

    model: str
    created_at: str
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class OllamaChatResponse(OllamaTimings):
    message: OllamaAnswerMessage


class OllamaGenerateResponse(OllamaTimings):
    response: str


class OllamaEmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class OllamaEmbeddingsResponse(BaseModel):
    embedding: list[float]


class OllamaVersion(BaseModel):
    version: str


class OllamaStatus(BaseModel):
    status: str


class OllamaError(BaseModel):
    """Every error on an /api/... route (an NDJSON line of this shape ends a stream that failed)."""

    error: str
