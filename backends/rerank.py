"""What the two rerank backends (ONNX cross-encoders through fastembed, GGUF rerankers
through llama.cpp) share: the request limits, pair preparation per request, and
one engine call for many requests.

A cross-encoder reads the query and one document together and gives one
score; a request of N documents is N (query, document) pairs, run as one batch.
`rerank_many` runs the pairs of several requests (the gateway's micro-batches,
gateway/batcher.py) in one engine call, each request's scores and token count
what it would get alone. Each request is checked and tokenized on its own, so a
bad one (too many documents, a document too long) gets its own BackendError
and the others still run.

Scores are the model's raw output (a logit for ms-marco and bge style
rerankers), as llama-server and fastembed return them: only their order is
meaningful across models. Pairs longer than the model's maximum are cut, as
every reranking server does: by the tokenizer's own pair truncation (fastembed)
or from the document's tail first (llama.cpp, `cut_pair`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from backends.base import Backend
from backends.errors import BackendError

# Defaults of the per-model limits (backends/options.py RerankOptions).
MAX_DOCUMENTS = 1000
MAX_DOCUMENT_CHARS = 100_000


@dataclass
class RerankScores:
    scores: np.ndarray  # float32 [n_documents], in document order
    prompt_tokens: int  # tokens of every pair, special tokens included, after truncation


class RerankBackend(Backend):
    """Limits and batching; subclasses implement `_pairs(query, documents)` (token
    sequences, cut to `max_tokens`) and `_forward(pairs)` (one score per pair)."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"rerank"})

    max_tokens: int = 512
    max_documents: int = MAX_DOCUMENTS
    max_document_chars: int = MAX_DOCUMENT_CHARS

    def info(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "max_documents": self.max_documents,
                "max_document_chars": self.max_document_chars}

    def set_limits(self, options: dict[str, Any]) -> None:
        """The manifest's `max_documents` and `max_document_chars` (already type-checked)."""
        self.max_documents = int(options.get("max_documents", MAX_DOCUMENTS))
        self.max_document_chars = int(options.get("max_document_chars", MAX_DOCUMENT_CHARS))

    def check(self, query: str, documents: list[str]) -> None:
        """A 400 naming the field, before any tokenizing."""
        if not query:
            raise BackendError("query must not be empty", param="query")
        if len(query) > self.max_document_chars:
            raise BackendError(f"query is {len(query)} characters long; model {self.spec.name!r} takes at most "
                               f"{self.max_document_chars}", param="query")
        if not documents:
            raise BackendError("documents must not be empty", param="documents")
        if len(documents) > self.max_documents:
            raise BackendError(f"{len(documents)} documents; model {self.spec.name!r} takes at most "
                               f"{self.max_documents} per request", param="documents")
        for index, text in enumerate(documents):
            if len(text) > self.max_document_chars:
                raise BackendError(f"documents[{index}] is {len(text)} characters long; model {self.spec.name!r} "
                                   f"takes at most {self.max_document_chars}", param=f"documents[{index}]")

    # -- the entry points -------------------------------------------------------

    def rerank(self, query: str, documents: list[str]) -> RerankScores:
        """One request's pairs in one engine call."""
        result = self.rerank_many([(query, documents)])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def rerank_many(self, requests: list[tuple[str, list[str]]]) -> list[RerankScores | Exception]:
        """Several requests' `(query, documents)` in one engine call."""
        prepared: list[list[list[Any]] | Exception] = []
        for query, documents in requests:
            try:
                self.check(query, documents)
                prepared.append(self._pairs(query, documents))
            except Exception as exc:  # noqa: BLE001 - this request's failure, not its batch-mates'
                prepared.append(exc)
        flat = [pair for item in prepared if not isinstance(item, Exception) for pair in item]
        scores = self._checked_forward(flat) if flat else np.empty(0, dtype=np.float32)
        results: list[RerankScores | Exception] = []
        start = 0
        for item in prepared:
            if isinstance(item, Exception):
                results.append(item)
                continue
            results.append(RerankScores(scores[start:start + len(item)], sum(self._length(p) for p in item)))
            start += len(item)
        return results

    def _checked_forward(self, pairs: list[Any]) -> np.ndarray:
        scores = np.asarray(self._forward(pairs), dtype=np.float32).reshape(-1)
        if scores.shape[0] != len(pairs):
            raise RuntimeError(f"the engine returned {scores.shape[0]} scores for {len(pairs)} pairs")
        if not np.isfinite(scores).all():
            raise RuntimeError("the engine returned non-finite scores (NaN or infinity)")
        return scores

    # -- engine specific --------------------------------------------------------

    def _pairs(self, query: str, documents: list[str]) -> list[Any]:
        """One prepared pair per document (token sequences), each at most `max_tokens` long."""
        raise NotImplementedError

    def _length(self, pair: Any) -> int:
        """Tokens of one prepared pair (for usage)."""
        return len(pair)

    def _forward(self, pairs: list[Any]) -> np.ndarray:
        raise NotImplementedError


def cut_pair(query: list[int], document: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Content tokens of a pair cut to `budget` (the pair's tokens less its special tokens):
    the document loses its tail first; the query is cut only when it alone is over half."""
    if len(query) + len(document) <= budget:
        return query, document
    keep_query = min(len(query), max(budget - len(document), budget // 2))
    return query[:keep_query], document[:max(0, budget - keep_query)]
