"""RERANK models in GGUF format, through llama.cpp's rank pooling (`LLAMA_POOLING_TYPE_RANK`).

A GGUF reranker (bge-reranker, jina-reranker, ms-marco MiniLM converted with
llama.cpp's convert_hf_to_gguf.py) carries a classification head (`cls.*`,
`cls.output.*` tensors) that llama.cpp applies to the first token of each
sequence when the context is opened with rank pooling; `llama_get_embeddings_seq`
then holds the score (the first of `classifier.output_labels` values).

A pair is laid out as llama-server lays it out (`format_rerank`): the model's
BOS if it adds one, the query, its EOS if it adds one, its SEP if it adds one,
the document, and EOS (SEP where the model has no EOS). For BERT that is
`[CLS] query [SEP] document [SEP]`; for XLM-RoBERTa `<s> query </s></s> document </s>`.
A pair longer than the model's maximum loses the document's tail first.

Many pairs are decoded together, each in its own sequence, in as few
`llama_decode` calls as the context allows (`n_batch = n_ubatch = nctx`, as
encoders need a whole sequence in one micro-batch).

Manifest options: `max_length`, `max_documents`, `max_document_chars`; others
go to `llama_cpp.Llama`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from backends import llama_private as private
from backends.embeddings import read_options
from backends.errors import LoadError
from backends.llama_load import gguf_file, llama_kwargs, open_llama
from backends.rerank import RerankBackend, cut_pair
from schemas.manifest import ModelSpec

log = logging.getLogger("nexa.backends.llama_rerank")

OPTIONS = {"max_length": int, "max_documents": int, "max_document_chars": int}


def check_head(path: Path) -> None:
    """A LoadError unless the GGUF has a classification head: llama.cpp aborts the whole
    process (GGML_ABORT) when it builds rank pooling for a model without one."""
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise LoadError(f"the gguf package is needed to check reranker files: {exc}") from exc
    try:
        reader = GGUFReader(str(path))
        names = {tensor.name for tensor in reader.tensors}
    except Exception as exc:  # noqa: BLE001 - bad magic, truncated tables, ...
        raise LoadError(f"{path.name} is not a readable GGUF file: {exc}") from None
    finally:
        reader = None
    if "cls.weight" not in names and "cls.output.weight" not in names:
        raise LoadError(f"{path.name} has no classification head (cls.* or cls.output.* tensors): it is not a "
                        "reranker; serve it as TEXT_EMBEDDING or NLP")


class LlamaRerankBackend(RerankBackend):
    """GGUF cross-encoders with a classification head."""

    def __init__(self, spec: ModelSpec, path: Path, llm: Any):
        import llama_cpp

        super().__init__(spec, path)
        self.llm = llm
        self.n_batch = int(llm.n_batch)
        self.n_seq_max = max(1, int(llm.context_params.n_seq_max))
        self.max_tokens = min(private.n_ctx_train(llm) or self.n_batch, self.n_batch)
        vocab = private.vocab(llm)
        eos = llama_cpp.llama_vocab_eos(vocab)
        sep = llama_cpp.llama_vocab_sep(vocab)
        self.bos = [llama_cpp.llama_vocab_bos(vocab)] if llama_cpp.llama_vocab_get_add_bos(vocab) else []
        self.middle = ([eos] if llama_cpp.llama_vocab_get_add_eos(vocab) and eos >= 0 else [])
        self.middle += [sep] if llama_cpp.llama_vocab_get_add_sep(vocab) and sep >= 0 else []
        self.end = [eos if eos >= 0 else sep] if (eos >= 0 or sep >= 0) else []

    @classmethod
    def load(cls, spec: ModelSpec, path: Path) -> "LlamaRerankBackend":
        try:
            import llama_cpp
        except ImportError as exc:
            raise LoadError(f"llama-cpp-python is not installed: {exc}") from exc
        path = gguf_file(path)
        own = read_options(dict(spec.options), OPTIONS)
        check_head(path)
        defaults = {"embedding": True, "n_batch": spec.nctx, "n_ubatch": spec.nctx,
                    "pooling_type": llama_cpp.LLAMA_POOLING_TYPE_RANK}
        llm = open_llama(path, llama_kwargs(spec, path, defaults))
        if int(llm.pooling_type()) != llama_cpp.LLAMA_POOLING_TYPE_RANK:
            llm.close()
            raise LoadError(f"{path.name} did not open with rank pooling")
        try:
            backend = cls(spec, path, llm)
            if own.get("max_length"):
                backend.max_tokens = min(backend.max_tokens, own["max_length"])
            backend.set_limits(own)
            backend.rerank("warm up", ["the engine runs once before the first request"])
        except Exception as exc:
            llm.close()
            if isinstance(exc, LoadError):
                raise
            raise LoadError(f"{path.name} cannot rerank (is it a reranker with a classification head?): "
                            f"{exc}") from exc
        log.info("GGUF reranker ready: max %d tokens per pair", backend.max_tokens,
                 extra={"event": "rerank_model", "model": spec.name, "arch": llm.metadata.get("general.architecture")})
        return backend

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.close()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "engine": "llama.cpp", "architecture": self.llm.metadata.get("general.architecture")}

    # -- engine calls ----------------------------------------------------------

    def _tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _pairs(self, query: str, documents: list[str]) -> list[list[int]]:
        frame = len(self.bos) + len(self.middle) + len(self.end)
        query_ids = self._tokens(query)
        pairs = []
        for document in documents:
            q, d = cut_pair(query_ids, self._tokens(document), max(2, self.max_tokens - frame))
            pairs.append(self.bos + q + self.middle + d + self.end)
        return pairs

    def _forward(self, pairs: list[list[int]]) -> np.ndarray:
        out = np.empty(len(pairs), dtype=np.float32)
        private.decode_packed(self.llm, pairs, self.n_batch, self.n_seq_max, lambda batch: self._decode(batch, out))
        return out

    def _decode(self, pending: list[tuple[int, list[int]]], out: np.ndarray) -> None:
        """One llama_decode for several pairs; each sequence's pooled output starts with its score."""
        import llama_cpp

        private.clear_kv(self.llm)
        private.decode_sequences(self.llm, [tokens for _, tokens in pending])
        for seq_id, (row, _) in enumerate(pending):
            pointer = llama_cpp.llama_get_embeddings_seq(private.raw_context(self.llm), seq_id)
            out[row] = pointer[0]
