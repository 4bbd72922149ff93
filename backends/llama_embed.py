"""TEXT_EMBEDDING models in GGUF format, through llama-cpp-python (`embedding=True`).

The pooling comes from the GGUF (`<arch>.pooling_type`: mean, cls or last),
unless `options.pooling` overrides it. A GGUF without pooling (plain decoder
LLMs) is mean-pooled here from the per-token outputs; a reranker (rank
pooling) is refused at load.

The batching loop is ours rather than `Llama.embed`, for three reasons:
`Llama.embed` accepts only strings (we also take token ids), truncates at
`n_batch` rather than at the model's trained context, and counts tokens before
it knows whether the input fits. Ours packs the whole request into as few
`llama_decode` calls as the context allows: one call for up to `nctx` tokens
and 256 sequences, so a typical batch of sentences is one engine call.
Encoder models (BERT) must see each batch in one micro-batch, so
`n_batch = n_ubatch = nctx`.

Manifest options: `pooling` (mean | cls | last), `normalize` (the default when
a request does not say); others go to `llama_cpp.Llama`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from backends import llama_private as private
from backends.embeddings import EmbeddingBackend, read_options, special_frame
from backends.errors import LoadError
from backends.llama_load import gguf_file, llama_kwargs, open_llama
from schemas.manifest import ModelSpec

log = logging.getLogger("nexa.backends.llama_embed")

OPTIONS = {"pooling": str, "normalize": bool}
POOLING_NAMES = {-1: "unspecified", 0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
POOLING_TYPES = {"mean": 1, "cls": 2, "last": 3}


class LlamaEmbedBackend(EmbeddingBackend):
    """BERT-style GGUF embedding models (nomic, bge, all-MiniLM, mxbai, ...)."""

    def __init__(self, spec: ModelSpec, path: Path, llm: Any):
        super().__init__(spec, path)
        self.llm = llm
        self.pooling = int(llm.pooling_type())
        self.dim = int(llm.n_embd())
        self.n_vocab = int(llm.n_vocab())
        self.n_batch = int(llm.n_batch)
        self.n_seq_max = max(1, int(llm.context_params.n_seq_max))
        self.max_tokens = min(private.n_ctx_train(llm) or self.n_batch, self.n_batch)
        with_special = llm.tokenize(b"a", add_bos=True, special=False)
        without = llm.tokenize(b"a", add_bos=False, special=False)
        self.prefix, self.suffix = special_frame(with_special, without)

    @classmethod
    def load(cls, spec: ModelSpec, path: Path) -> "LlamaEmbedBackend":
        try:
            import llama_cpp
        except ImportError as exc:
            raise LoadError(f"llama-cpp-python is not installed: {exc}") from exc
        path = gguf_file(path)
        own = read_options(dict(spec.options), OPTIONS)
        # non-causal attention needs a whole batch in one micro-batch
        defaults: dict[str, Any] = {"embedding": True, "n_batch": spec.nctx, "n_ubatch": spec.nctx}
        if "pooling" in own:
            if own["pooling"] not in POOLING_TYPES:
                raise LoadError(f"option pooling must be one of {', '.join(POOLING_TYPES)}, got {own['pooling']!r}")
            defaults["pooling_type"] = POOLING_TYPES[own["pooling"]]
        llm = open_llama(path, llama_kwargs(spec, path, defaults))
        if int(llm.pooling_type()) == llama_cpp.LLAMA_POOLING_TYPE_RANK:
            llm.close()
            raise LoadError(f"{path.name} is a reranking model (rank pooling), not an embedding model")
        backend = cls(spec, path, llm)
        backend.default_normalize = own.get("normalize", False)
        log.info("GGUF embedding model ready: %d dims, max %d tokens, %s pooling", backend.dim, backend.max_tokens,
                 POOLING_NAMES.get(backend.pooling, backend.pooling),
                 extra={"event": "embed_model", "model": spec.name, "arch": llm.metadata.get("general.architecture")})
        return backend

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.close()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "pooling": POOLING_NAMES.get(self.pooling, str(self.pooling)),
                "architecture": self.llm.metadata.get("general.architecture")}

    # -- engine calls ----------------------------------------------------------

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        # add_bos=True means "add the model's special tokens": [CLS] ... [SEP] for BERT.
        return [self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False) for text in texts]

    def _forward(self, sequences: list[list[int]]) -> np.ndarray:
        out = np.empty((len(sequences), self.dim), dtype=np.float32)
        private.decode_packed(self.llm, sequences, self.n_batch, self.n_seq_max, lambda batch: self._decode(batch, out))
        return out

    def _decode(self, pending: list[tuple[int, list[int]]], out: np.ndarray) -> None:
        """One llama_decode for several sequences, each in its own sequence id."""
        import llama_cpp

        llm = self.llm
        private.clear_kv(llm)
        private.decode_sequences(llm, [tokens for _, tokens in pending])
        if self.pooling == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            total = sum(len(tokens) for _, tokens in pending)
            pointer = llama_cpp.llama_get_embeddings(private.raw_context(llm))
            per_token = np.ctypeslib.as_array(pointer, shape=(total * self.dim,))
            per_token = per_token.reshape(total, self.dim)
            start = 0
            for row, tokens in pending:
                out[row] = per_token[start:start + len(tokens)].mean(axis=0)
                start += len(tokens)
        else:
            for seq_id, (row, _) in enumerate(pending):
                pointer = llama_cpp.llama_get_embeddings_seq(private.raw_context(llm), seq_id)
                out[row] = np.ctypeslib.as_array(pointer, shape=(self.dim,))
