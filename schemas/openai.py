"""Request and response bodies of the OpenAI-compatible routes.

Nexa's original field names (`max_new_tokens`, `stop_words`) are accepted as
aliases of the OpenAI ones, so one model answers both kinds of client. Unknown
fields are ignored, as OpenAI's own server does, so newer SDKs keep working.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticUseDefault


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    @field_validator("*", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any) -> Any:
        # OpenAI types most fields as nullable; clients built from dicts send `"stream": null`.
        if value is None:
            raise PydanticUseDefault()
        return value


# Stop sequences: OpenAI takes 4; the original server's `stop_words` took more, so up to 16 of up to
# 256 characters each. The scan costs the same whatever the list (backends/stops.py); the bound
# keeps the request and the scanner's automaton small.
MAX_STOPS = 16
MAX_STOP_CHARS = 256


class StreamOptions(_Lenient):
    include_usage: bool = False


class SamplingFields(_Lenient):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, validation_alias=AliasChoices("max_tokens", "max_new_tokens", "max_completion_tokens"))
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    stop: list[str] | None = Field(None, validation_alias=AliasChoices("stop", "stop_words"))
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="only one choice per request is generated")
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repeat_penalty: float | None = Field(None, gt=0)
    user: str | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("stop")
    @classmethod
    def _stop_bounds(cls, value: list[str] | None) -> list[str] | None:
        if value and len(value) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences are allowed, got {len(value)}")
        if value and max(len(s) for s in value) > MAX_STOP_CHARS:
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
        return value


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str], list[int]] = ""
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=20)

    @field_validator("logprobs", mode="before")
    @classmethod
    def _logprobs_flag(cls, value: Any) -> Any:
        # The original server took a boolean: false means none, true means the chosen token only.
        if value is False:
            return None
        return 1 if value is True else value

    @field_validator("prompt")
    @classmethod
    def _single_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and value and isinstance(value[0], str):
            if len(value) != 1:
                raise ValueError("only one prompt per request is supported")
            return value[0]
        return value


class ContentPart(_Lenient):
    type: str
    text: str | None = None
    image_url: Any = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Union[str, dict[str, Any], None] = None
    functions: list[dict[str, Any]] | None = Field(None, description="deprecated OpenAI form of `tools`")
    function_call: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: bool | None = None
    logprobs: bool = False

    @property
    def legacy_functions(self) -> bool:
        return bool(self.functions)
    top_logprobs: int | None = Field(None, ge=0, le=20)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: Any = None
    finish_reason: str | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    result: str | None = Field(None, description="the original nexa server's documented field")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: Any = None
    finish_reason: str | None


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChunkDelta(BaseModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    logprobs: Any = None
    finish_reason: str | None = None


class ChatChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "nexa"
    type: str
    format: str
    state: str
    aliases: list[str]
    capabilities: list[str]
    error: str | None = None
    replicas: int = 1
    queue_depth: int = 0
    running: int = 0
    load_seconds: float | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    manifest_hash: str | None = None
