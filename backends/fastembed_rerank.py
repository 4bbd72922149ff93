"""RERANK models in ONNX format (cross-encoders), through fastembed's TextCrossEncoder.

As for embeddings (backends/fastembed.py), a local folder is registered with
fastembed under a private name (`TextCrossEncoder.add_custom_model`) and opened
with `specific_model_path=`: no model hub is contacted. The folder holds the
ONNX file (inputs input_ids, attention_mask and optionally token_type_ids;
output logits [batch, 1]), tokenizer.json and a tokenizer_config.json with a
positive `model_max_length` (fixed in a private shadow folder when missing,
as for embeddings).

Pairs are tokenized once by fastembed's own pair tokenizer (its truncation,
longest side first; no padding), and those ids run through fastembed's ONNX
session, padded per chunk of at most `max_batch_tokens` padded tokens, so a
micro-batch of many requests is one or a few ONNX runs. The scores are exactly
`TextCrossEncoder.rerank`'s (the raw logit of the first output column).

Manifest options: `model_file`, `max_length`, `max_batch_tokens`,
`max_documents`, `max_document_chars`; others go to fastembed (`providers`, ...).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from backends.embeddings import read_options
from backends.errors import LoadError
from backends.fastembed import (
    _REGISTER_LOCK,
    MAX_BATCH_TOKENS,
    _fastembed_device,
    _read_json,
    chunks,
    locate,
    prepare_folder,
)
from backends.rerank import RerankBackend
from schemas.manifest import ModelSpec

log = logging.getLogger("nexa.backends.fastembed_rerank")

OPTIONS = {"model_file": str, "max_length": int, "max_batch_tokens": int, "max_documents": int,
           "max_document_chars": int}


def _register(folder: Path, model_file: str) -> str:
    from fastembed.common.model_description import ModelSource
    from fastembed.rerank.cross_encoder import TextCrossEncoder

    key = hashlib.sha256(f"{folder.resolve()}|{model_file}".encode()).hexdigest()[:16]
    name = f"nexa-local-rerank/{key}"
    with _REGISTER_LOCK:
        if not any(m["model"].lower() == name for m in TextCrossEncoder.list_supported_models()):
            TextCrossEncoder.add_custom_model(model=name, sources=ModelSource(url=folder.as_uri()),
                                              model_file=model_file, description=f"local model folder {folder}")
    return name


class FastembedRerankBackend(RerankBackend):
    """ms-marco MiniLM, bge-reranker and other sentence-transformers cross-encoders exported to ONNX."""

    def __init__(self, spec: ModelSpec, path: Path, engine: Any, shadow: Path | None):
        super().__init__(spec, path)
        self.engine = engine
        self._shadow = shadow
        self.session = engine.model.model
        self.tokenizer = self._unpadded(engine.model.tokenizer)
        self.max_tokens = int(self.tokenizer.truncation["max_length"])
        padding = engine.model.tokenizer.padding or {}
        self.pad_id = int(padding.get("pad_id", 0))
        self.max_batch_tokens = MAX_BATCH_TOKENS
        self.input_names = {node.name for node in self.session.get_inputs()}

    @staticmethod
    def _unpadded(tokenizer: Any) -> Any:
        """fastembed's tokenizer (same truncation) without its padding: we pad per chunk."""
        from tokenizers import Tokenizer

        clone = Tokenizer.from_str(tokenizer.to_str())
        clone.no_padding()
        return clone

    @classmethod
    def load(cls, spec: ModelSpec, path: Path) -> "FastembedRerankBackend":
        try:
            from fastembed.rerank.cross_encoder import TextCrossEncoder
        except ImportError as exc:
            raise LoadError(f"fastembed is not installed: {exc}") from exc
        options = dict(spec.options)
        own = read_options(options, OPTIONS, positive=("max_length", "max_batch_tokens", "max_documents",
                                                       "max_document_chars"))
        folder, model_file = locate(path, own.get("model_file"))
        positions = _read_json(folder / "config.json").get("max_position_embeddings")
        if own.get("max_length") and isinstance(positions, int) and own["max_length"] > positions:
            raise LoadError(f"option max_length is {own['max_length']}, but the model has {positions} positions")
        folder, shadow = prepare_folder(folder, own.get("max_length"))
        name = _register(folder, model_file)
        try:
            engine = TextCrossEncoder(name, cache_dir=str(folder), specific_model_path=str(folder),
                                      cuda=_fastembed_device(spec.device), threads=spec.n_threads,
                                      lazy_load=False, **options)
            backend = cls(spec, path, engine, shadow)
            if own.get("max_length"):
                backend.tokenizer.enable_truncation(max_length=own["max_length"])
                backend.max_tokens = own["max_length"]
            backend.max_batch_tokens = own.get("max_batch_tokens", MAX_BATCH_TOKENS)
            backend.set_limits(own)
            backend.rerank("warm up", ["the engine runs once before the first request"])
        except Exception as exc:  # onnxruntime and tokenizers raise many types for a bad folder
            if shadow is not None:
                shutil.rmtree(shadow, ignore_errors=True)
            if isinstance(exc, LoadError):
                raise
            raise LoadError(f"fastembed could not load the cross-encoder {folder}/{model_file}: {exc}") from exc
        log.info("ONNX reranker ready: max %d tokens per pair", backend.max_tokens,
                 extra={"event": "rerank_model", "model": spec.name, "providers": backend.providers()})
        return backend

    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def close(self) -> None:
        self.engine = self.session = None
        if self._shadow is not None:
            shutil.rmtree(self._shadow, ignore_errors=True)
            self._shadow = None

    def info(self) -> dict[str, Any]:
        return {**super().info(), "engine": "fastembed", "providers": self.providers()}

    # -- engine calls ----------------------------------------------------------

    def _pairs(self, query: str, documents: list[str]) -> list[Any]:
        return self.tokenizer.encode_batch([(query, document) for document in documents])

    def _length(self, pair: Any) -> int:
        return len(pair.ids)

    def _forward(self, pairs: list[Any]) -> np.ndarray:
        parts = [self._run(pairs[c.start:c.stop]) for c in chunks([len(p.ids) for p in pairs], self.max_batch_tokens)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _run(self, encodings: list[Any]) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            types[row, :n] = encoding.type_ids
            mask[row, :n] = 1
        feed = {"input_ids": ids}
        if "attention_mask" in self.input_names:
            feed["attention_mask"] = mask
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = types
        output = self.session.run(None, feed)[0]
        return np.asarray(output, dtype=np.float32).reshape(len(encodings), -1)[:, 0]
