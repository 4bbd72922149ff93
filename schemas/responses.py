"""Request and response bodies of the OpenAI Responses API (`/v1/responses`).

Shapes only: the translation to and from a chat request lives in
`gateway/api/openai/responses.py`. OpenAI's fields this gateway has no use for are
named below and ignored on purpose (IGNORED); those that would change the answer
and are not implemented are refused with a 400 naming them (REFUSED). Fields
OpenAI does not have are ignored too (logged at debug level), so newer SDKs keep
working.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator
from typing_extensions import Annotated

from schemas.openai import _Lenient

# OpenAI's own limits on `metadata` (responses and conversations).
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512


def _metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > METADATA_PAIRS:
        raise ValueError(f"at most {METADATA_PAIRS} key-value pairs are allowed, got {len(value)}")
    for key, item in value.items():
        if len(key) > METADATA_KEY_CHARS:
            raise ValueError(f"keys are at most {METADATA_KEY_CHARS} characters; {key[:20]!r}... has {len(key)}")
        if len(item) > METADATA_VALUE_CHARS:
            raise ValueError(f"values are at most {METADATA_VALUE_CHARS} characters; the value of {key!r} has "
                             f"{len(item)}")
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_metadata)]

# OpenAI request fields accepted and ignored on purpose: they tune OpenAI's own service (caching,
# tiers, abuse tracking, stream obfuscation) or ask for things these models do not produce.
IGNORED = ("prompt_cache_key", "prompt_cache_retention", "safety_identifier", "service_tier", "stream_options",
           "reasoning", "max_tool_calls", "user", "text.verbosity")
# `include` values that ask for data this gateway never produces (hosted tools, reasoning): nothing to add.
IGNORED_INCLUDES = ("reasoning.encrypted_content", "web_search_call.action.sources", "web_search_call.results",
                    "file_search_call.results", "code_interpreter_call.outputs", "message.input_image.image_url",
                    "computer_call_output.output.image_url")


class InputPart(_Lenient):
    """`input_text`, `output_text`, `input_image` (a data URL or allowed URL), `refusal`."""

    type: str
    text: str | None = None
    image_url: str | None = None
    file_id: str | None = None
    refusal: str | None = None
    detail: str | None = None


class InputItem(_Lenient):
    """One `input` item: a message (with or without `type: "message"`), a `function_call`
    the model made earlier, a `function_call_output` the client sends back, or an
    `item_reference` (just an `id`) to an item the gateway stored earlier."""

    type: str = "message"
    id: str | None = None
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: Union[str, list[InputPart], None] = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: Union[str, list[InputPart], None] = None
    status: str | None = None


class ConversationRef(_Lenient):
    id: str


class TextFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(_Lenient):
    format: TextFormat = Field(default_factory=TextFormat)


class ResponsesRequest(_Lenient):
    model: str | None = None
    input: Union[str, list[InputItem]] = Field(default_factory=list)
    instructions: str | None = None
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: Union[str, dict[str, Any]] = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig = Field(default_factory=TextConfig)
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None  # an extension: OpenAI's Responses API has none
    stop: list[str] | None = None  # an extension too
    metadata: Metadata = Field(default_factory=dict)
    user: str | None = None
    store: bool = True
    previous_response_id: str | None = None
    conversation: Union[str, ConversationRef, None] = None
    truncation: Literal["auto", "disabled"] = "disabled"
    stream: bool = False
    background: bool = False
    include: list[str] = Field(default_factory=list)
    # Refused when set (they would change the answer and are not implemented here):
    prompt: Any = None  # a prompt template stored at OpenAI
    top_logprobs: int | None = Field(None, ge=0, le=20)
    reasoning: Any = None  # accepted and ignored: these models do not reason in a separate channel

    @model_validator(mode="after")
    def _refused(self) -> "ResponsesRequest":
        if self.prompt is not None:
            raise ValueError("`prompt` (a prompt template stored at OpenAI) is not supported by this gateway; "
                             "send `instructions` and `input` instead")
        if self.top_logprobs:
            raise ValueError("`top_logprobs` is not supported on /v1/responses by this gateway (use "
                             "/v1/chat/completions with logprobs)")
        for value in self.include:
            if value not in IGNORED_INCLUDES:
                raise ValueError(f"include {value!r} is not supported by this gateway (it ignores only "
                                 f"{', '.join(IGNORED_INCLUDES)})")
        if self.previous_response_id and self.conversation is not None:
            raise ValueError("send `previous_response_id` or `conversation`, not both")
        return self

    @property
    def conversation_id(self) -> str | None:
        return self.conversation if isinstance(self.conversation, str) or self.conversation is None \
            else self.conversation.id

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallItem(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    namespace: str | None = None  # for functions declared inside a `namespace` tool


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[Union[OutputMessage, FunctionCallItem]] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] = Field(default_factory=lambda: {"effort": None, "summary": None})
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: Union[str, dict[str, Any]] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_p: float | None = None
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    background: bool = False
    conversation: ConversationRef | None = None
