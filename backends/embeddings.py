"""What the two embedding backends (ONNX through fastembed, GGUF through llama.cpp) share.

The contract: `embed(inputs, normalize, truncate) -> EmbedResult`, where
`inputs` is either a list of strings or a list of token-id lists (never a
mix: the HTTP layer has already told them apart). The whole list is one
engine call, so a request of 64 sentences costs one forward pass, not 64;
`embed_many` runs several requests in one call (the gateway's micro-batches,
gateway/models/batcher.py) with each request's answer what it would be alone.
Texts are tokenized once: the ids that are counted are the ids that run.

Token counts are the engine tokenizer's own, special tokens included, after
truncation: what the model really processed. Vectors come out of the engine
unnormalized and are L2-normalized here only when asked, so that the
request's `normalize` flag really decides what the client gets.

Token-id inputs are the content tokens of one text in the model's own
vocabulary. The model's special tokens (BERT's [CLS] ... [SEP], a BOS for
decoder models) are added around them unless the ids already carry them, so
that `tokenize(text)` and `text` give the same vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from backends.base import Backend
from backends.errors import BackendError, LoadError


@dataclass
class EmbedResult:
    vectors: np.ndarray  # float32, [n_inputs, dim], in input order
    prompt_tokens: int


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows; an all-zero row stays zero instead of becoming NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def special_frame(with_special: list[int], without: list[int]) -> tuple[list[int], list[int]]:
    """The tokens a tokenizer puts before and after the content (e.g. [CLS] and [SEP]),
    found by tokenizing one text with and without special tokens."""
    n = len(without)
    for start in range(len(with_special) - n + 1):
        if with_special[start:start + n] == without:
            return with_special[:start], with_special[start + n:]
    return [], []


class EmbeddingBackend(Backend):
    """Input checks, special tokens and truncation, common to every embedding engine.

    Subclasses set `max_tokens`, `n_vocab`, `prefix`, `suffix` at load, and
    implement `_tokenize(texts)` and `_forward(sequences)`."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"embed"})

    max_tokens: int = 512
    n_vocab: int = 0
    dim: int = 0
    prefix: list[int]
    suffix: list[int]
    default_normalize: bool = False

    def info(self) -> dict[str, Any]:
        return {"dimensions": self.dim, "max_tokens": self.max_tokens, "n_vocab": self.n_vocab}

    # -- token handling ------------------------------------------------------

    def frame_ids(self, ids: list[int]) -> list[int]:
        """Add the model's special tokens around content ids, unless already there."""
        out = list(ids)
        if self.prefix and out[:len(self.prefix)] != self.prefix:
            out = self.prefix + out
        if self.suffix and out[-len(self.suffix):] != self.suffix:
            out = out + self.suffix
        return out

    def check_ids(self, index: int, ids: list[int]) -> None:
        if not ids:
            raise BackendError(f"input[{index}] is an empty token list")
        bad = next((t for t in ids if t < 0 or (self.n_vocab and t >= self.n_vocab)), None)
        if bad is not None:
            raise BackendError(f"input[{index}] has token id {bad}, outside this model's vocabulary of {self.n_vocab}",
                               param="input")

    def fit(self, index: int, ids: list[int], truncate: bool) -> list[int]:
        """Cut an over-long sequence to `max_tokens` (keeping the closing special
        tokens), or refuse it when the client asked for no truncation."""
        if len(ids) <= self.max_tokens:
            return ids
        if not truncate:
            raise BackendError(
                f"input[{index}] is {len(ids)} tokens long, more than this model's maximum of {self.max_tokens}; "
                "shorten it or send \"truncate\": true"
            )
        keep_suffix = self.suffix and ids[-len(self.suffix):] == self.suffix
        if keep_suffix:
            return ids[:self.max_tokens - len(self.suffix)] + self.suffix
        return ids[:self.max_tokens]

    # -- the entry points -------------------------------------------------------

    def embed(self, inputs: list[str] | list[list[int]], normalize: bool = False, truncate: bool = True) -> EmbedResult:
        """One request's inputs in one engine call."""
        result = self.embed_many([(inputs, truncate)])[0]
        if isinstance(result, BaseException):
            raise result
        return EmbedResult(l2_normalize(result.vectors), result.prompt_tokens) if normalize else result

    def embed_many(self, requests: list[tuple[list[str] | list[list[int]], bool]]) -> list[EmbedResult | Exception]:
        """Several requests' `(inputs, truncate)` in one engine call (the gateway's micro-batches).

        Each request is checked, tokenized and truncated on its own, so a bad one (an
        over-long input with `truncate: false`: a BackendError; text its tokenizer
        cannot take: whatever the tokenizer raised) gets its own exception and the
        others still run; the vectors come back unnormalized, split per request, and
        the token counts are each request's own: what it would get alone."""
        prepared: list[list[list[int]] | Exception] = []
        for inputs, truncate in requests:
            try:
                prepared.append(self.sequences(inputs, truncate))
            except Exception as exc:  # noqa: BLE001 - this request's failure, not its batch-mates'
                prepared.append(exc)
        flat = [seq for item in prepared if not isinstance(item, Exception) for seq in item]
        vectors = self._checked_forward(flat) if flat else np.empty((0, self.dim), dtype=np.float32)
        results: list[EmbedResult | Exception] = []
        start = 0
        for item in prepared:
            if isinstance(item, Exception):
                results.append(item)
                continue
            results.append(EmbedResult(vectors[start:start + len(item)], sum(len(seq) for seq in item)))
            start += len(item)
        return results

    def sequences(self, inputs: list[str] | list[list[int]], truncate: bool) -> list[list[int]]:
        """The token sequences the engine will run for one request: special tokens added,
        fitted to `max_tokens`; their lengths are the request's token count."""
        if not inputs:
            raise BackendError("input is empty")
        if isinstance(inputs[0], str):
            for index, text in enumerate(inputs):
                if not text:
                    raise BackendError(f"input[{index}] is an empty string")
            return self._text_sequences(list(inputs), truncate)
        sequences = []
        for index, ids in enumerate(inputs):
            self.check_ids(index, ids)
            sequences.append(self.fit(index, self.frame_ids(list(ids)), truncate))
        return sequences

    def _checked_forward(self, sequences: list[list[int]]) -> np.ndarray:
        vectors = np.asarray(self._forward(sequences), dtype=np.float32)
        if vectors.shape[0] != len(sequences):
            raise RuntimeError(f"the engine returned {vectors.shape[0]} vectors for {len(sequences)} inputs")
        if not np.isfinite(vectors).all():
            raise RuntimeError("the engine returned non-finite values (NaN or infinity)")
        return vectors

    def _text_sequences(self, texts: list[str], truncate: bool) -> list[list[int]]:
        """Default: the engine's tokenizer, then the same fitting as token ids."""
        return [self.fit(i, ids, truncate) for i, ids in enumerate(self._tokenize(texts))]

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def _forward(self, sequences: list[list[int]]) -> np.ndarray:
        raise NotImplementedError


def read_options(options: dict[str, Any], known: dict[str, type], positive: tuple[str, ...] = ()) -> dict[str, Any]:
    """Pop this backend's own options (checked types; the `positive` ones > 0) out of the manifest's
    `options`. Every embedding and rerank engine reads its options here, so a wrong one fails the
    load with the same message whichever engine serves the model."""
    own = {}
    for key, kind in known.items():
        if key in options:
            value = options.pop(key)
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise LoadError(f"option {key!r} must be {kind.__name__}, got {value!r}")
            own[key] = value
    for key in positive:
        if own.get(key) is not None and own[key] <= 0:
            raise LoadError(f"option {key} must be > 0")
    return own
