"""Request and response bodies of the Anthropic Messages API (`/v1/messages`).

Shapes only: `gateway/api/anthropic/messages.py` translates them to and from the
OpenAI-shaped chat request every chat protocol shares. Unknown fields are
ignored (`cache_control`, `service_tier`, `citations`, ...), as newer clients
send fields this gateway has no use for; a block type or a tool it cannot
serve is a 400 that names it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Shape(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- content blocks ------------------------------------------------------------------


class TextBlock(_Shape):
    type: Literal["text"]
    text: str


class Base64Source(_Shape):
    type: Literal["base64"]
    media_type: str
    data: str


class UrlSource(_Shape):
    type: Literal["url"]
    url: str


class ImageBlock(_Shape):
    type: Literal["image"]
    source: Annotated[Union[Base64Source, UrlSource], Field(discriminator="type")]


class ToolUseBlock(_Shape):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


ResultPart = Annotated[Union[TextBlock, ImageBlock], Field(discriminator="type")]


def _as_blocks(value: Any) -> Any:
    """A string stands for one text block (so a bad block gets its own error, not a union's)."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


class ToolResultBlock(_Shape):
    type: Literal["tool_result"]
    tool_use_id: str
    content: list[ResultPart] = []
    is_error: bool = False

    text_shorthand = field_validator("content", mode="before")(_as_blocks)


class ThinkingBlock(_Shape):
    """Earlier reasoning a client hands back; accepted and left out of the prompt."""

    type: Literal["thinking", "redacted_thinking"]


Block = Annotated[Union[TextBlock, ImageBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock],
                  Field(discriminator="type")]


class Message(_Shape):
    # "system": instructions in the middle of a conversation (Claude Code sends them, under a beta flag)
    role: Literal["user", "assistant", "system"]
    content: list[Block]

    text_shorthand = field_validator("content", mode="before")(_as_blocks)


# -- tools ---------------------------------------------------------------------------


class Tool(_Shape):
    type: str | None = None  # absent or "custom"; Anthropic-hosted tools are refused below
    name: str = Field(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    input_schema: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _custom_only(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in (None, "custom"):
            raise ValueError(f"tool type {kind!r} is a tool Anthropic hosts, which this gateway does not serve; "
                             "declare a custom tool with name, description and input_schema")
        return data

    @field_validator("input_schema")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type", "object") != "object":
            raise ValueError("input_schema must be a JSON Schema of type 'object'")
        return value


class ToolChoice(_Shape):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> "ToolChoice":
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice of type 'tool' needs the tool's `name`")
        return self


class OutputFormat(_Shape):
    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Shape):
    """Structured outputs: `format` is generated under its schema's grammar; `effort` is ignored."""

    format: OutputFormat | None = None


# -- requests ------------------------------------------------------------------------


class CountTokensRequest(_Shape):
    """`/v1/messages/count_tokens`: what shapes the prompt, nothing that samples."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    system: list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None  # accepted and ignored: these models do not think aloud

    text_shorthand = field_validator("system", mode="before")(_as_blocks)


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)  # required, as Anthropic requires it
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    metadata: dict[str, Any] | None = None
    output_config: OutputConfig | None = None
    stream: bool = False
    # Message threads (beta): refused by the route with Anthropic's `thread_unsupported_request`,
    # on which the SDKs' tool runners and Claude Code resend the whole conversation.
    thread: Any = None
    previous_message_id: str | None = None
    # Refused when set: they would change the answer and this gateway does not run them.
    mcp_servers: list[Any] | None = None
    container: Any = None

    @model_validator(mode="after")
    def _refused(self) -> "MessagesRequest":
        if self.mcp_servers:
            raise ValueError("`mcp_servers` (MCP tools run by Anthropic) is not supported by this gateway; "
                             "run the MCP client yourself and declare its tools as custom tools")
        if self.container is not None:
            raise ValueError("`container` (Anthropic's code execution sandbox) is not supported by this gateway")
        return self


# Messages fields accepted and ignored on purpose: they tune Anthropic's service (tiers, caching,
# context editing, where inference runs) or ask for thinking, which these models do not do aloud.
IGNORED = ("metadata", "service_tier", "cache_control", "thinking", "context_management", "inference_geo")


# -- responses -----------------------------------------------------------------------


class Usage(BaseModel):
    """As Anthropic counts: `input_tokens` are the prompt tokens evaluated, `cache_read_input_tokens` those
    taken from the prompt cache (their sum is the prompt, what count_tokens says); this cache writes as a
    side effect of serving, so `cache_creation_input_tokens` is always 0."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class TextOut(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseOut(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class MessageResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[Union[TextOut, ToolUseOut]]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] | None
    stop_sequence: str | None = None
    usage: Usage


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    """Anthropic's error envelope, used by every error of the Messages routes."""

    type: Literal["error"] = "error"
    error: ErrorDetail


class CountTokensResponse(BaseModel):
    input_tokens: int
