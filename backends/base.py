"""The backend contract every engine module implements.

Backends are plain synchronous Python: the gateway's pool owns the thread each
instance runs on, so an engine never needs to know about asyncio or HTTP.
Generation is an iterator of `Delta`s so that one code path serves streaming
and non-streaming answers, and so that `cancelled()` can stop work between
tokens when a client leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from backends.errors import BackendError
from schemas.manifest import ModelSpec

Cancelled = Callable[[], bool]


@dataclass
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    min_p: float = 0.05
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    grammar: str | None = None
    # Budget of the grammar-constrained part (a tool call, a JSON answer) when the request set no
    # max_tokens: constrained decoding is slow, and a model can loop inside a JSON string until the context ends.
    grammar_max_tokens: int | None = None


@dataclass
class ChatOptions:
    """What a chat request asks beyond sampling: the tools it offers and the form of the answer.
    Each protocol builds one (gateway/api/chat.py) and every chat engine takes the same type."""

    tools: list[dict] | None = None
    tool_choice: Any = None  # "auto" | "none" | "required" | {"type": "function", "function": {"name"}}
    parallel_tool_calls: bool = True  # OpenAI's default: one turn may call several functions
    response_format: dict | None = None  # {"type": "json_object"} or {"type": "json_schema", ...}


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Prompt tokens whose KV came from a cache (a live sequence's prefix or a restored prompt-cache
    # entry), not evaluated: what clients see as cached tokens.
    cached_tokens: int = 0
    # Engine time to the first sampled token (prefill) and from it to the end (decode), for the log line.
    # (timings, not counts: two usages are equal whatever they took)
    prefill_seconds: float = field(default=0.0, compare=False)
    decode_seconds: float = field(default=0.0, compare=False)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class TokenLogprob:
    """One generated token with its log-probability and the most likely alternatives."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Delta:
    """A piece of generated output. The last one carries finish_reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[dict] | None = None
    stop_sequence: str | None = None  # which stop sequence ended generation, if one did
    # Tool calls as they are generated (backends/tool_stream.py CallEvents: a call's start, then its
    # arguments' fragments); the last Delta's `tool_calls` then hold the same ids and arguments.
    tool_call_deltas: list[Any] | None = None


class Backend:
    """Base class. Subclasses set `capabilities` and implement the matching methods."""

    capabilities: ClassVar[frozenset[str]] = frozenset()
    # True: the gateway runs this engine in a worker process (gateway.models.worker), because it cannot
    # be stopped in-process; a timeout or a client that leaves kills and restarts the worker.
    in_child_process: ClassVar[bool] = False

    def __init__(self, spec: ModelSpec, path: Path):
        self.spec = spec
        self.path = path

    @classmethod
    def load(cls, spec: ModelSpec, path: Path) -> "Backend":
        return cls(spec, path)

    @classmethod
    def capabilities_of(cls, spec: ModelSpec, path: Path | None) -> frozenset[str]:
        """What a model offers before it loads, from its files when they are on disk
        (`path`; None when not fetched yet). Routing relies on it, so it must not
        promise what the loaded model lacks (e.g. an English-only Whisper)."""
        return cls.capabilities

    def close(self) -> None:
        """Free engine memory. Called on the backend's own thread."""

    def info(self) -> dict[str, Any]:
        return {}

    # Text generation: override in text backends.
    def complete(self, prompt: str, params: SamplingParams, cancelled: Cancelled) -> Iterator[Delta]:
        raise NotImplementedError

    def chat(self, messages: list[dict], params: SamplingParams, cancelled: Cancelled,
             options: ChatOptions | None = None) -> Iterator[Delta]:
        raise NotImplementedError

    def count_chat(self, messages: list[dict], options: ChatOptions | None = None) -> int:
        """The prompt tokens `chat(messages, ..., options)` would use (for token-counting routes)."""
        raise BackendError(f"model {self.spec.name!r} cannot count prompt tokens")

    # The model's tokenizer and chat template (POST /tokenize, /detokenize, /apply-template): override
    # in text backends. They read only the vocabulary and the template, never the decode state, so an
    # engine that sets `tokenizes_beside_generation` lets the gateway run them on another thread while
    # a generation runs (no decode slot, no queue).
    tokenizes_beside_generation: ClassVar[bool] = False
    # The same for `count_chat` (False where counting evaluates images through the model's context).
    counts_beside: ClassVar[bool] = False

    def tokenize_text(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids of `text`; `add_special` adds what the tokenizer adds to a prompt (BOS),
        `parse_special` reads special-token spellings in `text` (`<|im_start|>`) as those tokens."""
        raise BackendError(f"model {self.spec.name!r} has no tokenizer this gateway can use", param="model")

    def detokenize_tokens(self, tokens: list[int]) -> str:
        """The text of token ids (special tokens written out); ids outside the vocabulary are a BackendError."""
        raise BackendError(f"model {self.spec.name!r} has no tokenizer this gateway can use", param="model")

    def token_pieces(self, tokens: list[int]) -> list[bytes]:
        """Each token's own bytes (a piece may be part of a UTF-8 character)."""
        raise BackendError(f"model {self.spec.name!r} has no tokenizer this gateway can use", param="model")

    def render_prompt(self, messages: list[dict], options: ChatOptions | None = None) -> str:
        """The prompt text `chat(messages, ..., options)` gives the engine: the chat template applied
        (with the tool prompt when `options.tools` are offered), generation prompt included."""
        raise BackendError(f"model {self.spec.name!r} has no chat template this gateway can render", param="model")
