"""The engine contract, one typed protocol per capability: what the gateway may call on a
backend that declares the capability (`Backend.capabilities`). Parameters are typed objects that
each protocol's route builds once (vLLM's `SamplingParams` pattern): `SamplingParams` and
`ChatOptions` for text, `TranscribeOptions` for speech, `ImageParams` for images.

`tests/test_architecture.py` checks every registered engine against the protocols of the
capabilities it declares. A new capability (rerank, speech synthesis) adds a protocol here and a
line to `CONTRACTS`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

from backends.base import Backend, Cancelled, ChatOptions, Delta, SamplingParams
from backends.diffusion import GeneratedImage, ImageParams
from backends.embeddings import EmbedResult
from backends.whisper import TranscribeOptions, Transcript


class TextCompletion(Protocol):
    def complete(self, prompt: str | list[int], params: SamplingParams, cancelled: Cancelled) -> Iterator[Delta]: ...


class Chat(Protocol):
    """Also `count_chat(messages, options) -> int` (token-counting routes): optional, since an engine
    without a tokenizer here (a remote upstream) cannot count; `Backend`'s own answers a clear 400."""

    def chat(self, messages: list[dict], params: SamplingParams, cancelled: Cancelled,
             options: ChatOptions | None = None) -> Iterator[Delta]: ...


class Embedding(Protocol):
    def embed(self, inputs: list[str] | list[list[int]], normalize: bool = False,
              truncate: bool = True) -> EmbedResult: ...


class Transcription(Protocol):
    def transcribe(self, audio: Any, options: TranscribeOptions, cancelled: Cancelled | None = None) -> Transcript: ...


class ImageGeneration(Protocol):
    def generate(self, params: ImageParams, on_step: Callable[..., Any] | None = None) -> list[GeneratedImage]: ...


# capability -> the protocol a backend declaring it implements
CONTRACTS: dict[str, type] = {
    "complete": TextCompletion,
    "chat": Chat,
    "vision": Chat,  # images arrive as chat content parts
    "embed": Embedding,
    "transcribe": Transcription,
    "translate": Transcription,
    "txt2img": ImageGeneration,
    "img2img": ImageGeneration,
}


def unimplemented(cls: type[Backend]) -> list[str]:
    """`capability.method` pairs the class declares but does not implement (a method left as the
    base class's, or missing)."""
    gaps = []
    for capability in sorted(cls.capabilities):
        contract = CONTRACTS.get(capability)
        for method in (m for m in vars(contract) if not m.startswith("_")) if contract else ():
            own = getattr(cls, method, None)
            if own is None or own is getattr(Backend, method, None):
                gaps.append(f"{capability}.{method}")
    return gaps
