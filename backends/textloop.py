"""The token loop every text engine whose loop is ours shares (llama.cpp, batched llama.cpp, ONNX).

An engine supplies only what it alone knows: a stream of sampled tokens (each with its
logprob when asked for), which tokens end generation, and how tokens become text. This
module does the rest the same way for all of them, so an answer streams alike whichever
engine serves it: the context check and token budget, incremental detokenizing that never
splits a UTF-8 character, stop sequences that never leak a partial match (backends/stops.py),
logprobs attached to the text they produced, exact usage, a cancellation check between
tokens, and the finish reason (stop, length or cancelled).
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from backends.base import Cancelled, Delta, TokenLogprob, Usage
from backends.errors import ContextLengthExceeded
from backends.stops import StopScanner

# One sampled token and, when the request asked for logprobs, its TokenLogprob.
Sampled = tuple[int, "TokenLogprob | None"]


class Detokenizer(Protocol):
    """Turns tokens into text one at a time; holds back what is not a whole character yet."""

    def push(self, token: int) -> str: ...

    def flush(self) -> str: ...


class ByteDetokenizer:
    """For engines whose tokens are byte strings (llama.cpp): `piece(token, previous)` gives a token's
    bytes given the tokens before it (spacing can depend on them); a UTF-8 decoder joins the bytes."""

    def __init__(self, piece: Callable[[int, list[int]], bytes], context: list[int]):
        self.piece = piece
        self.tokens = list(context)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        text = self.decoder.decode(self.piece(token, self.tokens))
        self.tokens.append(token)
        return text

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


@dataclass
class Prefill:
    """What an engine reports about a prompt's prefill: the tokens it took from a cache. The engine
    fills it before its first token; `run` copies it into the answer's usage."""

    cached_tokens: int = 0


def token_budget(prompt_tokens: list[int], max_tokens: int, n_ctx: int) -> int:
    """Tokens the answer may have: `max_tokens`, or what the context leaves. A prompt that fills
    the context is the caller's error."""
    if len(prompt_tokens) >= n_ctx:
        raise ContextLengthExceeded(
            f"the prompt is {len(prompt_tokens)} tokens, which does not fit this model's context of {n_ctx} tokens"
        )
    return min(max_tokens, n_ctx - len(prompt_tokens))


def run(prompt_tokens: list[int], tokens: Iterator[Sampled], *, is_end: Callable[[int], bool],
        detokenizer: Detokenizer, stop: list[str], budget: int, cancelled: Cancelled,
        prefill: Prefill | None = None) -> Iterator[Delta]:
    """Deltas from an engine's token stream: text pieces (with the logprobs of the tokens they hold),
    then one last Delta with the finish reason, usage and the stop sequence that ended it, if one did.

    `cancelled()` is asked before each token is pulled from `tokens` (one call per token), so the
    engine does no work for a client that left. The engine may also end `tokens` on its own (the
    client left, the model is unloading): the answer then finishes "cancelled" if the client left,
    else "length". `tokens` is closed at the end, whatever ended the loop."""
    tokens = iter(tokens)
    scanner = StopScanner(stop)
    generated = 0
    finish = "length"
    pending: list[TokenLogprob] = []  # logprobs of tokens whose text is not sent yet
    started = time.perf_counter()
    first_at: float | None = None  # when the first token was sampled: the prefill's end
    try:
        while True:
            if cancelled():  # before each token, so a client that left costs no more engine work
                finish = "cancelled"
                break
            step = next(tokens, None)
            if step is None:  # the engine ended the stream on its own: the client left, or the model is unloading
                finish = "cancelled" if cancelled() else "length"
                break
            token, logprob = step
            if first_at is None:
                first_at = time.perf_counter()
            if is_end(token):
                finish = "stop"
                break
            generated += 1
            if logprob is not None:
                pending.append(logprob)
            piece = scanner.feed(detokenizer.push(token))
            if piece:
                yield Delta(text=piece, logprobs=pending or None)
                pending = []
            if scanner.matched is not None:
                finish = "stop"
                break
            if generated >= budget:
                break
    finally:
        close = getattr(tokens, "close", None)
        if close is not None:
            close()
    rest = scanner.rest(detokenizer.flush() if scanner.matched is None else "")
    if rest or pending:
        yield Delta(text=rest, logprobs=pending or None)
    ended = time.perf_counter()
    usage = Usage(len(prompt_tokens), generated, cached_tokens=prefill.cached_tokens if prefill else 0,
                  prefill_seconds=(first_at or ended) - started, decode_seconds=ended - (first_at or ended))
    yield Delta(finish_reason=finish, usage=usage, stop_sequence=scanner.matched)
