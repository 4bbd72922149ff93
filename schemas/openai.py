"""Request and response bodies of the OpenAI-compatible routes.

Nexa's original field names (`max_new_tokens`, `stop_words`) are accepted as
aliases of the OpenAI ones, so one model answers both kinds of client. Unknown
fields are ignored, as OpenAI's own server does, so newer SDKs keep working.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    field_validator,
    model_validator,
)
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


class _Open(_Lenient):
    """A nested object that is checked, then handed on as the client's own dict (see `as_dict`):
    fields this gateway does not know stay in it, for templates and remote upstreams."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


def as_dict(value: BaseModel) -> dict[str, Any]:
    return value.model_dump(by_alias=True, exclude_unset=True)


def checked(model: type[BaseModel]) -> Any:
    """`model`'s validation (and JSON Schema), but the value stays a plain dict: the code after
    the schema boundary (tool prompts, grammars, remote upstreams) reads dicts."""
    return Annotated[model, AfterValidator(as_dict), PlainSerializer(lambda value: value, return_type=dict[str, Any])]


def json_type(value: Any) -> str:
    """The JSON type of a value, as the tag of a union (`by_json_type`)."""
    return {str: "<string>", dict: "<object>", list: "<array>"}.get(type(value), "<other>")


def by_json_type(what: str, **branches: Any) -> Any:
    """A union picked by the JSON type of the value, so a bad value gets the errors of the one
    branch it meant (`tool_choice.function: Input should be an object`), not of every branch.
    The tags are `<string>`, `<object>`, `<array>`; error paths leave them out (gateway/api/common.py)."""
    members = tuple(Annotated[branch, Tag(f"<{kind}>")] for kind, branch in branches.items())
    return Annotated[Union[members], Discriminator(json_type, custom_error_type="invalid_type",
                                                   custom_error_message=f"Input should be {what}")]


class FunctionDefinition(_Open):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON Schema object")
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _definitions_are_objects(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for key in ("$defs", "definitions", "properties"):
            if value is not None and key in value and not isinstance(value[key], dict):
                raise ValueError(f"{key} must be an object")
        return value


class ToolDefinition(_Open):
    type: str = "function"
    function: FunctionDefinition | None = None

    @model_validator(mode="after")
    def _function_tools_name_one(self) -> "ToolDefinition":
        if self.type == "function" and self.function is None:
            raise ValueError('a function tool needs "function": {"name": ..., "parameters": {...}}')
        return self


class FunctionName(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"] = "function"
    function: FunctionName


class FunctionCall(_Open):
    name: str
    arguments: str = "{}"

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments_as_json_text(cls, value: Any) -> Any:
        # OpenAI sends a JSON string; some clients echo the parsed object back.
        return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else value


class ToolCall(_Open):
    id: str | None = None
    type: str = "function"
    function: FunctionCall


class JSONSchemaFormat(_Open):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="a JSON Schema object")
    strict: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError('type "json_schema" needs "json_schema": {"name": ..., "schema": {...}}')
        return self


class ImageURL(_Open):
    url: str
    detail: str | None = None


ToolParam = checked(ToolDefinition)
FunctionParam = checked(FunctionDefinition)
ToolCallParam = checked(ToolCall)
ToolChoice = by_json_type('"none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
                          string=Literal["none", "auto", "required"],
                          object=checked(NamedToolChoice))
LegacyFunctionCall = by_json_type('"none", "auto" or {"name": ...}', string=Literal["none", "auto"],
                                  object=checked(FunctionName))


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
    image_url: by_json_type("a URL string or {\"url\": ...}", string=str,
                            object=checked(ImageURL)) | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: by_json_type("a string or a list of content parts", string=str, array=list[ContentPart]) | None = None
    name: str | None = None
    tool_calls: list[ToolCallParam] | None = None
    tool_call_id: str | None = None


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    response_format: checked(ResponseFormat) | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    functions: list[FunctionParam] | None = Field(None, description="deprecated OpenAI form of `tools`")
    function_call: LegacyFunctionCall | None = None
    parallel_tool_calls: bool = Field(True, description="false: at most one tool call per turn")
    logprobs: bool = False

    @property
    def legacy_functions(self) -> bool:
        return bool(self.functions)
    top_logprobs: int | None = Field(None, ge=0, le=20)


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(0, description="prompt tokens taken from the prompt cache (a sequence's live prefix "
                                              "or a restored host-memory entry), not evaluated again")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


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
    parallel: int = 1  # requests each replica decodes together (continuous batching)
    queue_depth: int = 0
    running: int = 0
    load_seconds: float | None = None
    # GGUF text models: the prompt cache's bound (None: the default, known once loaded) and its use
    prompt_cache_bytes: int | None = None
    prompt_cache_used_bytes: int | None = None
    # the manifest's `sampling:` (what a request that leaves a field unset gets), only the fields it sets
    sampling: dict[str, float | int] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    manifest_hash: str | None = None
