"""Token sampling and incremental detokenization in numpy, for engines whose token loop is ours
(backends/onnx_text.py). llama.cpp samples for itself; these follow its conventions where they can
(penalties over the last 64 tokens, prompt included; min-p relative to the best token) so a model
answers alike whichever engine serves it."""

from __future__ import annotations

from typing import Any

import numpy as np

from backends.base import SamplingParams

PENALTY_WINDOW = 64  # llama.cpp's penalty_last_n


class IncrementalDecoder:
    """Incremental decoding that keeps the spacing a token gets from its left context and never emits half a
    UTF-8 character (the offsets scheme of text-generation-inference): decode a short window twice, emit the
    difference once it no longer ends in U+FFFD."""

    def __init__(self, tokenizer: Any, context: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(context[-6:])
        self.prefix, self.read = 0, len(self.ids)

    def _texts(self) -> tuple[str, str]:
        decode = self.tokenizer.decode
        return decode(self.ids[self.prefix:self.read]), decode(self.ids[self.prefix:])

    def push(self, token: int) -> str:
        self.ids.append(token)
        before, after = self._texts()
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        before, after = self._texts()
        return after[len(before):] if len(after) > len(before) else ""


def sample(logits: np.ndarray, params: SamplingParams, history: list[int], rng: np.random.Generator) -> int:
    """Penalties, then greedy (temperature <= 0) or temperature -> top-k -> top-p -> min-p -> a draw."""
    logits = logits.astype(np.float64)
    if history and (params.repeat_penalty != 1.0 or params.presence_penalty or params.frequency_penalty):
        seen, counts = np.unique(np.asarray(history[-PENALTY_WINDOW:]), return_counts=True)
        seen_logits = logits[seen]
        if params.repeat_penalty != 1.0:
            seen_logits = np.where(seen_logits > 0, seen_logits / params.repeat_penalty,
                                   seen_logits * params.repeat_penalty)
        logits[seen] = seen_logits - counts * params.frequency_penalty - params.presence_penalty
    if params.temperature <= 0:
        return int(np.argmax(logits))
    logits /= params.temperature
    k = params.top_k if 0 < params.top_k < logits.size else logits.size
    candidates = np.argpartition(logits, -k)[-k:] if k < logits.size else np.arange(logits.size)
    candidates = candidates[np.argsort(-logits[candidates], kind="stable")]
    probs = np.exp(logits[candidates] - logits[candidates[0]])
    probs /= probs.sum()
    if params.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1
        candidates, probs = candidates[:keep], probs[:keep]
    if params.min_p > 0:
        keep = probs >= params.min_p * probs[0]
        candidates, probs = candidates[keep], probs[keep]
    return int(candidates[rng.choice(candidates.size, p=probs / probs.sum())])
